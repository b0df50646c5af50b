/**
 * Latency pass: exporters compute the target shape of each attention Reshape
 * at run time (Shape → Gather → Unsqueeze → Concat, about ten tiny nodes per
 * Reshape, 16 Reshapes in BERT-Mini). Where an entry k of that shape is
 * "dimension k of some tensor T", and T's dimension k is the Reshape input's
 * own dimension k, ONNX lets the shape say 0 ("copy dimension k"), so the
 * shape becomes a constant and its subgraph dead code. The ~100 nodes removed
 * each cost a kernel launch on every inference (measured: ~3 % of BERT-Mini's
 * int8 latency at seq 128).
 *
 * Whether T's dimension k equals the input's is not checked symbolically (that
 * needs shape inference through attention); instead the rewritten model is run
 * next to the original in onnxruntime on two input shapes with distinct sizes
 * for every symbolic dimension, and the rewrite is kept only if every output is
 * bit-identical. A mismatch or a failure leaves the model as it was.
 */
import { GraphIndex, getAttrInt } from "../../onnx/graph.ts";
import { makeTensor } from "../../onnx/tensor.ts";
import type { ModelProto, NodeProto, ValueInfoProto } from "../../onnx/types.ts";
import { DataType } from "../../onnx/types.ts";
import { createOrtSession } from "../../runtime/ort-session.ts";
import type { InferenceSession, Tensor } from "../../runtime/types.ts";

/** What {@link simplifyReshapeShapes} did. */
export interface ConstantReshapeResult {
  /** Reshapes whose shape became a constant. */
  reshapes: number;
  /** Nodes removed as dead code. */
  removedNodes: number;
  /** Why the rewrite was not kept, when it was not. */
  reverted?: string;
  /**
   * The rewrite applied: Reshape names and constant shapes. Pass it back as
   * `trusted` for another model built from the same fp32 graph to skip the
   * onnxruntime check (the quantization passes never touch shape arithmetic).
   */
  signature?: string;
}

/** Ops that only compute shapes; removed when nothing reads them any more. */
const SHAPE_OPS: ReadonlySet<string> = new Set([
  "Shape",
  "Gather",
  "Unsqueeze",
  "Concat",
  "Constant",
  "Cast",
  "Squeeze",
]);

function isDefault(n: NodeProto): boolean {
  return n.domain === "" || n.domain === "ai.onnx";
}

/** The constant shape for `reshape`, or undefined when an entry is not a constant or a copy of its own dim. */
function constantShape(idx: GraphIndex, reshape: NodeProto): bigint[] | undefined {
  if (getAttrInt(reshape, "allowzero", 0) !== 0) return undefined;
  const concat = idx.producer(reshape.input[1] ?? "");
  if (concat === undefined || concat.opType !== "Concat" || !isDefault(concat)) return undefined;
  const out: bigint[] = [];
  for (const [k, entry] of concat.input.entries()) {
    const c = idx.constantArray(entry);
    if (c !== undefined) {
      if (!(c instanceof BigInt64Array) || c.length !== 1) return undefined;
      out.push(c[0]!);
      continue;
    }
    const unsq = idx.producer(entry);
    if (unsq === undefined || unsq.opType !== "Unsqueeze" || !isDefault(unsq)) return undefined;
    const gather = idx.producer(unsq.input[0] ?? "");
    if (gather === undefined || gather.opType !== "Gather" || getAttrInt(gather, "axis", 0) !== 0)
      return undefined;
    const at = idx.constantArray(gather.input[1] ?? "");
    if (!(at instanceof BigInt64Array) || at.length !== 1 || Number(at[0]) !== k) return undefined;
    const shape = idx.producer(gather.input[0] ?? "");
    if (shape === undefined || shape.opType !== "Shape" || shape.attribute.length > 0) return undefined;
    out.push(0n);
  }
  // ONNX allows one -1; a copied 0 is fine in any number.
  if (out.filter((v) => v === -1n).length > 1) return undefined;
  return out;
}

function removeDeadShapeNodes(model: ModelProto): number {
  const g = model.graph;
  const before = g.node.length;
  for (;;) {
    const read = new Set<string>();
    for (const n of g.node) for (const i of n.input) read.add(i);
    for (const o of g.output) read.add(o.name);
    const kept = g.node.filter(
      (n) => !SHAPE_OPS.has(n.opType) || !isDefault(n) || n.output.some((o) => read.has(o)),
    );
    if (kept.length === g.node.length) break;
    g.node = kept;
  }
  const read = new Set<string>();
  for (const n of g.node) for (const i of n.input) read.add(i);
  for (const o of g.output) read.add(o.name);
  // an initializer that is also a graph input is a default value: dropping it would make the input required
  for (const i of g.input) read.add(i.name);
  g.initializer = g.initializer.filter((t) => read.has(t.name));
  return before - g.node.length;
}

/** Feeds of the given symbolic sizes for every graph input (ones: valid ids, masks and types). */
function probeFeeds(
  inputs: readonly ValueInfoProto[],
  sizes: readonly number[],
): Record<string, Tensor> | undefined {
  const symbols = new Map<string, number>();
  const feeds: Record<string, Tensor> = {};
  for (const i of inputs) {
    const tt = i.type?.tensorType;
    if (tt?.shape === undefined) return undefined;
    const dims = tt.shape.dim.map((d, j) => {
      if (d.dimValue !== undefined && d.dimValue > 0) return d.dimValue;
      const key = d.dimParam !== undefined && d.dimParam !== "" ? d.dimParam : `${i.name}:${j}`;
      let v = symbols.get(key);
      if (v === undefined) {
        v = sizes[symbols.size % sizes.length]!;
        symbols.set(key, v);
      }
      return v;
    });
    const n = dims.reduce((a, b) => a * b, 1);
    switch (tt.elemType) {
      case DataType.INT64:
        feeds[i.name] = { type: "int64", data: new BigInt64Array(n).fill(1n), dims };
        break;
      case DataType.INT32:
        feeds[i.name] = { type: "int32", data: new Int32Array(n).fill(1), dims };
        break;
      case DataType.FLOAT:
        feeds[i.name] = { type: "float32", data: new Float32Array(n).fill(0.5), dims };
        break;
      case DataType.BOOL:
        feeds[i.name] = { type: "bool", data: new Uint8Array(n).fill(1), dims };
        break;
      default:
        return undefined;
    }
  }
  return feeds;
}

function sameOutputs(a: Record<string, Tensor>, b: Record<string, Tensor>): boolean {
  for (const [name, ta] of Object.entries(a)) {
    const tb = b[name];
    if (tb === undefined || ta.type !== tb.type || ta.dims.join() !== tb.dims.join()) return false;
    const da = ta.data;
    const db = tb.data;
    if (da.length !== db.length) return false;
    for (let i = 0; i < da.length; i++) {
      const x = da[i]!;
      const y = db[i]!;
      if (x !== y && !(Number.isNaN(x) && Number.isNaN(y))) return false;
    }
  }
  return true;
}

async function verify(
  original: Uint8Array,
  rewritten: Uint8Array,
  inputs: readonly ValueInfoProto[],
): Promise<string | undefined> {
  const sessions: InferenceSession[] = [];
  try {
    // No graph optimization: the sessions only check shapes, and loading is most of their cost.
    const opened = await Promise.allSettled([
      createOrtSession(original, { graphOptimizationLevel: "disabled" }),
      createOrtSession(rewritten, { graphOptimizationLevel: "disabled" }),
    ]);
    for (const o of opened) if (o.status === "fulfilled") sessions.push(o.value);
    for (const o of opened) if (o.status === "rejected") throw o.reason;
    // Distinct sizes per symbolic dimension, so a dimension copied from the wrong axis shows.
    for (const sizes of [
      [2, 7, 3, 5],
      [1, 4, 6, 2],
    ]) {
      const feeds = probeFeeds(inputs, sizes);
      if (feeds === undefined) return "graph inputs lack the shape or type information needed to verify";
      const [a, b] = await Promise.all(sessions.map((s) => s.run(feeds)));
      if (!sameOutputs(a!, b!)) return `outputs differ for input sizes ${sizes.join("×")}`;
    }
    return undefined;
  } catch (err) {
    return `verification run failed: ${(err as Error).message}`;
  } finally {
    for (const s of sessions) await s.release();
  }
}

/**
 * Makes attention Reshape shapes constant where that provably (by running both
 * models) changes nothing. Edits `model` in place when the rewrite is kept.
 *
 * @param encode - the model serializer (the codec's `encodeModel`), injected to run both versions in ORT
 * @param trusted - the `signature` of an earlier verified rewrite of the same fp32 graph: skips the check
 */
export async function simplifyReshapeShapes(
  model: ModelProto,
  encode: (m: ModelProto) => Uint8Array,
  trusted?: string,
): Promise<ConstantReshapeResult> {
  const idx = new GraphIndex(model.graph);
  const plan: { node: NodeProto; shape: bigint[] }[] = [];
  for (const n of model.graph.node) {
    if (n.opType !== "Reshape" || !isDefault(n)) continue;
    const shape = constantShape(idx, n);
    if (shape !== undefined) plan.push({ node: n, shape });
  }
  if (plan.length === 0) return { reshapes: 0, removedNodes: 0 };
  const signature = JSON.stringify(plan.map((p) => [p.node.name, p.shape.map(String)]));
  const copy: ModelProto = {
    ...model,
    graph: {
      ...model.graph,
      node: model.graph.node.map((n) => ({ ...n, input: [...n.input] })),
      initializer: [...model.graph.initializer],
    },
  };
  const at = new Map(model.graph.node.map((n, i) => [n, i]));
  const names = new GraphIndex(copy.graph);
  for (const { node, shape } of plan) {
    const target = copy.graph.node[at.get(node)!]!;
    const name = names.uniqueName(`${node.name !== "" ? node.name : "Reshape"}_shape`);
    copy.graph.initializer.push(makeTensor(name, DataType.INT64, [shape.length], BigInt64Array.from(shape)));
    target.input[1] = name;
  }
  const removedNodes = removeDeadShapeNodes(copy);
  if (signature !== trusted) {
    const reverted = await verify(encode(model), encode(copy), model.graph.input);
    if (reverted !== undefined) return { reshapes: 0, removedNodes: 0, reverted };
  }
  model.graph = copy.graph;
  return { reshapes: plan.length, removedNodes, signature };
}
