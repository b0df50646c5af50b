/**
 * Which nodes of an fp32 model get quantized, and why the others do not.
 *
 * The plan is computed from the graph alone (no inference): MatMul/Gemm nodes
 * with a constant weight matrix, MatMuls with a constant stack of matrices
 * (weight-only: int8 on disk, fp32 compute), optionally the
 * activation×activation MatMuls of attention (Q·Kᵀ and probabilities·V), and
 * Gather nodes reading an embedding table. Everything a user might expect to
 * be quantized but is not is recorded in {@link QuantPlan.skipped} with a
 * reason, so the report can say why.
 * LayerNormalization, Softmax, GELU and the mask arithmetic are never
 * quantized: they are cheap in fp32 and int8 versions of them cost accuracy.
 *
 * After calibration, {@link applyRanges} drops targets whose observed range is
 * unusable (a mask sentinel such as -3.4e38, ±inf, NaN), and
 * {@link excludeNodes} rebuilds a plan with more nodes kept in fp32 (what the
 * accuracy gate's fallback uses) without re-reading the graph.
 */
import { assertNever, QuantdError } from "../errors.ts";
import type { GraphProto, ModelProto, NodeProto, TensorProto } from "../onnx/types.ts";
import { inferTypes } from "../onnx/infer.ts";

import type { CalibrationMethod } from "./methods.ts";
import type { TensorRange as ObservedRange } from "./observers/observer.ts";

/** How an embedding table is scaled. */
export type EmbeddingGranularity = "per-row" | "per-tensor";

/** Options shared by both modes. */
interface CommonQuantizeOptions {
  /** Int8 weights with one scale per output channel (else one per tensor). @defaultValue true */
  perChannel: boolean;
  /** 7-bit ranges, for x86 CPUs without VNNI whose u8×s8 pairs can overflow int16. @defaultValue false */
  reduceRange: boolean;
  /** Quantize Gather embedding tables to int8 (the bulk of a BERT's file). @defaultValue true */
  quantizeEmbeddings: boolean;
  /** Scale granularity of embedding tables. @defaultValue "per-row" */
  embeddingGranularity: EmbeddingGranularity;
  /** Node names to keep in fp32 (user `--exclude`, or the gate's fallback). @defaultValue [] */
  exclude: readonly string[];
  /**
   * Replace run-time-computed Reshape shapes by constants where onnxruntime
   * confirms the outputs do not change (see `passes/constant-reshape.ts`). @defaultValue true
   */
  simplifyShapes: boolean;
}

/**
 * How static int8 MatMuls are written: `qdq` is standard ONNX (QuantizeLinear →
 * DequantizeLinear pairs any runtime understands; onnxruntime fuses them into
 * MatMulIntegerToFloat but leaves each bias as a separate Add); `fused` writes
 * onnxruntime's MatMulIntegerToFloat directly with the bias folded in: the
 * same arithmetic (logits equal to 1e-4), 40 nodes fewer on BERT-Mini and
 * ~7 % faster, but onnxruntime-only. quantd runs on onnxruntime, so `fused` is
 * the default; `qdq` is there for other runtimes, and `quantd quantize --mode
 * auto` measures both.
 */
export type StaticFormat = "qdq" | "fused";

/** Activation quantization type of static int8. */
export type ActivationType = "uint8" | "int8";

/** Static quantization: activation ranges come from calibration; QDQ pairs are written into the graph. */
export interface StaticQuantizeOptions extends CommonQuantizeOptions {
  type: "static";
  /** @defaultValue "fused" */
  format: StaticFormat;
  /** Range estimator. @defaultValue "percentile" */
  method: CalibrationMethod;
  /** Also quantize the activation×activation MatMuls of attention. @defaultValue false */
  quantizeAttentionMatMuls: boolean;
  /**
   * Activation type: `uint8` (asymmetric; U8S8 with the int8 weights, MLAS's
   * native pairing on x86 VNNI and arm64) or `int8` (S8S8, which arm64 boards
   * run with their signed dot-product or NEON kernels, and x86 only through a
   * slow path). `quantize --mode auto` tries what the board's profile lists.
   * @defaultValue "uint8"
   */
  activations: ActivationType;
}

/** Dynamic quantization: activations are quantized at run time (DynamicQuantizeLinear); no calibration. */
export interface DynamicQuantizeOptions extends CommonQuantizeOptions {
  type: "dynamic";
}

/** Quantization options, discriminated on `type`. */
export type QuantizeOptions = StaticQuantizeOptions | DynamicQuantizeOptions;

/** The mode names, for CLI parsing. */
export type QuantizeMode = QuantizeOptions["type"];

/**
 * The defaults that measured best on the shipped BERT-Mini (see the figures at
 * the top of `quantize.ts`), for a mode; `overrides` replace single fields.
 */
export function defaultQuantizeOptions(
  type: "static",
  overrides?: Partial<StaticQuantizeOptions>,
): StaticQuantizeOptions;
export function defaultQuantizeOptions(
  type: "dynamic",
  overrides?: Partial<DynamicQuantizeOptions>,
): DynamicQuantizeOptions;
export function defaultQuantizeOptions(
  type: QuantizeMode,
  overrides: Partial<StaticQuantizeOptions> | Partial<DynamicQuantizeOptions> = {},
): QuantizeOptions {
  const common: CommonQuantizeOptions = {
    perChannel: true,
    reduceRange: false,
    quantizeEmbeddings: true,
    embeddingGranularity: "per-row",
    exclude: [],
    simplifyShapes: true,
  };
  switch (type) {
    case "static":
      return {
        ...common,
        method: "percentile",
        format: "fused",
        quantizeAttentionMatMuls: false,
        activations: "uint8",
        ...(overrides as Partial<StaticQuantizeOptions>),
        type: "static",
      };
    case "dynamic":
      return { ...common, ...(overrides as Partial<DynamicQuantizeOptions>), type: "dynamic" };
    default:
      return assertNever(type, "quantization mode");
  }
}

/** A MatMul or Gemm whose second operand is a constant weight. */
export interface WeightMatMulTarget {
  kind: "weight-matmul";
  /** Node name (or a synthesized `opType#index` when the node has none). */
  node: string;
  opType: "MatMul" | "Gemm";
  /** The activation input (input 0). */
  activation: string;
  /** The weight initializer (input 1). */
  weight: string;
  /** Axis of the weight initializer that indexes output channels (1 for MatMul and Gemm transB=0, 0 for transB=1). */
  channelAxis: 0 | 1;
  /** Gemm bias initializer (input 2), when present and constant. */
  bias: string | undefined;
}

/**
 * A MatMul whose second operand is a constant stack of matrices (rank ≥ 3,
 * [..., K, N]): what onnxruntime's constant folding leaves when a weight
 * MatMul is applied to a constant (DeBERTa's relative-position projections of
 * its relative embeddings, folded per layer into [heads, d, positions]).
 * Weight-only int8 (`passes/weight-only.ts`): the stack is stored int8 behind
 * a DequantizeLinear, and the MatMul computes in fp32. onnxruntime's int8
 * MatMul kernels take such a B, but then the other operand (an activation) is
 * quantized too: measured on DeBERTa-v3 extended, that lost accuracy and
 * bought no speed (the product is small next to the projections).
 */
export interface WeightOnlyTarget {
  kind: "weight-only";
  node: string;
  opType: "MatMul";
  /** The constant stack (input 1). */
  weight: string;
  /** Its dims. */
  dims: readonly number[];
}

/** What the report says of a {@link WeightOnlyTarget}: where its weight is int8 and where it is not. */
export function describeWeightOnly(t: WeightOnlyTarget, perChannel: boolean): string {
  const scales = perChannel ? "one scale per matrix row" : "one scale";
  return (
    `weight ${t.weight} [${t.dims.join(", ")}] stored int8 (${scales}) behind a DequantizeLinear; ` +
    `the MatMul computes in fp32 (weight-only: a stack of matrices, rank ${t.dims.length})`
  );
}

/** An attention MatMul whose two operands are both activations (Q·Kᵀ or probabilities·V). */
export interface AttentionMatMulTarget {
  kind: "attention-matmul";
  node: string;
  opType: "MatMul";
  inputs: readonly [string, string];
}

/** A Gather reading rows of a constant embedding table. */
export interface EmbeddingTarget {
  kind: "embedding";
  node: string;
  opType: "Gather";
  /** The table initializer (input 0, rank 2, gathered along axis 0). */
  table: string;
}

/**
 * onnxruntime's fused `Attention` (com.microsoft, as its transformer optimizer
 * writes it): one packed Q/K/V projection [in, 3·hidden] plus the attention
 * itself. Rewritten to `QAttention`, onnxruntime's int8 kernel for it (uint8
 * input, int8 weights with one scale per output column).
 */
export interface PackedAttentionTarget {
  kind: "packed-attention";
  node: string;
  opType: "Attention";
  /** The input (input 0). */
  activation: string;
  /** The packed weight initializer (input 1). */
  weight: string;
  /** The packed bias initializer (input 2). */
  bias: string;
}

/** One thing the rewrite passes will quantize. */
export type QuantTarget =
  | WeightMatMulTarget
  | WeightOnlyTarget
  | AttentionMatMulTarget
  | EmbeddingTarget
  | PackedAttentionTarget;

/** Why a candidate node stays fp32. */
export type SkipReason =
  | "excluded"
  | "unsupported-op"
  | "unsupported-attributes"
  | "non-constant-weight"
  | "attention-disabled"
  | "embeddings-disabled"
  | "mask-sentinel"
  | "no-range"
  | "unknown-op"
  /** Reads a weight another node keeps in fp32 (one copy of a shared weight, never two). */
  | "shared-weight";

/** A node that stays fp32, with the reason (for the report). */
export interface SkippedNode {
  node: string;
  opType: string;
  reason: SkipReason;
  /** Human-readable detail (which tensor, which attribute, which range). */
  detail: string;
}

/** The outcome of planning. */
export interface QuantPlan {
  mode: QuantizeMode;
  /** What the passes will quantize, in graph order. */
  quantized: QuantTarget[];
  /** Candidates kept fp32, with the reason. */
  skipped: SkippedNode[];
  /** Activation tensors calibration must observe: exactly the inputs of the static targets. */
  observe: string[];
  /**
   * Every node reading each target's weight (keys as {@link nodeKey}): a weight
   * read by more than one node is quantized for all of them or none.
   */
  weightReaders: Readonly<Record<string, readonly string[]>>;
}

/** Ops that show a model was already quantized (by us, ORT's tool, or a QAT export). */
const QUANTIZED_OPS: ReadonlySet<string> = new Set([
  "QuantizeLinear",
  "DequantizeLinear",
  "DynamicQuantizeLinear",
  "MatMulInteger",
  "ConvInteger",
  "QLinearMatMul",
  "QLinearConv",
  "QLinearAdd",
  "QLinearMul",
  "QLinearSoftmax",
  "QGemm",
  "QAttention",
  "QEmbedLayerNormalization",
  "MatMulIntegerToFloat",
  "DynamicQuantizeMatMul",
  "MatMulNBits",
]);

/** Compute-heavy ops quantd cannot quantize; they stay fp32 and are reported. */
const UNSUPPORTED_HEAVY_OPS: ReadonlySet<string> = new Set([
  "Conv",
  "ConvTranspose",
  "LSTM",
  "GRU",
  "RNN",
  "Einsum",
  "FusedConv",
  "FusedGemm",
  "EmbedLayerNormalization",
]);

/**
 * Attributes of `Attention` that `QAttention` takes as they are. Anything else
 * (rotary embeddings, unequal Q/K/V sizes, a shared past buffer) keeps the node fp32.
 */
const QATTENTION_ATTRIBUTES: ReadonlySet<string> = new Set([
  "num_heads",
  "unidirectional",
  "mask_filter_value",
  "scale",
]);

/** The name quantd uses for a node: its own, or `opType#index` when the exporter left it empty. */
export function nodeKey(node: NodeProto, index: number): string {
  return node.name !== "" ? node.name : `${node.opType}#${index}`;
}

/** The domain of onnxruntime's contrib ops. */
const MS_DOMAIN = "com.microsoft";

function isDefaultDomain(node: NodeProto): boolean {
  return node.domain === "" || node.domain === "ai.onnx";
}

function attrInt(node: NodeProto, name: string, dflt: number): number {
  const a = node.attribute.find((x) => x.name === name);
  return a?.i ?? dflt;
}

function attrFloat(node: NodeProto, name: string, dflt: number): number {
  const a = node.attribute.find((x) => x.name === name);
  return a?.f ?? dflt;
}

/** Names of tensors that are constant: initializers and Constant node outputs. */
function constantNames(graph: GraphProto): Map<string, TensorProto | undefined> {
  const out = new Map<string, TensorProto | undefined>();
  for (const t of graph.initializer) out.set(t.name, t);
  // A graph input that shadows an initializer can be overridden at run time: not constant.
  for (const i of graph.input) out.delete(i.name);
  for (const n of graph.node) {
    if (n.opType === "Constant" && isDefaultDomain(n)) {
      for (const o of n.output) out.set(o, undefined);
    }
  }
  return out;
}

/**
 * Fails when the model already holds quantization ops: quantizing twice would
 * compound the error and the fp32 reference would be lost.
 *
 * @throws MODEL_ALREADY_QUANTIZED naming the first quantized node
 */
export function assertNotQuantized(model: ModelProto): void {
  const nodes = model.graph.node;
  for (let i = 0; i < nodes.length; i++) {
    const n = nodes[i]!;
    if (QUANTIZED_OPS.has(n.opType)) {
      const count = nodes.filter((x) => QUANTIZED_OPS.has(x.opType)).length;
      throw new QuantdError(
        "MODEL_ALREADY_QUANTIZED",
        `the model is already quantized: it holds ${count} quantization node(s), e.g. ${n.opType} ${nodeKey(n, i)}`,
        { details: { node: nodeKey(n, i), opType: n.opType, count } },
      );
    }
  }
}

/** Float types quantd does not quantize from: it calibrates and validates against fp32. */
const HALF_TYPES: ReadonlyMap<number, string> = new Map([
  [10, "float16"],
  [16, "bfloat16"],
]);

/**
 * Fails on a float16 (or bfloat16) model, naming the first half-precision
 * weight, input or output: quantd quantizes from fp32, the reference the
 * accuracy gate compares with, and does not convert (an fp16 → fp32 upcast
 * would change the function the user shipped, and their fp32 export is the
 * better source).
 *
 * @throws QUANT_UNSUPPORTED naming the tensor
 */
export function assertFloat32Model(model: ModelProto): void {
  const g = model.graph;
  const typed = [...g.input, ...g.output].map((v) => ({
    name: v.name,
    type: v.type?.tensorType?.elemType ?? 0,
  }));
  const tensors = [...g.initializer.map((t) => ({ name: t.name, type: t.dataType })), ...typed];
  const half = tensors.find((t) => HALF_TYPES.has(t.type));
  if (half === undefined) return;
  const kind = HALF_TYPES.get(half.type)!;
  throw new QuantdError(
    "QUANT_UNSUPPORTED",
    `the model is ${kind} (tensor ${half.name} is ${kind}); quantd quantizes fp32 models: quantize the fp32 export instead`,
    { details: { tensor: half.name, dataType: kind } },
  );
}

/**
 * Tells whether a MatMul with two activation inputs belongs to attention: one
 * operand comes (through Reshape/Transpose only) from a Softmax, or the output
 * feeds (through Mul/Div by a constant) an Add and then a Softmax.
 */
function isAttentionMatMul(
  node: NodeProto,
  producers: Map<string, NodeProto>,
  consumers: Map<string, NodeProto[]>,
): boolean {
  const walkUp = (name: string, depth: number): boolean => {
    const p = producers.get(name);
    if (p === undefined || depth > 4) return false;
    if (p.opType === "Softmax") return true;
    if (p.opType === "Transpose" || p.opType === "Reshape" || p.opType === "Cast")
      return walkUp(p.input[0] ?? "", depth + 1);
    return false;
  };
  if (node.input.some((i) => walkUp(i, 0))) return true;
  const walkDown = (name: string, depth: number): boolean => {
    if (depth > 4) return false;
    for (const c of consumers.get(name) ?? []) {
      if (c.opType === "Softmax") return true;
      if (
        (c.opType === "Mul" || c.opType === "Div" || c.opType === "Add" || c.opType === "Where") &&
        walkDown(c.output[0] ?? "", depth + 1)
      ) {
        return true;
      }
    }
    return false;
  };
  return walkDown(node.output[0] ?? "", 0);
}

/** What the node classifiers read: the graph's constants, edges, options and exclusions. */
interface PlanContext {
  opts: QuantizeOptions;
  constants: Map<string, TensorProto | undefined>;
  producers: Map<string, NodeProto>;
  consumers: Map<string, NodeProto[]>;
  exclude: ReadonlySet<string>;
}

function planContext(graph: GraphProto, opts: QuantizeOptions): PlanContext {
  const producers = new Map<string, NodeProto>();
  const consumers = new Map<string, NodeProto[]>();
  for (const n of graph.node) {
    for (const o of n.output) if (o !== "") producers.set(o, n);
    for (const i of n.input) {
      if (i === "") continue;
      const list = consumers.get(i);
      if (list === undefined) consumers.set(i, [n]);
      else list.push(n);
    }
  }
  return { opts, constants: constantNames(graph), producers, consumers, exclude: new Set(opts.exclude) };
}

function skip(node: string, opType: string, reason: SkipReason, detail: string): SkippedNode {
  return { node, opType, reason, detail };
}

/** A com.microsoft `Attention` node: a {@link PackedAttentionTarget} when QAttention can take it. */
function classifyPackedAttention(
  ctx: PlanContext,
  n: NodeProto,
  key: string,
): PackedAttentionTarget | SkippedNode {
  const [input = "", w = "", b = ""] = n.input;
  const weight = ctx.constants.get(w);
  const bias = ctx.constants.get(b);
  const cols = weight?.dims[1] ?? 0;
  if (weight === undefined || weight.dims.length !== 2 || weight.dataType !== 1 || cols % 3 !== 0) {
    const detail = `packed weight ${w} is not a constant [in, 3·hidden] float matrix`;
    return skip(key, n.opType, "non-constant-weight", detail);
  }
  if (bias === undefined || bias.dims.length !== 1 || bias.dims[0] !== cols || bias.dataType !== 1) {
    const detail = `bias ${b} is not a constant float vector of ${cols}`;
    return skip(key, n.opType, "unsupported-attributes", detail);
  }
  if (n.input.slice(4).some((i) => i !== "") || (ctx.consumers.get(n.output[1] ?? "")?.length ?? 0) > 0) {
    const detail = "Attention with past state or an attention bias input";
    return skip(key, n.opType, "unsupported-attributes", detail);
  }
  const extra = n.attribute.filter((a) => !QATTENTION_ATTRIBUTES.has(a.name)).map((a) => a.name);
  if (extra.length > 0 || attrInt(n, "unidirectional", 0) !== 0) {
    const detail = `Attention with ${extra.join(", ") || "unidirectional"}: QAttention has no such form`;
    return skip(key, n.opType, "unsupported-attributes", detail);
  }
  if (ctx.exclude.has(key)) return skip(key, n.opType, "excluded", "listed in exclude");
  return { kind: "packed-attention", node: key, opType: "Attention", activation: input, weight: w, bias: b };
}

/** A Gather: an {@link EmbeddingTarget} when it reads rows of a constant float table. */
function classifyGather(
  ctx: PlanContext,
  n: NodeProto,
  key: string,
): EmbeddingTarget | SkippedNode | undefined {
  const a = n.input[0] ?? "";
  const table = ctx.constants.get(a);
  if (table === undefined) return undefined; // shape arithmetic on activations
  if (table.dims.length !== 2 || attrInt(n, "axis", 0) !== 0 || table.dataType !== 1) {
    const detail = `Gather on ${a}: only axis-0 lookups in rank-2 float tables are quantized`;
    return skip(key, n.opType, "unsupported-attributes", detail);
  }
  if (ctx.exclude.has(key)) return skip(key, n.opType, "excluded", "listed in exclude");
  if (!ctx.opts.quantizeEmbeddings)
    return skip(key, n.opType, "embeddings-disabled", `embedding table ${a} kept fp32`);
  return { kind: "embedding", node: key, opType: "Gather", table: a };
}

/** A MatMul whose second operand is not constant: an attention MatMul target, or kept fp32. */
function classifyActivationMatMul(
  ctx: PlanContext,
  n: NodeProto,
  key: string,
): AttentionMatMulTarget | SkippedNode {
  const [a = "", b = ""] = n.input;
  if (n.opType !== "MatMul" || ctx.constants.has(a) || !isAttentionMatMul(n, ctx.producers, ctx.consumers)) {
    return skip(key, n.opType, "non-constant-weight", `input ${b} is not a constant initializer`);
  }
  if (ctx.exclude.has(key)) return skip(key, n.opType, "excluded", "listed in exclude");
  if (ctx.opts.type !== "static" || !ctx.opts.quantizeAttentionMatMuls) {
    const detail = "activation×activation attention MatMul kept fp32";
    return skip(key, n.opType, "attention-disabled", detail);
  }
  return { kind: "attention-matmul", node: key, opType: "MatMul", inputs: [a, b] };
}

/** The channel axis and bias of a Gemm, or why it stays fp32. */
function gemmForm(
  ctx: PlanContext,
  n: NodeProto,
  key: string,
): { channelAxis: 0 | 1; bias: string | undefined } | SkippedNode {
  if (attrInt(n, "transA", 0) !== 0 || attrFloat(n, "alpha", 1) !== 1 || attrFloat(n, "beta", 1) !== 1) {
    return skip(key, n.opType, "unsupported-attributes", "Gemm with transA, alpha≠1 or beta≠1");
  }
  const channelAxis = attrInt(n, "transB", 0) === 1 ? 0 : 1;
  const c = n.input[2];
  if (c === undefined || c === "") return { channelAxis, bias: undefined };
  const ct = ctx.constants.get(c);
  if (ct === undefined || ct.dims.length !== 1 || ct.dataType !== 1) {
    return skip(key, n.opType, "unsupported-attributes", `Gemm bias ${c} is not a constant float vector`);
  }
  return { channelAxis, bias: c };
}

/**
 * A MatMul or Gemm: a {@link WeightMatMulTarget} when its second operand is a
 * float weight matrix, a {@link WeightOnlyTarget} when it is a MatMul's
 * constant stack of float matrices.
 */
function classifyMatMul(ctx: PlanContext, n: NodeProto, key: string): QuantTarget | SkippedNode {
  const [a = "", b = ""] = n.input;
  if (!ctx.constants.has(b)) return classifyActivationMatMul(ctx, n, key);
  const weight = ctx.constants.get(b);
  if (weight === undefined) {
    const detail = `weight ${b} comes from a Constant node, not an initializer`;
    return skip(key, n.opType, "non-constant-weight", detail);
  }
  if (n.opType === "MatMul" && weight.dims.length >= 3 && weight.dataType === 1) {
    if (ctx.exclude.has(key)) return skip(key, n.opType, "excluded", "listed in exclude");
    return { kind: "weight-only", node: key, opType: "MatMul", weight: b, dims: [...weight.dims] };
  }
  if (weight.dims.length !== 2 || weight.dataType !== 1) {
    return skip(key, n.opType, "unsupported-attributes", `weight ${b} is not a rank-2 float matrix`);
  }
  const form = n.opType === "Gemm" ? gemmForm(ctx, n, key) : { channelAxis: 1 as const, bias: undefined };
  if ("reason" in form) return form;
  if (ctx.exclude.has(key)) return skip(key, n.opType, "excluded", "listed in exclude");
  const opType = n.opType === "Gemm" ? "Gemm" : "MatMul";
  return { kind: "weight-matmul", node: key, opType, activation: a, weight: b, ...form };
}

/** What one node is to the plan: a target, a skipped candidate, or nothing (not a candidate). */
function classifyNode(ctx: PlanContext, n: NodeProto, key: string): QuantTarget | SkippedNode | undefined {
  if (n.domain === MS_DOMAIN && n.opType === "Attention") return classifyPackedAttention(ctx, n, key);
  if (n.domain === MS_DOMAIN && n.opType === "FusedMatMul") {
    // Lowered to MatMul beforehand when its B is a plain weight; what is left multiplies activations.
    const what = ctx.constants.has(n.input[1] ?? "")
      ? "a transposed-batch or transA weight"
      : "two activations";
    return skip(key, n.opType, "attention-disabled", `FusedMatMul of ${what} kept fp32`);
  }
  if (!isDefaultDomain(n)) {
    if (!UNSUPPORTED_HEAVY_OPS.has(n.opType)) return undefined;
    return skip(key, n.opType, "unsupported-op", `${n.domain}:${n.opType} is kept fp32`);
  }
  if (UNSUPPORTED_HEAVY_OPS.has(n.opType)) {
    return skip(key, n.opType, "unsupported-op", `${n.opType} has no int8 rewrite in quantd`);
  }
  if (n.opType === "Gather") return classifyGather(ctx, n, key);
  if (n.opType === "MatMul" || n.opType === "Gemm") return classifyMatMul(ctx, n, key);
  return undefined;
}

/** Ops quantd does not know run in fp32 as they are; the report names each one. */
function unknownOpSkips(graph: GraphProto, listed: ReadonlySet<string>): SkippedNode[] {
  const unknown = new Set(inferTypes(graph).unknownOps.map((u) => `${u.domain}:${u.opType}:${u.node}`));
  const out: SkippedNode[] = [];
  graph.node.forEach((n, i) => {
    const key = nodeKey(n, i);
    if (listed.has(key) || !unknown.has(`${n.domain}:${n.opType}:${n.name}`)) return;
    const op = n.domain === "" ? n.opType : `${n.domain}:${n.opType}`;
    out.push(skip(key, n.opType, "unknown-op", `${op} is not an op quantd knows; it runs in fp32 as it is`));
  });
  return out;
}

/** @throws USAGE when `exclude` names a node the graph does not have */
function assertExcludedNodesExist(graph: GraphProto, exclude: ReadonlySet<string>): void {
  const keys = new Set(graph.node.map((n, i) => nodeKey(n, i)));
  for (const name of exclude) {
    if (!keys.has(name)) {
      throw new QuantdError("USAGE", `--exclude names a node that is not in the model: ${name}`, {
        details: { node: name },
      });
    }
  }
}

/** The weight initializer a target reads, if any. */
function targetWeight(t: QuantTarget): string | undefined {
  switch (t.kind) {
    case "weight-matmul":
    case "weight-only":
    case "packed-attention":
      return t.weight;
    case "embedding":
      return t.table;
    case "attention-matmul":
      return undefined;
    default:
      return assertNever(t, "quantization target");
  }
}

/** Every node (by key) reading each weight a target reads: who else holds a shared weight. */
function weightReaders(graph: GraphProto, targets: readonly QuantTarget[]): Map<string, string[]> {
  const weights = new Set(targets.map(targetWeight).filter((w) => w !== undefined));
  const readers = new Map<string, string[]>();
  graph.node.forEach((n, i) => {
    for (const input of new Set(n.input)) {
      if (!weights.has(input)) continue;
      const list = readers.get(input);
      if (list === undefined) readers.set(input, [nodeKey(n, i)]);
      else list.push(nodeKey(n, i));
    }
  });
  return readers;
}

/**
 * Keeps every reader of a shared weight in fp32 when one of them is (ALBERT's
 * one layer called by every layer, tied tables): quantizing the others would
 * store the weight twice, fp32 for the one and int8 for the rest, a file larger
 * than fp32 alone. A shared weight is quantized once, for all its readers, or
 * not at all.
 */
function keepSharedWeightsTogether(plan: QuantPlan): QuantPlan {
  const quantized = new Set(plan.quantized.map((t) => t.node));
  const fp32Reader = (w: string): string | undefined => plan.weightReaders[w]?.find((r) => !quantized.has(r));
  const keep: QuantTarget[] = [];
  const skipped = [...plan.skipped];
  for (const t of plan.quantized) {
    const w = targetWeight(t);
    const other = w === undefined ? undefined : fp32Reader(w);
    if (other === undefined) keep.push(t);
    else {
      const detail = `shares weight ${w} with ${other}, which stays fp32: one copy of a shared weight, not two`;
      skipped.push(skip(t.node, t.opType, "shared-weight", detail));
    }
  }
  if (keep.length === plan.quantized.length) return plan;
  return { ...plan, quantized: keep, skipped, observe: observedTensors(plan.mode, keep) };
}

/**
 * Finds what to quantize in an fp32 model.
 *
 * @throws MODEL_ALREADY_QUANTIZED when the model holds quantization ops
 * @throws QUANT_UNSUPPORTED for a float16/bfloat16 model
 * @throws USAGE when `exclude` names a node the model does not have
 */
export function planQuantization(model: ModelProto, opts: QuantizeOptions): QuantPlan {
  assertNotQuantized(model);
  assertFloat32Model(model);
  const graph = model.graph;
  const ctx = planContext(graph, opts);
  assertExcludedNodesExist(graph, ctx.exclude);
  const targets: QuantTarget[] = [];
  const skipped: SkippedNode[] = [];
  graph.node.forEach((n, index) => {
    const r = classifyNode(ctx, n, nodeKey(n, index));
    if (r === undefined) return;
    if ("kind" in r) targets.push(r);
    else skipped.push(r);
  });
  skipped.push(...unknownOpSkips(graph, new Set(skipped.map((x) => x.node))));
  return keepSharedWeightsTogether({
    mode: opts.type,
    quantized: targets,
    skipped,
    observe: observedTensors(opts.type, targets),
    weightReaders: Object.fromEntries(weightReaders(graph, targets)),
  });
}

function observedTensors(mode: QuantizeMode, targets: readonly QuantTarget[]): string[] {
  if (mode === "dynamic") return [];
  const seen = new Set<string>();
  for (const t of targets) {
    switch (t.kind) {
      case "weight-matmul":
      case "packed-attention":
        seen.add(t.activation);
        break;
      case "attention-matmul":
        seen.add(t.inputs[0]);
        seen.add(t.inputs[1]);
        break;
      case "weight-only":
      case "embedding":
        break;
      default:
        assertNever(t, "quantization target");
    }
  }
  return [...seen];
}

/**
 * The part of a calibrated range ({@link ObservedRange}) the planner reads: a
 * previous build's ranges can be passed back without their histograms.
 */
export type TensorRange = Pick<ObservedRange, "min" | "max"> &
  Partial<Pick<ObservedRange, "sentinel" | "nonFinite">>;

/** Magnitude beyond which a range is a sentinel (attention masks use -3.4e38 or -1e9·large), not data. */
const SENTINEL_MAGNITUDE = 1e30;

function unusableRange(r: TensorRange | undefined): string | undefined {
  if (r === undefined) return "no range was observed";
  if (!Number.isFinite(r.min) || !Number.isFinite(r.max)) return `range [${r.min}, ${r.max}] is not finite`;
  if (Math.abs(r.min) >= SENTINEL_MAGNITUDE || Math.abs(r.max) >= SENTINEL_MAGNITUDE) {
    return `range [${r.min}, ${r.max}] holds a mask sentinel`;
  }
  if (r.min > r.max) return `range [${r.min}, ${r.max}] is empty`;
  // The observers drop such values from the range; quantizing would clamp a mask's -inf to the range's
  // minimum, which turns "never attend" into "attend a little".
  if ((r.sentinel ?? 0) > 0) return `${r.sentinel} mask-sentinel value(s) seen (|x| ≥ 1e30)`;
  if ((r.nonFinite ?? 0) > 0) return `${r.nonFinite} NaN/infinite value(s) seen`;
  return undefined;
}

/**
 * Moves static targets whose activation range is unusable (no range, a mask
 * sentinel, non-finite) to `skipped`. Dynamic plans are returned as they are.
 */
export function applyRanges(plan: QuantPlan, ranges: ReadonlyMap<string, TensorRange>): QuantPlan {
  if (plan.mode === "dynamic") return plan;
  const targets: QuantTarget[] = [];
  const skipped = [...plan.skipped];
  for (const t of plan.quantized) {
    const inputs =
      t.kind === "weight-matmul" || t.kind === "packed-attention"
        ? [t.activation]
        : t.kind === "attention-matmul"
          ? [...t.inputs]
          : [];
    let problem: string | undefined;
    let reason: SkipReason = "no-range";
    for (const i of inputs) {
      const r = ranges.get(i);
      const why = unusableRange(r);
      if (why !== undefined) {
        problem = `${i}: ${why}`;
        reason = r === undefined ? "no-range" : "mask-sentinel";
        break;
      }
    }
    if (problem === undefined) targets.push(t);
    else skipped.push({ node: t.node, opType: t.opType, reason, detail: problem });
  }
  return keepSharedWeightsTogether({
    ...plan,
    quantized: targets,
    skipped,
    observe: observedTensors(plan.mode, targets),
  });
}

/**
 * A plan with the named nodes kept fp32 (reason `excluded`), for rebuilding a
 * model without re-planning or re-calibrating.
 */
export function excludeNodes(
  plan: QuantPlan,
  nodes: Iterable<string>,
  detail = "kept fp32 by the accuracy fallback",
): QuantPlan {
  const drop = new Set(nodes);
  const targets: QuantTarget[] = [];
  const skipped = [...plan.skipped];
  for (const t of plan.quantized) {
    if (drop.has(t.node)) skipped.push({ node: t.node, opType: t.opType, reason: "excluded", detail });
    else targets.push(t);
  }
  return keepSharedWeightsTogether({
    ...plan,
    quantized: targets,
    skipped,
    observe: observedTensors(plan.mode, targets),
  });
}
