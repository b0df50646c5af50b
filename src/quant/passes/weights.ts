/**
 * Int8 weight initializers shared by the static, dynamic and weight-only
 * passes: a float matrix (or a stack of them) becomes an int8 initializer plus
 * its scales and (zero) zero points, symmetric, one scale per output channel
 * or one per tensor. A weight read by several nodes is quantized once.
 */
import { QuantdError } from "../../errors.ts";
import { makeTensor, tensorToFloat32 } from "../../onnx/tensor.ts";
import { DataType, type NodeProto } from "../../onnx/types.ts";
import { computeWeightQParams, quantizeWeights } from "../qparams.ts";
import { type GraphRewrite, insertDequantize } from "./rewrite.ts";

/** An int8 weight written into the graph. */
export interface QuantizedWeight {
  /** The int8 initializer. */
  quantized: string;
  /** Float scales: shape [channels] per-channel, scalar per-tensor. */
  scale: string;
  /**
   * Int8 zero points (all 0), same shape as `scale`: written by {@link weightZeroPoint} for the
   * nodes that take one, undefined until then (onnxruntime's MatMulIntegerToFloat takes none).
   */
  zeroPoint: string | undefined;
  /** The scales' values. */
  scales: Float32Array;
  /** The DequantizeLinear axis for per-channel weights, undefined per-tensor. */
  axis: number | undefined;
  /** Dims of the int8 initializer. */
  dims: number[];
  /** Output of its DequantizeLinear, once {@link dequantizedWeight} wrote one. */
  dequantized?: string;
}

/** Options for {@link quantizeWeight}. */
export interface QuantizeWeightOptions {
  /** Axis of the stored matrix that indexes output channels. */
  channelAxis: 0 | 1;
  perChannel: boolean;
  reduceRange: boolean;
  /** Store the matrix transposed (turns a Gemm transB=1 weight [N,K] into the [K,N] MatMulInteger wants). */
  transpose: boolean;
  /**
   * Store a stack of matrices [..., K, N] as one [rows, N] matrix (every row of every matrix), whose
   * channels are then its rows (`channelAxis` 0). @defaultValue false
   */
  rows?: boolean;
}

function transpose2d(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  return out;
}

/**
 * Writes (or reuses) the int8 form of a float weight initializer: a matrix, or
 * (not transposed) a stack of matrices of any rank.
 *
 * @throws QUANT_FAILED when the initializer is missing, below rank 2, or a stack asked to transpose
 */
export function quantizeWeight(
  rw: GraphRewrite,
  cache: Map<string, QuantizedWeight>,
  weight: string,
  opts: QuantizeWeightOptions,
): QuantizedWeight {
  const cacheKey = `${weight}|${opts.transpose ? "T" : "N"}|${opts.rows === true ? "R" : ""}`;
  const hit = cache.get(cacheKey);
  if (hit !== undefined) return hit;
  const t = rw.initializer(weight);
  if (t === undefined || t.dims.length < 2 || (opts.transpose && t.dims.length !== 2)) {
    const want = opts.transpose ? "rank-2" : "rank ≥ 2";
    throw new QuantdError("QUANT_FAILED", `weight ${weight} is not a ${want} initializer`);
  }
  let values = tensorToFloat32(t);
  let dims =
    opts.rows === true ? [t.dims.slice(0, -1).reduce((a, d) => a * d, 1), t.dims.at(-1)!] : [...t.dims];
  let channelAxis: number = opts.channelAxis;
  if (opts.transpose) {
    values = transpose2d(values, dims[0]!, dims[1]!);
    dims = [dims[1]!, dims[0]!];
    channelAxis = 1 - channelAxis;
  }
  const axis = opts.perChannel ? channelAxis : undefined;
  const qp = computeWeightQParams(values, dims, { axis, reduceRange: opts.reduceRange });
  const q = quantizeWeights(values, dims, qp);
  const base = weight.replace(/[^A-Za-z0-9_.:/-]/g, "_");
  const quantized = rw.addInitializer(makeTensor(rw.uniqueName(`${base}_quantized`), DataType.INT8, dims, q));
  const scaleDims = axis === undefined ? [] : [qp.scales.length];
  const scale = rw.addInitializer(
    makeTensor(rw.uniqueName(`${base}_scale`), DataType.FLOAT, scaleDims, qp.scales),
  );
  rw.dropIfUnused(weight);
  const out: QuantizedWeight = { quantized, scale, zeroPoint: undefined, scales: qp.scales, axis, dims };
  cache.set(cacheKey, out);
  return out;
}

/**
 * The zero-point initializer of an int8 weight (all zeros: weights are
 * symmetric), written on first use and shared by every later reader. Nodes
 * whose zero point is optional and 0 by default leave it out instead: a
 * per-channel vector and its name per weight that a file need not carry.
 */
export function weightZeroPoint(rw: GraphRewrite, w: QuantizedWeight): string {
  if (w.zeroPoint !== undefined) return w.zeroPoint;
  const dims = w.axis === undefined ? [] : [w.scales.length];
  const base = w.quantized.replace(/_quantized(_\d+)?$/, "");
  w.zeroPoint = rw.addInitializer(
    makeTensor(rw.uniqueName(`${base}_zero_point`), DataType.INT8, dims, new Int8Array(w.scales.length)),
  );
  return w.zeroPoint;
}

/**
 * DequantizeLinear(int8 weight) → float, written once per weight right before
 * `anchor` (its first reader) and shared by every later reader: the QDQ form's
 * weight input, and the weight-only form's.
 */
export function dequantizedWeight(
  rw: GraphRewrite,
  anchor: NodeProto,
  weight: string,
  w: QuantizedWeight,
): string {
  w.dequantized ??= insertDequantize(
    rw,
    anchor,
    weight,
    [w.quantized, w.scale, weightZeroPoint(rw, w)],
    w.axis,
  );
  return w.dequantized;
}
