/**
 * Type and shape inference over a graph: the element type (and, where the op
 * allows, the shape) of every tensor, computed from the graph inputs,
 * initializers and Constant nodes through the ops themselves — standard ONNX
 * ops and the `com.microsoft` contrib ops onnxruntime's optimizers write
 * (FusedMatMul, FusedGemm, BiasGelu, FastGelu, Attention, SkipLayerNormalization,
 * EmbedLayerNormalization, …).
 *
 * A file's `value_info` is not trusted: onnxruntime's optimizer drops it, other
 * tools leave it stale after editing the graph. It is consulted only for
 * tensors whose producer is an op this pass does not know, and such tensors
 * are listed in {@link TypeInference.unknownOps} so a caller can learn their
 * types from a probe run instead.
 *
 * Shapes are best effort: a dim is a number, a symbolic name, or `undefined`
 * (unknown); a whole shape is `undefined` when even the rank is unknown.
 */
import { dataTypeName, tensorToArray } from "./tensor.ts";
import type { AttributeProto, GraphProto, NodeProto, TensorProto } from "./types.ts";
import { DataType } from "./types.ts";

/** One dimension: a size, a symbolic name, or unknown. */
export type InferredDim = number | string | undefined;

/** What inference knows of one tensor. */
export interface InferredType {
  elemType: DataType;
  /** Dims, or undefined when the rank is unknown. */
  shape: InferredDim[] | undefined;
}

/** A node whose outputs inference could not type, because it does not know the op. */
export interface UnknownOpNode {
  node: string;
  opType: string;
  domain: string;
}

/** The result of {@link inferTypes}. */
export interface TypeInference {
  /** Every tensor typed, by name (graph inputs, initializers and node outputs). */
  types: Map<string, InferredType>;
  /** Nodes of ops inference does not know (their outputs are typed from value_info when it has them). */
  unknownOps: UnknownOpNode[];
}

/** The contrib-op domain of onnxruntime. */
const MS = "com.microsoft";

function isDefaultDomain(domain: string): boolean {
  return domain === "" || domain === "ai.onnx";
}

function attr(n: NodeProto, name: string): AttributeProto | undefined {
  return n.attribute.find((a) => a.name === name);
}

function attrInt(n: NodeProto, name: string, fallback: number): number {
  return attr(n, name)?.i ?? fallback;
}

/** Elementwise ops of one float input: output type and shape are input 0's. */
const UNARY: readonly string[] = [
  ...["Neg", "Abs", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu"],
  ...["Celu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Reciprocal", "Floor", "Ceil"],
  ...["Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh"],
  ...["Atanh", "Mish", "ThresholdedRelu", "Shrink", "Clip", "Identity"],
];

/** Elementwise ops of several inputs, broadcast (input 0's type). */
const BINARY: readonly string[] = [
  ...["Add", "Sub", "Mul", "Div", "Pow", "Mod", "Min", "Max", "Mean", "Sum", "PRelu", "BitShift"],
];

/** Ops that normalize along an axis: output type and shape are input 0's. */
const NORMALIZING: readonly string[] = [
  ...["Softmax", "LogSoftmax", "Hardmax", "BatchNormalization", "InstanceNormalization"],
  ...["GroupNormalization", "LpNormalization", "MeanVarianceNormalization", "CumSum", "Trilu"],
];

/** Ops whose outputs all have the element type of input 0 (elementwise, data movement, reductions, linear algebra). */
const SAME_AS_INPUT0: ReadonlySet<string> = new Set([
  ...UNARY,
  ...BINARY,
  ...NORMALIZING,
  ...["MatMul", "Gemm", "Einsum", "Det", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"],
  ...["Expand", "Tile", "Slice", "Concat", "Pad", "Split", "Gather", "GatherElements", "GatherND"],
  ...["ScatterND", "ScatterElements", "ReverseSequence", "Compress", "Resize"],
  ...["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2"],
  ...["ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Conv", "ConvTranspose"],
  ...["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "DepthToSpace", "SpaceToDepth"],
  ...["Range"],
]);

/** com.microsoft ops whose outputs have the element type of input 0. */
const MS_SAME_AS_INPUT0: ReadonlySet<string> = new Set([
  ...["FusedMatMul", "FusedGemm", "FusedConv", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd"],
  ...["BiasSoftmax", "BiasSplitGelu", "Attention", "MultiHeadAttention", "GroupQueryAttention"],
  ...[
    "RotaryEmbedding",
    "RelativePositionBias",
    "GatedRelativePositionBias",
    "DecoderMaskedMultiHeadAttention",
  ],
  ...["Trilu", "GatherND", "Inverse", "ComplexMul", "SkipSimplifiedLayerNormalization"],
]);

/** Comparisons and logic: BOOL out. */
const BOOL_OUT: ReadonlySet<string> = new Set([
  ...[
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "IsNaN",
    "IsInf",
  ],
]);

/** Elementwise ops whose output shape is the broadcast of their inputs'. */
const BROADCAST: ReadonlySet<string> = new Set([...BINARY, "Where", ...BOOL_OUT]);

/** Ops whose output 0 has the shape of input 0. */
const SAME_SHAPE: ReadonlySet<string> = new Set([
  ...UNARY,
  ...NORMALIZING,
  ...["Cast", "CastLike", "Not", "IsNaN", "IsInf", "LayerNormalization", "Dropout", "ScatterND"],
  ...["ScatterElements", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"],
]);

/** com.microsoft ops whose output 0 has the shape of input 0. */
const MS_SAME_SHAPE: ReadonlySet<string> = new Set([
  ...["BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd", "BiasSoftmax", "SkipLayerNormalization"],
  ...["SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization"],
  ...["RotaryEmbedding", "QuantizeLinear", "DequantizeLinear"],
]);

/** Inputs of one node as inference sees them. */
interface NodeContext {
  input(k: number): InferredType | undefined;
  constant(k: number): TensorProto | undefined;
}

type Output = InferredType | undefined;

function typed(elemType: DataType | undefined, shape: InferredDim[] | undefined): Output {
  return elemType === undefined ? undefined : { elemType, shape };
}

/** NumPy-style broadcast of several shapes; undefined when a rank is unknown. */
function broadcast(shapes: (InferredDim[] | undefined)[]): InferredDim[] | undefined {
  if (shapes.some((s) => s === undefined)) return undefined;
  const all = shapes as InferredDim[][];
  const rank = Math.max(0, ...all.map((s) => s.length));
  const out: InferredDim[] = [];
  for (let k = 0; k < rank; k++) {
    let dim: InferredDim = 1;
    for (const s of all) {
      const d = s[k - (rank - s.length)];
      if (d === undefined && k - (rank - s.length) >= 0) {
        if (dim === 1) dim = undefined;
        continue;
      }
      if (d === undefined || d === 1) continue;
      if (dim === 1 || dim === undefined) dim = d;
      else if (dim !== d && typeof d === "number" && typeof dim === "number") dim = undefined;
    }
    out.push(dim);
  }
  return out;
}

function normAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

function ints(t: TensorProto | undefined): number[] | undefined {
  if (t === undefined) return undefined;
  const a = tensorToArray(t);
  if (!(a instanceof BigInt64Array) && !(a instanceof Int32Array)) return undefined;
  return Array.from(a as ArrayLike<number | bigint>, (v) => Number(v));
}

/** Axes from the `axes` attribute (older opsets) or input `k` (newer ones). */
function axesOf(n: NodeProto, ctx: NodeContext, k: number): number[] | undefined {
  const a = attr(n, "axes");
  if (a !== undefined) return a.ints ?? [];
  if ((n.input[k] ?? "") === "") return undefined;
  return ints(ctx.constant(k));
}

function matmulShape(a: InferredDim[] | undefined, b: InferredDim[] | undefined): InferredDim[] | undefined {
  if (a === undefined || b === undefined || a.length === 0 || b.length === 0) return undefined;
  const aa = a.length === 1 ? [1, a[0]] : a;
  const bb = b.length === 1 ? [b[0], 1] : b;
  const batch = broadcast([aa.slice(0, -2), bb.slice(0, -2)]);
  if (batch === undefined) return undefined;
  const out = [...batch, aa[aa.length - 2], bb[bb.length - 1]];
  if (b.length === 1) out.pop();
  if (a.length === 1) out.splice(out.length - (b.length === 1 ? 1 : 2), 1);
  return out;
}

function transposeLast2(s: InferredDim[] | undefined, on: boolean): InferredDim[] | undefined {
  if (s === undefined || !on || s.length < 2) return s;
  const out = [...s];
  [out[out.length - 2], out[out.length - 1]] = [out[out.length - 1], out[out.length - 2]];
  return out;
}

function reshapeShape(input: InferredDim[] | undefined, target: number[], allowzero: boolean): InferredDim[] {
  const out: InferredDim[] = target.map((v, k) =>
    v === 0 && !allowzero ? input?.[k] : v === -1 ? undefined : v,
  );
  const minus = target.indexOf(-1);
  if (minus >= 0 && input !== undefined && input.every((d) => typeof d === "number")) {
    const total = (input as number[]).reduce((a, b) => a * b, 1);
    const known = out.reduce<number | undefined>(
      (a, d, k) =>
        k === minus || a === undefined || typeof d !== "number" ? (k === minus ? a : undefined) : a * d,
      1,
    );
    if (known !== undefined && known !== 0) out[minus] = total / known;
  }
  return out;
}

function reduceShape(
  s: InferredDim[] | undefined,
  axes: number[] | undefined,
  keepdims: boolean,
): InferredDim[] | undefined {
  if (s === undefined || axes === undefined) return undefined;
  const set = new Set((axes.length === 0 ? s.map((_, k) => k) : axes).map((a) => normAxis(a, s.length)));
  const out: InferredDim[] = [];
  s.forEach((d, k) => {
    if (!set.has(k)) out.push(d);
    else if (keepdims) out.push(1);
  });
  return out;
}

/** Inference of one op: the output types of a node from its inputs, or undefined when they cannot be told. */
type Rule = (n: NodeProto, ctx: NodeContext) => Output[] | undefined;

/** One output of input 0's element type and the given shape. */
function same(ctx: NodeContext, shape: InferredDim[] | undefined): Output[] {
  return [typed(ctx.input(0)?.elemType, shape)];
}

/** Input 0's shape. */
function shape0(ctx: NodeContext): InferredDim[] | undefined {
  return ctx.input(0)?.shape;
}

/** The same rule under several op names. */
function each(ops: readonly string[], rule: Rule): Record<string, Rule> {
  return Object.fromEntries(ops.map((op) => [op, rule]));
}

const REDUCE_OPS = [
  ...["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2"],
  ...["ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"],
];

function shapeOp(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  if (s0 === undefined) return [{ elemType: DataType.INT64, shape: [undefined] }];
  const start = normAxis(attrInt(n, "start", 0), s0.length);
  const endAttr = attr(n, "end")?.i;
  const end = endAttr === undefined ? s0.length : Math.min(s0.length, normAxis(endAttr, s0.length));
  return [{ elemType: DataType.INT64, shape: [Math.max(0, end - Math.max(0, start))] }];
}

function layerNormalization(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const stash = attrInt(n, "stash_type", DataType.FLOAT) as DataType;
  const axis = s0 === undefined ? undefined : normAxis(attrInt(n, "axis", -1), s0.length);
  const stat = s0 === undefined || axis === undefined ? undefined : s0.map((d, k) => (k < axis ? d : 1));
  return [typed(ctx.input(0)?.elemType, s0), typed(stash, stat), typed(stash, stat)];
}

function gemm(n: NodeProto, ctx: NodeContext): Output[] {
  const a = transposeLast2(shape0(ctx), attrInt(n, "transA", 0) === 1);
  const b = transposeLast2(ctx.input(1)?.shape, attrInt(n, "transB", 0) === 1);
  return same(ctx, matmulShape(a, b));
}

function transpose(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  if (s0 === undefined) return same(ctx, undefined);
  const perm = attr(n, "perm")?.ints ?? s0.map((_, k) => s0.length - 1 - k);
  return same(
    ctx,
    perm.map((p) => s0[p]),
  );
}

function reshape(n: NodeProto, ctx: NodeContext): Output[] {
  const target = ints(ctx.constant(1));
  if (target !== undefined)
    return same(ctx, reshapeShape(shape0(ctx), target, attrInt(n, "allowzero", 0) === 1));
  const len = ctx.input(1)?.shape?.[0];
  return same(ctx, typeof len === "number" ? new Array<InferredDim>(len).fill(undefined) : undefined);
}

function flatten(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  if (s0 === undefined) return same(ctx, undefined);
  const axis = normAxis(attrInt(n, "axis", 1), s0.length);
  const prod = (ds: InferredDim[]): InferredDim =>
    ds.every((d) => typeof d === "number") ? (ds as number[]).reduce((a, b) => a * b, 1) : undefined;
  return same(ctx, [prod(s0.slice(0, axis)), prod(s0.slice(axis))]);
}

function unsqueeze(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const axes = axesOf(n, ctx, 1);
  if (s0 === undefined || axes === undefined) return same(ctx, undefined);
  const rank = s0.length + axes.length;
  const at = new Set(axes.map((a) => normAxis(a, rank)));
  const out: InferredDim[] = [];
  let src = 0;
  for (let k = 0; k < rank; k++) out.push(at.has(k) ? 1 : s0[src++]);
  return same(ctx, out);
}

function squeeze(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const axes = axesOf(n, ctx, 1);
  if (s0 === undefined) return same(ctx, undefined);
  if (axes === undefined) {
    if ((n.input[1] ?? "") !== "") return same(ctx, undefined);
    return s0.every((d) => d !== undefined && typeof d === "number")
      ? same(
          ctx,
          s0.filter((d) => d !== 1),
        )
      : same(ctx, undefined);
  }
  const at = new Set(axes.map((a) => normAxis(a, s0.length)));
  return same(
    ctx,
    s0.filter((_, k) => !at.has(k)),
  );
}

function gather(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const idx = ctx.input(1)?.shape;
  if (s0 === undefined || idx === undefined) return same(ctx, undefined);
  const axis = normAxis(attrInt(n, "axis", 0), s0.length);
  return same(ctx, [...s0.slice(0, axis), ...idx, ...s0.slice(axis + 1)]);
}

function concat(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const shapes = n.input.map((_, k) => ctx.input(k)?.shape);
  if (s0 === undefined || shapes.some((s) => s === undefined)) return same(ctx, undefined);
  const axis = normAxis(attrInt(n, "axis", 0), s0.length);
  const out = [...s0];
  let total: InferredDim = 0;
  for (const s of shapes as InferredDim[][]) {
    const d = s[axis];
    total = typeof total === "number" && typeof d === "number" ? total + d : undefined;
  }
  out[axis] = total;
  return same(ctx, out);
}

function reduce(n: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const axes = axesOf(n, ctx, 1);
  const keep = attrInt(n, "keepdims", 1) === 1;
  if (axes === undefined && (n.input[1] ?? "") === "" && attrInt(n, "noop_with_empty_axes", 0) === 1)
    return same(ctx, s0);
  return same(
    ctx,
    reduceShape(s0, axes ?? (n.input[1] === undefined || n.input[1] === "" ? [] : undefined), keep),
  );
}

/** Default-domain ops whose output types need more than their family's rule (see {@link inferByFamily}). */
const DEFAULT_RULES: Readonly<Record<string, Rule>> = {
  Constant: (n) => {
    const t = constantValue(n);
    return t === undefined ? undefined : [{ elemType: t.dataType, shape: [...t.dims] }];
  },
  Cast: (n, ctx) => [typed(attr(n, "to")?.i as DataType | undefined, shape0(ctx))],
  CastLike: (_, ctx) => [typed(ctx.input(1)?.elemType, shape0(ctx))],
  Shape: shapeOp,
  Size: () => [{ elemType: DataType.INT64, shape: [] }],
  NonZero: (_, ctx) => [{ elemType: DataType.INT64, shape: [shape0(ctx)?.length, undefined] }],
  ...each(["ArgMax", "ArgMin"], (n, ctx) => [
    {
      elemType: DataType.INT64,
      shape: reduceShape(shape0(ctx), [attrInt(n, "axis", 0)], attrInt(n, "keepdims", 1) === 1),
    },
  ]),
  ConstantOfShape: (n, ctx) => {
    const v = attr(n, "value")?.t;
    return [{ elemType: v?.dataType ?? DataType.FLOAT, shape: ints(ctx.constant(0)) ?? undefined }];
  },
  QuantizeLinear: (n, ctx) => {
    const to = attr(n, "output_dtype")?.i;
    const zp = ctx.input(2)?.elemType;
    return [typed((to !== undefined && to !== 0 ? to : (zp ?? DataType.UINT8)) as DataType, shape0(ctx))];
  },
  DequantizeLinear: (_, ctx) => [typed(ctx.input(1)?.elemType ?? DataType.FLOAT, shape0(ctx))],
  DynamicQuantizeLinear: (_, ctx) => [
    typed(DataType.UINT8, shape0(ctx)),
    typed(DataType.FLOAT, []),
    typed(DataType.UINT8, []),
  ],
  MatMulInteger: (_, ctx) => [typed(DataType.INT32, matmulShape(shape0(ctx), ctx.input(1)?.shape))],
  ConvInteger: () => [typed(DataType.INT32, undefined)],
  Where: (_, ctx) => {
    const shape = broadcast([shape0(ctx), ctx.input(1)?.shape, ctx.input(2)?.shape]);
    return [typed(ctx.input(1)?.elemType ?? ctx.input(2)?.elemType, shape)];
  },
  TopK: (_, ctx) => [typed(ctx.input(0)?.elemType, undefined), typed(DataType.INT64, undefined)],
  Dropout: (_, ctx) => [typed(ctx.input(0)?.elemType, shape0(ctx)), typed(DataType.BOOL, shape0(ctx))],
  LayerNormalization: layerNormalization,
  OneHot: (_, ctx) => [typed(ctx.input(2)?.elemType, undefined)],
  ...each(["EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli"], (n, ctx) => {
    const dt = attr(n, "dtype")?.i;
    return [typed((dt ?? ctx.input(0)?.elemType) as DataType | undefined, shape0(ctx))];
  }),
  ...each(["RandomNormal", "RandomUniform"], (n) => [
    typed((attr(n, "dtype")?.i ?? DataType.FLOAT) as DataType, attr(n, "shape")?.ints),
  ]),
  Unique: (_, ctx) => [
    typed(ctx.input(0)?.elemType, undefined),
    ...[1, 2, 3].map(() => typed(DataType.INT64, undefined)),
  ],
  MatMul: (_, ctx) => same(ctx, matmulShape(shape0(ctx), ctx.input(1)?.shape)),
  Gemm: gemm,
  Transpose: transpose,
  Reshape: reshape,
  Flatten: flatten,
  Unsqueeze: unsqueeze,
  Squeeze: squeeze,
  Gather: gather,
  Concat: concat,
  // Rank is kept; sizes depend on run-time values.
  ...each(["Slice", "Tile", "Pad"], (_, ctx) =>
    same(
      ctx,
      shape0(ctx)?.map(() => undefined),
    ),
  ),
  // Expand may raise the rank: unknown.
  Expand: (_, ctx) => same(ctx, undefined),
  Split: (n, ctx) =>
    n.output.map(() =>
      typed(
        ctx.input(0)?.elemType,
        shape0(ctx)?.map(() => undefined),
      ),
    ),
  ...each(REDUCE_OPS, reduce),
  Range: (_, ctx) => same(ctx, [undefined]),
};

/** Output types of a default-domain node by the families of ops: comparisons, broadcasts, input 0's type. */
function inferByFamily(n: NodeProto, ctx: NodeContext): Output[] | undefined {
  const op = n.opType;
  const in0 = ctx.input(0);
  const s0 = in0?.shape;
  if (BOOL_OUT.has(op)) {
    return [
      typed(
        DataType.BOOL,
        BROADCAST.has(op) && op !== "Not" ? broadcast(n.input.map((_, k) => ctx.input(k)?.shape)) : s0,
      ),
    ];
  }
  if (SAME_AS_INPUT0.has(op)) {
    if (BROADCAST.has(op)) return same(ctx, broadcast(n.input.map((_, k) => ctx.input(k)?.shape)));
    if (SAME_SHAPE.has(op)) return n.output.map(() => typed(in0?.elemType, s0));
    return n.output.map(() => typed(in0?.elemType, undefined));
  }
  return undefined;
}

/** Output types of a default-domain node, or undefined for an op this pass does not know. */
function inferDefault(n: NodeProto, ctx: NodeContext): Output[] | undefined {
  const rule = Object.hasOwn(DEFAULT_RULES, n.opType) ? DEFAULT_RULES[n.opType] : undefined;
  return rule !== undefined ? rule(n, ctx) : inferByFamily(n, ctx);
}

/** The statistics outputs of a layer normalization: the input's shape with the last axis 1. */
function statShape(s: InferredDim[] | undefined): InferredDim[] | undefined {
  return s === undefined ? undefined : [...s.slice(0, -1), 1];
}

function fusedMatMul(n: NodeProto, ctx: NodeContext): Output[] {
  const a = transposeLast2(shape0(ctx), attrInt(n, "transA", 0) === 1);
  const b = transposeLast2(ctx.input(1)?.shape, attrInt(n, "transB", 0) === 1);
  const batched = attrInt(n, "transBatchA", 0) === 1 || attrInt(n, "transBatchB", 0) === 1;
  return same(ctx, batched ? undefined : matmulShape(a, b));
}

function attention(n: NodeProto, ctx: NodeContext): Output[] {
  // input [B, S, in], weights [in, 3·hidden] (or qkv_hidden_sizes); output [B, S, v_hidden]
  const s0 = shape0(ctx);
  const et0 = ctx.input(0)?.elemType;
  const qkv = attr(n, "qkv_hidden_sizes")?.ints;
  const w = ctx.input(1)?.shape?.[1];
  const hidden = qkv !== undefined && qkv.length === 3 ? qkv[2] : typeof w === "number" ? w / 3 : undefined;
  const shape = s0 === undefined ? undefined : [s0[0], s0[1], hidden];
  return [typed(et0, shape), typed(et0, undefined)];
}

function multiHeadAttention(_: NodeProto, ctx: NodeContext): Output[] {
  const s0 = shape0(ctx);
  const et0 = ctx.input(0)?.elemType;
  const v = ctx.input(2)?.shape;
  const shape =
    s0 !== undefined && s0.length === 3 ? [s0[0], s0[1], v?.length === 3 ? v[2] : undefined] : undefined;
  return [typed(et0, shape), typed(et0, undefined), typed(et0, undefined)];
}

function embedLayerNormalization(_: NodeProto, ctx: NodeContext): Output[] {
  // inputs: input_ids, segment_ids, word_embedding, position_embedding, segment_embedding, gamma, beta, mask, position_ids
  const s0 = shape0(ctx);
  const table = ctx.input(2);
  const hidden = table?.shape?.[1];
  const shape = s0 === undefined ? undefined : [s0[0], s0[1], hidden];
  return [
    typed(table?.elemType, shape),
    typed(DataType.INT32, s0 === undefined ? undefined : [s0[0]]),
    typed(table?.elemType, shape),
  ];
}

/** com.microsoft ops whose output types need more than input 0's type (see {@link MS_SAME_AS_INPUT0}). */
const MS_RULES: Readonly<Record<string, Rule>> = {
  FusedMatMul: fusedMatMul,
  FusedGemm: gemm,
  Attention: attention,
  MultiHeadAttention: multiHeadAttention,
  ...each(["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"], (_, ctx) => {
    const s0 = shape0(ctx);
    const et0 = ctx.input(0)?.elemType;
    return [
      typed(et0, s0),
      typed(DataType.FLOAT, statShape(s0)),
      typed(DataType.FLOAT, statShape(s0)),
      typed(et0, s0),
    ];
  }),
  ...each(["LayerNormalization", "SimplifiedLayerNormalization"], (_, ctx) => {
    const s0 = shape0(ctx);
    return [
      typed(ctx.input(0)?.elemType, s0),
      typed(DataType.FLOAT, statShape(s0)),
      typed(DataType.FLOAT, statShape(s0)),
    ];
  }),
  EmbedLayerNormalization: embedLayerNormalization,
  MatMulIntegerToFloat: (_, ctx) => [
    typed(ctx.input(2)?.elemType ?? DataType.FLOAT, matmulShape(shape0(ctx), ctx.input(1)?.shape)),
  ],
  DynamicQuantizeMatMul: (_, ctx) => [typed(DataType.FLOAT, matmulShape(shape0(ctx), ctx.input(1)?.shape))],
  QAttention: (_, ctx) => [
    typed(ctx.input(3)?.elemType ?? DataType.FLOAT, undefined),
    typed(ctx.input(3)?.elemType ?? DataType.FLOAT, undefined),
  ],
  QGemm: (n, ctx) => [typed((n.input[7] ?? "") === "" ? DataType.FLOAT : ctx.input(7)?.elemType, undefined)],
  QuantizeLinear: (_, ctx) => [typed(ctx.input(2)?.elemType ?? DataType.UINT8, shape0(ctx))],
  DequantizeLinear: (_, ctx) => [typed(ctx.input(1)?.elemType ?? DataType.FLOAT, shape0(ctx))],
};

/** Output types of a com.microsoft node, or undefined for an op this pass does not know. */
function inferMicrosoft(n: NodeProto, ctx: NodeContext): Output[] | undefined {
  const rule = Object.hasOwn(MS_RULES, n.opType) ? MS_RULES[n.opType] : undefined;
  if (rule !== undefined) return rule(n, ctx);
  if (MS_SAME_AS_INPUT0.has(n.opType)) {
    return n.output.map(() =>
      typed(ctx.input(0)?.elemType, MS_SAME_SHAPE.has(n.opType) ? shape0(ctx) : undefined),
    );
  }
  return undefined;
}

/** The tensor a Constant node outputs, whichever attribute holds it. */
function constantValue(n: NodeProto): TensorProto | undefined {
  for (const a of n.attribute) {
    switch (a.name) {
      case "value":
        return a.t;
      case "value_float":
        return { name: "", dataType: DataType.FLOAT, dims: [], floatData: [a.f ?? 0] };
      case "value_floats":
        return {
          name: "",
          dataType: DataType.FLOAT,
          dims: [a.floats?.length ?? 0],
          floatData: a.floats ?? [],
        };
      case "value_int":
        return { name: "", dataType: DataType.INT64, dims: [], int64Data: [BigInt(Math.trunc(a.i ?? 0))] };
      case "value_ints":
        return {
          name: "",
          dataType: DataType.INT64,
          dims: [a.ints?.length ?? 0],
          int64Data: (a.ints ?? []).map((v) => BigInt(Math.trunc(v))),
        };
    }
  }
  return undefined;
}

/** The output types of one node from its inputs' types; undefined when the op is not known. */
export function inferNodeTypes(
  n: NodeProto,
  input: (name: string) => InferredType | undefined,
  constant: (name: string) => TensorProto | undefined,
): Output[] | undefined {
  const ctx: NodeContext = {
    input: (k) => {
      const name = n.input[k];
      return name === undefined || name === "" ? undefined : input(name);
    },
    constant: (k) => {
      const name = n.input[k];
      return name === undefined || name === "" ? undefined : constant(name);
    },
  };
  if (isDefaultDomain(n.domain)) return inferDefault(n, ctx);
  if (n.domain === MS) return inferMicrosoft(n, ctx);
  return undefined;
}

function declaredType(v: {
  type?: { tensorType?: { elemType: DataType; shape?: { dim: { dimValue?: number; dimParam?: string }[] } } };
}): Output {
  const tt = v.type?.tensorType;
  if (tt === undefined || tt.elemType === DataType.UNDEFINED) return undefined;
  const shape = tt.shape?.dim.map(
    (d) => d.dimValue ?? (d.dimParam !== undefined && d.dimParam !== "" ? d.dimParam : undefined),
  );
  return { elemType: tt.elemType, shape };
}

/**
 * Infers the type of every tensor of `graph`, in one pass over the nodes in
 * the order given (a valid ONNX graph is topologically sorted; nodes read
 * before their producer are typed on a second pass).
 */
export function inferTypes(graph: GraphProto): TypeInference {
  const types = new Map<string, InferredType>();
  const constants = new Map<string, TensorProto>();
  for (const t of graph.initializer) {
    types.set(t.name, { elemType: t.dataType, shape: [...t.dims] });
    constants.set(t.name, t);
  }
  for (const i of graph.input) {
    const d = declaredType(i);
    if (d !== undefined) types.set(i.name, d);
    // A graph input that shadows an initializer can be overridden at run time: not a constant.
    constants.delete(i.name);
  }
  const valueInfo = new Map<string, InferredType>();
  for (const v of graph.valueInfo) {
    const d = declaredType(v);
    if (d !== undefined) valueInfo.set(v.name, d);
  }
  const unknownOps: UnknownOpNode[] = [];
  const produced = new Set<string>();
  for (const n of graph.node) for (const o of n.output) if (o !== "") produced.add(o);
  const done = new Set<string>();
  const visit = (n: NodeProto): void => {
    if (n.opType === "Constant" && isDefaultDomain(n.domain)) {
      const t = constantValue(n);
      if (t !== undefined && n.output[0] !== undefined) constants.set(n.output[0], t);
    }
    let outs: Output[] | undefined;
    try {
      outs = inferNodeTypes(
        n,
        (x) => types.get(x),
        (x) => constants.get(x),
      );
    } catch {
      // A malformed constant or attribute: the node is typed as an unknown op would be (value_info,
      // else a probe run), and onnxruntime, which will run it, is the one to judge it.
      outs = undefined;
    }
    if (outs === undefined) unknownOps.push({ node: n.name, opType: n.opType, domain: n.domain });
    n.output.forEach((o, k) => {
      if (o === "") return;
      done.add(o);
      const t = outs?.[k] ?? valueInfo.get(o);
      if (t !== undefined) types.set(o, t);
    });
  };
  // A valid graph lists producers first; a node read before its producer waits for it.
  let pending = graph.node;
  while (pending.length > 0) {
    const later: NodeProto[] = [];
    for (const n of pending) {
      if (n.input.some((i) => produced.has(i) && !done.has(i))) later.push(n);
      else visit(n);
    }
    // A cycle: type what is left with what is known rather than loop forever.
    if (later.length === pending.length) {
      for (const n of later) visit(n);
      break;
    }
    pending = later;
  }
  return { types, unknownOps };
}

/** A readable form of an inferred type, e.g. `FLOAT[batch,?,256]`. */
export function formatInferredType(t: InferredType): string {
  const dims = t.shape === undefined ? "" : `[${t.shape.map((d) => d ?? "?").join(",")}]`;
  return `${dataTypeName(t.elemType)}${dims}`;
}
