/**
 * Weight-only rewrite, the same in both modes: the constant stack of matrices
 * [..., K, N] a {@link WeightOnlyTarget} MatMul reads becomes int8 behind a
 * DequantizeLinear, and the MatMul computes in fp32 on what it dequantizes.
 * The file holds a quarter of the bytes; onnxruntime does not constant-fold a
 * DequantizeLinear of an initializer (see `embedding.ts`), so the session
 * holds the int8 stack too and dequantizes it on each run, next to its reader.
 *
 * Per-channel, each row of each matrix has its own scale: the stack is stored
 * as one int8 [rows, N] matrix, dequantized along axis 0, and a Reshape (a
 * view, no copy) gives the MatMul its [..., K, N]. That is the finest
 * granularity a DequantizeLinear of opset 13 (one axis) can give at full
 * speed: onnxruntime's CPU kernel dequantizes along the last axis (one scale
 * per column, as a weight matrix has) element by element, about five times
 * slower. Without per-channel, the stack has one scale.
 */
import { makeTensor } from "../../onnx/tensor.ts";
import { DataType, type NodeProto } from "../../onnx/types.ts";
import type { WeightOnlyTarget } from "../plan.ts";
import { type GraphRewrite, node } from "./rewrite.ts";
import { dequantizedWeight, type QuantizedWeight, quantizeWeight } from "./weights.ts";

/** Options of {@link insertWeightOnly}. */
export interface WeightOnlyOptions {
  /** One scale per row of each matrix (else one for the stack). */
  perChannel: boolean;
}

/**
 * Rewrites the `weight-only` targets; a stack read by several MatMuls is
 * quantized, dequantized and reshaped once.
 *
 * @throws QUANT_FAILED when a planned node is missing or its stack is not a float initializer
 */
export function insertWeightOnly(
  rw: GraphRewrite,
  targets: readonly WeightOnlyTarget[],
  opts: WeightOnlyOptions,
): void {
  const weights = new Map<string, QuantizedWeight>();
  const stacks = new Map<string, string>();
  for (const t of targets) {
    const n = rw.nodeByKey(t.node);
    let stack = stacks.get(t.weight);
    if (stack === undefined) {
      const w = quantizeWeight(rw, weights, t.weight, {
        channelAxis: 0,
        perChannel: opts.perChannel,
        // 7-bit ranges guard u8×s8 products against int16 overflow; a weight-only stack is dequantized
        // to fp32 before its MatMul, so it keeps all 8 bits whatever --reduce-range asks of the rest.
        reduceRange: false,
        transpose: false,
        rows: opts.perChannel,
      });
      stack = dequantizedWeight(rw, n, t.weight, w);
      if (opts.perChannel) stack = reshaped(rw, n, stack, t);
      stacks.set(t.weight, stack);
    }
    n.input[1] = stack;
  }
}

/** Reshape(`rows`) → the stack's own dims, written right before `anchor`. */
function reshaped(rw: GraphRewrite, anchor: NodeProto, rows: string, t: WeightOnlyTarget): string {
  const shape = rw.addInitializer(
    makeTensor(
      rw.uniqueName(`${t.weight}_shape`),
      DataType.INT64,
      [t.dims.length],
      BigInt64Array.from(t.dims, BigInt),
    ),
  );
  const out = rw.uniqueName(`${t.weight}_Reshape_Output`);
  rw.insertBefore(anchor, node("Reshape", rw.uniqueName(`${t.weight}_Reshape`), [rows, shape], [out]));
  return out;
}
