/**
 * Embedding rewrite: a Gather reading a float table [rows, dim] reads an int8
 * table instead and dequantizes only the gathered rows, so the file shrinks to
 * about a quarter (the word table is over half of a BERT-Mini) while the run
 * time cost is a few elementwise ops on [batch, seq, dim].
 *
 * - per-tensor: Gather(int8 table) → DequantizeLinear(scalar scale, zero point 0).
 *   ORT keeps it as is: the DequantizeLinear runs on the gathered rows only.
 * - per-row (default): each row has its own scale (rare tokens with large
 *   weights no longer coarsen the common ones): Gather(int8 table) and
 *   Gather(scales [rows, 1]) → Cast to float → Mul. A DequantizeLinear cannot
 *   express this (its axis would index the gathered rows, not table rows), and
 *   DequantizeLinear→Gather would dequantize the whole table on every run
 *   (ORT does not fold a DequantizeLinear of an initializer): measured 28 %
 *   slower on BERT-Mini.
 */
import { assertNever, QuantdError } from "../../errors.ts";
import { makeTensor, tensorToFloat32 } from "../../onnx/tensor.ts";
import { DataType } from "../../onnx/types.ts";
import type { EmbeddingGranularity, EmbeddingTarget } from "../plan.ts";
import { computeWeightQParams, quantizeWeights } from "../qparams.ts";
import { type GraphRewrite, node } from "./rewrite.ts";

/** Options of {@link quantizeEmbeddings}. */
export interface EmbeddingPassOptions {
  granularity: EmbeddingGranularity;
  reduceRange: boolean;
}

/**
 * Rewrites the `embedding` targets. A table read by several Gathers is quantized once.
 *
 * @throws QUANT_FAILED when a table is not a rank-2 float initializer
 */
export function quantizeEmbeddings(
  rw: GraphRewrite,
  targets: readonly EmbeddingTarget[],
  opts: EmbeddingPassOptions,
): number {
  const tables = new Map<string, { quantized: string; scale: string; zeroPoint: string }>();
  let count = 0;
  for (const t of targets) {
    const n = rw.nodeByKey(t.node);
    let table = tables.get(t.table);
    if (table === undefined) {
      const init = rw.initializer(t.table);
      if (init === undefined || init.dims.length !== 2) {
        throw new QuantdError("QUANT_FAILED", `embedding table ${t.table} is not a rank-2 initializer`);
      }
      const values = tensorToFloat32(init);
      const dims = [...init.dims];
      const perRow = opts.granularity === "per-row";
      const qp = computeWeightQParams(values, dims, {
        axis: perRow ? 0 : undefined,
        reduceRange: opts.reduceRange,
      });
      const q = quantizeWeights(values, dims, qp);
      const quantized = rw.addInitializer(
        makeTensor(rw.uniqueName(`${t.table}_quantized`), DataType.INT8, dims, q),
      );
      const scaleDims = perRow ? [dims[0]!, 1] : [];
      const scale = rw.addInitializer(
        makeTensor(rw.uniqueName(`${t.table}_scale`), DataType.FLOAT, scaleDims, qp.scales),
      );
      const zeroPoint = perRow
        ? ""
        : rw.addInitializer(
            makeTensor(rw.uniqueName(`${t.table}_zero_point`), DataType.INT8, [], new Int8Array(1)),
          );
      rw.dropIfUnused(t.table);
      table = { quantized, scale, zeroPoint };
      tables.set(t.table, table);
    }
    const out = n.output[0] ?? "";
    const indices = n.input[1] ?? "";
    const gathered = rw.uniqueName(`${out}_quantized`);
    const gather = {
      ...n,
      input: [table.quantized, indices],
      output: [gathered],
      attribute: [...n.attribute],
    };
    switch (opts.granularity) {
      case "per-tensor":
        rw.replace(n, [
          gather,
          node(
            "DequantizeLinear",
            rw.uniqueName(`${n.name}_DequantizeLinear`),
            [gathered, table.scale, table.zeroPoint],
            [out],
          ),
        ]);
        break;
      case "per-row": {
        const rowScale = rw.uniqueName(`${out}_scale`);
        const asFloat = rw.uniqueName(`${out}_float`);
        rw.replace(n, [
          gather,
          node("Gather", rw.uniqueName(`${n.name}_scale`), [table.scale, indices], [rowScale], { axis: 0 }),
          node("Cast", rw.uniqueName(`${n.name}_Cast`), [gathered], [asFloat], { to: DataType.FLOAT }),
          node("Mul", rw.uniqueName(`${n.name}_Mul`), [asFloat, rowScale], [out]),
        ]);
        break;
      }
      default:
        assertNever(opts.granularity, "embedding granularity");
    }
    count++;
  }
  return count;
}
