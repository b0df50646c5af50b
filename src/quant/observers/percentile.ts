/**
 * Percentile calibration over a streaming histogram: the range keeps the
 * central `percentile` % of the values and clips the rest. Asymmetric (the
 * default, for uint8 activations) cuts half of the excluded mass from each
 * tail, as onnxruntime's percentile calibrator does; symmetric takes the
 * percentile of |x| and returns [-t, t] (clamped to what was observed).
 */
import { QuantdError } from "../../errors.ts";
import type { DEFAULT_BINS } from "./histogram.ts";
import { HistogramObserver, type TensorRange } from "./observer.ts";

/** Default percentile kept. */
export const DEFAULT_PERCENTILE = 99.999;

/** Options for {@link PercentileObserver}. */
export interface PercentileOptions {
  /** Histogram bins. @defaultValue {@link DEFAULT_BINS} (2048) */
  bins?: number;
  /** Percentage of values kept, in (0, 100]. @defaultValue {@link DEFAULT_PERCENTILE} (99.999) */
  percentile?: number;
  /** Percentile of |x|, range [-t, t]. @defaultValue false */
  symmetric?: boolean;
}

/** Range = central percentile of the values (or of |x| when symmetric). */
export class PercentileObserver extends HistogramObserver {
  readonly type = "percentile" as const;
  readonly percentile: number;

  /** @throws USAGE when the percentile is not in (0, 100] or bins is out of range */
  constructor(opts: PercentileOptions = {}) {
    const p = opts.percentile ?? DEFAULT_PERCENTILE;
    if (!(p > 0 && p <= 100)) throw new QuantdError("USAGE", `percentile must be in (0, 100], got ${p}`);
    super(opts);
    this.percentile = p;
  }

  result(): TensorRange {
    const h = this.hist;
    if (h.total === 0) return this.stats.range(0, 0);
    const keep = this.percentile / 100;
    if (this.symmetric) {
      const t = h.quantile(keep);
      return this.stats.range(-t, t, h.snapshot());
    }
    const cut = (1 - keep) / 2;
    return this.stats.range(h.quantile(cut), h.quantile(1 - cut), h.snapshot());
  }
}
