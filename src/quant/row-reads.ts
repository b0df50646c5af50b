/**
 * Which rows of an embedding table the inputs read, counted on a Gather's
 * index tensor during calibration, and the rows read by most of them.
 *
 * A row's int8 rounding error is fixed once the table is written. A row that
 * few inputs read adds noise; a row that nearly every input reads (the
 * [CLS]/[SEP] word rows, segment 0, the first positions) adds the same error
 * to every output, a bias that moves all logits one way. On the ALBERT fixture
 * (one shared layer, so embeddings weigh more than in other encoders) that
 * bias was −0.055 of the fp32 margin on average and flipped 5 of 1,024
 * held-out rows; the same rows stored near-exact left ±0.007.
 */
import { QuantdError } from "../errors.ts";
import { tensorToFloat32 } from "../onnx/tensor.ts";
import { DataType, type TensorProto } from "../onnx/types.ts";
import type { Tensor } from "../runtime/types.ts";
import type { RowReads } from "./plan.ts";

/** A row is hot when at least this share of the calibration inputs reads it. */
export const HOT_ROW_SHARE = 0.5;

/** Most hot rows per table: beyond them a row's residual costs more than its bias is worth. */
export const MAX_HOT_ROWS = 64;

/** A calibration range entry of an index tensor: the ids read, and by how many inputs. */
export interface RowReadRange {
  min: number;
  max: number;
  rowReads: RowReads;
}

/** Counts, per calibration input, the distinct rows one index tensor reads. */
export class RowReadCounter {
  readonly #rows = new Map<number, number>();
  #inputs = 0;
  #type: RowReads["type"] | undefined;

  /**
   * Adds one model run of `rows` inputs. An index tensor whose first dimension
   * is the batch counts per input; any other shape (positions [1, seq], a
   * constant) is read by every input of the run.
   *
   * @throws QUANT_FAILED when the ids are not int64 or int32
   */
  add(ids: Tensor, rows: number): void {
    if (ids.type !== "int64" && ids.type !== "int32") {
      throw new QuantdError("QUANT_FAILED", `embedding row ids must be int64 or int32, got ${ids.type}`);
    }
    this.#type = ids.type;
    const values =
      ids.type === "int64" ? Array.from(ids.data as BigInt64Array, Number) : [...(ids.data as Int32Array)];
    const perInput = ids.dims.length >= 2 && ids.dims[0] === rows && rows > 1;
    const groups = perInput ? rows : 1;
    const width = values.length / groups;
    for (let g = 0; g < groups; g++) {
      const seen = new Set(values.slice(g * width, (g + 1) * width));
      for (const id of seen) this.#rows.set(id, (this.#rows.get(id) ?? 0) + (perInput ? 1 : rows));
    }
    this.#inputs += rows;
  }

  /** Adds a constant index tensor: read by every input. */
  addConstant(ids: TensorProto, rows: number): void {
    const type = ids.dataType === DataType.INT32 ? "int32" : "int64";
    const data = tensorToFloat32(ids);
    const tensor: Tensor =
      type === "int32"
        ? { type, data: Int32Array.from(data), dims: [1] }
        : { type, data: BigInt64Array.from(data, (v) => BigInt(v)), dims: [1] };
    this.add(tensor, rows);
  }

  /** The counts, as a range entry: min/max are the smallest and largest id read. */
  result(): RowReadRange {
    const ids = [...this.#rows.keys()];
    return {
      min: ids.length > 0 ? Math.min(...ids) : 0,
      max: ids.length > 0 ? Math.max(...ids) : 0,
      rowReads: { inputs: this.#inputs, rows: new Map(this.#rows), type: this.#type ?? "int64" },
    };
  }
}

/**
 * The rows of a `tableRows`-row table read by at least {@link HOT_ROW_SHARE}
 * of the inputs counted under any one of its Gathers, most read first, at
 * most {@link MAX_HOT_ROWS}. Ids out of the table (negative, past the end)
 * are never hot.
 */
export function hotRows(reads: readonly RowReads[], tableRows: number): number[] {
  const share = new Map<number, number>();
  for (const r of reads) {
    if (r.inputs === 0) continue;
    for (const [id, n] of r.rows) {
      if (!Number.isInteger(id) || id < 0 || id >= tableRows) continue;
      share.set(id, Math.max(share.get(id) ?? 0, n / r.inputs));
    }
  }
  return [...share]
    .filter(([, s]) => s >= HOT_ROW_SHARE)
    .sort((a, b) => b[1] - a[1] || a[0] - b[0])
    .slice(0, MAX_HOT_ROWS)
    .map(([id]) => id);
}
