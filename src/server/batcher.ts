/**
 * Dynamic micro-batching. Requests' texts join one queue; a batch leaves it
 * when it holds `maxBatch` texts or `maxDelayMs` after its first text arrived,
 * and never while `concurrency` batches already run (1 for a session on the
 * server's thread, which uses every intra-op thread: two batches at once would
 * only contend; one per worker thread of a session pool). Texts that arrive
 * while the batches run therefore wait for the next one and are batched
 * together, which is where the throughput under concurrency comes from, while
 * a lone request with `maxDelayMs = 0` is run at once.
 *
 * Batches are filled fairly: each waiting request contributes an equal share
 * of a batch (round robin, in arrival order), so a request of hundreds of
 * texts is split into batches interleaved with other clients' requests
 * instead of holding the model until it is done.
 *
 * The queue is bounded in texts: a request that does not fit is refused whole
 * with OVERLOADED (the server's 503 with Retry-After) instead of letting
 * latency and memory grow without limit.
 */
import { QuantdError } from "../errors.ts";
import type { TaskResult } from "../runtime/task-model.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type { BatchResult, InferenceBackend } from "./types.ts";

/** Options of {@link MicroBatcher}. */
export interface BatcherOptions {
  /** Most texts per inference batch. */
  maxBatch: number;
  /** Longest wait after a batch's first text, in ms. */
  maxDelayMs: number;
  /** Most texts queued (not counting the running batch). */
  maxQueue: number;
  /** Most batches running at once (the backend's worker threads). @defaultValue 1 */
  concurrency?: number;
  /** Called after every batch (for metrics and post-swap checks). */
  onBatch?: (size: number, durationMs: number, ok: boolean) => void;
}

interface Pending {
  results: TaskResult[];
  remaining: number;
  model: BatchResult["model"] | undefined;
  inferenceMs: number;
  settled: boolean;
  resolve: (r: BatchResult) => void;
  reject: (e: unknown) => void;
}

/** A request's texts waiting in the queue. */
interface Queued {
  texts: readonly TextInput[];
  /** Index of its first text not yet in a batch. */
  next: number;
  pending: Pending;
  /** When it was queued (performance.now()): its first batch leaves at the latest maxDelayMs later. */
  at: number;
}

interface Entry {
  text: TextInput;
  index: number;
  pending: Pending;
}

/** Batches texts from concurrent requests onto an {@link InferenceBackend}. */
export class MicroBatcher {
  readonly #backend: InferenceBackend;
  readonly #opts: BatcherOptions;
  /** Requests with texts not yet in a batch, in arrival order. */
  #queue: Queued[] = [];
  /** Texts waiting, over all requests. */
  #waiting = 0;
  /** Batches running. */
  #running = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #scheduled = false;
  #idleWaiters: (() => void)[] = [];
  #avgBatchMs = 0;

  constructor(backend: InferenceBackend, opts: BatcherOptions) {
    this.#backend = backend;
    this.#opts = opts;
  }

  /** Texts waiting (not counting the running batch). */
  get depth(): number {
    return this.#waiting;
  }

  /** Whether a batch is running. */
  get busy(): boolean {
    return this.#running > 0;
  }

  get #concurrency(): number {
    return this.#opts.concurrency ?? 1;
  }

  /**
   * Queues texts (or pairs) and resolves with their results in order, from one model
   * version (the last batch's, if a swap split the request).
   *
   * @throws OVERLOADED when the queue cannot take all the texts; `details.retryAfterSeconds` says when to retry
   */
  submit(texts: readonly TextInput[]): Promise<BatchResult> {
    if (texts.length === 0) return Promise.reject(new QuantdError("REQUEST_INVALID", "no texts to classify"));
    if (this.depth + texts.length > this.#opts.maxQueue) {
      return Promise.reject(
        new QuantdError(
          "OVERLOADED",
          `the inference queue is full (${this.depth} of ${this.#opts.maxQueue} texts waiting); retry later`,
          {
            details: {
              queued: this.depth,
              maxQueue: this.#opts.maxQueue,
              retryAfterSeconds: this.retryAfterSeconds(),
            },
          },
        ),
      );
    }
    return new Promise<BatchResult>((resolve, reject) => {
      const pending: Pending = {
        results: new Array<TaskResult>(texts.length),
        remaining: texts.length,
        model: undefined,
        inferenceMs: 0,
        settled: false,
        resolve,
        reject,
      };
      this.#queue.push({ texts, next: 0, pending, at: performance.now() });
      this.#waiting += texts.length;
      this.#schedule();
    });
  }

  /** Seconds until the queue has likely drained, at least 1 (for Retry-After). */
  retryAfterSeconds(): number {
    const batches = Math.ceil(this.depth / this.#opts.maxBatch) + 1;
    return Math.max(1, Math.ceil((batches * this.#avgBatchMs) / this.#concurrency / 1000));
  }

  /** Resolves when the queue is empty and no batch runs. */
  drain(): Promise<void> {
    if (this.#running === 0 && this.depth === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #schedule(): void {
    if (this.#running >= this.#concurrency || this.depth === 0) return;
    // The oldest waiting text sets the deadline, also for texts left over from a full batch.
    const wait = this.#queue[0]!.at + this.#opts.maxDelayMs - performance.now();
    if (this.depth >= this.#opts.maxBatch || wait <= 0) {
      if (this.#timer !== undefined) {
        clearTimeout(this.#timer);
        this.#timer = undefined;
      }
      // A microtask lets the texts of requests parsed in the same tick join this batch.
      if (!this.#scheduled) {
        this.#scheduled = true;
        queueMicrotask(() => {
          this.#scheduled = false;
          void this.#flush();
        });
      }
      return;
    }
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        void this.#flush();
      }, Math.ceil(wait));
    }
  }

  /**
   * The next batch: up to `maxBatch` texts, an equal share from each waiting
   * request in arrival order (the first requests get the remainder), so that
   * a large request cannot hold back the ones behind it. The rest of a
   * request that already failed in an earlier batch is dropped.
   */
  #takeBatch(): Entry[] {
    const batch: Entry[] = [];
    const max = this.#opts.maxBatch;
    for (const q of this.#queue) if (q.pending.settled) this.#waiting -= q.texts.length - q.next;
    this.#queue = this.#queue.filter((q) => !q.pending.settled);
    while (batch.length < max && this.#queue.length > 0) {
      const share = Math.max(1, Math.floor((max - batch.length) / this.#queue.length));
      for (const q of this.#queue) {
        const take = Math.min(share, q.texts.length - q.next, max - batch.length);
        for (let k = 0; k < take; k++, q.next++) {
          batch.push({ text: q.texts[q.next]!, index: q.next, pending: q.pending });
        }
        this.#waiting -= take;
        if (batch.length >= max) break;
      }
      this.#queue = this.#queue.filter((q) => q.next < q.texts.length);
    }
    return batch;
  }

  async #flush(): Promise<void> {
    if (this.#running >= this.#concurrency || this.depth === 0) return;
    this.#running++;
    const batch = this.#takeBatch();
    // Another slot free and texts left over (more than a batch was queued): schedule the next batch now.
    this.#schedule();
    const t0 = performance.now();
    let ok = true;
    try {
      if (batch.length > 0) {
        const out = await this.#backend.classify(batch.map((e) => e.text));
        const counted = new Set<Pending>();
        for (const [i, e] of batch.entries()) {
          const p = e.pending;
          if (p.settled) continue;
          p.results[e.index] = out.results[i]!;
          p.model = out.model;
          if (!counted.has(p)) {
            counted.add(p);
            p.inferenceMs += out.inferenceMs;
          }
          if (--p.remaining === 0) {
            p.settled = true;
            p.resolve({ results: p.results, model: p.model, inferenceMs: p.inferenceMs });
          }
        }
      }
    } catch (err) {
      ok = false;
      for (const e of batch) {
        if (e.pending.settled) continue;
        e.pending.settled = true;
        e.pending.reject(err);
      }
    } finally {
      const ms = performance.now() - t0;
      if (batch.length > 0) {
        this.#avgBatchMs = this.#avgBatchMs === 0 ? ms : 0.8 * this.#avgBatchMs + 0.2 * ms;
        this.#opts.onBatch?.(batch.length, ms, ok);
      }
      this.#running--;
      if (this.depth === 0 && this.#running === 0) {
        const waiters = this.#idleWaiters;
        this.#idleWaiters = [];
        for (const w of waiters) w();
      } else if (this.depth > 0) this.#schedule();
    }
  }
}
