/**
 * A batch editor for one graph rewrite: passes queue node insertions and
 * replacements against the original node order, and {@link GraphRewrite.commit}
 * applies them in one sweep. Inserting right before the first consumer keeps
 * the node list topologically sorted (ONNX requires it) without re-sorting.
 */
import { QuantdError } from "../../errors.ts";
import type { AttributeProto, GraphProto, NodeProto, TensorProto } from "../../onnx/types.ts";
import { AttributeType } from "../../onnx/types.ts";
import { nodeKey } from "../plan.ts";

/** The domain of onnxruntime's contrib ops. */
export const MS_DOMAIN = "com.microsoft";

/** Builds a node (attributes given as plain ints, floats or int lists). */
export function node(
  opType: string,
  name: string,
  input: readonly string[],
  output: readonly string[],
  attrs: Record<string, number | readonly number[]> = {},
  domain = "",
): NodeProto {
  const attribute: AttributeProto[] = Object.entries(attrs).map(([k, v]): AttributeProto => {
    if (typeof v !== "number") return { name: k, type: AttributeType.INTS, ints: [...v] };
    return Number.isInteger(v)
      ? { name: k, type: AttributeType.INT, i: v }
      : { name: k, type: AttributeType.FLOAT, f: v };
  });
  return { name, opType, domain, input: [...input], output: [...output], attribute };
}

/**
 * DequantizeLinear(`inputs`: int tensor, scale, zero point) → a new float
 * tensor named after `base`, written right before `anchor` (its first reader);
 * `axis` for per-channel scales. Returns the float tensor's name.
 */
export function insertDequantize(
  rw: GraphRewrite,
  anchor: NodeProto,
  base: string,
  inputs: readonly [string, string, string],
  axis?: number,
): string {
  const out = rw.uniqueName(`${base}_DequantizeLinear_Output`);
  const dq = node(
    "DequantizeLinear",
    rw.uniqueName(`${base}_DequantizeLinear`),
    inputs,
    [out],
    axis === undefined ? {} : { axis },
  );
  rw.insertBefore(anchor, dq);
  return out;
}

/** Queued edits of one graph. */
export class GraphRewrite {
  readonly graph: GraphProto;
  readonly #names = new Set<string>();
  readonly #initializers = new Map<string, TensorProto>();
  readonly #byKey = new Map<string, NodeProto>();
  readonly #order = new Map<NodeProto, number>();
  readonly #before = new Map<NodeProto, NodeProto[]>();
  readonly #replace = new Map<NodeProto, NodeProto[]>();
  readonly #added: TensorProto[] = [];
  readonly #maybeUnused = new Set<string>();

  constructor(graph: GraphProto) {
    this.graph = graph;
    for (const t of graph.initializer) {
      this.#initializers.set(t.name, t);
      this.#names.add(t.name);
    }
    for (const v of [...graph.input, ...graph.output, ...graph.valueInfo]) this.#names.add(v.name);
    graph.node.forEach((n, i) => {
      this.#byKey.set(nodeKey(n, i), n);
      this.#order.set(n, i);
      if (n.name !== "") this.#names.add(n.name);
      for (const x of [...n.input, ...n.output]) if (x !== "") this.#names.add(x);
    });
  }

  /** `base`, or `base_1`, `base_2`… so that no tensor or node name repeats. */
  uniqueName(base: string): string {
    let name = base;
    for (let k = 1; this.#names.has(name); k++) name = `${base}_${k}`;
    this.#names.add(name);
    return name;
  }

  /** The initializer named `name` (added ones included). */
  initializer(name: string): TensorProto | undefined {
    return this.#initializers.get(name);
  }

  /** The node a plan refers to. @throws QUANT_FAILED when the plan does not match the graph */
  nodeByKey(key: string): NodeProto {
    const n = this.#byKey.get(key);
    if (n === undefined) throw new QuantdError("QUANT_FAILED", `planned node ${key} is not in the graph`);
    return n;
  }

  /** Position of an original node in the node list. */
  position(n: NodeProto): number {
    const p = this.#order.get(n);
    if (p === undefined) throw new QuantdError("INTERNAL", `node ${n.name} is not an original node`);
    return p;
  }

  /** Adds an initializer (its name must come from {@link uniqueName}). */
  addInitializer(t: TensorProto): string {
    this.#initializers.set(t.name, t);
    this.#added.push(t);
    return t.name;
  }

  /** Marks an original initializer for removal at commit when nothing reads it any more. */
  dropIfUnused(name: string): void {
    this.#maybeUnused.add(name);
  }

  /** Queues nodes to run right before `anchor` (an original node). */
  insertBefore(anchor: NodeProto, ...nodes: NodeProto[]): void {
    const list = this.#before.get(anchor);
    if (list === undefined) this.#before.set(anchor, [...nodes]);
    else list.push(...nodes);
  }

  /** Queues the replacement of an original node by `nodes` (empty to delete it). */
  replace(anchor: NodeProto, nodes: NodeProto[]): void {
    this.#replace.set(anchor, nodes);
  }

  /** Every original node reading `tensor`. */
  consumers(tensor: string): NodeProto[] {
    return this.graph.node.filter((n) => n.input.includes(tensor));
  }

  /** Applies the queued edits to the graph. */
  commit(): void {
    const out: NodeProto[] = [];
    for (const n of this.graph.node) {
      const before = this.#before.get(n);
      if (before !== undefined) out.push(...before);
      const repl = this.#replace.get(n);
      if (repl === undefined) out.push(n);
      else out.push(...repl);
    }
    this.graph.node = out;
    const used = new Set<string>();
    for (const n of out) for (const i of n.input) used.add(i);
    for (const o of this.graph.output) used.add(o.name);
    this.graph.initializer = [
      ...this.graph.initializer.filter((t) => !this.#maybeUnused.has(t.name) || used.has(t.name)),
      ...this.#added,
    ];
    this.#before.clear();
    this.#replace.clear();
    this.#added.length = 0;
    this.#maybeUnused.clear();
  }
}
