/**
 * MSE calibration: the range that minimizes the expected squared quantization
 * error of the histogrammed values. For a candidate range [a, b] (widened to
 * hold 0) with step s = (b - a) / levels, values inside cost the rounding noise
 * s²/12 and values outside cost their distance to the nearer end squared
 * (bin centre plus the within-bin variance w²/12). With prefix sums of n, n·c
 * and n·c² over the bins each candidate costs O(1), so the search can be fine:
 * first both ends shrunk together (fractions k/1000 of the observed ends), then
 * each end alone with the other fixed.
 *
 * Analytic in-range noise rather than the error at each bin centre: once the
 * step is close to the bin width the centres alias against the grid and the
 * measured error says more about bin placement than about the range.
 */
import { QuantdError } from "../../errors.ts";
import type { DEFAULT_BINS, HistogramSnapshot } from "./histogram.ts";
import { HistogramObserver, type TensorRange } from "./observer.ts";

/** Options for {@link MseObserver}. */
export interface MseOptions {
  /** Histogram bins. @defaultValue {@link DEFAULT_BINS} (2048) */
  bins?: number;
  /** Quantization steps across the range (qmax - qmin). @defaultValue 255 (uint8) */
  levels?: number;
  /** Search symmetric ranges [-t, t] over |x|. @defaultValue false */
  symmetric?: boolean;
}

const STEPS = 1000;

/** Prefix sums over bins for O(1) clipped-error queries. */
class Moments {
  readonly n: Float64Array;
  readonly s1: Float64Array;
  readonly s2: Float64Array;
  readonly lo: number;
  readonly w: number;
  readonly B: number;

  constructor(h: HistogramSnapshot) {
    const B = h.counts.length;
    this.B = B;
    this.lo = h.lo;
    this.w = h.width;
    this.n = new Float64Array(B + 1);
    this.s1 = new Float64Array(B + 1);
    this.s2 = new Float64Array(B + 1);
    for (let k = 0; k < B; k++) {
      const c = h.lo + (k + 0.5) * h.width;
      const m = h.counts[k]!;
      this.n[k + 1] = this.n[k]! + m;
      this.s1[k + 1] = this.s1[k]! + m * c;
      this.s2[k + 1] = this.s2[k]! + m * c * c;
    }
  }

  /** Number of bins whose centre is below x. */
  below(x: number): number {
    const k = Math.ceil((x - this.lo) / this.w - 0.5);
    return Math.max(0, Math.min(this.B, k));
  }

  /** Expected total squared error for range [a, b] (a ≤ 0 ≤ b) with `levels` steps. */
  error(a: number, b: number, levels: number): number {
    const ia = this.below(a);
    const ib = this.below(b);
    // bins with centre in [a, b): rounding noise; the top bin counts as inside when b is at its centre
    const total = this.n[this.B]!;
    const nBelow = this.n[ia]!;
    const nAbove = total - this.n[ib]!;
    const s = (b - a) / levels;
    const intra = (this.w * this.w) / 12;
    let e = (total - nBelow - nAbove) * ((s * s) / 12);
    if (nBelow > 0) e += a * a * nBelow - 2 * a * this.s1[ia]! + this.s2[ia]! + intra * nBelow;
    if (nAbove > 0) {
      const S1 = this.s1[this.B]! - this.s1[ib]!;
      const S2 = this.s2[this.B]! - this.s2[ib]!;
      e += b * b * nAbove - 2 * b * S1 + S2 + intra * nAbove;
    }
    return e;
  }
}

/** Range = [a, b] minimizing expected quantization MSE over the histogram. */
export class MseObserver extends HistogramObserver {
  readonly type = "mse" as const;
  readonly levels: number;

  /** @throws USAGE when levels is not a number ≥ 1 */
  constructor(opts: MseOptions = {}) {
    const levels = opts.levels ?? 255;
    if (!(levels >= 1) || !Number.isFinite(levels)) {
      throw new QuantdError("USAGE", `levels must be a finite number ≥ 1, got ${levels}`);
    }
    super(opts);
    this.levels = levels;
  }

  result(): TensorRange {
    const st = this.stats;
    if (this.hist.total === 0) return st.range(0, 0);
    const snap = this.hist.snapshot();
    const m = new Moments(snap);
    const levels = this.levels;
    if (this.symmetric) {
      // over |x|: [0, t] holds half of the 2t range, so its step is 2t/levels
      const top = Math.max(Math.abs(st.min), Math.abs(st.max));
      let bestT = top;
      let bestE = Number.POSITIVE_INFINITY;
      for (let k = STEPS; k >= 1; k--) {
        const t = (top * k) / STEPS;
        const e = m.error(0, t, levels / 2);
        if (e < bestE) {
          bestE = e;
          bestT = t;
        }
      }
      return st.range(-bestT, bestT, snap);
    }
    const lo0 = Math.min(st.min, 0);
    const hi0 = Math.max(st.max, 0);
    let a = lo0;
    let b = hi0;
    let bestE = Number.POSITIVE_INFINITY;
    // candidates from the full range downwards, so ties keep the wider range
    for (let k = STEPS; k >= 1; k--) {
      const e = m.error((lo0 * k) / STEPS, (hi0 * k) / STEPS, levels);
      if (e < bestE) {
        bestE = e;
        a = (lo0 * k) / STEPS;
        b = (hi0 * k) / STEPS;
      }
    }
    if (lo0 < 0) {
      for (let k = STEPS; k >= 1; k--) {
        const e = m.error((lo0 * k) / STEPS, b, levels);
        if (e < bestE) {
          bestE = e;
          a = (lo0 * k) / STEPS;
        }
      }
    }
    if (hi0 > 0) {
      for (let k = STEPS; k >= 1; k--) {
        const e = m.error(a, (hi0 * k) / STEPS, levels);
        if (e < bestE) {
          bestE = e;
          b = (hi0 * k) / STEPS;
        }
      }
    }
    return st.range(a, b, snap);
  }
}
