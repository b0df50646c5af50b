/**
 * Streaming statistics shared by every observer: a scan that separates usable
 * values from non-finite ones and from mask sentinels, and a fixed-size
 * histogram whose range grows by merging neighbouring bins.
 *
 * Why sentinels are excluded: HF exporters build the additive attention mask as
 * `(1 - mask) * finfo(float32).min`, so the mask tensor (and the scores it is
 * added to) hold values near -3.4e38. They are a constant of the graph, never
 * meaningful data to quantize, and one of them in a histogram stretches its range
 * to 1e38 and leaves every real value in a single bin (ORT's Python calibrators
 * die on exactly this with "Too many bins"). Values with |x| ≥ {@link SENTINEL_ABS}
 * are therefore counted but kept out of min/max and histograms; a tensor that
 * holds them is reported (`sentinel > 0`) so the rewrite passes keep it fp32.
 * NaN and ±inf are counted (`nonFinite`) and ignored likewise.
 */
import { QuantdError } from "../../errors.ts";

/** Values whose magnitude reaches this are treated as mask sentinels (see the module comment). */
export const SENTINEL_ABS = 1e30;

/** Default number of histogram bins. */
export const DEFAULT_BINS = 2048;

/** What one pass over a tensor found. */
export interface ScanStats {
  /** Usable values (finite, |x| < {@link SENTINEL_ABS}). */
  count: number;
  /** Smallest usable value (+Infinity when count is 0). */
  min: number;
  /** Largest usable value (-Infinity when count is 0). */
  max: number;
  /** NaN, +inf and -inf. */
  nonFinite: number;
  /** Finite values with |x| ≥ {@link SENTINEL_ABS}. */
  sentinel: number;
}

/**
 * One tight pass over `data`: min and max of the usable values and counts of
 * the rest. The common case costs two comparisons per element.
 */
export function scanValues(data: Float32Array): ScanStats {
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  let excluded = 0;
  let nonFinite = 0;
  const n = data.length;
  for (let i = 0; i < n; i++) {
    const v = data[i]!;
    // false for NaN, ±inf and sentinels alike; sorted out below in the rare branch
    if (v > -SENTINEL_ABS && v < SENTINEL_ABS) {
      if (v < min) min = v;
      if (v > max) max = v;
    } else {
      excluded++;
      if (!Number.isFinite(v)) nonFinite++;
    }
  }
  return { count: n - excluded, min, max, nonFinite, sentinel: excluded - nonFinite };
}

/** A copy of a histogram's state, for reports and for searches over ranges. */
export interface HistogramSnapshot {
  /** Left edge of bin 0. */
  lo: number;
  /** Width of every bin. */
  width: number;
  /** Count per bin. */
  counts: Float64Array;
  /** Whether the histogram is of |x| (then `lo` is 0). */
  abs: boolean;
}

/** Options for {@link Histogram}. */
export interface HistogramOptions {
  /** Number of bins, fixed for the histogram's life. @defaultValue {@link DEFAULT_BINS} */
  bins?: number;
  /** Histogram |x| over [0, max|x|] instead of x. @defaultValue false */
  abs?: boolean;
}

/**
 * A histogram with a fixed number of bins over a range that grows as data
 * arrives. Growth multiplies the bin width by a power of two and merges whole
 * groups of neighbouring bins, so counts move without being split and the total
 * is preserved exactly; memory never depends on the data's range or on how
 * many values were seen.
 */
export class Histogram {
  /** Number of bins. */
  readonly bins: number;
  /** Whether values are binned by magnitude. */
  readonly abs: boolean;
  readonly #counts: Float64Array;
  #lo = 0;
  #width = 0;
  #total = 0;

  /** @throws USAGE when bins is not an integer in [8, 2^20] */
  constructor(opts: HistogramOptions = {}) {
    const bins = opts.bins ?? DEFAULT_BINS;
    if (!Number.isInteger(bins) || bins < 8 || bins > 1 << 20) {
      throw new QuantdError("USAGE", `histogram bins must be an integer in [8, 2^20], got ${bins}`);
    }
    this.bins = bins;
    this.abs = opts.abs === true;
    this.#counts = new Float64Array(bins);
  }

  /** Left edge of bin 0. */
  get lo(): number {
    return this.#lo;
  }
  /** Bin width (0 until the first value). */
  get width(): number {
    return this.#width;
  }
  /** Right edge of the last bin. */
  get hi(): number {
    return this.#lo + this.#width * this.bins;
  }
  /** Values binned so far. */
  get total(): number {
    return this.#total;
  }
  /** The live counts (do not modify). */
  get counts(): Float64Array {
    return this.#counts;
  }

  /**
   * Adds the usable values of `data` (see {@link scanValues}; `stats` may be
   * passed when the caller already scanned the same data).
   */
  update(data: Float32Array, stats: ScanStats = scanValues(data)): void {
    if (stats.count === 0) return;
    let lo = stats.min;
    let hi = stats.max;
    if (this.abs) {
      hi = Math.max(Math.abs(lo), Math.abs(hi));
      lo = 0;
    }
    this.#cover(lo, hi);
    const counts = this.#counts;
    const last = this.bins - 1;
    const base = this.#lo;
    const inv = 1 / this.#width;
    const n = data.length;
    const abs = this.abs;
    for (let i = 0; i < n; i++) {
      let v = data[i]!;
      if (!(v > -SENTINEL_ABS && v < SENTINEL_ABS)) continue;
      if (abs && v < 0) v = -v;
      // v ≥ base up to rounding, so truncation is floor; rounding can push an end value one bin out
      let b = ((v - base) * inv) | 0;
      if (b > last) b = last;
      else if (b < 0) b = 0;
      counts[b]!++;
    }
    this.#total += stats.count;
  }

  /** Makes the histogram cover [lo, hi] (both finite, lo ≤ hi), merging bins if needed. */
  #cover(lo: number, hi: number): void {
    const B = this.bins;
    if (this.#width === 0) {
      // First data: span exactly [lo, hi]; a single value gets a narrow but non-zero span around it.
      let span = hi - lo;
      if (!(span > 0)) span = Math.max(Math.abs(lo) * 2 ** -20, 2 ** -40);
      this.#lo = this.abs ? 0 : span === hi - lo ? lo : lo - span / 2;
      this.#width = span / B;
      // the top value must land inside: widen a hair when lo + B*width rounds below hi
      if (this.#lo + this.#width * B < hi) this.#width *= 1 + 2 ** -40;
      return;
    }
    const oldLo = this.#lo;
    const w = this.#width;
    if (lo >= oldLo && hi < oldLo + w * B) return;
    // Smallest power-of-two widening that leaves room on the left for `lo` (in whole new bins),
    // keeps the old bins inside, and reaches past `hi`.
    let f = 1;
    let shift = 0;
    for (;;) {
      f *= 2;
      const W = w * f;
      shift = lo < oldLo ? Math.ceil((oldLo - lo) / W) : 0;
      const oldBinsNow = Math.ceil(B / f);
      if (shift + oldBinsNow <= B && oldLo - shift * W + W * B > hi) break;
    }
    const counts = this.#counts;
    const merged = new Float64Array(B);
    for (let i = 0; i < B; i++) {
      const c = counts[i]!;
      if (c !== 0) merged[shift + Math.floor(i / f)]! += c;
    }
    counts.set(merged);
    this.#width = w * f;
    this.#lo = oldLo - shift * this.#width;
  }

  /**
   * The value below which a fraction `q` of the binned values lies, assuming
   * values spread evenly within a bin. `q` is clamped to [0, 1]; NaN for an
   * empty histogram.
   */
  quantile(q: number): number {
    const total = this.#total;
    if (total === 0) return Number.NaN;
    const target = Math.min(1, Math.max(0, q)) * total;
    const counts = this.#counts;
    let acc = 0;
    for (let b = 0; b < this.bins; b++) {
      const c = counts[b]!;
      if (c > 0 && acc + c >= target) {
        return this.#lo + this.#width * (b + (target - acc) / c);
      }
      acc += c;
    }
    return this.hi;
  }

  /** A copy of the state. */
  snapshot(): HistogramSnapshot {
    return { lo: this.#lo, width: this.#width, counts: Float64Array.from(this.#counts), abs: this.abs };
  }
}
