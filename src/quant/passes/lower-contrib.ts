/**
 * Lowers onnxruntime's fused contrib ops that hide a weight from quantd into
 * the standard ops they fuse, so the weight gets int8 like any other:
 *
 * - `FusedGemm` (Gemm + activation, e.g. a pooler's Gemm + Tanh) → Gemm and
 *   the activation node;
 * - `FusedMatMul` whose B is a constant matrix (no transA, no batch
 *   transposes) → MatMul with B stored as alpha·op(B): the same product;
 * - `EmbedLayerNormalization` → the word, position and segment Gathers, their
 *   sum and LayerNormalization, and the mask index as a ReduceSum of the mask
 *   (what the kernel computes), so the tables get per-row int8 like an
 *   exporter's embeddings.
 *
 * Each rewrite computes the same function as the node it replaces (checked
 * against onnxruntime in the tests); a node whose attributes or inputs fall
 * outside what is lowered here is left as it is and the planner reports it.
 * The input model is not modified.
 */
import { makeTensor, tensorToFloat32 } from "../../onnx/tensor.ts";
import type { AttributeProto, ModelProto, NodeProto, TensorProto } from "../../onnx/types.ts";
import { AttributeType, DataType } from "../../onnx/types.ts";
import { MS_DOMAIN, node } from "./rewrite.ts";

/** One node lowered, for the report. */
export interface LoweredNode {
  node: string;
  opType: string;
  /** What it became. */
  into: string;
}

/** What {@link lowerContribOps} returns. */
export interface LoweredModel {
  /** The input model itself when nothing was lowered, else a new one sharing the unchanged parts. */
  model: ModelProto;
  lowered: LoweredNode[];
}

/** FusedGemm activations and the attributes each takes from `activation_*`. */
const GEMM_ACTIVATIONS: Readonly<Record<string, readonly string[]>> = {
  Relu: [],
  Tanh: [],
  Sigmoid: [],
  LeakyRelu: ["alpha"],
  Elu: ["alpha"],
  HardSigmoid: ["alpha", "beta"],
};

function attr(n: NodeProto, name: string): AttributeProto | undefined {
  return n.attribute.find((a) => a.name === name);
}

function floatAttr(name: string, f: number): AttributeProto {
  return { name, type: AttributeType.FLOAT, f };
}

/** Names not yet used in the graph. */
class Names {
  readonly #used = new Set<string>();
  constructor(model: ModelProto) {
    const g = model.graph;
    for (const t of g.initializer) this.#used.add(t.name);
    for (const v of [...g.input, ...g.output, ...g.valueInfo]) this.#used.add(v.name);
    for (const n of g.node) {
      this.#used.add(n.name);
      for (const x of [...n.input, ...n.output]) this.#used.add(x);
    }
  }
  fresh(base: string): string {
    let name = base;
    for (let k = 1; this.#used.has(name); k++) name = `${base}_${k}`;
    this.#used.add(name);
    return name;
  }
}

interface LowerContext {
  names: Names;
  constant(name: string): TensorProto | undefined;
  addInitializer(t: TensorProto): string;
  used(tensor: string): boolean;
  opset: number;
}

function lowerFusedGemm(n: NodeProto, ctx: LowerContext): NodeProto[] | undefined {
  const activation = new TextDecoder().decode(attr(n, "activation")?.s ?? new Uint8Array());
  const params = GEMM_ACTIVATIONS[activation];
  if (params === undefined) return undefined;
  const gemmOut = ctx.names.fresh(`${n.output[0]}_gemm`);
  const gemm: NodeProto = {
    name: n.name,
    opType: "Gemm",
    domain: "",
    input: [...n.input],
    output: [gemmOut],
    attribute: n.attribute.filter((a) => ["alpha", "beta", "transA", "transB"].includes(a.name)),
  };
  const actAttrs: AttributeProto[] = [];
  for (const p of params) {
    const a = attr(n, `activation_${p}`);
    if (a?.f !== undefined) actAttrs.push(floatAttr(p, a.f));
  }
  const act: NodeProto = {
    name: ctx.names.fresh(`${n.name || n.output[0]}/${activation}`),
    opType: activation,
    domain: "",
    input: [gemmOut],
    output: [n.output[0] ?? ""],
    attribute: actAttrs,
  };
  return [gemm, act];
}

function lowerFusedMatMul(
  n: NodeProto,
  ctx: LowerContext,
  cache: Map<string, string>,
): NodeProto[] | undefined {
  const b = n.input[1] ?? "";
  const w = ctx.constant(b);
  if (w === undefined || w.dims.length !== 2 || w.dataType !== DataType.FLOAT) return undefined;
  const int = (name: string): number => attr(n, name)?.i ?? 0;
  if (int("transA") !== 0 || int("transBatchA") !== 0 || int("transBatchB") !== 0) return undefined;
  const alpha = attr(n, "alpha")?.f ?? 1;
  const transB = int("transB") === 1;
  const key = `${b}|${transB}|${alpha}`;
  let weight = cache.get(key);
  if (weight === undefined) {
    if (!transB && alpha === 1) weight = b;
    else {
      const [rows = 0, cols = 0] = w.dims;
      const v = tensorToFloat32(w);
      const out = new Float32Array(v.length);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const x = Math.fround(alpha * v[r * cols + c]!);
          if (transB) out[c * rows + r] = x;
          else out[r * cols + c] = x;
        }
      }
      const dims = transB ? [cols, rows] : [rows, cols];
      weight = ctx.addInitializer(makeTensor(ctx.names.fresh(`${b}_lowered`), DataType.FLOAT, dims, out));
    }
    cache.set(key, weight);
  }
  return [
    {
      name: n.name,
      opType: "MatMul",
      domain: "",
      input: [n.input[0] ?? "", weight],
      output: [...n.output],
      attribute: [],
    },
  ];
}

/**
 * EmbedLayerNormalization's inputs: input_ids, segment_ids, word_embedding,
 * position_embedding, segment_embedding, gamma, beta, mask, position_ids;
 * outputs: output, mask_index (tokens per row), embedding_sum.
 */
function lowerEmbedLayerNorm(n: NodeProto, ctx: LowerContext): NodeProto[] | undefined {
  const [
    ids = "",
    segIds = "",
    word = "",
    pos = "",
    segTable = "",
    gamma = "",
    beta = "",
    mask = "",
    posIds = "",
  ] = n.input;
  const table = (name: string): boolean => {
    const t = ctx.constant(name);
    return t !== undefined && t.dims.length === 2 && t.dataType === DataType.FLOAT;
  };
  if (!table(word) || !table(pos) || (segTable !== "" && (!table(segTable) || segIds === "")))
    return undefined;
  const [out = "", maskIndex = "", embSum = ""] = n.output;
  const needMaskIndex = maskIndex !== "" && ctx.used(maskIndex);
  // Without a mask the kernel's mask index is its own convention (zeros); not lowered.
  if (needMaskIndex && mask === "") return undefined;
  const base = n.name || out;
  const f = (s: string): string => ctx.names.fresh(`${base}/${s}`);
  const nodes: NodeProto[] = [];
  const emit = (
    opType: string,
    inputs: string[],
    attrs: Record<string, number | readonly number[]> = {},
    output?: string,
  ): string => {
    const o = output ?? f(`${opType}_output`);
    nodes.push(node(opType, f(opType), inputs, [o], attrs));
    return o;
  };
  const words = emit("Gather", [word, ids], { axis: 0 });
  let positions: string;
  if (posIds !== "") positions = emit("Gather", [pos, posIds], { axis: 0 });
  else {
    const one = ctx.addInitializer(makeTensor(f("one"), DataType.INT64, [], BigInt64Array.of(1n)));
    const zero = ctx.addInitializer(makeTensor(f("zero"), DataType.INT64, [], BigInt64Array.of(0n)));
    const seqLen = emit("Gather", [emit("Shape", [ids]), one], { axis: 0 });
    positions = emit("Gather", [pos, emit("Range", [zero, seqLen, one])], { axis: 0 });
  }
  let sum = emit("Add", [words, positions]);
  if (segTable !== "") sum = emit("Add", [sum, emit("Gather", [segTable, segIds], { axis: 0 })]);
  const epsilon = attr(n, "epsilon")?.f ?? 1e-12;
  const ln = node("LayerNormalization", f("LayerNormalization"), [sum, gamma, beta], [out], { axis: -1 });
  ln.attribute.push(floatAttr("epsilon", epsilon));
  nodes.push(ln);
  if (embSum !== "") emit("Identity", [sum], {}, embSum);
  if (needMaskIndex) {
    const asInt = emit("Cast", [mask], { to: DataType.INT32 });
    if (ctx.opset >= 13) {
      const axes = ctx.addInitializer(makeTensor(f("axes"), DataType.INT64, [1], BigInt64Array.of(1n)));
      emit("ReduceSum", [asInt, axes], { keepdims: 0 }, maskIndex);
    } else emit("ReduceSum", [asInt], { axes: [1], keepdims: 0 }, maskIndex);
  }
  return nodes;
}

/**
 * Lowers the contrib ops described in the file comment.
 */
export function lowerContribOps(model: ModelProto): LoweredModel {
  const g = model.graph;
  const constants = new Map(g.initializer.map((t) => [t.name, t]));
  for (const i of g.input) constants.delete(i.name);
  const readers = new Set<string>(g.output.map((o) => o.name));
  for (const n of g.node) for (const i of n.input) readers.add(i);
  const added: TensorProto[] = [];
  const ctx: LowerContext = {
    names: new Names(model),
    constant: (name) => constants.get(name),
    addInitializer: (t) => {
      added.push(t);
      constants.set(t.name, t);
      return t.name;
    },
    used: (tensor) => readers.has(tensor),
    opset: model.opsetImport.find((o) => o.domain === "" || o.domain === "ai.onnx")?.version ?? 0,
  };
  const matmulWeights = new Map<string, string>();
  const lowered: LoweredNode[] = [];
  const nodes: NodeProto[] = [];
  for (const n of g.node) {
    let into: NodeProto[] | undefined;
    if (n.domain === MS_DOMAIN) {
      if (n.opType === "FusedGemm") into = lowerFusedGemm(n, ctx);
      else if (n.opType === "FusedMatMul") into = lowerFusedMatMul(n, ctx, matmulWeights);
      else if (n.opType === "EmbedLayerNormalization") into = lowerEmbedLayerNorm(n, ctx);
    }
    if (into === undefined) {
      nodes.push(n);
      continue;
    }
    nodes.push(...into);
    lowered.push({
      node: n.name,
      opType: n.opType,
      into: [...new Set(into.map((x) => x.opType))].join(" + "),
    });
  }
  if (lowered.length === 0) return { model, lowered };
  // A weight the lowered node read in another form (FusedMatMul's B before alpha·op(B)) is dead now:
  // left in, it would ship in the int8 file as fp32 bytes nothing reads.
  const read = new Set<string>([...g.output.map((o) => o.name), ...g.input.map((i) => i.name)]);
  for (const n of nodes) for (const i of n.input) read.add(i);
  // Only what a lowered node read is a candidate: a subgraph may read other initializers unseen here.
  const replaced = new Set<string>();
  const kept = new Set(nodes);
  for (const n of g.node) if (!kept.has(n)) for (const i of n.input) replaced.add(i);
  const initializer = [...g.initializer, ...added].filter((t) => read.has(t.name) || !replaced.has(t.name));
  const graph = { ...g, node: nodes, initializer };
  return { model: { ...model, graph }, lowered };
}
