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
 * - hot rows (static mode): the rows most calibration inputs read (see
 *   `row-reads.ts`) also store their rounding residual w − q·scale, int8 with
 *   one scale per row (so about int16 precision), added back on the gathered
 *   rows: Equal(ids, hot ids) → one-hot [.., k] → MatMul with the k residual
 *   rows. k × (width + 12) bytes, a few KB for a whole model.
 */
import { assertNever, QuantdError } from "../../errors.ts";
import { makeTensor, tensorToFloat32 } from "../../onnx/tensor.ts";
import { DataType } from "../../onnx/types.ts";
import type { EmbeddingGranularity, EmbeddingTarget, RowReads } from "../plan.ts";
import { computeWeightQParams, quantizeWeights } from "../qparams.ts";
import { hotRows } from "../row-reads.ts";
import type { NodeProto } from "../../onnx/types.ts";
import { type GraphRewrite, node } from "./rewrite.ts";

/** Options of {@link quantizeEmbeddings}. */
export interface EmbeddingPassOptions {
  granularity: EmbeddingGranularity;
  reduceRange: boolean;
  /** Calibration row counts by index tensor (static mode); a table with none read by most inputs has no hot rows. */
  rowReads?: ReadonlyMap<string, RowReads>;
}

/** Hot rows' ids [k] and the DequantizeLinear inputs of their residuals [k, width]. */
interface HotResidual {
  ids: string;
  rows: readonly [string, string];
}

/** A quantized table's initializers. */
interface QuantizedTable {
  quantized: string;
  scale: string;
  zeroPoint: string;
  /** The hot rows' ids and their int8 residuals [k, width] with per-row scales and zero points, when it has any. */
  residual?: HotResidual;
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
  const tables = new Map<string, QuantizedTable>();
  let count = 0;
  let axes: string | undefined;
  // [-1]: the one-hot axis of every table's hot rows, one initializer for all of them
  const lastAxis = (): string =>
    (axes ??= rw.addInitializer(
      makeTensor(rw.uniqueName("embedding_hot_axes"), DataType.INT64, [1], BigInt64Array.of(-1n)),
    ));
  for (const t of targets) {
    const n = rw.nodeByKey(t.node);
    let table = tables.get(t.table);
    if (table === undefined) {
      const reads = targets
        .filter((o) => o.table === t.table)
        .flatMap((o) => opts.rowReads?.get(o.indices) ?? []);
      table = quantizeTable(rw, t.table, reads, opts);
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
    const dequantized = table.residual === undefined ? out : rw.uniqueName(`${out}_dequantized`);
    rw.replace(n, [
      gather,
      ...dequantizeRows(rw, n.name, table, opts.granularity, { gathered, indices, out: dequantized }),
      ...(table.residual === undefined
        ? []
        : addResidual(rw, table.residual, lastAxis(), indices, dequantized, out)),
    ]);
    count++;
  }
  return count;
}

/** Writes a table's int8 form (and its hot rows' residuals); drops the float table when nothing else reads it. */
function quantizeTable(
  rw: GraphRewrite,
  name: string,
  reads: readonly RowReads[],
  opts: EmbeddingPassOptions,
): QuantizedTable {
  const init = rw.initializer(name);
  if (init === undefined || init.dims.length !== 2) {
    throw new QuantdError("QUANT_FAILED", `embedding table ${name} is not a rank-2 initializer`);
  }
  const values = tensorToFloat32(init);
  const dims = [...init.dims];
  const perRow = opts.granularity === "per-row";
  const qp = computeWeightQParams(values, dims, {
    axis: perRow ? 0 : undefined,
    reduceRange: opts.reduceRange,
  });
  const q = quantizeWeights(values, dims, qp);
  const quantized = rw.addInitializer(makeTensor(rw.uniqueName(`${name}_quantized`), DataType.INT8, dims, q));
  const scale = rw.addInitializer(
    makeTensor(rw.uniqueName(`${name}_scale`), DataType.FLOAT, perRow ? [dims[0]!, 1] : [], qp.scales),
  );
  const zeroPoint = perRow
    ? ""
    : rw.addInitializer(makeTensor(rw.uniqueName(`${name}_zero_point`), DataType.INT8, [], new Int8Array(1)));
  const hot = hotRows(reads, dims[0]!);
  const residual =
    hot.length === 0
      ? undefined
      : residualRows(
          rw,
          name,
          { values, width: dims[1]!, q, scales: qp.scales },
          hot,
          reads[0]!.type,
          opts.reduceRange,
        );
  rw.dropIfUnused(name);
  return residual === undefined ? { quantized, scale, zeroPoint } : { quantized, scale, zeroPoint, residual };
}

/** A table and its int8 form: row r's element i is about q[r·width + i] × scale of r (or the one scale). */
interface TableRounding {
  values: Float32Array;
  width: number;
  q: Int8Array;
  scales: Float32Array;
}

/**
 * The hot rows' rounding residuals w − q·scale, themselves int8 with one scale
 * per row behind a DequantizeLinear (a [k, width] tensor: dequantized once per run).
 */
function residualRows(
  rw: GraphRewrite,
  name: string,
  table: TableRounding,
  hot: readonly number[],
  idType: RowReads["type"],
  reduceRange: boolean,
): HotResidual {
  const { values, width, q, scales } = table;
  const k = hot.length;
  const residual = new Float32Array(k * width);
  hot.forEach((row, j) => {
    const s = scales.length === 1 ? scales[0]! : scales[row]!;
    for (let i = 0; i < width; i++)
      residual[j * width + i] = values[row * width + i]! - q[row * width + i]! * s;
  });
  const qp = computeWeightQParams(residual, [k, width], { axis: 0, reduceRange });
  const rq = quantizeWeights(residual, [k, width], qp);
  const rScales = qp.scales;
  const ids =
    idType === "int32"
      ? makeTensor(rw.uniqueName(`${name}_hot_ids`), DataType.INT32, [k], Int32Array.from(hot))
      : makeTensor(rw.uniqueName(`${name}_hot_ids`), DataType.INT64, [k], BigInt64Array.from(hot, BigInt));
  return {
    ids: rw.addInitializer(ids),
    rows: [
      rw.addInitializer(makeTensor(rw.uniqueName(`${name}_hot_rows`), DataType.INT8, [k, width], rq)),
      rw.addInitializer(makeTensor(rw.uniqueName(`${name}_hot_scales`), DataType.FLOAT, [k], rScales)),
    ],
  };
}

/** Gathered int8 rows → float, by the table's granularity. */
function dequantizeRows(
  rw: GraphRewrite,
  base: string,
  table: QuantizedTable,
  granularity: EmbeddingGranularity,
  t: { gathered: string; indices: string; out: string },
): NodeProto[] {
  switch (granularity) {
    case "per-tensor":
      return [
        node(
          "DequantizeLinear",
          rw.uniqueName(`${base}_DequantizeLinear`),
          [t.gathered, table.scale, table.zeroPoint],
          [t.out],
        ),
      ];
    case "per-row": {
      const rowScale = rw.uniqueName(`${t.out}_scale`);
      const asFloat = rw.uniqueName(`${t.out}_float`);
      return [
        node("Gather", rw.uniqueName(`${base}_scale`), [table.scale, t.indices], [rowScale], { axis: 0 }),
        node("Cast", rw.uniqueName(`${base}_Cast`), [t.gathered], [asFloat], { to: DataType.FLOAT }),
        node("Mul", rw.uniqueName(`${base}_Mul`), [asFloat, rowScale], [t.out]),
      ];
    }
    default:
      return assertNever(granularity, "embedding granularity");
  }
}

/**
 * out = dequantized + one-hot(ids ∈ hot ids) · residuals: the hot rows get
 * their residual back, every other row adds zeros. Names are short (`hot/Equal`,
 * `hot_1/ids`, …): with the long names of an export, these six nodes and their
 * tensors cost about as many bytes as the residuals themselves (measured on
 * ALBERT: 3.2 KB of names against 1.9 KB of rows).
 */
function addResidual(
  rw: GraphRewrite,
  residual: HotResidual,
  axes: string,
  indices: string,
  dequantized: string,
  out: string,
): NodeProto[] {
  const prefix = rw.uniqueName("hot");
  const name = (what: string): string => rw.uniqueName(`${prefix}/${what}`);
  const [column, hit, oneHot, rows, correction] = ["ids", "hit", "one_hot", "rows", "sum"].map(name) as [
    string,
    string,
    string,
    string,
    string,
  ];
  return [
    node("Unsqueeze", name("Unsqueeze"), [indices, axes], [column]),
    node("Equal", name("Equal"), [column, residual.ids], [hit]),
    node("Cast", name("Cast"), [hit], [oneHot], { to: DataType.FLOAT }),
    node("DequantizeLinear", name("DequantizeLinear"), [...residual.rows], [rows], { axis: 0 }),
    node("MatMul", name("MatMul"), [oneHot, rows], [correction]),
    node("Add", name("Add"), [dequantized, correction], [out]),
  ];
}
