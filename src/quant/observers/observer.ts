/**
 * The contract every observer meets, and the running counts they share.
 * Observers see a tensor batch by batch and keep statistics only (a few numbers
 * and at most one fixed-size histogram), so memory does not grow with the
 * number of samples.
 */
import { DEFAULT_BINS, Histogram, type HistogramSnapshot, type ScanStats, scanValues } from "./histogram.ts";

/** The calibrated range of one tensor, with what the observer saw. */
export interface TensorRange {
  /** Lower end of the range to quantize (≤ max; 0 when nothing usable was seen). */
  min: number;
  /** Upper end of the range to quantize. */
  max: number;
  /** Usable values seen (finite, not a mask sentinel). */
  count: number;
  /** NaN and ±inf values seen (ignored). */
  nonFinite: number;
  /** Mask-sentinel values seen (|x| ≥ 1e30, ignored; see `histogram.ts`). */
  sentinel: number;
  /** Exact smallest usable value seen (0 when none). */
  observedMin: number;
  /** Exact largest usable value seen (0 when none). */
  observedMax: number;
  /** The histogram the range was chosen from, for histogram-based observers. */
  histogram?: HistogramSnapshot;
}

/** Observer kinds. */
export type ObserverType = "minmax" | "moving-average-minmax" | "percentile" | "entropy" | "mse";

/** Collects statistics of one tensor over calibration batches. */
export interface Observer {
  readonly type: ObserverType;
  /** Adds one batch of the tensor's values (any shape, flattened). */
  update(data: Float32Array): void;
  /** The range chosen from everything seen so far. */
  result(): TensorRange;
}

/** Counts and exact extremes over all batches. */
export class RunningStats {
  count = 0;
  nonFinite = 0;
  sentinel = 0;
  min = Number.POSITIVE_INFINITY;
  max = Number.NEGATIVE_INFINITY;

  add(s: ScanStats): void {
    this.count += s.count;
    this.nonFinite += s.nonFinite;
    this.sentinel += s.sentinel;
    if (s.min < this.min) this.min = s.min;
    if (s.max > this.max) this.max = s.max;
  }

  /** A {@link TensorRange} with the given range (clamped into the observed one) and this object's counts. */
  range(min: number, max: number, histogram?: HistogramSnapshot): TensorRange {
    const empty = this.count === 0;
    const observedMin = empty ? 0 : this.min;
    const observedMax = empty ? 0 : this.max;
    let lo = empty ? 0 : Math.max(observedMin, Math.min(min, observedMax));
    let hi = empty ? 0 : Math.min(observedMax, Math.max(max, observedMin));
    if (lo > hi) [lo, hi] = [hi, lo];
    const r: TensorRange = {
      min: lo,
      max: hi,
      count: this.count,
      nonFinite: this.nonFinite,
      sentinel: this.sentinel,
      observedMin,
      observedMax,
    };
    if (histogram !== undefined) r.histogram = histogram;
    return r;
  }
}

/**
 * What the histogram-based observers (percentile, entropy, MSE) share: exact
 * counts and extremes plus one fixed-size histogram, both fed from the same
 * scan of each batch. Subclasses only choose the range.
 */
export abstract class HistogramObserver implements Observer {
  abstract readonly type: ObserverType;
  /** Counts and exact extremes over every batch. */
  protected readonly stats = new RunningStats();
  /** The histogram the range is chosen from. */
  protected readonly hist: Histogram;
  /** The range is chosen over |x| (a symmetric [-t, t]). */
  readonly symmetric: boolean;

  /** @throws USAGE when `bins` is out of range */
  protected constructor(opts: { bins?: number | undefined; symmetric?: boolean | undefined }) {
    this.symmetric = opts.symmetric === true;
    this.hist = new Histogram({ bins: opts.bins ?? DEFAULT_BINS, abs: this.symmetric });
  }

  update(data: Float32Array): void {
    const s = scanValues(data);
    this.stats.add(s);
    this.hist.update(data, s);
  }

  abstract result(): TensorRange;
}
