/**
 * Giving freed heap back to the operating system. glibc's malloc keeps the
 * memory a large batch freed in its arenas (one per thread that allocated:
 * the server's and the inference worker's), so an agent's resident set stays
 * at the peak of the largest request it ever served. `malloc_trim(0)` returns
 * the free pages of every arena (glibc only: off it, trimming is a no-op).
 */
import { fixMmapThreshold, mallocTrim } from "./libc.ts";

/** Trims the C heap; returns false when this platform cannot. */
export type HeapTrimmer = () => boolean;

/** glibc's initial mmap threshold, kept fixed: blocks of 128 KiB and more get their own mapping. */
const MMAP_THRESHOLD_BYTES = 128 * 1024;

/** The process's heap trimmer; fixes glibc's mmap threshold on the way (see libc.ts). */
export async function heapTrimmer(): Promise<HeapTrimmer> {
  // glibc raises its mmap threshold each time a large block is freed, up to 32 MB, after which a batch's
  // tensors come from the arenas and stay there; a fixed threshold keeps them in their own mappings,
  // unmapped as soon as they are freed.
  await fixMmapThreshold(MMAP_THRESHOLD_BYTES);
  return mallocTrim();
}

/** Options of {@link TrimAfterPeaks}. */
export interface TrimAfterPeaksOptions {
  trim: HeapTrimmer;
  /** Resident set size now, in bytes. @defaultValue process.memoryUsage.rss */
  rss?: () => number;
  /** Growth over the resident set after the last trim that calls for a trim, in bytes. @defaultValue 8 MiB */
  growthBytes?: number;
  /** Quiet time after the last batch before trimming, in ms. @defaultValue 200 */
  quietMs?: number;
}

/**
 * Trims the heap once serving goes quiet after the resident set grew: a
 * large request's memory comes back within a fraction of a second of its end,
 * and steady traffic, which reuses what it allocated, is never interrupted by
 * trims it does not need.
 */
export class TrimAfterPeaks {
  readonly #o: Required<TrimAfterPeaksOptions>;
  #baseline: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Trims done, for metrics and tests. */
  trims = 0;

  constructor(options: TrimAfterPeaksOptions) {
    this.#o = {
      rss: () => process.memoryUsage.rss(),
      growthBytes: 8 * 1024 * 1024,
      quietMs: 200,
      ...options,
    };
    this.#baseline = this.#o.rss();
  }

  /** Called after every batch: (re)arms the quiet-time timer when memory grew. */
  afterBatch(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#o.rss() - this.#baseline < this.#o.growthBytes) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#o.trim()) this.trims++;
      this.#baseline = this.#o.rss();
    }, this.#o.quietMs);
    // Never keeps a stopping process alive.
    this.#timer.unref?.();
  }

  /** Cancels a pending trim. */
  stop(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
