/**
 * Constructors for nodes, attributes, value infos, graphs and models, so passes
 * and fixtures build ONNX structures in one line each instead of spelling out
 * every proto field.
 */
import { QuantdError } from "../errors.ts";
import type {
  AttributeProto,
  DataType,
  Dimension,
  GraphProto,
  ModelProto,
  NodeProto,
  OperatorSetId,
  StringStringEntry,
  TensorProto,
  ValueInfoProto,
} from "./types.ts";
import { AttributeType } from "./types.ts";

/**
 * An attribute value for {@link makeNode}. Plain values are typed by shape:
 * an integer number → INT, a non-integer → FLOAT, a boolean → INT 0/1, a
 * string or Uint8Array → STRING, a number[] → INTS when all are integers else
 * FLOATS, a string[] → STRINGS, a tensor → TENSOR, a graph → GRAPH. Where that
 * guess would be wrong (`epsilon: 1`, `scales: [1, 2]`, an empty list) say so
 * with a wrapper: `{ float: 1 }`, `{ floats: [1, 2] }`, `{ int: 0 }`, `{ ints: [] }`.
 */
export type AttrValue =
  | number
  | boolean
  | string
  | Uint8Array
  | TensorProto
  | GraphProto
  | number[]
  | string[]
  | TensorProto[]
  | GraphProto[]
  | { int: number }
  | { float: number }
  | { ints: number[] }
  | { floats: number[] }
  | { strings: string[] };

/**
 * INT64_MAX as a number attribute or dim (`Slice` ends "to the end"). It is 2^63
 * as a double; the codec writes it as the exact int64 9223372036854775807.
 */
export const INT64_MAX: number = 2 ** 63;

/** INT64_MIN as a number attribute or dim (exactly -2^63). */
export const INT64_MIN: number = -(2 ** 63);

const utf8 = new TextEncoder();

function isTensor(v: object): v is TensorProto {
  return "dataType" in v && "dims" in v;
}

function isGraph(v: object): v is GraphProto {
  return "node" in v && "initializer" in v;
}

/**
 * Builds one attribute, inferring its type (see {@link AttrValue}).
 *
 * @throws USAGE when the type cannot be inferred (an empty list, a mixed list)
 */
export function makeAttribute(name: string, value: AttrValue): AttributeProto {
  if (typeof value === "number") {
    return Number.isInteger(value)
      ? { name, type: AttributeType.INT, i: value }
      : { name, type: AttributeType.FLOAT, f: value };
  }
  if (typeof value === "boolean") return { name, type: AttributeType.INT, i: value ? 1 : 0 };
  if (typeof value === "string") return { name, type: AttributeType.STRING, s: utf8.encode(value) };
  if (value instanceof Uint8Array) return { name, type: AttributeType.STRING, s: value };
  if (Array.isArray(value)) {
    if (value.length === 0) {
      throw new QuantdError(
        "USAGE",
        `attribute ${name}: an empty list needs a type; use { ints: [] } or { floats: [] }`,
      );
    }
    if (value.every((v) => typeof v === "number")) {
      const nums = value as number[];
      return nums.every(Number.isInteger)
        ? { name, type: AttributeType.INTS, ints: [...nums] }
        : { name, type: AttributeType.FLOATS, floats: [...nums] };
    }
    if (value.every((v) => typeof v === "string")) {
      return { name, type: AttributeType.STRINGS, strings: (value as string[]).map((s) => utf8.encode(s)) };
    }
    if (value.every((v) => typeof v === "object" && isTensor(v))) {
      return { name, type: AttributeType.TENSORS, tensors: value as TensorProto[] };
    }
    if (value.every((v) => typeof v === "object" && isGraph(v))) {
      return { name, type: AttributeType.GRAPHS, graphs: value as GraphProto[] };
    }
    throw new QuantdError(
      "USAGE",
      `attribute ${name}: a list must hold numbers, strings, tensors or graphs only`,
    );
  }
  if ("int" in value) return { name, type: AttributeType.INT, i: value.int };
  if ("float" in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ("ints" in value) return { name, type: AttributeType.INTS, ints: [...value.ints] };
  if ("floats" in value) return { name, type: AttributeType.FLOATS, floats: [...value.floats] };
  if ("strings" in value) {
    return { name, type: AttributeType.STRINGS, strings: value.strings.map((s) => utf8.encode(s)) };
  }
  if (isTensor(value)) return { name, type: AttributeType.TENSOR, t: value };
  if (isGraph(value)) return { name, type: AttributeType.GRAPH, g: value };
  throw new QuantdError("USAGE", `attribute ${name}: unsupported value`);
}

/** Options for {@link makeNode}. */
export interface MakeNodeOptions {
  /** Node name. @defaultValue the first output's name */
  name?: string;
  /** Operator set domain. @defaultValue "" (the default ONNX domain) */
  domain?: string;
  /** Free text kept in the model file (`doc_string`). */
  docString?: string;
}

/**
 * Builds a node. Attributes with an `undefined` value are skipped, so optional
 * attributes can be passed through.
 *
 * @example
 * makeNode("Gemm", ["x", "w", "b"], ["y"], { transB: 1, alpha: { float: 1 } }, { name: "/classifier/Gemm" })
 * @throws USAGE when an attribute's type cannot be inferred
 */
export function makeNode(
  opType: string,
  inputs: readonly string[],
  outputs: readonly string[],
  attrs: Record<string, AttrValue | undefined> = {},
  options: MakeNodeOptions = {},
): NodeProto {
  const attribute: AttributeProto[] = [];
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) attribute.push(makeAttribute(k, v));
  const node: NodeProto = {
    name: options.name ?? outputs[0] ?? opType,
    opType,
    domain: options.domain ?? "",
    input: [...inputs],
    output: [...outputs],
    attribute,
  };
  if (options.docString !== undefined) node.docString = options.docString;
  return node;
}

/**
 * Builds a tensor value info. `dims` entries are sizes, symbolic names, or
 * null for an unknown dimension; leave `dims` out for an unknown shape.
 */
export function makeValueInfo(
  name: string,
  elemType: DataType,
  dims?: readonly (number | string | null)[],
): ValueInfoProto {
  const tensorType: NonNullable<NonNullable<ValueInfoProto["type"]>["tensorType"]> = { elemType };
  if (dims !== undefined) {
    tensorType.shape = {
      dim: dims.map(
        (d): Dimension => (d === null ? {} : typeof d === "number" ? { dimValue: d } : { dimParam: d }),
      ),
    };
  }
  return { name, type: { tensorType } };
}

/** Parts of a graph for {@link makeGraph}. */
export interface MakeGraphOptions {
  name: string;
  nodes: NodeProto[];
  inputs: ValueInfoProto[];
  outputs: ValueInfoProto[];
  /** @defaultValue [] */
  initializers?: TensorProto[];
  /** @defaultValue [] */
  valueInfo?: ValueInfoProto[];
  /** Free text kept in the model file (`doc_string`). */
  docString?: string;
}

/** Builds a graph (the arrays are used as given, not copied). */
export function makeGraph(options: MakeGraphOptions): GraphProto {
  const g: GraphProto = {
    name: options.name,
    node: options.nodes,
    initializer: options.initializers ?? [],
    input: options.inputs,
    output: options.outputs,
    valueInfo: options.valueInfo ?? [],
  };
  if (options.docString !== undefined) g.docString = options.docString;
  return g;
}

/** Parts of a model for {@link makeModel}. */
export interface MakeModelOptions {
  graph: GraphProto;
  /** Operator sets imported. @defaultValue [{ domain: "", version: 17 }] */
  opsets?: OperatorSetId[];
  /** @defaultValue 10 */
  irVersion?: number;
  /** @defaultValue "quantd" */
  producerName?: string;
  /** @defaultValue "" */
  producerVersion?: string;
  /** Free text kept in the model file (`doc_string`). @defaultValue "" */
  docString?: string;
  /** @defaultValue [] */
  metadataProps?: StringStringEntry[];
}

/** Builds a model around a graph. */
export function makeModel(options: MakeModelOptions): ModelProto {
  return {
    irVersion: options.irVersion ?? 10,
    opsetImport: options.opsets ?? [{ domain: "", version: 17 }],
    producerName: options.producerName ?? "quantd",
    producerVersion: options.producerVersion ?? "",
    domain: "",
    modelVersion: 0,
    docString: options.docString ?? "",
    graph: options.graph,
    metadataProps: options.metadataProps ?? [],
  };
}
