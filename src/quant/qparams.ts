/**
 * Quantization parameters: how a real range becomes a scale and a zero point,
 * and how single values and whole tensors are quantized with them.
 *
 * Conventions are those of the qnnpack-style int8 path that onnxruntime runs:
 * uint8 asymmetric activations, int8 symmetric per-channel weights (zero point
 * 0), int32 biases with scale `inputScale * weightScale`. The arithmetic mirrors
 * ONNX `QuantizeLinear` as onnxruntime's MLAS implements it: divide in float32,
 * round half to even, add the zero point, saturate. Scales are rounded to float32
 * because that is how they are stored in the model; computing with a double the
 * model does not hold would make our reference disagree with ORT by one step.
 */
import { QuantdError } from "../errors.ts";

/** Integer element type of a quantized tensor. */
export type QuantType = "uint8" | "int8";

/** Scale and zero point of a per-tensor quantized value. */
export interface QParams {
  /** Step between consecutive integers, in real units; positive and float32-representable. */
  scale: number;
  /** The integer that represents real 0 exactly. */
  zeroPoint: number;
  /** Integer type of the quantized tensor. */
  type: QuantType;
}

/** Inclusive integer range used for a quantized tensor. */
export interface QRange {
  qmin: number;
  qmax: number;
}

/** Per-channel (or per-tensor) weight quantization parameters. */
export interface WeightQParams {
  /** One scale per channel along `axis`, or a single scale when `axis` is undefined. */
  scales: Float32Array;
  /** Zero points, all 0 (symmetric), same length as `scales`. */
  zeroPoints: Int8Array;
  /** Channel axis (non-negative), or undefined for per-tensor. */
  axis: number | undefined;
}

/** Options for {@link quantRange}. */
export interface QuantRangeOptions {
  /** Use 7 bits instead of 8 (for CPUs whose u8×s8 dot products can overflow 16 bits). @defaultValue false */
  reduceRange?: boolean;
  /** Symmetric range (int8: ±127, so the zero point is 0 and -128 is unused). @defaultValue false */
  symmetric?: boolean;
}

/**
 * The integer range onnxruntime's quantizer uses for a type, including its
 * reduce-range (7-bit) and symmetric variants: uint8 → [0,255] (reduced [0,127]);
 * int8 → [-128,127], symmetric [-127,127], reduced [-64,64].
 */
export function quantRange(type: QuantType, opts: QuantRangeOptions = {}): QRange {
  const reduce = opts.reduceRange === true;
  switch (type) {
    case "uint8":
      return reduce ? { qmin: 0, qmax: 127 } : { qmin: 0, qmax: 255 };
    case "int8":
      if (reduce) return { qmin: -64, qmax: 64 };
      return opts.symmetric === true ? { qmin: -127, qmax: 127 } : { qmin: -128, qmax: 127 };
    default:
      return assertQuantType(type);
  }
}

function assertQuantType(type: never): never {
  throw new QuantdError("QUANT_UNSUPPORTED", `unsupported quantized type ${JSON.stringify(type)}`);
}

/** Smallest normal float32; below it a scale is treated as degenerate (as ORT does with `finfo.tiny`). */
const FLOAT32_TINY = 1.1754943508222875e-38;

/**
 * Rounds to the nearest integer, ties to the even one (as `std::nearbyint` in
 * the default rounding mode, which ONNX QuantizeLinear specifies):
 * 0.5 → 0, 1.5 → 2, 2.5 → 2, -0.5 → 0, -1.5 → -2. NaN stays NaN.
 */
export function roundHalfToEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  // exactly halfway: pick the even neighbour (`+ 0` turns -0 into 0)
  return f % 2 === 0 ? f + 0 : f + 1;
}

/**
 * Scale and zero point for a real range, as onnxruntime's `compute_scale_zp`:
 * the range is widened to include 0 (so real 0 is exact), symmetric ranges use
 * ±max|r|, scale = (rmax - rmin) / (qmax - qmin) rounded to float32, zero point =
 * round(qmin - rmin / scale) clamped to [qmin, qmax] (symmetric: the midpoint).
 * A degenerate range (all zeros) gives scale 1 and zero point at real 0.
 */
function scaleAndZeroPoint(
  min: number,
  max: number,
  range: QRange,
  symmetric: boolean,
): { scale: number; zeroPoint: number } {
  let rmin = Math.min(min, 0);
  let rmax = Math.max(max, 0);
  if (symmetric) {
    const absmax = Math.max(-rmin, rmax);
    rmin = -absmax;
    rmax = absmax;
  }
  const { qmin, qmax } = range;
  const scale = Math.fround((rmax - rmin) / (qmax - qmin));
  if (!(scale >= FLOAT32_TINY)) {
    // All-zero range: any positive scale represents it exactly; 1 keeps later products (bias scales) sane.
    return { scale: 1, zeroPoint: Math.min(qmax, Math.max(qmin, 0)) };
  }
  const zp = symmetric ? roundHalfToEven((qmin + qmax) / 2) : roundHalfToEven(qmin - rmin / scale);
  return { scale, zeroPoint: Math.min(qmax, Math.max(qmin, zp)) };
}

/** Options for {@link computeActivationQParams}. */
export interface ActivationQParamsOptions {
  /** 7-bit range. @defaultValue false */
  reduceRange?: boolean;
  /** Integer type. @defaultValue "uint8" */
  type?: QuantType;
  /** Symmetric range around 0 (uint8: zero point 128). @defaultValue false */
  symmetric?: boolean;
}

/**
 * Quantization parameters of an activation whose calibrated range is [min, max].
 * The range is widened to include 0 so that real 0 (padding, ReLU output) is
 * exactly representable; `min == max` is fine (the range then spans [0, max] or
 * [min, 0], or is all zero and gets scale 1).
 *
 * @throws QUANT_FAILED when min or max is not finite, or min > max
 */
export function computeActivationQParams(
  min: number,
  max: number,
  opts: ActivationQParamsOptions = {},
): QParams {
  if (!Number.isFinite(min) || !Number.isFinite(max)) {
    throw new QuantdError("QUANT_FAILED", `cannot quantize a tensor with range [${min}, ${max}]`, {
      details: { min, max },
    });
  }
  if (min > max) {
    throw new QuantdError("QUANT_FAILED", `invalid range: min ${min} > max ${max}`, {
      details: { min, max },
    });
  }
  const type = opts.type ?? "uint8";
  const symmetric = opts.symmetric === true;
  const range = quantRange(type, { reduceRange: opts.reduceRange === true, symmetric });
  const { scale, zeroPoint } = scaleAndZeroPoint(min, max, range, symmetric);
  return { scale, zeroPoint, type };
}

/** Options for {@link computeWeightQParams}. */
export interface WeightQParamsOptions {
  /** Channel axis (negative counts from the end); per-tensor when undefined. @defaultValue undefined */
  axis?: number;
  /** 7-bit range [-64, 64]. @defaultValue false */
  reduceRange?: boolean;
}

/** Splits `dims` around `axis` into outer × channels × inner, validating the element count. */
function layout(
  values: Float32Array,
  dims: readonly number[],
  axis: number | undefined,
): { outer: number; channels: number; inner: number; axis: number | undefined } {
  let total = 1;
  for (const d of dims) {
    if (!Number.isInteger(d) || d < 0) {
      throw new QuantdError("QUANT_FAILED", `invalid tensor dims [${dims.join(", ")}]`, {
        details: { dims },
      });
    }
    total *= d;
  }
  if (total !== values.length) {
    throw new QuantdError(
      "QUANT_FAILED",
      `tensor dims [${dims.join(", ")}] hold ${total} elements but ${values.length} were given`,
      { details: { dims, length: values.length } },
    );
  }
  if (axis === undefined) return { outer: 1, channels: 1, inner: values.length, axis: undefined };
  const a = axis < 0 ? axis + dims.length : axis;
  if (!Number.isInteger(a) || a < 0 || a >= dims.length) {
    throw new QuantdError("QUANT_FAILED", `axis ${axis} out of range for a rank-${dims.length} tensor`, {
      details: { axis, rank: dims.length },
    });
  }
  let outer = 1;
  for (let i = 0; i < a; i++) outer *= dims[i]!;
  let inner = 1;
  for (let i = a + 1; i < dims.length; i++) inner *= dims[i]!;
  return { outer, channels: dims[a]!, inner, axis: a };
}

/**
 * Symmetric int8 weight quantization parameters (zero point 0), one scale per
 * slice along `axis` (per output channel) or one for the whole tensor:
 * scale = max|w| / 127 (reduce range: max|w| / 64), rounded to float32, as
 * onnxruntime's quantizer computes it. A channel of zeros gets scale 1, as in
 * onnxruntime: its weights quantize to 0 whatever the scale, and a tiny scale
 * would make its int32 bias (scale inputScale·weightScale) saturate.
 *
 * @throws QUANT_FAILED when dims do not match the values, axis is out of range, or a weight is NaN/±inf
 */
export function computeWeightQParams(
  values: Float32Array,
  dims: readonly number[],
  opts: WeightQParamsOptions = {},
): WeightQParams {
  const { outer, channels, inner, axis } = layout(values, dims, opts.axis);
  const absmax = new Float64Array(channels);
  for (let o = 0; o < outer; o++) {
    for (let c = 0; c < channels; c++) {
      const base = (o * channels + c) * inner;
      let m = absmax[c]!;
      for (let i = base; i < base + inner; i++) {
        const v = values[i]!;
        const a = v < 0 ? -v : v;
        // `!(a <= m)` is true for a > m and for NaN, so one comparison also catches non-finite weights
        if (!(a <= m)) {
          if (!Number.isFinite(v)) {
            throw new QuantdError("QUANT_FAILED", `weight tensor holds a non-finite value (${v}) at ${i}`, {
              details: { index: i },
            });
          }
          m = a;
        }
      }
      absmax[c] = m;
    }
  }
  const range = quantRange("int8", { reduceRange: opts.reduceRange === true, symmetric: true });
  const scales = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    scales[c] = scaleAndZeroPoint(-absmax[c]!, absmax[c]!, range, true).scale;
  }
  return { scales, zeroPoints: new Int8Array(channels), axis };
}

/**
 * Quantizes weights with parameters from {@link computeWeightQParams}:
 * round(w / scale) half to even (division in float32, as QuantizeLinear) plus
 * the zero point, saturated to [-127, 127] so the range stays symmetric.
 *
 * @throws QUANT_FAILED when dims, axis and the number of scales disagree
 */
export function quantizeWeights(values: Float32Array, dims: readonly number[], q: WeightQParams): Int8Array {
  const { outer, channels, inner } = layout(values, dims, q.axis);
  if (q.scales.length !== channels || q.zeroPoints.length !== channels) {
    throw new QuantdError(
      "QUANT_FAILED",
      `expected ${channels} scales and zero points, got ${q.scales.length} and ${q.zeroPoints.length}`,
      { details: { channels, scales: q.scales.length, zeroPoints: q.zeroPoints.length } },
    );
  }
  const out = new Int8Array(values.length);
  for (let o = 0; o < outer; o++) {
    for (let c = 0; c < channels; c++) {
      const scale = q.scales[c]!;
      const zp = q.zeroPoints[c]!;
      const base = (o * channels + c) * inner;
      for (let i = base; i < base + inner; i++) {
        const v = roundHalfToEven(Math.fround(values[i]! / scale)) + zp;
        out[i] = Math.min(127, Math.max(-127, v));
      }
    }
  }
  return out;
}

const INT32_MAX = 2147483647;
const INT32_MIN = -2147483648;

/**
 * Quantizes a bias to int32 with scale `inputScale * weightScale` (float32
 * product, as stored by the QDQ/QLinear graph) and zero point 0, saturating at
 * the int32 limits. `weightScales` has one entry (per-tensor) or one per bias
 * element (per-channel).
 *
 * @throws QUANT_FAILED when the number of weight scales fits neither form, or a scale is not positive
 */
export function quantizeBias(bias: Float32Array, inputScale: number, weightScales: Float32Array): Int32Array {
  if (weightScales.length !== 1 && weightScales.length !== bias.length) {
    throw new QuantdError(
      "QUANT_FAILED",
      `bias has ${bias.length} elements but ${weightScales.length} weight scales were given`,
      { details: { bias: bias.length, weightScales: weightScales.length } },
    );
  }
  if (!(inputScale > 0) || !Number.isFinite(inputScale)) {
    throw new QuantdError("QUANT_FAILED", `input scale must be positive and finite, got ${inputScale}`);
  }
  const perChannel = weightScales.length !== 1;
  const out = new Int32Array(bias.length);
  for (let i = 0; i < bias.length; i++) {
    const ws = weightScales[perChannel ? i : 0]!;
    const s = Math.fround(inputScale * ws);
    if (!(s > 0)) {
      throw new QuantdError("QUANT_FAILED", `bias scale ${inputScale}×${ws} is not positive`, {
        details: { index: i },
      });
    }
    const b = bias[i]!;
    if (Number.isNaN(b)) {
      throw new QuantdError("QUANT_FAILED", `bias holds NaN at ${i}`, { details: { index: i } });
    }
    // Dividing in double: the int32 grid is finer than float32 above 2^24, so a float32 quotient would drop bits.
    const v = roundHalfToEven(b / s);
    out[i] = Math.min(INT32_MAX, Math.max(INT32_MIN, v));
  }
  return out;
}

/**
 * Quantizes one real value as ONNX QuantizeLinear: round(x / scale) half to
 * even, computed in float32, plus the zero point, saturated to the type's full
 * range (uint8 [0,255], int8 [-128,127]). NaN maps to the zero point (real 0).
 */
export function quantizeValue(x: number, q: QParams): number {
  const qmin = q.type === "uint8" ? 0 : -128;
  const qmax = q.type === "uint8" ? 255 : 127;
  const r = roundHalfToEven(Math.fround(Math.fround(x) / q.scale));
  if (Number.isNaN(r)) return q.zeroPoint;
  const v = r + q.zeroPoint;
  return Math.min(qmax, Math.max(qmin, v));
}

/** Dequantizes one integer as ONNX DequantizeLinear: (q - zeroPoint) × scale, in float32. */
export function dequantizeValue(q: number, qp: QParams): number {
  return Math.fround((q - qp.zeroPoint) * qp.scale);
}
