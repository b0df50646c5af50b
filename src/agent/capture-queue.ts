/**
 * Live-traffic capture, kept off the request path: classified texts are
 * sampled into a bounded queue and written to the store in groups by a timer,
 * never while a request waits. The serving process's connection waits only
 * briefly for another process's write lock (a `quantd collect`, a job's
 * child); while the store stays locked the texts wait in the queue, and what
 * does not fit in it is dropped and counted rather than stalling serving.
 */
import { isQuantdError, QuantdError } from "../errors.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type { SampleStore } from "../store/samples.ts";

/** Options of {@link CaptureQueue}. */
export interface CaptureQueueOptions {
  samples: () => SampleStore;
  /** Fraction of texts kept, in (0, 1]. */
  rate: number;
  /** Randomness of the sampling. */
  random: () => number;
  /** Called with the number of texts dropped (queue full, or a write that failed for good). */
  onDropped?: (n: number) => void;
  log?: (line: string) => void;
  /** @defaultValue 1000 */
  flushMs?: number;
  /** Texts that trigger a write without waiting for the timer. @defaultValue 64 */
  flushTexts?: number;
  /** Most texts kept while the store is locked. @defaultValue 1024 */
  maxPending?: number;
}

/** Sampled texts on their way to the sample store. */
export class CaptureQueue {
  readonly #o: CaptureQueueOptions;
  #pending: TextInput[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** A write met a locked store: the next attempt waits for the retry timer. */
  #retrying = false;
  /** Texts dropped so far. */
  dropped = 0;

  constructor(options: CaptureQueueOptions) {
    this.#o = options;
  }

  /** Samples texts of a served request into the queue (at `rate`, the configured one by default); the write happens later, on a timer. */
  offer(texts: readonly TextInput[], rate: number = this.#o.rate): void {
    for (const t of texts) if (this.#o.random() < rate) this.#pending.push(t);
    this.#trim();
    // While the store is locked, the retry timer decides: flushing at every request would make each one
    // wait out the busy timeout.
    if (this.#pending.length === 0 || this.#retrying) return;
    const soon = this.#pending.length >= (this.#o.flushTexts ?? 64);
    if (soon && this.#timer !== undefined) clearTimeout(this.#timer);
    else if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => this.flush(), soon ? 0 : (this.#o.flushMs ?? 1000));
  }

  /** Writes what is queued now; a locked store keeps it queued for the next attempt. */
  flush(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#retrying = false;
    const texts = this.#pending;
    this.#pending = [];
    if (texts.length === 0) return;
    try {
      this.#o.samples().add(
        // A pair is stored as one sample of two texts, as the model reads it.
        texts.map((x) => (typeof x === "string" ? { text: x } : { text: x[0], pair: x[1] })),
        { source: "live" },
      );
    } catch (err) {
      if (isQuantdError(err, "STORE_BUSY")) {
        this.#pending = [...texts, ...this.#pending];
        this.#trim();
        this.#retrying = true;
        this.#timer = setTimeout(() => this.flush(), this.#o.flushMs ?? 1000);
        return;
      } else {
        // Capture is best effort: a full disk must not fail inference.
        this.#drop(texts.length);
        this.#o.log?.(`capture: ${QuantdError.from(err).toLine()}`);
      }
    }
  }

  /** Stops the timer (call {@link CaptureQueue.flush} first to keep what is queued). */
  stop(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #trim(): void {
    const over = this.#pending.length - (this.#o.maxPending ?? 1024);
    if (over <= 0) return;
    this.#pending = this.#pending.slice(over);
    this.#drop(over);
  }

  #drop(n: number): void {
    this.dropped += n;
    this.#o.onDropped?.(n);
  }
}
