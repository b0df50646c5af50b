/** The exact minimum and maximum over all batches (onnxruntime's `MinMax` calibration). */
import { scanValues } from "./histogram.ts";
import { type Observer, RunningStats, type TensorRange } from "./observer.ts";

/** Range = [min, max] of every usable value seen. */
export class MinMaxObserver implements Observer {
  readonly type = "minmax" as const;
  readonly #stats = new RunningStats();

  update(data: Float32Array): void {
    this.#stats.add(scanValues(data));
  }

  result(): TensorRange {
    return this.#stats.range(this.#stats.min, this.#stats.max);
  }
}
