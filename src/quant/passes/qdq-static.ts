/**
 * Static QDQ rewrite: QuantizeLinear→DequantizeLinear (uint8, asymmetric,
 * calibrated scale and zero point) on each quantized activation, and int8
 * symmetric weights stored as initializers behind a DequantizeLinear (per
 * output channel by default). The float MatMul/Gemm stays in between; ORT's
 * QDQ selector turns DQ(act)+DQ(weight)→MatMul into `MatMulIntegerToFloat`
 * (int8 GEMM, float output), and DQ(act)+DQ(weight)+DQ(int32 bias)→Gemm into
 * `QGemm` with float output.
 *
 * No QuantizeLinear is written on MatMul outputs: with one ORT would pick
 * QLinearMatMul instead, whose uint8 output must be dequantized again before
 * the bias Add, LayerNormalization and GELU (all fp32), which measured slower
 * (3.0 vs 2.7 ms on BERT-Mini) and loses accuracy. An activation read by
 * several MatMuls (Q, K and V projections) gets one QuantizeLinear, shared.
 */
import { assertNever, QuantdError } from "../../errors.ts";
import { makeTensor, tensorToFloat32 } from "../../onnx/tensor.ts";
import { DataType } from "../../onnx/types.ts";
import type { QuantTarget } from "../plan.ts";
import type { QParams } from "../qparams.ts";
import { quantizeBias } from "../qparams.ts";
import { type GraphRewrite, node } from "./rewrite.ts";
import { type QuantizedWeight, quantizeWeight } from "./weights.ts";

/** Options of {@link insertStaticQdq}. */
export interface StaticQdqOptions {
  perChannel: boolean;
  reduceRange: boolean;
}

/** What the pass wrote, for the report and tests. */
export interface StaticQdqStats {
  quantizedNodes: number;
  quantizeLinear: number;
  dequantizeLinear: number;
}

interface ActivationQdq {
  output: string;
  qp: QParams;
}

/**
 * Rewrites the `weight-matmul` and `attention-matmul` targets of a static plan.
 * `qparams` holds the calibrated parameters of every activation they read.
 *
 * @throws QUANT_FAILED when an activation has no parameters or a planned node is missing
 */
export function insertStaticQdq(
  rw: GraphRewrite,
  targets: readonly QuantTarget[],
  qparams: ReadonlyMap<string, QParams>,
  opts: StaticQdqOptions,
): StaticQdqStats {
  const stats: StaticQdqStats = { quantizedNodes: 0, quantizeLinear: 0, dequantizeLinear: 0 };
  // The QuantizeLinear of an activation goes before its first quantized reader.
  const firstReader = new Map<string, number>();
  const noteReader = (tensor: string, key: string): void => {
    const pos = rw.position(rw.nodeByKey(key));
    const cur = firstReader.get(tensor);
    if (cur === undefined || pos < cur) firstReader.set(tensor, pos);
  };
  for (const t of targets) {
    if (t.kind === "weight-matmul") noteReader(t.activation, t.node);
    else if (t.kind === "attention-matmul") for (const i of t.inputs) noteReader(i, t.node);
  }
  const acts = new Map<string, ActivationQdq>();
  const activation = (tensor: string): ActivationQdq => {
    const hit = acts.get(tensor);
    if (hit !== undefined) return hit;
    const qp = qparams.get(tensor);
    if (qp === undefined)
      throw new QuantdError("QUANT_FAILED", `no calibrated range for activation ${tensor}`);
    const anchor = rw.graph.node[firstReader.get(tensor) ?? -1];
    if (anchor === undefined) throw new QuantdError("INTERNAL", `no reader of ${tensor} among the targets`);
    const scale = rw.addInitializer(
      makeTensor(rw.uniqueName(`${tensor}_scale`), DataType.FLOAT, [], new Float32Array([qp.scale])),
    );
    const zpType = qp.type === "uint8" ? DataType.UINT8 : DataType.INT8;
    const zpData = qp.type === "uint8" ? new Uint8Array([qp.zeroPoint]) : new Int8Array([qp.zeroPoint]);
    const zp = rw.addInitializer(makeTensor(rw.uniqueName(`${tensor}_zero_point`), zpType, [], zpData));
    const q = rw.uniqueName(`${tensor}_QuantizeLinear_Output`);
    const dq = rw.uniqueName(`${tensor}_DequantizeLinear_Output`);
    rw.insertBefore(
      anchor,
      node("QuantizeLinear", rw.uniqueName(`${tensor}_QuantizeLinear`), [tensor, scale, zp], [q]),
      node("DequantizeLinear", rw.uniqueName(`${tensor}_DequantizeLinear`), [q, scale, zp], [dq]),
    );
    stats.quantizeLinear++;
    stats.dequantizeLinear++;
    const out = { output: dq, qp };
    acts.set(tensor, out);
    return out;
  };
  const weights = new Map<string, QuantizedWeight>();
  const weightDq = new Map<string, string>();
  for (const t of targets) {
    switch (t.kind) {
      case "weight-matmul": {
        const n = rw.nodeByKey(t.node);
        const act = activation(t.activation);
        const w = quantizeWeight(rw, weights, t.weight, {
          channelAxis: t.channelAxis,
          perChannel: opts.perChannel,
          reduceRange: opts.reduceRange,
          transpose: false,
        });
        let wOut = weightDq.get(w.quantized);
        if (wOut === undefined) {
          wOut = rw.uniqueName(`${t.weight}_DequantizeLinear_Output`);
          rw.insertBefore(
            n,
            node(
              "DequantizeLinear",
              rw.uniqueName(`${t.weight}_DequantizeLinear`),
              [w.quantized, w.scale, w.zeroPoint],
              [wOut],
              w.axis === undefined ? {} : { axis: w.axis },
            ),
          );
          stats.dequantizeLinear++;
          weightDq.set(w.quantized, wOut);
        }
        n.input[0] = act.output;
        n.input[1] = wOut;
        if (t.bias !== undefined) {
          n.input[2] = biasDq(rw, n, t.bias, act.qp.scale, w);
          stats.dequantizeLinear++;
        }
        stats.quantizedNodes++;
        break;
      }
      case "attention-matmul": {
        const n = rw.nodeByKey(t.node);
        n.input[0] = activation(t.inputs[0]).output;
        n.input[1] = activation(t.inputs[1]).output;
        stats.quantizedNodes++;
        break;
      }
      case "embedding":
        break;
      default:
        assertNever(t, "quantization target");
    }
  }
  return stats;
}

/**
 * Int32 bias with scale inputScale·weightScale behind a DequantizeLinear: the
 * form ORT's Gemm selector needs to fuse the Gemm into QGemm.
 */
function biasDq(
  rw: GraphRewrite,
  anchor: Parameters<GraphRewrite["insertBefore"]>[0],
  bias: string,
  inputScale: number,
  w: QuantizedWeight,
): string {
  const t = rw.initializer(bias);
  if (t === undefined) throw new QuantdError("QUANT_FAILED", `bias ${bias} is not an initializer`);
  const values = tensorToFloat32(t);
  const perChannel = w.scales.length !== 1;
  const q = quantizeBias(values, inputScale, w.scales);
  const scales = perChannel
    ? Float32Array.from(w.scales, (s) => Math.fround(inputScale * s))
    : new Float32Array([Math.fround(inputScale * w.scales[0]!)]);
  const dims = perChannel ? [scales.length] : [];
  const qName = rw.addInitializer(makeTensor(rw.uniqueName(`${bias}_quantized`), DataType.INT32, t.dims, q));
  const sName = rw.addInitializer(
    makeTensor(rw.uniqueName(`${bias}_quantized_scale`), DataType.FLOAT, dims, scales),
  );
  const zName = rw.addInitializer(
    makeTensor(
      rw.uniqueName(`${bias}_quantized_zero_point`),
      DataType.INT32,
      dims,
      new Int32Array(scales.length),
    ),
  );
  const out = rw.uniqueName(`${bias}_DequantizeLinear_Output`);
  rw.insertBefore(
    anchor,
    node(
      "DequantizeLinear",
      rw.uniqueName(`${bias}_DequantizeLinear`),
      [qName, sName, zName],
      [out],
      perChannel ? { axis: 0 } : {},
    ),
  );
  rw.dropIfUnused(bias);
  return out;
}
