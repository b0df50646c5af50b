/**
 * Entropy (KL-divergence) calibration, after the procedure NVIDIA described
 * for TensorRT's int8 calibration (Migacz, "8-bit Inference with TensorRT",
 * GTC 2017), implemented here from that description:
 *
 * 1. histogram |x| into B bins over [0, max|x|];
 * 2. for each candidate i (number of bins kept, from the quantized bin count to B):
 *    P = bins[0..i) with all mass beyond bin i-1 added to bin i-1 (clipping);
 *    Q = bins[0..i) merged into `quantizedBins` groups and spread back evenly
 *        over the non-empty bins of each group (what the quantizer can express);
 * 3. pick the i with the smallest KL(P‖Q); threshold t = i · binWidth.
 *
 * KL per candidate is computed from prefix sums (of h, h·ln h and of non-empty
 * bin counts), so each candidate costs O(quantizedBins) rather than O(i).
 * The range is [-t, t] clamped to the observed [min, max]. For a tensor whose
 * values all have one sign, the uint8 grid has 255 steps over [0, t], so the
 * default quantized bin count is 255 there and 128 (7 bits per sign) otherwise.
 */
import { QuantdError } from "../../errors.ts";
import type { DEFAULT_BINS } from "./histogram.ts";
import { HistogramObserver, type TensorRange } from "./observer.ts";

/** Options for {@link EntropyObserver}. */
export interface EntropyOptions {
  /** Histogram bins. @defaultValue {@link DEFAULT_BINS} (2048) */
  bins?: number;
  /** Levels of the candidate quantized distribution. @defaultValue 128 for mixed-sign tensors, 255 for one-signed */
  quantizedBins?: number;
}

/** Stands in for q = 0 where p > 0 (clipped mass landing in an empty bin), so KL stays finite but large. */
const Q_FLOOR = 1e-7;

/**
 * The number of bins i (quantizedBins ≤ i ≤ bins) minimizing KL(P‖Q) over a
 * magnitude histogram `h`, as described in the module comment. Exported for tests.
 */
export function klThresholdBins(h: Float64Array, quantizedBins: number): number {
  const B = h.length;
  const nq = quantizedBins;
  if (B <= nq) return B;
  const H = new Float64Array(B + 1);
  const L = new Float64Array(B + 1);
  const Z = new Int32Array(B + 1);
  for (let k = 0; k < B; k++) {
    const v = h[k]!;
    H[k + 1] = H[k]! + v;
    L[k + 1] = L[k]! + (v > 0 ? v * Math.log(v) : 0);
    Z[k + 1] = Z[k]! + (v > 0 ? 1 : 0);
  }
  const N = H[B]!;
  if (N === 0) return B;
  const logN = Math.log(N);
  // ln n for the non-empty-bin counts, so each group costs one Math.log (of its total) instead of two
  const logInt = new Float64Array(B + 1);
  for (let n = 1; n <= B; n++) logInt[n] = Math.log(n);
  let best = B;
  let bestKl = Number.POSITIVE_INFINITY;
  for (let i = nq; i <= B; i++) {
    const Sq = H[i]!;
    if (Sq === 0) continue;
    const shift = Math.log(Sq) - logN;
    // Σ over non-empty bins of h·ln(p/q) = Σ_g [Σ h ln h + T·(ln Sq − ln N − ln T + ln n)], accumulated as N·KL
    let kl = 0;
    let s = 0;
    for (let g = 1; g <= nq; g++) {
      const e = Math.floor((g * i) / nq);
      const n = Z[e]! - Z[s]!;
      if (n > 0) {
        const T = H[e]! - H[s]!;
        kl += L[e]! - L[s]! + T * (shift - Math.log(T) + logInt[n]!);
      }
      s = e;
    }
    // bin i-1 carries the clipped mass in P: replace its term (its group starts at s_last)
    const sLast = Math.floor(((nq - 1) * i) / nq);
    const lastT = H[i]! - H[sLast]!;
    const lastN = Z[i]! - Z[sLast]!;
    const hl = h[i - 1]!;
    if (hl > 0) kl -= hl * Math.log(hl) + hl * (shift - Math.log(lastT) + logInt[lastN]!);
    const p = (hl + (N - Sq)) / N;
    if (p > 0) {
      const q = hl > 0 ? lastT / lastN / Sq : Q_FLOOR;
      kl += N * p * Math.log(p / q);
    }
    if (kl < bestKl) {
      bestKl = kl;
      best = i;
    }
  }
  return best;
}

/** Range = KL-optimal symmetric threshold. */
export class EntropyObserver extends HistogramObserver {
  readonly type = "entropy" as const;
  readonly quantizedBins: number | undefined;

  /** @throws USAGE when quantizedBins is not an integer ≥ 2 or exceeds the bin count */
  constructor(opts: EntropyOptions = {}) {
    super({ bins: opts.bins, symmetric: true });
    const q = opts.quantizedBins;
    if (q !== undefined && (!Number.isInteger(q) || q < 2 || q > this.hist.bins)) {
      throw new QuantdError("USAGE", `quantized bins must be an integer in [2, ${this.hist.bins}], got ${q}`);
    }
    this.quantizedBins = q;
  }

  result(): TensorRange {
    const h = this.hist;
    const st = this.stats;
    if (h.total === 0) return st.range(0, 0);
    const oneSigned = st.min >= 0 || st.max <= 0;
    const nq = this.quantizedBins ?? (oneSigned ? 255 : 128);
    const i = klThresholdBins(h.counts, Math.min(nq, h.bins));
    const t = i * h.width;
    return st.range(-t, t, h.snapshot());
  }
}
