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
import type { NodeProto } from "../../onnx/types.ts";
import type { QuantTarget, StaticFormat, WeightMatMulTarget } from "../plan.ts";
import type { QParams } from "../qparams.ts";
import { quantizeBias } from "../qparams.ts";
import { writeQAttention } from "./qattention.ts";
import { type GraphRewrite, insertDequantize, MS_DOMAIN, node } from "./rewrite.ts";
import { dequantizedWeight, type QuantizedWeight, quantizeWeight } from "./weights.ts";

/** Options of {@link insertStaticQdq}. */
export interface StaticQdqOptions {
  perChannel: boolean;
  reduceRange: boolean;
  /** `qdq`: portable QDQ pairs ORT fuses itself; `fused`: onnxruntime's MatMulIntegerToFloat written directly. */
  format: StaticFormat;
}

/** What the pass wrote, for the report and tests. */
export interface StaticQdqStats {
  quantizedNodes: number;
  quantizeLinear: number;
  dequantizeLinear: number;
  /** MatMul/Gemm nodes written as MatMulIntegerToFloat (`fused` format). */
  fused: number;
}

interface QuantizedActivation {
  /** uint8 output of the QuantizeLinear. */
  quantized: string;
  scale: string;
  zeroPoint: string;
  qp: QParams;
  /** Output of the DequantizeLinear (QDQ form), written on first use. */
  dequantized: string | undefined;
  anchor: NodeProto;
}

/** The QuantizeLinear of an activation goes before its first quantized reader: each tensor's position. */
function firstReaders(rw: GraphRewrite, targets: readonly QuantTarget[]): Map<string, number> {
  const first = new Map<string, number>();
  const note = (tensor: string, key: string): void => {
    const pos = rw.position(rw.nodeByKey(key));
    const cur = first.get(tensor);
    if (cur === undefined || pos < cur) first.set(tensor, pos);
  };
  for (const t of targets) {
    if (t.kind === "weight-matmul" || t.kind === "packed-attention") note(t.activation, t.node);
    else if (t.kind === "attention-matmul") for (const i of t.inputs) note(i, t.node);
  }
  return first;
}

/** One static rewrite: the activations and weights written so far, shared by every target reading them. */
class StaticQdqWriter {
  readonly stats: StaticQdqStats = { quantizedNodes: 0, quantizeLinear: 0, dequantizeLinear: 0, fused: 0 };
  readonly #acts = new Map<string, QuantizedActivation>();
  readonly #weights = new Map<string, QuantizedWeight>();
  readonly #firstReader: Map<string, number>;

  constructor(
    readonly rw: GraphRewrite,
    targets: readonly QuantTarget[],
    readonly qparams: ReadonlyMap<string, QParams>,
    readonly opts: StaticQdqOptions,
  ) {
    this.#firstReader = firstReaders(rw, targets);
  }

  /** The QuantizeLinear of `tensor`, written once before its first quantized reader. */
  quantized(tensor: string): QuantizedActivation {
    const hit = this.#acts.get(tensor);
    if (hit !== undefined) return hit;
    const rw = this.rw;
    const qp = this.qparams.get(tensor);
    if (qp === undefined) {
      throw new QuantdError("QUANT_FAILED", `no calibrated range for activation ${tensor}`);
    }
    const anchor = rw.graph.node[this.#firstReader.get(tensor) ?? -1];
    if (anchor === undefined) throw new QuantdError("INTERNAL", `no reader of ${tensor} among the targets`);
    const scale = rw.addInitializer(
      makeTensor(rw.uniqueName(`${tensor}_scale`), DataType.FLOAT, [], new Float32Array([qp.scale])),
    );
    const zpType = qp.type === "uint8" ? DataType.UINT8 : DataType.INT8;
    const zpData = qp.type === "uint8" ? new Uint8Array([qp.zeroPoint]) : new Int8Array([qp.zeroPoint]);
    const zp = rw.addInitializer(makeTensor(rw.uniqueName(`${tensor}_zero_point`), zpType, [], zpData));
    const q = rw.uniqueName(`${tensor}_QuantizeLinear_Output`);
    rw.insertBefore(
      anchor,
      node("QuantizeLinear", rw.uniqueName(`${tensor}_QuantizeLinear`), [tensor, scale, zp], [q]),
    );
    this.stats.quantizeLinear++;
    const out: QuantizedActivation = {
      quantized: q,
      scale,
      zeroPoint: zp,
      qp,
      dequantized: undefined,
      anchor,
    };
    this.#acts.set(tensor, out);
    return out;
  }

  /** DQ(Q(tensor)), the QDQ form's view of an activation (the DequantizeLinear written once). */
  activation(tensor: string): { output: string; qp: QParams } {
    const a = this.quantized(tensor);
    if (a.dequantized === undefined) {
      a.dequantized = insertDequantize(this.rw, a.anchor, tensor, [a.quantized, a.scale, a.zeroPoint]);
      this.stats.dequantizeLinear++;
    }
    return { output: a.dequantized, qp: a.qp };
  }

  /** DQ(int8 weight), written once per weight before its first reader. */
  #weightDequantized(n: NodeProto, t: WeightMatMulTarget, w: QuantizedWeight): string {
    if (w.dequantized === undefined) this.stats.dequantizeLinear++;
    return dequantizedWeight(this.rw, n, t.weight, w);
  }

  /** A weight MatMul/Gemm: fused into MatMulIntegerToFloat, or between QDQ pairs. */
  #weightMatMul(t: WeightMatMulTarget): void {
    const n = this.rw.nodeByKey(t.node);
    this.stats.quantizedNodes++;
    if (this.opts.format === "fused") {
      fuseMatMul(this.rw, n, t, this.quantized(t.activation), this.#weights, this.opts);
      this.stats.fused++;
      return;
    }
    const act = this.activation(t.activation);
    const w = quantizeWeight(this.rw, this.#weights, t.weight, {
      channelAxis: t.channelAxis,
      perChannel: this.opts.perChannel,
      reduceRange: this.opts.reduceRange,
      transpose: false,
    });
    n.input[0] = act.output;
    n.input[1] = this.#weightDequantized(n, t, w);
    if (t.bias !== undefined) {
      n.input[2] = biasDq(this.rw, n, t.bias, act.qp.scale, w);
      this.stats.dequantizeLinear++;
    }
  }

  /** Rewrites one target. */
  rewrite(t: QuantTarget): void {
    switch (t.kind) {
      case "weight-matmul":
        this.#weightMatMul(t);
        break;
      case "attention-matmul": {
        const n = this.rw.nodeByKey(t.node);
        n.input[0] = this.activation(t.inputs[0]).output;
        n.input[1] = this.activation(t.inputs[1]).output;
        this.stats.quantizedNodes++;
        break;
      }
      case "packed-attention":
        writeQAttention(this.rw, t, this.quantized(t.activation), this.#weights, this.opts);
        this.stats.quantizedNodes++;
        break;
      case "weight-only":
      case "embedding":
        break;
      default:
        assertNever(t, "quantization target");
    }
  }
}

/**
 * Rewrites the `weight-matmul`, `attention-matmul` and `packed-attention` targets of a static plan.
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
  const writer = new StaticQdqWriter(rw, targets, qparams, opts);
  for (const t of targets) writer.rewrite(t);
  return writer.stats;
}

/**
 * Int32 bias with scale inputScale·weightScale behind a DequantizeLinear: the
 * form ORT's Gemm selector needs to fuse the Gemm into QGemm.
 */
function biasDq(
  rw: GraphRewrite,
  anchor: NodeProto,
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
  const out = insertDequantize(rw, anchor, bias, [qName, sName, zName], perChannel ? 0 : undefined);
  rw.dropIfUnused(bias);
  return out;
}

/**
 * The bias Add that may be folded into a MatMul's output: the only reader of
 * `tensor`, adding a constant float vector of `channels` elements.
 */
function foldableBiasAdd(
  rw: GraphRewrite,
  tensor: string,
  channels: number,
): { add: NodeProto; bias: string } | undefined {
  const readers = rw.consumers(tensor);
  const add = readers.length === 1 ? readers[0] : undefined;
  if (add === undefined || add.opType !== "Add" || add.domain !== "" || add.input.length !== 2)
    return undefined;
  if (rw.graph.output.some((o) => o.name === tensor)) return undefined;
  const bias = add.input[0] === tensor ? add.input[1]! : add.input[0]!;
  const t = rw.initializer(bias);
  if (t === undefined || t.dataType !== DataType.FLOAT || t.dims.length !== 1 || t.dims[0] !== channels)
    return undefined;
  return { add, bias };
}

/**
 * `fused` format: QuantizeLinear(act) → com.microsoft MatMulIntegerToFloat with
 * the int8 weight, both scales and zero points, and the bias (the Gemm's, or
 * the following Add's, which is removed). This is the node ORT's optimizer
 * would make from the QDQ form, plus the bias, which its QDQ fusion leaves as a
 * separate Add (and which then blocks the Gelu fusion downstream).
 */
function fuseMatMul(
  rw: GraphRewrite,
  n: NodeProto,
  t: WeightMatMulTarget,
  act: QuantizedActivation,
  weights: Map<string, QuantizedWeight>,
  opts: StaticQdqOptions,
): void {
  const w = quantizeWeight(rw, weights, t.weight, {
    channelAxis: t.channelAxis,
    perChannel: opts.perChannel,
    reduceRange: opts.reduceRange,
    // MatMulIntegerToFloat wants B as [K, N]; a Gemm transB=1 weight is [N, K].
    transpose: t.opType === "Gemm" && t.channelAxis === 0,
  });
  const channels = w.dims[1]!;
  let output = n.output[0] ?? "";
  let bias = t.bias;
  if (bias === undefined) {
    const folded = foldableBiasAdd(rw, output, channels);
    if (folded !== undefined) {
      bias = folded.bias;
      output = folded.add.output[0] ?? "";
      rw.replace(folded.add, []);
    }
  }
  // The weight's zero point is 0, MatMulIntegerToFloat's default for an absent one: left out.
  const inputs = [act.quantized, w.quantized, act.scale, w.scale, act.zeroPoint, ""];
  if (bias !== undefined) inputs.push(bias);
  const name = rw.uniqueName(`${n.name !== "" ? n.name : output}_MatMulIntegerToFloat`);
  rw.replace(n, [node("MatMulIntegerToFloat", name, inputs, [output], {}, MS_DOMAIN)]);
}
