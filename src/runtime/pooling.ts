/**
 * Sentence vectors from token vectors, as sentence-transformers' Pooling and
 * Normalize modules compute them: padding never counts (the attention mask
 * decides which positions are real), and normalization divides by the L2 norm
 * clamped at 1e-12, as torch's `F.normalize` does.
 */
import type { PoolingMode } from "./task.ts";

/** Pools row `row` of `[batch, seq, hidden]` token vectors over its real positions. */
export function poolRow(
  hidden: Float32Array,
  row: number,
  seqLen: number,
  width: number,
  mask: ArrayLike<bigint | number>,
  mode: PoolingMode,
): Float32Array {
  const out = new Float64Array(width);
  const base = row * seqLen;
  if (mode === "cls") return Float32Array.from(hidden.subarray(base * width, base * width + width));
  let count = 0;
  if (mode === "max") out.fill(Number.NEGATIVE_INFINITY);
  for (let j = 0; j < seqLen; j++) {
    if (Number(mask[base + j]) === 0) continue;
    count++;
    const at = (base + j) * width;
    for (let i = 0; i < width; i++) {
      const v = hidden[at + i]!;
      if (mode === "max") out[i] = Math.max(out[i]!, v);
      else out[i]! += v;
    }
  }
  if (mode === "max") return Float32Array.from(out, (v) => (count === 0 ? 0 : v));
  // sentence-transformers clamps the token count at 1e-9 so an all-padding row gives zeros, not NaN.
  const divisor = mode === "mean" ? Math.max(count, 1e-9) : Math.sqrt(Math.max(count, 1e-9));
  return Float32Array.from(out, (v) => v / divisor);
}

/** `v / max(‖v‖₂, 1e-12)`, in place; returns `v`. */
export function l2Normalize(v: Float32Array): Float32Array {
  let sum = 0;
  for (const x of v) sum += x * x;
  const norm = Math.max(Math.sqrt(sum), 1e-12);
  for (let i = 0; i < v.length; i++) v[i] = v[i]! / norm;
  return v;
}

/** Cosine similarity of two vectors (0 when either is zero). */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na === 0 || nb === 0 ? 0 : dot / Math.sqrt(na * nb);
}

/** Logistic sigmoid, stable for large |x|. */
export function sigmoid(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}
