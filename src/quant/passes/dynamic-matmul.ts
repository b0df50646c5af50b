/**
 * Dynamic rewrite: each quantized MatMul/Gemm becomes
 * DynamicQuantizeLinear(act) → MatMulInteger(u8 act, s8 weight) → Cast →
 * Mul(by act scale × weight scales) [→ Add(bias)]. No calibration: the
 * activation's range is measured on every run. ORT's MatMulIntegerToFloat
 * fusion turns the chain into `DynamicQuantizeMatMul` (or, when one
 * DynamicQuantizeLinear feeds several MatMuls, `MatMulIntegerToFloat`), bias
 * included, provided the bias is the Add's second input, which this pass
 * arranges. Gemm weights stored transposed (transB=1) are transposed once here.
 */
import { QuantdError } from "../../errors.ts";
import { DataType } from "../../onnx/types.ts";
import type { NodeProto } from "../../onnx/types.ts";
import type { PackedAttentionTarget, WeightMatMulTarget } from "../plan.ts";
import { writeQAttention } from "./qattention.ts";
import { type GraphRewrite, node } from "./rewrite.ts";
import { type QuantizedWeight, quantizeWeight, weightZeroPoint } from "./weights.ts";

/** Options of {@link insertDynamicMatMul}. */
export interface DynamicMatMulOptions {
  perChannel: boolean;
  reduceRange: boolean;
}

interface DynamicActivation {
  quantized: string;
  scale: string;
  zeroPoint: string;
}

/** Puts a constant bias second in the Add that reads `tensor`, when that Add is its only reader. */
function biasSecond(rw: GraphRewrite, tensor: string): void {
  const readers = rw.consumers(tensor);
  const add: NodeProto | undefined = readers.length === 1 ? readers[0] : undefined;
  if (add === undefined || add.opType !== "Add" || add.input.length !== 2) return;
  const other = add.input[0] === tensor ? add.input[1]! : add.input[0]!;
  const t = rw.initializer(other);
  if (t === undefined || t.dims.length !== 1) return;
  add.input[0] = tensor;
  add.input[1] = other;
}

/**
 * Rewrites the `weight-matmul` and `packed-attention` targets of a dynamic plan
 * (the latter to QAttention fed by a DynamicQuantizeLinear); returns how many.
 *
 * @throws QUANT_FAILED when a planned node is missing or a weight is not a float matrix
 */
export function insertDynamicMatMul(
  rw: GraphRewrite,
  targets: readonly (WeightMatMulTarget | PackedAttentionTarget)[],
  opts: DynamicMatMulOptions,
): number {
  const firstReader = new Map<string, number>();
  for (const t of targets) {
    const pos = rw.position(rw.nodeByKey(t.node));
    const cur = firstReader.get(t.activation);
    if (cur === undefined || pos < cur) firstReader.set(t.activation, pos);
  }
  const acts = new Map<string, DynamicActivation>();
  const activation = (tensor: string): DynamicActivation => {
    const hit = acts.get(tensor);
    if (hit !== undefined) return hit;
    const anchor = rw.graph.node[firstReader.get(tensor) ?? -1];
    if (anchor === undefined) throw new QuantdError("INTERNAL", `no reader of ${tensor} among the targets`);
    const out = {
      quantized: rw.uniqueName(`${tensor}_quantized`),
      scale: rw.uniqueName(`${tensor}_scale`),
      zeroPoint: rw.uniqueName(`${tensor}_zero_point`),
    };
    rw.insertBefore(
      anchor,
      node(
        "DynamicQuantizeLinear",
        rw.uniqueName(`${tensor}_DynamicQuantizeLinear`),
        [tensor],
        [out.quantized, out.scale, out.zeroPoint],
      ),
    );
    acts.set(tensor, out);
    return out;
  };
  const weights = new Map<string, QuantizedWeight>();
  for (const t of targets) {
    const act = activation(t.activation);
    if (t.kind === "packed-attention") {
      writeQAttention(rw, t, act, weights, opts);
      continue;
    }
    const n = rw.nodeByKey(t.node);
    // MatMulInteger wants B as [K, N]; a Gemm transB=1 weight is [N, K].
    const transpose = t.opType === "Gemm" && t.channelAxis === 0;
    const w = quantizeWeight(rw, weights, t.weight, {
      channelAxis: t.channelAxis,
      perChannel: opts.perChannel,
      reduceRange: opts.reduceRange,
      transpose,
    });
    const out = n.output[0] ?? "";
    const base = n.name !== "" ? n.name : out;
    const i32 = rw.uniqueName(`${out}_int32`);
    const f32 = rw.uniqueName(`${out}_float`);
    const scales = rw.uniqueName(`${out}_scales`);
    const scaled = t.bias === undefined ? out : rw.uniqueName(`${out}_nobias`);
    const nodes = [
      node(
        "MatMulInteger",
        rw.uniqueName(`${base}_MatMulInteger`),
        [act.quantized, w.quantized, act.zeroPoint, weightZeroPoint(rw, w)],
        [i32],
      ),
      node("Cast", rw.uniqueName(`${base}_Cast`), [i32], [f32], { to: DataType.FLOAT }),
      node("Mul", rw.uniqueName(`${base}_scales_Mul`), [act.scale, w.scale], [scales]),
      node("Mul", rw.uniqueName(`${base}_output_Mul`), [f32, scales], [scaled]),
    ];
    if (t.bias !== undefined)
      nodes.push(node("Add", rw.uniqueName(`${base}_bias_Add`), [scaled, t.bias], [out]));
    else biasSecond(rw, out);
    rw.replace(n, nodes);
  }
  return targets.length;
}
