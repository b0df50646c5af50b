/**
 * `Attention` → `QAttention`: onnxruntime's fused attention (one packed Q/K/V
 * projection, then the attention itself) rewritten to its int8 kernel, which
 * runs the projection as an int8 GEMM (uint8 input, int8 weight with one scale
 * per output column, int32 accumulation, float bias) and the attention in
 * fp32, as the float kernel does. The input's quantization comes from the
 * caller: a calibrated QuantizeLinear (static) or a DynamicQuantizeLinear
 * (dynamic), the same tensors a MatMul reading that activation would use.
 */
import type { NodeProto } from "../../onnx/types.ts";
import type { PackedAttentionTarget } from "../plan.ts";
import { type GraphRewrite, MS_DOMAIN } from "./rewrite.ts";
import { type QuantizedWeight, quantizeWeight, weightZeroPoint } from "./weights.ts";

/** A quantized activation: its uint8 tensor, scale and zero point. */
export interface QuantizedInput {
  quantized: string;
  scale: string;
  zeroPoint: string;
}

/** Options of {@link writeQAttention}. */
export interface QAttentionOptions {
  perChannel: boolean;
  reduceRange: boolean;
}

/**
 * Replaces the `Attention` node of `t` by a `QAttention` reading `input`,
 * keeping the mask, the outputs and the attributes the plan checked.
 */
export function writeQAttention(
  rw: GraphRewrite,
  t: PackedAttentionTarget,
  input: QuantizedInput,
  weights: Map<string, QuantizedWeight>,
  opts: QAttentionOptions,
): void {
  const n = rw.nodeByKey(t.node);
  // Columns of the packed [in, 3·hidden] weight are the Q, K and V output channels.
  const w = quantizeWeight(rw, weights, t.weight, {
    channelAxis: 1,
    perChannel: opts.perChannel,
    reduceRange: opts.reduceRange,
    transpose: false,
  });
  const mask = n.input[3] ?? "";
  const q: NodeProto = {
    name: rw.uniqueName(`${n.name !== "" ? n.name : t.node}_QAttention`),
    opType: "QAttention",
    domain: MS_DOMAIN,
    input: [
      input.quantized,
      w.quantized,
      t.bias,
      input.scale,
      w.scale,
      mask,
      input.zeroPoint,
      weightZeroPoint(rw, w),
    ],
    output: [...n.output],
    attribute: [...n.attribute],
  };
  rw.replace(n, [q]);
}
