/**
 * A plain reference of the integer arithmetic quantd's int8 models run on:
 * uint8 activations × int8 weights with int32 accumulation after subtracting
 * zero points, then either requantization to uint8 (QLinearMatMul) or scaling
 * back to float (MatMulInteger + scale, MatMulIntegerToFloat). It is slow on
 * purpose (one multiply-add at a time, no tricks) so that onnxruntime's kernels
 * can be checked against it on small models.
 *
 * Float steps follow onnxruntime's MLAS output stage: the int32 accumulator is
 * converted to float32, multiplied by a float32 multiplier, rounded half to even
 * (`nearbyint`), offset by the output zero point and saturated. A test oracle,
 * so it lives under test/ and never ships.
 */
import { QuantdError } from "../../src/errors.ts";
import { roundHalfToEven } from "../../src/quant/qparams.ts";

/** Scale and zero point of a per-tensor uint8 tensor. */
export interface U8Params {
  scale: number;
  zeroPoint: number;
}

/** The result of {@link qlinearMatMulReference}. */
export interface QLinearMatMulResult {
  /** int32 accumulators `[M, N]`, zero points subtracted. */
  acc: Int32Array;
  /** Requantized uint8 output `[M, N]`, when output parameters were given. */
  output?: Uint8Array;
}

function fail(message: string, details?: Record<string, unknown>): never {
  throw new QuantdError("QUANT_FAILED", message, details === undefined ? {} : { details });
}

function checkDims(M: number, K: number, N: number): void {
  for (const [name, v] of [
    ["M", M],
    ["K", K],
    ["N", N],
  ] as const) {
    if (!Number.isInteger(v) || v < 0) fail(`${name} must be a non-negative integer, got ${v}`);
  }
}

/** Expands a scalar-or-per-column array to N entries. */
function perColumn<T extends Float32Array | Int8Array>(v: T, N: number, what: string): (n: number) => number {
  if (v.length === 1) {
    const x = v[0]!;
    return () => x;
  }
  if (v.length !== N) fail(`${what} must have 1 or ${N} entries, got ${v.length}`, { length: v.length, N });
  return (n) => v[n]!;
}

/**
 * u8 × s8 → int32: `acc[m,n] = Σ_k (a[m,k] - aZeroPoint) · (b[k,n] - bZeroPoints[n])`
 * with row-major `a` `[M, K]` and `b` `[K, N]`; `bZeroPoints` holds 1 or N entries.
 * int32 wrap-around cannot happen for K < 2^16 (each term is below 2^15).
 *
 * @throws QUANT_FAILED when sizes disagree
 */
export function matMulIntegerReference(
  a: Uint8Array,
  aZeroPoint: number,
  b: Int8Array,
  bZeroPoints: Int8Array,
  M: number,
  K: number,
  N: number,
): Int32Array {
  checkDims(M, K, N);
  if (a.length !== M * K) fail(`a has ${a.length} elements, expected ${M}×${K}`);
  if (b.length !== K * N) fail(`b has ${b.length} elements, expected ${K}×${N}`);
  if (!Number.isInteger(aZeroPoint) || aZeroPoint < 0 || aZeroPoint > 255) {
    fail(`uint8 zero point must be an integer in [0, 255], got ${aZeroPoint}`);
  }
  const bzp = perColumn(bZeroPoints, N, "b zero points");
  const acc = new Int32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      const zb = bzp(n);
      let s = 0;
      for (let k = 0; k < K; k++) s += (a[m * K + k]! - aZeroPoint) * (b[k * N + n]! - zb);
      acc[m * N + n] = s;
    }
  }
  return acc;
}

/**
 * Requantizes int32 accumulators `[M, N]` to uint8:
 * `saturate(nearbyint(float(acc) · multiplier[n]) + outZeroPoint)`, all in float32.
 * `multipliers` (aScale·bScale[n]/outScale) holds 1 or N entries.
 *
 * @throws QUANT_FAILED when sizes disagree or the zero point is not uint8
 */
export function requantize(
  acc: Int32Array,
  multipliers: Float32Array,
  outZeroPoint: number,
  N: number,
): Uint8Array {
  if (!Number.isInteger(N) || N <= 0 || acc.length % N !== 0) {
    fail(`accumulator length ${acc.length} is not a multiple of N = ${N}`);
  }
  if (!Number.isInteger(outZeroPoint) || outZeroPoint < 0 || outZeroPoint > 255) {
    fail(`uint8 zero point must be an integer in [0, 255], got ${outZeroPoint}`);
  }
  const mult = perColumn(multipliers, N, "multipliers");
  const out = new Uint8Array(acc.length);
  for (let i = 0; i < acc.length; i++) {
    const v = roundHalfToEven(Math.fround(Math.fround(acc[i]!) * mult(i % N))) + outZeroPoint;
    out[i] = Math.min(255, Math.max(0, v));
  }
  return out;
}

/**
 * QLinearMatMul with uint8 A (per-tensor), int8 B (per-tensor or per-column
 * scales and zero points): the int32 accumulators and, when `outParams` is
 * given, the requantized uint8 output with multiplier
 * `float32(float32(aScale·bScale[n]) / outScale)`.
 *
 * @throws QUANT_FAILED when sizes disagree or a scale is not positive
 */
export function qlinearMatMulReference(
  a: Uint8Array,
  aParams: U8Params,
  b: Int8Array,
  bScales: Float32Array,
  bZeroPoints: Int8Array,
  M: number,
  K: number,
  N: number,
  outParams?: U8Params,
): QLinearMatMulResult {
  const acc = matMulIntegerReference(a, aParams.zeroPoint, b, bZeroPoints, M, K, N);
  if (outParams === undefined) return { acc };
  if (!(outParams.scale > 0)) fail(`output scale must be positive, got ${outParams.scale}`);
  const scale = perColumn(bScales, N, "b scales");
  const multipliers = new Float32Array(bScales.length);
  for (let n = 0; n < multipliers.length; n++) {
    multipliers[n] = Math.fround(Math.fround(aParams.scale * scale(n)) / outParams.scale);
  }
  return { acc, output: requantize(acc, multipliers, outParams.zeroPoint, N) };
}

/**
 * int32 accumulators `[M, N]` back to float: `float(acc) · float32(aScale·bScale[n])`
 * plus `bias[n]` when given, as MatMulIntegerToFloat computes it.
 *
 * @throws QUANT_FAILED when sizes disagree
 */
export function matMulIntegerToFloatReference(
  acc: Int32Array,
  aScale: number,
  bScales: Float32Array,
  N: number,
  bias?: Float32Array,
): Float32Array {
  if (!Number.isInteger(N) || N <= 0 || acc.length % N !== 0) {
    fail(`accumulator length ${acc.length} is not a multiple of N = ${N}`);
  }
  if (bias !== undefined && bias.length !== N) fail(`bias has ${bias.length} entries, expected ${N}`);
  const scale = perColumn(bScales, N, "b scales");
  const mult = new Float32Array(N);
  for (let n = 0; n < N; n++) mult[n] = Math.fround(aScale * scale(n));
  const out = new Float32Array(acc.length);
  for (let i = 0; i < acc.length; i++) {
    const n = i % N;
    const v = Math.fround(Math.fround(acc[i]!) * mult[n]!);
    out[i] = bias === undefined ? v : v + bias[n]!;
  }
  return out;
}
