/**
 * Observers: per-tensor statistics collected during calibration, and the range
 * each method derives from them. {@link createObserver} is the one place an
 * observer kind is chosen.
 */
import { assertNever } from "../../errors.ts";
import { type EntropyOptions, EntropyObserver } from "./entropy.ts";
import { MinMaxObserver } from "./minmax.ts";
import { type MovingAverageMinMaxOptions, MovingAverageMinMaxObserver } from "./moving-average-minmax.ts";
import { type MseOptions, MseObserver } from "./mse.ts";
import type { Observer } from "./observer.ts";
import { type PercentileOptions, PercentileObserver } from "./percentile.ts";

export { EntropyObserver, type EntropyOptions, klThresholdBins } from "./entropy.ts";
export {
  DEFAULT_BINS,
  Histogram,
  type HistogramOptions,
  type HistogramSnapshot,
  SENTINEL_ABS,
  type ScanStats,
  scanValues,
} from "./histogram.ts";
export { MinMaxObserver } from "./minmax.ts";
export {
  DEFAULT_AVERAGING_CONSTANT,
  MovingAverageMinMaxObserver,
  type MovingAverageMinMaxOptions,
} from "./moving-average-minmax.ts";
export { MseObserver, type MseOptions } from "./mse.ts";
export type { Observer, ObserverType, TensorRange } from "./observer.ts";
export { DEFAULT_PERCENTILE, PercentileObserver, type PercentileOptions } from "./percentile.ts";

/** Which observer to build, with its options. */
export type ObserverSpec =
  | { type: "minmax" }
  | ({ type: "moving-average-minmax" } & MovingAverageMinMaxOptions)
  | ({ type: "percentile" } & PercentileOptions)
  | ({ type: "entropy" } & EntropyOptions)
  | ({ type: "mse" } & MseOptions);

/**
 * Builds a fresh observer (one per tensor).
 *
 * @throws USAGE when the spec's options are out of range
 * @throws INTERNAL for an unknown `type`
 */
export function createObserver(spec: ObserverSpec): Observer {
  switch (spec.type) {
    case "minmax":
      return new MinMaxObserver();
    case "moving-average-minmax":
      return new MovingAverageMinMaxObserver(spec);
    case "percentile":
      return new PercentileObserver(spec);
    case "entropy":
      return new EntropyObserver(spec);
    case "mse":
      return new MseObserver(spec);
    default:
      return assertNever(spec, "observer type");
  }
}
