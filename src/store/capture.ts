/**
 * Opt-in capture of live traffic into the sample pool. The serving path calls
 * {@link SampleCapture.offer} for each request text: a Bernoulli draw at the
 * configured rate keeps some in a small in-memory buffer, written to the pool
 * in batches. Capture must never hurt serving, so `offer` is O(1) and never
 * throws, and a failed write (database locked, disk full) keeps the buffer for
 * the next flush, records the error and drops new texts once the buffer is full
 * (counted); a batch failing for any other reason is dropped (counted) rather
 * than retried forever. After a failure, `offer` does not try again for `retryDelayMs`, so
 * a locked database costs serving one busy timeout, not one per request. The
 * write itself is synchronous: give the capture's store a short busy timeout.
 */
import { isQuantdError, QuantdError, type QuantdErrorJSON } from "../errors.ts";
import type { Random } from "./random.ts";
import { type AddSamplesResult, MAX_SAMPLE_TEXT_BYTES, type SampleStore } from "./samples.ts";

/** Options for {@link createSampleCapture}. */
export interface SampleCaptureOptions {
  /** Probability that an offered text is kept, in [0, 1]; 0 turns capture off. */
  rate: number;
  /** Texts buffered before a flush is due. @defaultValue 32 */
  flushEvery?: number;
  /** Most texts buffered while writes fail; beyond, new texts are dropped and counted. @defaultValue 1024 */
  maxBuffer?: number;
  /** The `source` recorded with each sample. @defaultValue "live" */
  source?: string;
  /** After a failed flush, how long `offer` waits before flushing again, in ms. @defaultValue 1000 */
  retryDelayMs?: number;
  /** The sampling draw; seed it in tests. @defaultValue Math.random */
  random?: Random;
  /** Clock in ms, for the retry delay. @defaultValue Date.now */
  now?: () => number;
}

/** Counters of a capture since it was created. */
export interface SampleCaptureStats {
  /** Texts offered. */
  offered: number;
  /** Texts the draw kept. */
  sampled: number;
  /** Texts written to the pool (added) and found already there. */
  added: number;
  duplicates: number;
  /** Texts not usable as samples (not a string, blank, too large). */
  invalid: number;
  /** Sampled texts dropped: the buffer was full while writes failed, or their batch could not be written. */
  dropped: number;
  /** Texts waiting for the next flush. */
  buffered: number;
  /** Flushes that failed (the buffer was kept). */
  failedFlushes: number;
  /** The last flush failure, if any. */
  lastError: QuantdErrorJSON | null;
}

/** Sampled capture of live texts into the pool. */
export interface SampleCapture {
  /**
   * Offers one text; returns whether it was kept for the pool. Flushes when
   * `flushEvery` texts are buffered. Never throws.
   */
  offer(text: unknown): boolean;
  /**
   * Writes the buffered texts now. Returns what the pool did, or `undefined`
   * when there was nothing to write or the write failed (see `stats().lastError`).
   * Never throws for a store failure.
   */
  flush(): AddSamplesResult | undefined;
  /** Counters. */
  stats(): SampleCaptureStats;
}

const NOT_BLANK = /\S/u;

/**
 * A {@link SampleCapture} writing into `samples`.
 *
 * @throws CONFIG_INVALID when `rate` is outside [0, 1] or a size is not a positive integer
 */
export function createSampleCapture(samples: SampleStore, options: SampleCaptureOptions): SampleCapture {
  const { rate } = options;
  if (!(rate >= 0 && rate <= 1)) {
    throw new QuantdError("CONFIG_INVALID", `capture rate must be within 0…1, got ${rate}`);
  }
  const flushEvery = options.flushEvery ?? 32;
  const maxBuffer = options.maxBuffer ?? 1024;
  for (const [name, v] of [
    ["flushEvery", flushEvery],
    ["maxBuffer", maxBuffer],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new QuantdError("CONFIG_INVALID", `capture ${name} must be a positive integer, got ${v}`);
    }
  }
  const source = options.source ?? "live";
  const random = options.random ?? Math.random;
  const now = options.now ?? Date.now;
  const retryDelayMs = Math.max(0, options.retryDelayMs ?? 1000);
  let retryAt = Number.NEGATIVE_INFINITY;
  let buffer: string[] = [];
  const stats: Omit<SampleCaptureStats, "buffered"> = {
    offered: 0,
    sampled: 0,
    added: 0,
    duplicates: 0,
    invalid: 0,
    dropped: 0,
    failedFlushes: 0,
    lastError: null,
  };

  function flush(): AddSamplesResult | undefined {
    if (buffer.length === 0) return undefined;
    const batch = buffer;
    try {
      const result = samples.add(
        batch.map((text) => ({ text })),
        { source },
      );
      buffer = [];
      stats.added += result.added;
      stats.duplicates += result.duplicates;
      return result;
    } catch (err) {
      const qe = isQuantdError(err) ? err : QuantdError.from(err, "STORE_FAILED");
      stats.failedFlushes++;
      stats.lastError = qe.toJSON();
      retryAt = now() + retryDelayMs;
      // Locked or full may pass; anything else would fail the same batch forever.
      if (qe.code !== "STORE_BUSY" && qe.code !== "DISK_FULL") {
        stats.dropped += batch.length;
        buffer = [];
      }
      return undefined;
    }
  }

  return {
    offer(text: unknown): boolean {
      stats.offered++;
      if (rate === 0 || !(rate === 1 || random() < rate)) return false;
      // Checked after the draw, so unsampled traffic costs one random number.
      if (
        typeof text !== "string" ||
        text.length > MAX_SAMPLE_TEXT_BYTES ||
        Buffer.byteLength(text, "utf8") > MAX_SAMPLE_TEXT_BYTES ||
        !NOT_BLANK.test(text)
      ) {
        stats.invalid++;
        return false;
      }
      if (buffer.length >= maxBuffer && now() >= retryAt) flush();
      if (buffer.length >= maxBuffer) {
        stats.dropped++;
        return false;
      }
      stats.sampled++;
      buffer.push(text);
      if (buffer.length >= flushEvery && now() >= retryAt) flush();
      return true;
    },
    flush,
    stats(): SampleCaptureStats {
      return { ...stats, buffered: buffer.length };
    },
  };
}
