/**
 * Graph queries and edits for passes: who produces and who consumes a tensor,
 * topological order, initializers, fresh names, node insertion/removal,
 * rewiring, extra graph outputs, opset and constant lookup.
 *
 * {@link GraphIndex} keeps its maps correct across edits made through its own
 * methods. After editing `graph` directly (pushing nodes, renaming inputs),
 * call {@link GraphIndex.rebuild}: it is O(nodes + tensors), a millisecond for
 * a BERT.
 */
import { QuantdError } from "../errors.ts";
import type { GraphOutline } from "./graph-outline.ts";
import { type InferredType, inferTypes, type TypeInference, type UnknownOpNode } from "./infer.ts";
import { makeTensor, tensorToArray } from "./tensor.ts";
import type {
  AttributeProto,
  DataType,
  GraphProto,
  ModelProto,
  NodeProto,
  TensorProto,
  ValueInfoProto,
} from "./types.ts";
import { DataType as DT } from "./types.ts";

/** The version of `domain` the model imports (`""` and `"ai.onnx"` are the same), or undefined. */
export function getOpsetVersion(model: ModelProto, domain = ""): number | undefined {
  const want = domain === "ai.onnx" ? "" : domain;
  for (const o of model.opsetImport) {
    const d = o.domain === "ai.onnx" ? "" : o.domain;
    if (d === want) return o.version;
  }
  return undefined;
}

/**
 * A copy of the model that passes may edit: new node, initializer, input,
 * output, value-info and opset lists and new node objects, sharing the (never
 * mutated) tensors, so a 30 MB model is not duplicated and the caller's model
 * stays as it was.
 */
export function copyForEdit(model: ModelProto): ModelProto {
  const g = model.graph;
  const graph: GraphProto = {
    ...g,
    node: g.node.map((n) => ({
      ...n,
      input: [...n.input],
      output: [...n.output],
      attribute: [...n.attribute],
    })),
    initializer: [...g.initializer],
    input: [...g.input],
    output: [...g.output],
    valueInfo: [...g.valueInfo],
  };
  return {
    ...model,
    graph,
    opsetImport: model.opsetImport.map((o) => ({ ...o })),
    metadataProps: [...model.metadataProps],
  };
}

/** The attribute `name` of a node, or undefined. */
export function getAttribute(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}

/** An INT attribute's value, or `fallback` when absent. */
export function getAttrInt(node: NodeProto, name: string, fallback: number): number;
export function getAttrInt(node: NodeProto, name: string): number | undefined;
export function getAttrInt(node: NodeProto, name: string, fallback?: number): number | undefined {
  return getAttribute(node, name)?.i ?? fallback;
}

/** A FLOAT attribute's value, or `fallback` when absent. */
export function getAttrFloat(node: NodeProto, name: string, fallback: number): number;
export function getAttrFloat(node: NodeProto, name: string): number | undefined;
export function getAttrFloat(node: NodeProto, name: string, fallback?: number): number | undefined {
  return getAttribute(node, name)?.f ?? fallback;
}

/** An INTS attribute's values, or undefined when absent. */
export function getAttrInts(node: NodeProto, name: string): number[] | undefined {
  const a = getAttribute(node, name);
  return a === undefined ? undefined : (a.ints ?? []);
}

/** A STRING attribute decoded as UTF-8, or undefined when absent. */
export function getAttrString(node: NodeProto, name: string): string | undefined {
  const s = getAttribute(node, name)?.s;
  return s === undefined ? undefined : new TextDecoder().decode(s);
}

/** Where to put a node: before or after an existing one. */
export type NodePosition = { before: NodeProto } | { after: NodeProto };

/**
 * An index over one graph (not its subgraphs; tensors a subgraph reads from
 * the outer scope count as consumed by the node that owns the subgraph).
 */
export class GraphIndex {
  /** The indexed graph; edits through this index change it in place. */
  readonly graph: GraphProto;
  #producer = new Map<string, NodeProto>();
  #consumers = new Map<string, NodeProto[]>();
  #initializers = new Map<string, TensorProto>();
  #names = new Set<string>();
  #counter = 0;
  /** Inferred types, computed on first use and dropped by every edit. */
  #inferred: TypeInference | undefined;

  constructor(graph: GraphProto) {
    this.graph = graph;
    this.rebuild();
  }

  /** Recomputes every map from `graph`. Needed only after editing `graph` directly. */
  rebuild(): void {
    this.#inferred = undefined;
    this.#producer.clear();
    this.#consumers.clear();
    this.#initializers.clear();
    this.#names.clear();
    const g = this.graph;
    for (const t of g.initializer) {
      this.#initializers.set(t.name, t);
      this.#names.add(t.name);
    }
    for (const s of g.sparseInitializer ?? []) this.#names.add(s.values.name);
    for (const v of [...g.input, ...g.output, ...g.valueInfo]) this.#names.add(v.name);
    for (const n of g.node) this.#indexNode(n);
  }

  #indexNode(n: NodeProto): void {
    this.#inferred = undefined;
    if (n.name !== "") this.#names.add(n.name);
    for (const o of n.output) {
      if (o === "") continue;
      this.#producer.set(o, n);
      this.#names.add(o);
    }
    for (const i of nodeReads(n)) this.#addConsumer(i, n);
  }

  #addConsumer(name: string, n: NodeProto): void {
    this.#names.add(name);
    const list = this.#consumers.get(name);
    if (list === undefined) this.#consumers.set(name, [n]);
    else if (!list.includes(n)) list.push(n);
  }

  #removeConsumer(name: string, n: NodeProto): void {
    const list = this.#consumers.get(name);
    if (list === undefined) return;
    const at = list.indexOf(n);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0) this.#consumers.delete(name);
  }

  /** The node that outputs `tensor`, or undefined (graph input, initializer, or unknown). */
  producer(tensor: string): NodeProto | undefined {
    return this.#producer.get(tensor);
  }

  /** The nodes that read `tensor` (each once), in no particular order. Subgraph reads count for the owner. */
  consumers(tensor: string): readonly NodeProto[] {
    return this.#consumers.get(tensor) ?? [];
  }

  /** Whether `tensor` is one of the graph's outputs. */
  isGraphOutput(tensor: string): boolean {
    return this.graph.output.some((o) => o.name === tensor);
  }

  /** Whether `tensor` is a graph input that is not an initializer. */
  isGraphInput(tensor: string): boolean {
    return !this.#initializers.has(tensor) && this.graph.input.some((i) => i.name === tensor);
  }

  /** The initializer named `name`, or undefined. */
  initializer(name: string): TensorProto | undefined {
    return this.#initializers.get(name);
  }

  /** Adds an initializer, or replaces the one with the same name (in place, keeping its position). */
  setInitializer(t: TensorProto): void {
    this.#inferred = undefined;
    const old = this.#initializers.get(t.name);
    if (old !== undefined) {
      const at = this.graph.initializer.indexOf(old);
      this.graph.initializer[at] = t;
    } else {
      this.graph.initializer.push(t);
    }
    this.#initializers.set(t.name, t);
    this.#names.add(t.name);
  }

  /**
   * Removes an initializer (and its graph-input entry, which IR < 4 models
   * carry). Returns whether it existed. Nodes reading it are not changed.
   */
  removeInitializer(name: string): boolean {
    this.#inferred = undefined;
    const t = this.#initializers.get(name);
    if (t === undefined) return false;
    this.graph.initializer.splice(this.graph.initializer.indexOf(t), 1);
    this.#initializers.delete(name);
    const at = this.graph.input.findIndex((i) => i.name === name);
    if (at >= 0) this.graph.input.splice(at, 1);
    return true;
  }

  /**
   * A name based on `base` that no node, tensor, initializer or value info of
   * the graph uses, and that is reserved so later calls do not return it again.
   */
  uniqueName(base: string): string {
    let name = base;
    while (this.#names.has(name)) name = `${base}_${++this.#counter}`;
    this.#names.add(name);
    return name;
  }

  /** Whether `name` is taken by a node, tensor, initializer or value info (or was handed out). */
  hasName(name: string): boolean {
    return this.#names.has(name);
  }

  /**
   * Inserts `node`. Without a position it goes right after the last producer
   * of its inputs (first, when none are produced by nodes), which keeps a
   * topologically sorted graph sorted as long as its outputs are new tensors.
   *
   * @throws INTERNAL when the reference node is not in the graph
   */
  insertNode(node: NodeProto, position?: NodePosition): void {
    const nodes = this.graph.node;
    let at: number;
    if (position === undefined) {
      at = 0;
      for (const i of nodeReads(node)) {
        const p = this.#producer.get(i);
        if (p !== undefined) at = Math.max(at, nodes.indexOf(p) + 1);
      }
    } else {
      const ref = "before" in position ? position.before : position.after;
      const r = nodes.indexOf(ref);
      if (r < 0)
        throw new QuantdError("INTERNAL", `insertNode: node ${ref.name || ref.opType} is not in the graph`);
      at = "before" in position ? r : r + 1;
    }
    nodes.splice(at, 0, node);
    this.#indexNode(node);
  }

  /**
   * Removes `node` from the graph. Its outputs lose their producer; readers
   * of them must be rewired by the caller. Returns whether it was present.
   */
  removeNode(node: NodeProto): boolean {
    this.#inferred = undefined;
    const at = this.graph.node.indexOf(node);
    if (at < 0) return false;
    this.graph.node.splice(at, 1);
    for (const o of node.output) if (this.#producer.get(o) === node) this.#producer.delete(o);
    for (const i of nodeReads(node)) this.#removeConsumer(i, node);
    return true;
  }

  /**
   * Makes every consumer of `from` read `to` instead (node inputs only; graph
   * outputs keep their names, as they are the model's interface). Nodes in
   * `except` are left alone — typically the node that turns `from` into `to`.
   * Returns the number of nodes changed. Subgraphs reading `from` from the
   * outer scope are not rewritten.
   */
  replaceAllUses(from: string, to: string, except: Iterable<NodeProto> = []): number {
    this.#inferred = undefined;
    const skip = new Set(except);
    let changed = 0;
    for (const n of [...this.consumers(from)]) {
      if (skip.has(n)) continue;
      let hit = false;
      for (let k = 0; k < n.input.length; k++) {
        if (n.input[k] === from) {
          n.input[k] = to;
          hit = true;
        }
      }
      if (!hit) continue;
      changed++;
      if (!nodeReads(n).includes(from)) this.#removeConsumer(from, n);
      this.#addConsumer(to, n);
    }
    return changed;
  }

  /**
   * Replaces one input slot of a node, keeping the index right.
   *
   * @throws INTERNAL when the node has no such input slot
   */
  setNodeInput(node: NodeProto, slot: number, tensor: string): void {
    this.#inferred = undefined;
    const old = node.input[slot];
    if (old === undefined) throw new QuantdError("INTERNAL", `node ${node.name} has no input ${slot}`);
    node.input[slot] = tensor;
    if (!nodeReads(node).includes(old)) this.#removeConsumer(old, node);
    if (tensor !== "") this.#addConsumer(tensor, node);
  }

  /**
   * Nodes in a topological order: the current order where it already is one
   * (stable Kahn's algorithm).
   *
   * @throws MODEL_INVALID when the graph has a cycle
   */
  topologicalOrder(): NodeProto[] {
    const nodes = this.graph.node;
    const pending = new Map<NodeProto, number>();
    const position = new Map<NodeProto, number>();
    nodes.forEach((n, k) => {
      position.set(n, k);
      let deps = 0;
      for (const i of new Set(nodeReads(n))) {
        const p = this.#producer.get(i);
        if (p !== undefined && p !== n) deps++;
      }
      pending.set(n, deps);
    });
    // A min-heap on original position keeps the result stable.
    const heap: NodeProto[] = [];
    const pos = (n: NodeProto): number => position.get(n) ?? 0;
    const push = (n: NodeProto): void => {
      heap.push(n);
      let c = heap.length - 1;
      while (c > 0) {
        const p = (c - 1) >> 1;
        if (pos(heap[p]!) <= pos(heap[c]!)) break;
        [heap[p], heap[c]] = [heap[c]!, heap[p]!];
        c = p;
      }
    };
    const pop = (): NodeProto => {
      const top = heap[0]!;
      const last = heap.pop()!;
      if (heap.length > 0) {
        heap[0] = last;
        let c = 0;
        for (;;) {
          const l = 2 * c + 1;
          const r = l + 1;
          let m = c;
          if (l < heap.length && pos(heap[l]!) < pos(heap[m]!)) m = l;
          if (r < heap.length && pos(heap[r]!) < pos(heap[m]!)) m = r;
          if (m === c) break;
          [heap[m], heap[c]] = [heap[c]!, heap[m]!];
          c = m;
        }
      }
      return top;
    };
    for (const n of nodes) if (pending.get(n) === 0) push(n);
    const order: NodeProto[] = [];
    while (heap.length > 0) {
      const n = pop();
      order.push(n);
      const seen = new Set<NodeProto>();
      for (const o of n.output) {
        if (o === "") continue;
        for (const c of this.consumers(o)) {
          if (c === n || seen.has(c) || !pending.has(c)) continue;
          // A consumer may read several outputs of n; it depends on n once.
          seen.add(c);
          const left = pending.get(c)! - 1;
          pending.set(c, left);
          if (left === 0) push(c);
        }
      }
    }
    if (order.length !== nodes.length) {
      const stuck = nodes.filter((n) => !order.includes(n)).map((n) => n.name || n.opType);
      throw new QuantdError("MODEL_INVALID", `graph has a cycle through ${stuck.slice(0, 5).join(", ")}`, {
        details: { nodes: stuck.slice(0, 20) },
      });
    }
    return order;
  }

  /** Whether the nodes form a DAG. */
  isAcyclic(): boolean {
    try {
      this.topologicalOrder();
      return true;
    } catch {
      return false;
    }
  }

  /** Whether `graph.node` is already in a topological order. */
  isSorted(): boolean {
    const seen = new Set<NodeProto>();
    for (const n of this.graph.node) {
      for (const i of nodeReads(n)) {
        const p = this.#producer.get(i);
        if (p !== undefined && p !== n && !seen.has(p)) return false;
      }
      seen.add(n);
    }
    return true;
  }

  /**
   * Reorders `graph.node` topologically (stable).
   *
   * @throws MODEL_INVALID when the graph has a cycle
   */
  sortTopologically(): void {
    const order = this.topologicalOrder();
    this.graph.node.splice(0, this.graph.node.length, ...order);
  }

  /**
   * The element type of `tensor`: declared for graph inputs and initializers,
   * else inferred through the ops that compute it ({@link inferTypes}: standard
   * ops and onnxruntime's contrib ops); a file's value_info is used only behind
   * an op inference does not know.
   */
  elemType(tensor: string): DataType | undefined {
    return this.tensorType(tensor)?.elemType;
  }

  /** The element type and (best-effort) shape of `tensor`, as {@link GraphIndex.elemType} finds it. */
  tensorType(tensor: string): InferredType | undefined {
    this.#inferred ??= inferTypes(this.graph);
    const t = this.#inferred.types.get(tensor);
    if (t !== undefined) return t;
    const out = this.graph.output.find((o) => o.name === tensor)?.type?.tensorType;
    if (out === undefined || out.elemType === DT.UNDEFINED) return undefined;
    return { elemType: out.elemType, shape: undefined };
  }

  /** Nodes whose op type inference does not know (their outputs' types come from value_info, or nowhere). */
  unknownOps(): readonly UnknownOpNode[] {
    this.#inferred ??= inferTypes(this.graph);
    return this.#inferred.unknownOps;
  }

  /**
   * Adds `tensor` to the graph outputs (no-op if it already is one), so a
   * runtime returns it — how calibration reads intermediate activations. The
   * element type comes from `elemType` or {@link GraphIndex.elemType}; the
   * shape is left unknown (onnxruntime accepts that).
   *
   * @throws MODEL_INVALID when the tensor is not in the graph or its element type cannot be found
   */
  addGraphOutput(tensor: string, elemType?: DataType): ValueInfoProto {
    const existing = this.graph.output.find((o) => o.name === tensor);
    if (existing !== undefined) return existing;
    if (
      !this.#producer.has(tensor) &&
      !this.#initializers.has(tensor) &&
      !this.graph.input.some((i) => i.name === tensor)
    ) {
      throw new QuantdError(
        "MODEL_INVALID",
        `cannot output ${tensor}: no node, input or initializer has that name`,
      );
    }
    const et = elemType ?? this.elemType(tensor);
    if (et === undefined) {
      throw new QuantdError("MODEL_INVALID", `cannot output ${tensor}: its element type is unknown`);
    }
    const v: ValueInfoProto = { name: tensor, type: { tensorType: { elemType: et } } };
    this.graph.output.push(v);
    return v;
  }

  /**
   * Adds `tensor` to the graph outputs for a probe run: typed as
   * {@link GraphIndex.addGraphOutput} would, or, behind an op inference does
   * not know, with no type at all, which onnxruntime accepts and fills in from
   * its own kernels (the session's output metadata then tells the type).
   *
   * @throws MODEL_INVALID when the tensor is not in the graph
   */
  addProbeOutput(tensor: string): ValueInfoProto {
    const et = this.elemType(tensor);
    if (et !== undefined) return this.addGraphOutput(tensor, et);
    const existing = this.graph.output.find((o) => o.name === tensor);
    if (existing !== undefined) return existing;
    if (!this.#producer.has(tensor)) {
      throw new QuantdError("MODEL_INVALID", `cannot output ${tensor}: no node has that output`);
    }
    const v: ValueInfoProto = { name: tensor };
    this.graph.output.push(v);
    return v;
  }

  /**
   * The constant value of `tensor`: its initializer, or the value of the
   * Constant node producing it (any of `value`, `value_float(s)`, `value_int(s)`).
   * Returns undefined for anything computed at run time.
   */
  constant(tensor: string): TensorProto | undefined {
    const init = this.#initializers.get(tensor);
    if (init !== undefined) {
      // An initializer that is also a graph input can be overridden at run time.
      return this.#isGraphInputName(tensor) ? undefined : init;
    }
    const n = this.#producer.get(tensor);
    if (n === undefined || n.opType !== "Constant" || (n.domain !== "" && n.domain !== "ai.onnx"))
      return undefined;
    return constantNodeTensor(n);
  }

  /** The constant value of `tensor` as a typed array, or undefined (see {@link GraphIndex.constant}). */
  constantArray(tensor: string): ReturnType<typeof tensorToArray> | undefined {
    const t = this.constant(tensor);
    return t === undefined ? undefined : tensorToArray(t);
  }

  #isGraphInputName(tensor: string): boolean {
    return this.graph.input.some((i) => i.name === tensor);
  }
}

/** Tensor names a node reads: its inputs, plus outer-scope names used by its subgraphs. */
function nodeReads(n: NodeProto): string[] {
  const reads = n.input.filter((i) => i !== "");
  for (const a of n.attribute) {
    if (a.g !== undefined) reads.push(...outerReads(a.g));
    for (const g of a.graphs ?? []) reads.push(...outerReads(g));
  }
  return reads;
}

/** Names a subgraph reads that it does not define itself. */
function outerReads(g: GraphProto): string[] {
  const defined = new Set<string>([...g.input.map((i) => i.name), ...g.initializer.map((t) => t.name)]);
  for (const n of g.node) for (const o of n.output) defined.add(o);
  const out = new Set<string>();
  for (const n of g.node) for (const i of nodeReads(n)) if (!defined.has(i)) out.add(i);
  for (const o of g.output) if (!defined.has(o.name)) out.add(o.name);
  return [...out];
}

/** The tensor a Constant node outputs, whichever attribute holds it. */
function constantNodeTensor(n: NodeProto): TensorProto | undefined {
  const name = n.output[0] ?? "";
  for (const a of n.attribute) {
    switch (a.name) {
      case "value":
        return a.t;
      case "value_float":
        return makeTensor(name, DT.FLOAT, [], Float32Array.of(a.f ?? 0));
      case "value_floats":
        return makeTensor(name, DT.FLOAT, [a.floats?.length ?? 0], Float32Array.from(a.floats ?? []));
      case "value_int":
        return makeTensor(name, DT.INT64, [], BigInt64Array.of(int64(a.i ?? 0)));
      case "value_ints":
        return makeTensor(name, DT.INT64, [a.ints?.length ?? 0], BigInt64Array.from(a.ints ?? [], int64));
    }
  }
  return undefined;
}

/** number → int64 bigint, keeping the INT64 max/min sentinels (which are ±2^63 as doubles). */
function int64(n: number): bigint {
  if (n >= 2 ** 63) return 2n ** 63n - 1n;
  if (n <= -(2 ** 63)) return -(2n ** 63n);
  return BigInt(Math.trunc(n));
}

/** An embedding table and its row count: the vocabulary the model takes (token ids) or its longest input (positions). */
export interface TokenTable {
  /** The initializer holding the table (the int8 data of a dequantized one). */
  name: string;
  rows: number;
}

/**
 * The table the ids inputs `ids` look up: a Gather of an initializer (or of a
 * DequantizeLinear of one) at the ids or at a Cast of them, or the word
 * embedding of an `EmbedLayerNormalization` (onnxruntime's transformer
 * optimizer), whose first input is the ids.
 *
 * @returns the table, or undefined when the graph reads the ids otherwise
 */
export function tokenEmbeddingTable(model: GraphOutline, ids: ReadonlySet<string>): TokenTable | undefined {
  const g = model.graph;
  const idNames = new Set(ids);
  for (const n of g.node)
    if (n.opType === "Cast" && idNames.has(n.input[0] ?? "")) for (const o of n.output) idNames.add(o);
  const inits = new Map(g.initializer.map((t) => [t.name, t]));
  const producers = new Map<string, GraphOutline["graph"]["node"][number]>();
  for (const n of g.node) for (const o of n.output) producers.set(o, n);
  for (const n of g.node) {
    let table: string;
    if (n.opType === "Gather" && idNames.has(n.input[1] ?? "")) table = n.input[0] ?? "";
    else if (n.opType === "EmbedLayerNormalization" && idNames.has(n.input[0] ?? ""))
      table = n.input[2] ?? "";
    else continue;
    const dq = producers.get(table);
    if (dq !== undefined && dq.opType === "DequantizeLinear") table = dq.input[0] ?? "";
    const rows = inits.get(table)?.dims[0];
    if (rows !== undefined && rows > 0) return { name: table, rows };
  }
  return undefined;
}

/**
 * The position-embedding table of a model (an initializer of two dims named
 * `*position_embeddings*`, as every BERT-family exporter names it), or
 * undefined when it has none.
 */
export function positionTable(model: GraphOutline): TokenTable | undefined {
  for (const t of model.graph.initializer) {
    if (/position_embeddings/i.test(t.name) && t.dims.length === 2 && t.dims[0]! > 0)
      return { name: t.name, rows: t.dims[0]! };
  }
  return undefined;
}
