/**
 * A model's graph in outline, read from its file by positioned reads: each
 * node's operator and edges, each initializer's name and dims, never a
 * tensor's data. A runner bounding its tokenizer by the model's tables
 * (`positionTable`, `tokenEmbeddingTable` of graph.ts) reads a few hundred KB
 * this way whatever the model's size, where decoding the file would hold all
 * of it (a 400 MB self-contained model, in memory beside onnxruntime's copy
 * at every load).
 */
import { type FileHandle, open } from "node:fs/promises";
import { MalformedProto, ProtoFileReader } from "./proto-reader.ts";
import type { DataType, Dimension, NodeProto, TensorProto, TypeProto, ValueInfoProto } from "./types.ts";

/** The outline: what the table lookups of graph.ts read of a model. */
export interface GraphOutline {
  graph: {
    node: Pick<NodeProto, "opType" | "input" | "output">[];
    initializer: Pick<TensorProto, "name" | "dims">[];
    /** The graph's inputs, with their tensor types (what finds the token ids input). */
    input: Pick<ValueInfoProto, "name" | "type">[];
    /** The graph's outputs, with their tensor types (what task detection reads). */
    output: Pick<ValueInfoProto, "name" | "type">[];
  };
}

/** Field numbers read (onnx.proto). */
const MODEL_GRAPH = 7;
const GRAPH_NODE = 1;
const GRAPH_INITIALIZER = 5;
const GRAPH_INPUT = 11;
const GRAPH_OUTPUT = 12;
const VALUE_NAME = 1;
const VALUE_TYPE = 2;
const TYPE_TENSOR = 1;
const TENSOR_TYPE_ELEM = 1;
const TENSOR_TYPE_SHAPE = 2;
const SHAPE_DIM = 1;
const DIM_VALUE = 1;
const DIM_PARAM = 2;
const NODE_INPUT = 1;
const NODE_OUTPUT = 2;
const NODE_OP_TYPE = 4;
const TENSOR_DIMS = 1;
const TENSOR_NAME = 8;

/** Reads the text of a length-delimited field. */
async function text(r: ProtoFileReader, f: Field): Promise<string> {
  return (await r.bytes(f.start, f.end - f.start)).toString("utf8");
}

/** One field of a message: its number, wire type and where its value lies. */
interface Field {
  field: number;
  wire: number;
  /** A varint's value (wire type 0). */
  value: number;
  /** Where a length-delimited value starts (else the value's start), and the field's end. */
  start: number;
  end: number;
}

/** The fields of the message in [`pos`, `end`), in order. @throws MalformedProto */
async function* fields(r: ProtoFileReader, pos: number, end: number): AsyncGenerator<Field> {
  while (pos < end) {
    const [tag, tagBytes] = await r.varint(pos);
    const at = pos + tagBytes;
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    let f: Field;
    if (wire === 0) {
      const [value, n] = await r.varint(at);
      f = { field, wire, value, start: at, end: at + n };
    } else if (wire === 2) {
      const [len, n] = await r.varint(at);
      f = { field, wire, value: 0, start: at + n, end: at + n + len };
    } else if (wire === 1 || wire === 5) {
      f = { field, wire, value: 0, start: at, end: at + (wire === 1 ? 8 : 4) };
    } else {
      throw new MalformedProto();
    }
    if (field === 0 || f.end > end) throw new MalformedProto();
    yield f;
    pos = f.end;
  }
}

/** A node's operator and edges. */
async function readNode(r: ProtoFileReader, node: Field): Promise<GraphOutline["graph"]["node"][number]> {
  const out = { opType: "", input: [] as string[], output: [] as string[] };
  for await (const f of fields(r, node.start, node.end)) {
    if (f.wire !== 2) continue;
    if (f.field === NODE_INPUT) out.input.push(await text(r, f));
    else if (f.field === NODE_OUTPUT) out.output.push(await text(r, f));
    else if (f.field === NODE_OP_TYPE) out.opType = await text(r, f);
  }
  return out;
}

/** An initializer's name and dims (plain or packed); its data is skipped over, unread. */
async function readInitializer(
  r: ProtoFileReader,
  tensor: Field,
): Promise<GraphOutline["graph"]["initializer"][number]> {
  const out = { name: "", dims: [] as number[] };
  for await (const f of fields(r, tensor.start, tensor.end)) {
    if (f.field === TENSOR_NAME && f.wire === 2) out.name = await text(r, f);
    else if (f.field === TENSOR_DIMS && f.wire === 0) out.dims.push(f.value);
    else if (f.field === TENSOR_DIMS && f.wire === 2) {
      for (let p = f.start; p < f.end; ) {
        const [dim, n] = await r.varint(p);
        out.dims.push(dim);
        p += n;
      }
    }
  }
  return out;
}

/** A graph input's or output's name and tensor type (element type and dims); other types are left out. */
async function readValueInfo(
  r: ProtoFileReader,
  value: Field,
): Promise<Pick<ValueInfoProto, "name" | "type">> {
  const out: Pick<ValueInfoProto, "name" | "type"> = { name: "" };
  for await (const f of fields(r, value.start, value.end)) {
    if (f.field === VALUE_NAME && f.wire === 2) out.name = await text(r, f);
    else if (f.field === VALUE_TYPE && f.wire === 2) {
      for await (const t of fields(r, f.start, f.end)) {
        if (t.field === TYPE_TENSOR && t.wire === 2) out.type = { tensorType: await readTensorType(r, t) };
      }
    }
  }
  return out;
}

async function readTensorType(
  r: ProtoFileReader,
  tensor: Field,
): Promise<NonNullable<TypeProto["tensorType"]>> {
  const out: NonNullable<TypeProto["tensorType"]> = { elemType: 0 };
  for await (const f of fields(r, tensor.start, tensor.end)) {
    if (f.field === TENSOR_TYPE_ELEM && f.wire === 0) out.elemType = f.value as DataType;
    else if (f.field === TENSOR_TYPE_SHAPE && f.wire === 2) {
      const dim: Dimension[] = [];
      for await (const d of fields(r, f.start, f.end)) {
        if (d.field === SHAPE_DIM && d.wire === 2) dim.push(await readDimension(r, d));
      }
      out.shape = { dim };
    }
  }
  return out;
}

async function readDimension(r: ProtoFileReader, dim: Field): Promise<Dimension> {
  const out: Dimension = {};
  for await (const f of fields(r, dim.start, dim.end)) {
    if (f.field === DIM_VALUE && f.wire === 0) out.dimValue = f.value;
    else if (f.field === DIM_PARAM && f.wire === 2) out.dimParam = await text(r, f);
  }
  return out;
}

/** The graph message's nodes, initializers, inputs and outputs, in file order. */
async function outlineOf(r: ProtoFileReader, graph: Field): Promise<GraphOutline> {
  const outline: GraphOutline = { graph: { node: [], initializer: [], input: [], output: [] } };
  for await (const f of fields(r, graph.start, graph.end)) {
    if (f.wire !== 2) continue;
    if (f.field === GRAPH_NODE) outline.graph.node.push(await readNode(r, f));
    else if (f.field === GRAPH_INITIALIZER) outline.graph.initializer.push(await readInitializer(r, f));
    else if (f.field === GRAPH_INPUT) outline.graph.input.push(await readValueInfo(r, f));
    else if (f.field === GRAPH_OUTPUT) outline.graph.output.push(await readValueInfo(r, f));
  }
  return outline;
}

/**
 * The outline of the model in `path`, or `undefined` when the file cannot be
 * read or its framing is not a model's (onnxruntime then names the problem).
 * An external-data model's side files are not opened: the outline holds no
 * data.
 */
export async function readGraphOutline(path: string): Promise<GraphOutline | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch {
    return undefined;
  }
  try {
    const r = new ProtoFileReader(fh, (await fh.stat()).size);
    for await (const f of fields(r, 0, r.size)) {
      if (f.field === MODEL_GRAPH && f.wire === 2) return await outlineOf(r, f);
    }
    return undefined;
  } catch {
    return undefined; // framing not a model's (MalformedProto), or a read that failed
  } finally {
    await fh.close().catch(() => undefined);
  }
}
