/**
 * Exponential moving average of per-batch minima and maxima, as onnxruntime's
 * MinMax calibrator with `moving_average=True`: after the first batch,
 * `min += c * (batchMin - min)` and likewise for max. Rare extreme batches then
 * move the range only a little.
 */
import { QuantdError } from "../../errors.ts";
import { scanValues } from "./histogram.ts";
import { type Observer, RunningStats, type TensorRange } from "./observer.ts";

/** Default averaging constant c. */
export const DEFAULT_AVERAGING_CONSTANT = 0.01;

/** Options for {@link MovingAverageMinMaxObserver}. */
export interface MovingAverageMinMaxOptions {
  /** Weight of each new batch, in (0, 1]. @defaultValue {@link DEFAULT_AVERAGING_CONSTANT} (0.01) */
  averagingConstant?: number;
}

/** Range = EMA of batch minima, EMA of batch maxima. */
export class MovingAverageMinMaxObserver implements Observer {
  readonly type = "moving-average-minmax" as const;
  readonly averagingConstant: number;
  readonly #stats = new RunningStats();
  #min = 0;
  #max = 0;
  #batches = 0;

  /** @throws USAGE when the averaging constant is not in (0, 1] */
  constructor(opts: MovingAverageMinMaxOptions = {}) {
    const c = opts.averagingConstant ?? DEFAULT_AVERAGING_CONSTANT;
    if (!(c > 0 && c <= 1)) throw new QuantdError("USAGE", `averaging constant must be in (0, 1], got ${c}`);
    this.averagingConstant = c;
  }

  update(data: Float32Array): void {
    const s = scanValues(data);
    this.#stats.add(s);
    // a batch with no usable value says nothing about the range
    if (s.count === 0) return;
    if (this.#batches === 0) {
      this.#min = s.min;
      this.#max = s.max;
    } else {
      const c = this.averagingConstant;
      this.#min += c * (s.min - this.#min);
      this.#max += c * (s.max - this.#max);
    }
    this.#batches++;
  }

  result(): TensorRange {
    return this.#stats.range(this.#min, this.#max);
  }
}
