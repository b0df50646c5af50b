/**
 * ONNX model bytes ⇄ the in-memory {@link ModelProto}, and model files on disk
 * (with optional external data). protobufjs does the wire format from the
 * schema in `onnx-schema.ts`; this file converts its messages to and from our
 * plain types (int64 handling, presence of optional fields) and handles files.
 *
 * Fidelity: every field of the current spec round-trips (see `onnx-schema.ts`
 * for what a newer spec could add and protobufjs would drop). A model this codec
 * decoded re-encodes to the same tensor payload bytes; the shipped BERT
 * re-encodes byte-identically.
 */
import type { FileHandle } from "node:fs/promises";
import { open, readFile, stat } from "node:fs/promises";
import { basename, dirname, isAbsolute, relative, resolve, sep } from "node:path";
import { errnoOf, writeFileDurable } from "../core/files.ts";
import { QuantdError } from "../errors.ts";
import { modelProtoType, onnxType } from "./onnx-schema.ts";
import { dataTypeName, forEachTensor, isExternal, tensorByteLength, tensorRawBytes } from "./tensor.ts";
import { AttributeType } from "./types.ts";
import type {
  AttributeProto,
  DataType,
  Dimension,
  FunctionProto,
  GraphProto,
  ModelProto,
  NodeProto,
  OperatorSetId,
  SparseTensorProto,
  StringStringEntry,
  TensorAnnotation,
  TensorProto,
  TensorShapeProto,
  TrainingInfoProto,
  TypeProto,
  ValueInfoProto,
} from "./types.ts";

// ---------------------------------------------------------------------------
// int64 on the wire. protobufjs hands us Long objects (or numbers when long.js
// is missing) and accepts any {low, high} object back.

interface LongBits {
  low: number;
  high: number;
}
type PbInt64 = number | LongBits;

const TWO_32 = 4294967296;
const TWO_63 = 2 ** 63;
const INT64_MAX_BITS: LongBits = { low: -1, high: 0x7fffffff };
const INT64_MIN_BITS: LongBits = { low: 0, high: -0x80000000 };

/** Signed int64 → number. INT64_MAX becomes 2^63 (the nearest double) and is written back as INT64_MAX. */
function toNum(v: PbInt64): number {
  return typeof v === "number" ? v : (v.high | 0) * TWO_32 + (v.low >>> 0);
}

function toBig(v: PbInt64, unsigned: boolean): bigint {
  if (typeof v === "number") return BigInt(v);
  const high = unsigned ? v.high >>> 0 : v.high | 0;
  return (BigInt(high) << 32n) | BigInt(v.low >>> 0);
}

/**
 * number → wire int64. Doubles at or beyond ±2^63 clamp to INT64_MAX/MIN so the
 * sentinels exporters use (Slice `ends` = INT64_MAX) survive; protobufjs would
 * otherwise wrap 2^63 to INT64_MIN.
 */
function fromNum(n: number): PbInt64 {
  if (n >= TWO_63) return INT64_MAX_BITS;
  if (n <= -TWO_63) return INT64_MIN_BITS;
  return n;
}

function fromBig(b: bigint): LongBits {
  return { low: Number(b & 0xffffffffn) | 0, high: Number((b >> 32n) & 0xffffffffn) | 0 };
}

// ---------------------------------------------------------------------------
// Decoded protobufjs messages. Absent fields read as the prototype defaults;
// `has` tells present from absent where that matters for a faithful round trip.

interface PbEntry {
  key: string;
  value: string;
}
interface PbTensor {
  dims: PbInt64[];
  dataType: number;
  segment: { begin: PbInt64; end: PbInt64 } | null;
  floatData: number[];
  int32Data: number[];
  stringData: Uint8Array[];
  int64Data: PbInt64[];
  name: string;
  docString: string;
  rawData: Uint8Array;
  externalData: PbEntry[];
  dataLocation: number;
  doubleData: number[];
  uint64Data: PbInt64[];
  metadataProps: PbEntry[];
}
interface PbSparse {
  values: PbTensor | null;
  indices: PbTensor | null;
  dims: PbInt64[];
}
interface PbShape {
  dim: { dimValue: PbInt64; dimParam: string; denotation: string }[];
}
interface PbType {
  tensorType: { elemType: number; shape: PbShape | null } | null;
  sequenceType: { elemType: PbType | null } | null;
  mapType: { keyType: number; valueType: PbType | null } | null;
  optionalType: { elemType: PbType | null } | null;
  sparseTensorType: { elemType: number; shape: PbShape | null } | null;
  opaqueType: { domain: string; name: string } | null;
  denotation: string;
}
interface PbValueInfo {
  name: string;
  type: PbType | null;
  docString: string;
  metadataProps: PbEntry[];
}
interface PbAttribute {
  name: string;
  refAttrName: string;
  docString: string;
  type: number;
  f: number;
  i: PbInt64;
  s: Uint8Array;
  t: PbTensor | null;
  g: PbGraph | null;
  sparseTensor: PbSparse | null;
  tp: PbType | null;
  floats: number[];
  ints: PbInt64[];
  strings: Uint8Array[];
  tensors: PbTensor[];
  graphs: PbGraph[];
  sparseTensors: PbSparse[];
  typeProtos: PbType[];
}
interface PbNode {
  input: string[];
  output: string[];
  name: string;
  opType: string;
  domain: string;
  overload: string;
  attribute: PbAttribute[];
  docString: string;
  metadataProps: PbEntry[];
  deviceConfigurations: unknown[];
}
interface PbGraph {
  node: PbNode[];
  name: string;
  initializer: PbTensor[];
  sparseInitializer: PbSparse[];
  docString: string;
  input: PbValueInfo[];
  output: PbValueInfo[];
  valueInfo: PbValueInfo[];
  quantizationAnnotation: { tensorName: string; quantParameterTensorNames: PbEntry[] }[];
  metadataProps: PbEntry[];
}
interface PbOpset {
  domain: string;
  version: PbInt64;
}
interface PbFunction {
  name: string;
  input: string[];
  output: string[];
  attribute: string[];
  attributeProto: PbAttribute[];
  node: PbNode[];
  docString: string;
  opsetImport: PbOpset[];
  domain: string;
  overload: string;
  valueInfo: PbValueInfo[];
  metadataProps: PbEntry[];
}
interface PbModel {
  irVersion: PbInt64;
  opsetImport: PbOpset[];
  producerName: string;
  producerVersion: string;
  domain: string;
  modelVersion: PbInt64;
  docString: string;
  graph: PbGraph | null;
  metadataProps: PbEntry[];
  trainingInfo: {
    initialization: PbGraph | null;
    algorithm: PbGraph | null;
    initializationBinding: PbEntry[];
    updateBinding: PbEntry[];
  }[];
  functions: PbFunction[];
  configuration: unknown[];
}

const has = (m: object, key: string): boolean => Object.hasOwn(m, key);

/** Whether a repeated field holds anything (protobufjs gives every message its own empty arrays). */
function filled(m: object, key: string): boolean {
  const v: unknown = (m as Record<string, unknown>)[key];
  return Array.isArray(v) && v.length > 0;
}

/** A repeated field: the decoded array, or a fresh one (the prototype default is frozen and shared). */
function list<T>(m: object, key: string, arr: T[]): T[] {
  return has(m, key) ? arr : [];
}

function entriesIn(m: object, key: string, arr: PbEntry[]): StringStringEntry[] | undefined {
  return has(m, key) && arr.length > 0 ? arr.map((e) => ({ key: e.key, value: e.value })) : undefined;
}

function setIf<T extends object, K extends keyof T>(target: T, key: K, value: T[K] | undefined): void {
  if (value !== undefined) target[key] = value;
}

function strIn(m: object, key: string, v: string): string | undefined {
  return has(m, key) ? v : undefined;
}

// ---------------------------------------------------------------------------
// protobufjs message → our types

function tensorIn(m: PbTensor): TensorProto {
  const t: TensorProto = {
    name: m.name,
    dataType: m.dataType as DataType,
    dims: list(m, "dims", m.dims).map(toNum),
  };
  if (has(m, "rawData")) t.rawData = m.rawData;
  if (filled(m, "floatData")) t.floatData = m.floatData;
  if (filled(m, "int32Data")) t.int32Data = m.int32Data;
  if (filled(m, "int64Data")) t.int64Data = m.int64Data.map((v) => toBig(v, false));
  if (filled(m, "doubleData")) t.doubleData = m.doubleData;
  if (filled(m, "uint64Data")) t.uint64Data = m.uint64Data.map((v) => toBig(v, true));
  if (filled(m, "stringData")) t.stringData = m.stringData;
  if (has(m, "dataLocation")) t.dataLocation = m.dataLocation;
  setIf(t, "externalData", entriesIn(m, "externalData", m.externalData));
  setIf(t, "docString", strIn(m, "docString", m.docString));
  if (has(m, "segment") && m.segment !== null) {
    t.segment = { begin: toNum(m.segment.begin), end: toNum(m.segment.end) };
  }
  setIf(t, "metadataProps", entriesIn(m, "metadataProps", m.metadataProps));
  return t;
}

function emptyTensor(): PbTensor {
  return onnxType("TensorProto").create() as unknown as PbTensor;
}

function sparseIn(m: PbSparse): SparseTensorProto {
  return {
    values: tensorIn(m.values ?? emptyTensor()),
    indices: tensorIn(m.indices ?? emptyTensor()),
    dims: list(m, "dims", m.dims).map(toNum),
  };
}

function shapeIn(m: PbShape): TensorShapeProto {
  return {
    dim: list(m, "dim", m.dim).map((d) => {
      const out: Dimension = {};
      if (has(d, "dimValue")) out.dimValue = toNum(d.dimValue);
      if (has(d, "dimParam")) out.dimParam = d.dimParam;
      setIf(out, "denotation", strIn(d, "denotation", d.denotation));
      return out;
    }),
  };
}

function typeIn(m: PbType): TypeProto {
  const out: TypeProto = {};
  if (has(m, "tensorType") && m.tensorType !== null) {
    const tt = m.tensorType;
    out.tensorType = { elemType: tt.elemType as DataType };
    if (has(tt, "shape") && tt.shape !== null) out.tensorType.shape = shapeIn(tt.shape);
  } else if (has(m, "sequenceType") && m.sequenceType !== null) {
    const st = m.sequenceType;
    out.sequenceType = {};
    if (has(st, "elemType") && st.elemType !== null) out.sequenceType.elemType = typeIn(st.elemType);
  } else if (has(m, "mapType") && m.mapType !== null) {
    const mt = m.mapType;
    out.mapType = { keyType: mt.keyType as DataType };
    if (has(mt, "valueType") && mt.valueType !== null) out.mapType.valueType = typeIn(mt.valueType);
  } else if (has(m, "optionalType") && m.optionalType !== null) {
    const ot = m.optionalType;
    out.optionalType = {};
    if (has(ot, "elemType") && ot.elemType !== null) out.optionalType.elemType = typeIn(ot.elemType);
  } else if (has(m, "sparseTensorType") && m.sparseTensorType !== null) {
    const st = m.sparseTensorType;
    out.sparseTensorType = { elemType: st.elemType as DataType };
    if (has(st, "shape") && st.shape !== null) out.sparseTensorType.shape = shapeIn(st.shape);
  } else if (has(m, "opaqueType") && m.opaqueType !== null) {
    out.opaqueType = { domain: m.opaqueType.domain, name: m.opaqueType.name };
  }
  setIf(out, "denotation", strIn(m, "denotation", m.denotation));
  return out;
}

function valueInfoIn(m: PbValueInfo): ValueInfoProto {
  const v: ValueInfoProto = { name: m.name };
  if (has(m, "type") && m.type !== null) v.type = typeIn(m.type);
  setIf(v, "docString", strIn(m, "docString", m.docString));
  setIf(v, "metadataProps", entriesIn(m, "metadataProps", m.metadataProps));
  return v;
}

function attributeIn(m: PbAttribute): AttributeProto {
  const a: AttributeProto = { name: m.name, type: m.type as AttributeProto["type"] };
  if (has(m, "f")) a.f = m.f;
  if (has(m, "i")) a.i = toNum(m.i);
  if (has(m, "s")) a.s = m.s;
  if (has(m, "t") && m.t !== null) a.t = tensorIn(m.t);
  if (has(m, "g") && m.g !== null) a.g = graphIn(m.g);
  if (has(m, "sparseTensor") && m.sparseTensor !== null) a.sparseTensor = sparseIn(m.sparseTensor);
  if (has(m, "tp") && m.tp !== null) a.tp = typeIn(m.tp);
  if (filled(m, "floats") || m.type === AttributeType.FLOATS) a.floats = m.floats;
  if (filled(m, "ints") || m.type === AttributeType.INTS) a.ints = m.ints.map(toNum);
  if (filled(m, "strings") || m.type === AttributeType.STRINGS) a.strings = m.strings;
  if (filled(m, "tensors") || m.type === AttributeType.TENSORS) a.tensors = m.tensors.map(tensorIn);
  if (filled(m, "graphs") || m.type === AttributeType.GRAPHS) a.graphs = m.graphs.map(graphIn);
  if (filled(m, "sparseTensors") || m.type === AttributeType.SPARSE_TENSORS)
    a.sparseTensors = m.sparseTensors.map(sparseIn);
  if (filled(m, "typeProtos") || m.type === AttributeType.TYPE_PROTOS)
    a.typeProtos = m.typeProtos.map(typeIn);
  setIf(a, "refAttrName", strIn(m, "refAttrName", m.refAttrName));
  setIf(a, "docString", strIn(m, "docString", m.docString));
  return a;
}

function nodeIn(m: PbNode): NodeProto {
  const n: NodeProto = {
    name: m.name,
    opType: m.opType,
    domain: m.domain,
    input: list(m, "input", m.input),
    output: list(m, "output", m.output),
    attribute: list(m, "attribute", m.attribute).map(attributeIn),
  };
  setIf(n, "docString", strIn(m, "docString", m.docString));
  setIf(n, "overload", strIn(m, "overload", m.overload));
  setIf(n, "metadataProps", entriesIn(m, "metadataProps", m.metadataProps));
  if (filled(m, "deviceConfigurations")) n.other = { deviceConfigurations: m.deviceConfigurations };
  return n;
}

function graphIn(m: PbGraph): GraphProto {
  const g: GraphProto = {
    name: m.name,
    node: list(m, "node", m.node).map(nodeIn),
    initializer: list(m, "initializer", m.initializer).map(tensorIn),
    input: list(m, "input", m.input).map(valueInfoIn),
    output: list(m, "output", m.output).map(valueInfoIn),
    valueInfo: list(m, "valueInfo", m.valueInfo).map(valueInfoIn),
  };
  setIf(g, "docString", strIn(m, "docString", m.docString));
  if (filled(m, "sparseInitializer")) g.sparseInitializer = m.sparseInitializer.map(sparseIn);
  if (filled(m, "quantizationAnnotation")) {
    g.quantizationAnnotation = m.quantizationAnnotation.map(
      (q): TensorAnnotation => ({
        tensorName: q.tensorName,
        quantParameterTensorNames: list(q, "quantParameterTensorNames", q.quantParameterTensorNames).map(
          (e) => ({ key: e.key, value: e.value }),
        ),
      }),
    );
  }
  setIf(g, "metadataProps", entriesIn(m, "metadataProps", m.metadataProps));
  return g;
}

function opsetIn(m: PbOpset): OperatorSetId {
  return { domain: m.domain, version: toNum(m.version) };
}

function functionIn(m: PbFunction): FunctionProto {
  const f: FunctionProto = {
    name: m.name,
    domain: m.domain,
    input: list(m, "input", m.input),
    output: list(m, "output", m.output),
    attribute: list(m, "attribute", m.attribute),
    attributeProto: list(m, "attributeProto", m.attributeProto).map(attributeIn),
    node: list(m, "node", m.node).map(nodeIn),
    opsetImport: list(m, "opsetImport", m.opsetImport).map(opsetIn),
    valueInfo: list(m, "valueInfo", m.valueInfo).map(valueInfoIn),
  };
  setIf(f, "overload", strIn(m, "overload", m.overload));
  setIf(f, "docString", strIn(m, "docString", m.docString));
  setIf(f, "metadataProps", entriesIn(m, "metadataProps", m.metadataProps));
  return f;
}

function modelIn(m: PbModel, graph: PbGraph): ModelProto {
  const model: ModelProto = {
    irVersion: toNum(m.irVersion),
    opsetImport: list(m, "opsetImport", m.opsetImport).map(opsetIn),
    producerName: m.producerName,
    producerVersion: m.producerVersion,
    domain: m.domain,
    modelVersion: toNum(m.modelVersion),
    docString: m.docString,
    graph: graphIn(graph),
    metadataProps: list(m, "metadataProps", m.metadataProps).map((e) => ({ key: e.key, value: e.value })),
  };
  if (filled(m, "trainingInfo")) {
    model.trainingInfo = m.trainingInfo.map((ti): TrainingInfoProto => {
      const out: TrainingInfoProto = {
        initializationBinding: list(ti, "initializationBinding", ti.initializationBinding).map((e) => ({
          key: e.key,
          value: e.value,
        })),
        updateBinding: list(ti, "updateBinding", ti.updateBinding).map((e) => ({
          key: e.key,
          value: e.value,
        })),
      };
      if (has(ti, "initialization") && ti.initialization !== null)
        out.initialization = graphIn(ti.initialization);
      if (has(ti, "algorithm") && ti.algorithm !== null) out.algorithm = graphIn(ti.algorithm);
      return out;
    });
  }
  if (filled(m, "functions")) model.functions = m.functions.map(functionIn);
  if (filled(m, "configuration")) model.other = { configuration: m.configuration };
  return model;
}

// ---------------------------------------------------------------------------
// our types → plain objects protobufjs encodes. Scalars are written when set
// and not the default, except where the spec gives presence a meaning.

type Out = Record<string, unknown>;

/** An optional field: written when set, even to "" (a decoded model says which were present). */
function putOpt(o: Out, key: string, v: string | undefined): void {
  if (v !== undefined) o[key] = v;
}

/** A field our types always carry: written unless empty, the proto default. */
function putStr(o: Out, key: string, v: string | undefined): void {
  if (v !== undefined && v !== "") o[key] = v;
}

function putList<T>(o: Out, key: string, v: T[] | undefined): void {
  if (v !== undefined && v.length > 0) o[key] = v;
}

function tensorOut(t: TensorProto): Out {
  const o: Out = { dataType: t.dataType };
  putList(
    o,
    "dims",
    t.dims.map((d) => fromNum(d)),
  );
  putStr(o, "name", t.name);
  if (t.segment !== undefined)
    o["segment"] = { begin: fromNum(t.segment.begin), end: fromNum(t.segment.end) };
  if (t.rawData !== undefined) o["rawData"] = t.rawData;
  putList(o, "floatData", t.floatData);
  putList(o, "int32Data", t.int32Data);
  putList(o, "stringData", t.stringData);
  if (t.int64Data !== undefined && t.int64Data.length > 0) o["int64Data"] = t.int64Data.map(fromBig);
  putList(o, "doubleData", t.doubleData);
  if (t.uint64Data !== undefined && t.uint64Data.length > 0) o["uint64Data"] = t.uint64Data.map(fromBig);
  putOpt(o, "docString", t.docString);
  putList(o, "externalData", t.externalData);
  // Some writers (onnx's Python helpers) set DEFAULT explicitly; keep it when present.
  if (t.dataLocation !== undefined) o["dataLocation"] = t.dataLocation;
  putList(o, "metadataProps", t.metadataProps);
  return o;
}

function sparseOut(s: SparseTensorProto): Out {
  const o: Out = { values: tensorOut(s.values), indices: tensorOut(s.indices) };
  putList(o, "dims", s.dims.map(fromNum));
  return o;
}

function shapeOut(s: TensorShapeProto): Out {
  return {
    dim: s.dim.map((d) => {
      const o: Out = {};
      // A dimension with neither value nor param is "unknown"; a 0 value must still be written.
      if (d.dimValue !== undefined) o["dimValue"] = fromNum(d.dimValue);
      else if (d.dimParam !== undefined) o["dimParam"] = d.dimParam;
      putOpt(o, "denotation", d.denotation);
      return o;
    }),
  };
}

function typeOut(t: TypeProto): Out {
  const o: Out = {};
  if (t.tensorType !== undefined) {
    const tt: Out = { elemType: t.tensorType.elemType };
    if (t.tensorType.shape !== undefined) tt["shape"] = shapeOut(t.tensorType.shape);
    o["tensorType"] = tt;
  } else if (t.sequenceType !== undefined) {
    const et = t.sequenceType.elemType;
    o["sequenceType"] = et === undefined ? {} : { elemType: typeOut(et) };
  } else if (t.mapType !== undefined) {
    const vt = t.mapType.valueType;
    o["mapType"] =
      vt === undefined
        ? { keyType: t.mapType.keyType }
        : { keyType: t.mapType.keyType, valueType: typeOut(vt) };
  } else if (t.optionalType !== undefined) {
    const et = t.optionalType.elemType;
    o["optionalType"] = et === undefined ? {} : { elemType: typeOut(et) };
  } else if (t.sparseTensorType !== undefined) {
    const st: Out = { elemType: t.sparseTensorType.elemType };
    if (t.sparseTensorType.shape !== undefined) st["shape"] = shapeOut(t.sparseTensorType.shape);
    o["sparseTensorType"] = st;
  } else if (t.opaqueType !== undefined) {
    o["opaqueType"] = { domain: t.opaqueType.domain, name: t.opaqueType.name };
  }
  putOpt(o, "denotation", t.denotation);
  return o;
}

function valueInfoOut(v: ValueInfoProto): Out {
  const o: Out = {};
  putStr(o, "name", v.name);
  if (v.type !== undefined) o["type"] = typeOut(v.type);
  putOpt(o, "docString", v.docString);
  putList(o, "metadataProps", v.metadataProps);
  return o;
}

function attributeOut(a: AttributeProto): Out {
  const o: Out = { name: a.name, type: a.type };
  if (a.f !== undefined) o["f"] = a.f;
  if (a.i !== undefined) o["i"] = fromNum(a.i);
  if (a.s !== undefined) o["s"] = a.s;
  if (a.t !== undefined) o["t"] = tensorOut(a.t);
  if (a.g !== undefined) o["g"] = graphOut(a.g);
  if (a.sparseTensor !== undefined) o["sparseTensor"] = sparseOut(a.sparseTensor);
  if (a.tp !== undefined) o["tp"] = typeOut(a.tp);
  putList(o, "floats", a.floats);
  if (a.ints !== undefined && a.ints.length > 0) o["ints"] = a.ints.map(fromNum);
  putList(o, "strings", a.strings);
  if (a.tensors !== undefined && a.tensors.length > 0) o["tensors"] = a.tensors.map(tensorOut);
  if (a.graphs !== undefined && a.graphs.length > 0) o["graphs"] = a.graphs.map(graphOut);
  if (a.sparseTensors !== undefined && a.sparseTensors.length > 0)
    o["sparseTensors"] = a.sparseTensors.map(sparseOut);
  if (a.typeProtos !== undefined && a.typeProtos.length > 0) o["typeProtos"] = a.typeProtos.map(typeOut);
  putOpt(o, "refAttrName", a.refAttrName);
  putOpt(o, "docString", a.docString);
  return o;
}

function nodeOut(n: NodeProto): Out {
  const o: Out = {};
  putList(o, "input", n.input);
  putList(o, "output", n.output);
  putStr(o, "name", n.name);
  putStr(o, "opType", n.opType);
  putStr(o, "domain", n.domain);
  putOpt(o, "overload", n.overload);
  if (n.attribute.length > 0) o["attribute"] = n.attribute.map(attributeOut);
  putOpt(o, "docString", n.docString);
  putList(o, "metadataProps", n.metadataProps);
  const dc = n.other?.["deviceConfigurations"];
  if (Array.isArray(dc)) o["deviceConfigurations"] = dc;
  return o;
}

function graphOut(g: GraphProto): Out {
  const o: Out = {};
  if (g.node.length > 0) o["node"] = g.node.map(nodeOut);
  putStr(o, "name", g.name);
  if (g.initializer.length > 0) o["initializer"] = g.initializer.map(tensorOut);
  if (g.sparseInitializer !== undefined && g.sparseInitializer.length > 0) {
    o["sparseInitializer"] = g.sparseInitializer.map(sparseOut);
  }
  putOpt(o, "docString", g.docString);
  if (g.input.length > 0) o["input"] = g.input.map(valueInfoOut);
  if (g.output.length > 0) o["output"] = g.output.map(valueInfoOut);
  if (g.valueInfo.length > 0) o["valueInfo"] = g.valueInfo.map(valueInfoOut);
  putList(o, "quantizationAnnotation", g.quantizationAnnotation);
  putList(o, "metadataProps", g.metadataProps);
  return o;
}

function opsetOut(s: OperatorSetId): Out {
  const o: Out = { version: fromNum(s.version) };
  putStr(o, "domain", s.domain);
  return o;
}

function functionOut(f: FunctionProto): Out {
  const o: Out = {};
  putStr(o, "name", f.name);
  putList(o, "input", f.input);
  putList(o, "output", f.output);
  putList(o, "attribute", f.attribute);
  if (f.attributeProto.length > 0) o["attributeProto"] = f.attributeProto.map(attributeOut);
  if (f.node.length > 0) o["node"] = f.node.map(nodeOut);
  putOpt(o, "docString", f.docString);
  if (f.opsetImport.length > 0) o["opsetImport"] = f.opsetImport.map(opsetOut);
  putStr(o, "domain", f.domain);
  putOpt(o, "overload", f.overload);
  if (f.valueInfo.length > 0) o["valueInfo"] = f.valueInfo.map(valueInfoOut);
  putList(o, "metadataProps", f.metadataProps);
  return o;
}

function modelOut(m: ModelProto): Out {
  const o: Out = { irVersion: fromNum(m.irVersion) };
  putStr(o, "producerName", m.producerName);
  putStr(o, "producerVersion", m.producerVersion);
  putStr(o, "domain", m.domain);
  if (m.modelVersion !== 0) o["modelVersion"] = fromNum(m.modelVersion);
  putStr(o, "docString", m.docString);
  o["graph"] = graphOut(m.graph);
  if (m.opsetImport.length > 0) o["opsetImport"] = m.opsetImport.map(opsetOut);
  putList(o, "metadataProps", m.metadataProps);
  if (m.trainingInfo !== undefined && m.trainingInfo.length > 0) {
    o["trainingInfo"] = m.trainingInfo.map((ti) => {
      const t: Out = {};
      if (ti.initialization !== undefined) t["initialization"] = graphOut(ti.initialization);
      if (ti.algorithm !== undefined) t["algorithm"] = graphOut(ti.algorithm);
      putList(t, "initializationBinding", ti.initializationBinding);
      putList(t, "updateBinding", ti.updateBinding);
      return t;
    });
  }
  if (m.functions !== undefined && m.functions.length > 0) o["functions"] = m.functions.map(functionOut);
  const cfg = m.other?.["configuration"];
  if (Array.isArray(cfg)) o["configuration"] = cfg;
  return o;
}

// ---------------------------------------------------------------------------
// Bytes

/** Largest encoded model protobuf allows (2 GiB - 1). */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;

/** The highest IR version we take as plausible when checking that bytes are a model. */
const MAX_IR_VERSION = 64;

/** Whether the bytes start like a ModelProto: field 1 (ir_version, varint) with a plausible version. */
function startsLikeModel(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x08 && bytes[1]! >= 1 && bytes[1]! <= MAX_IR_VERSION;
}

/** Visits every graph of a model: the main graph, training graphs and function bodies (as graphs). */
function forEachModelTensor(model: ModelProto, fn: (t: TensorProto) => void): void {
  forEachTensor(model.graph, fn);
  for (const ti of model.trainingInfo ?? []) {
    if (ti.initialization !== undefined) forEachTensor(ti.initialization, fn);
    if (ti.algorithm !== undefined) forEachTensor(ti.algorithm, fn);
  }
  for (const f of model.functions ?? []) {
    forEachTensor({ name: f.name, node: f.node, initializer: [], input: [], output: [], valueInfo: [] }, fn);
  }
}

/** Rough encoded size: payload bytes plus a generous allowance for the structure. */
function estimateEncodedSize(model: ModelProto): number {
  let size = 1 << 16;
  const perNode = 256;
  const countNodes = (g: GraphProto): void => {
    size += g.node.length * perNode + (g.input.length + g.output.length + g.valueInfo.length) * 128;
  };
  countNodes(model.graph);
  forEachModelTensor(model, (t) => {
    size += 128 + t.name.length;
    if (t.rawData !== undefined) size += t.rawData.byteLength;
    size +=
      (t.floatData?.length ?? 0) * 5 + (t.int32Data?.length ?? 0) * 10 + (t.doubleData?.length ?? 0) * 9;
    size += ((t.int64Data?.length ?? 0) + (t.uint64Data?.length ?? 0)) * 10;
    for (const s of t.stringData ?? []) size += s.byteLength + 5;
  });
  return size;
}

function describe(source: string | undefined): string {
  return source === undefined ? "the bytes" : source;
}

/** Decodes, classifying failures; `source` names the file in messages. */
function decodeFrom(bytes: Uint8Array, source: string | undefined): ModelProto {
  const what = describe(source);
  if (bytes.byteLength === 0) {
    throw new QuantdError(
      "MODEL_TRUNCATED",
      `${what} ${source === undefined ? "are" : "is"} empty, not an ONNX model`,
    );
  }
  let pb: PbModel;
  try {
    // A plain Uint8Array view: given a Buffer, protobufjs would hand out Buffer slices.
    const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    pb = modelProtoType().decode(view) as unknown as PbModel;
  } catch (err) {
    if (startsLikeModel(bytes)) {
      throw new QuantdError("MODEL_TRUNCATED", `${what} ends early: the ONNX model is truncated`, {
        cause: err,
        details: { bytes: bytes.byteLength },
      });
    }
    throw new QuantdError(
      "MODEL_NOT_ONNX",
      `${what} ${source === undefined ? "are" : "is"} not an ONNX model`,
      {
        cause: err,
      },
    );
  }
  const irVersion = toNum(pb.irVersion);
  const graph = has(pb, "graph") ? pb.graph : null;
  const looksTruncated = startsLikeModel(bytes);
  if (graph === null || pb.opsetImport.length === 0) {
    if (looksTruncated) {
      throw new QuantdError(
        "MODEL_TRUNCATED",
        `${what} ends early: the ONNX model has no ${graph === null ? "graph" : "opset imports"}`,
        { details: { bytes: bytes.byteLength } },
      );
    }
    throw new QuantdError(
      "MODEL_NOT_ONNX",
      `${what} ${source === undefined ? "are" : "is"} not an ONNX model`,
    );
  }
  if (!(irVersion > 0 && irVersion <= MAX_IR_VERSION)) {
    throw new QuantdError("MODEL_NOT_ONNX", `${what}: not an ONNX model (IR version ${irVersion})`);
  }
  for (const n of graph.node) {
    if (n.opType === "")
      throw new QuantdError("MODEL_NOT_ONNX", `${what}: not an ONNX model (node without op type)`);
  }
  return modelIn(pb, graph);
}

/**
 * Decodes an ONNX ModelProto. Tensor `rawData` are views into `bytes` (no
 * copy), so `bytes` must not be modified while the model is in use.
 *
 * Bytes that decode but start with the ir_version tag and a plausible version
 * (`08 01`…`08 40`) are reported as truncated rather than "not ONNX": that is
 * how a cut-off model file looks.
 *
 * @throws MODEL_TRUNCATED when `bytes` is empty or ends inside the model
 * @param source - the file the bytes came from, named in error messages @defaultValue "the bytes"
 * @throws MODEL_NOT_ONNX when `bytes` is not a ModelProto (no graph, no opset imports, implausible IR version, …)
 */
export function decodeModel(bytes: Uint8Array, source?: string): ModelProto {
  return decodeFrom(bytes, source);
}

// Large payloads are not copied through protobufjs's writer: the model is
// encoded as a list of chunks in which each big `raw_data` is the tensor's own
// buffer, framed by hand-written tags and lengths. Fields stay in field-number
// order, as protobufjs (and ONNX's C++ library) write them, so the bytes are
// the same as a plain encoding. encodeModel copies the chunks once into an
// exact-size buffer; saveModel writes them straight to the file, which spares a
// model-sized buffer (page-faulting in 440 MB took seconds on a busy board).

/** raw_data at least this big is passed through by reference. */
const PASS_THROUGH_BYTES = 1 << 16;

/**
 * A tensor's bytes in an external data file, copied from there into the file
 * being written in 1 MiB reads (see {@link inlineExternalData}): never in memory whole.
 */
interface FileSlice {
  file: string;
  offset: number;
  length: number;
}

/** A piece of an encoded model: bytes, or a range of an external data file. */
type Chunk = Uint8Array | FileSlice;

/** The main-graph initializers whose payload is written from their external data file. */
type StreamedTensors = ReadonlyMap<TensorProto, FileSlice>;

/** Field numbers that the chunked encoder splices by hand. */
const TENSOR_RAW_DATA = 9;
const GRAPH_INITIALIZER = 5;
const MODEL_GRAPH = 7;

function varintBytes(n: number, out: number[]): void {
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

/** Tag and length of a length-delimited field. */
function framing(field: number, length: number): Uint8Array {
  const out: number[] = [];
  varintBytes((field << 3) | 2, out);
  varintBytes(length, out);
  return Uint8Array.from(out);
}

/** Encodes the fields of `o` whose numbers are below (`"before"`) or above (`"after"`) `pivot`. */
function encodePart(typeName: string, o: Out, pivot: number, side: "before" | "after"): Uint8Array {
  const type = onnxType(typeName);
  const part: Out = {};
  for (const [key, value] of Object.entries(o)) {
    const id = type.fields[key]?.id;
    if (id === undefined) continue;
    if (side === "before" ? id < pivot : id > pivot) part[key] = value;
  }
  return type.encode(part).finish();
}

function chunkLength(c: Chunk): number {
  return c instanceof Uint8Array ? c.byteLength : c.length;
}

function chunksLength(chunks: readonly Chunk[]): number {
  let n = 0;
  for (const c of chunks) n += chunkLength(c);
  return n;
}

/** A tensor's chunks; one in `streamed` is written as if loaded: its reference dropped, its bytes as raw_data. */
function tensorChunks(t: TensorProto, streamed?: StreamedTensors): Chunk[] {
  const slice = streamed?.get(t);
  let payload: Chunk | undefined = t.rawData;
  let o = tensorOut(t);
  if (slice !== undefined) {
    const inline: TensorProto = { ...t };
    delete inline.dataLocation;
    delete inline.externalData;
    o = tensorOut(inline);
    payload = slice;
  }
  if (payload === undefined || (payload instanceof Uint8Array && payload.byteLength < PASS_THROUGH_BYTES))
    return [onnxType("TensorProto").encode(o).finish()];
  return [
    encodePart("TensorProto", o, TENSOR_RAW_DATA, "before"),
    framing(TENSOR_RAW_DATA, chunkLength(payload)),
    payload,
    encodePart("TensorProto", o, TENSOR_RAW_DATA, "after"),
  ];
}

function graphChunks(g: GraphProto, streamed?: StreamedTensors): Chunk[] {
  const o = graphOut(g);
  const chunks: Chunk[] = [encodePart("GraphProto", o, GRAPH_INITIALIZER, "before")];
  for (const t of g.initializer) {
    const tc = tensorChunks(t, streamed);
    chunks.push(framing(GRAPH_INITIALIZER, chunksLength(tc)), ...tc);
  }
  chunks.push(encodePart("GraphProto", o, GRAPH_INITIALIZER, "after"));
  return chunks;
}

/** @throws MODEL_INVALID over protobuf's 2 GiB limit */
function modelChunks(model: ModelProto, streamed?: StreamedTensors): Chunk[] {
  const o = modelOut({ ...model, graph: { ...model.graph, node: [], initializer: [] } });
  delete o["graph"];
  const graph = graphChunks(model.graph, streamed);
  const graphLength = chunksLength(graph);
  const chunks = [
    encodePart("ModelProto", o, MODEL_GRAPH, "before"),
    framing(MODEL_GRAPH, graphLength),
    ...graph,
    encodePart("ModelProto", o, MODEL_GRAPH, "after"),
  ];
  const total = chunksLength(chunks);
  if (total > PROTOBUF_LIMIT) {
    throw new QuantdError(
      "MODEL_INVALID",
      `model is ${total} bytes, over protobuf's limit of ${PROTOBUF_LIMIT}; save it with external data`,
    );
  }
  return chunks;
}

/**
 * Encodes a model. The result is a fresh buffer that shares nothing with the
 * model. Tensors keep their storage form (rawData or typed fields).
 *
 * @throws MODEL_INVALID when the model would exceed protobuf's 2 GiB limit (save it with external data)
 */
export function encodeModel(model: ModelProto): Uint8Array {
  const chunks = modelChunks(model);
  const out = new Uint8Array(chunksLength(chunks));
  let at = 0;
  for (const c of chunks) {
    // Without streamed tensors every chunk is bytes.
    if (!(c instanceof Uint8Array)) throw new QuantdError("INTERNAL", "encodeModel met a file slice");
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Files

/** A failed read of `path` (a `what`): FILE_NOT_FOUND when it is missing, else FILE_UNREADABLE. */
function readFailure(err: unknown, path: string, what: string): QuantdError {
  const code = errnoOf(err);
  if (code === "ENOENT" || code === "ENOTDIR") {
    return new QuantdError("FILE_NOT_FOUND", `${what} not found: ${path}`, { cause: err });
  }
  return new QuantdError("FILE_UNREADABLE", `cannot read ${what} ${path}`, { cause: err });
}

async function readBytes(path: string, what: string): Promise<Uint8Array> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    throw readFailure(err, path, what);
  }
  // A plain Uint8Array view, so subarrays taken from it are plain too (not Buffers).
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Options for {@link loadModel}. */
export interface LoadModelOptions {
  /**
   * Read tensors stored in external data files into memory (as `rawData`, with
   * the external reference removed). When false, such tensors keep their
   * `externalData` entries and have no payload.
   * @defaultValue true
   */
  loadExternalData?: boolean;
  /** Told each external data file read, with its size (a model's size on disk is the file plus these). */
  onExternalFile?: (path: string, bytes: number) => void;
}

interface ExternalRef {
  location: string;
  offset: number;
  length: number | undefined;
}

function externalRef(t: TensorProto, modelPath: string): ExternalRef {
  let location: string | undefined;
  let offset = 0;
  let length: number | undefined;
  for (const e of t.externalData ?? []) {
    if (e.key === "location") location = e.value;
    else if (e.key === "offset" || e.key === "length") {
      const v = Number(e.value);
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new QuantdError(
          "MODEL_INVALID",
          `${modelPath}: tensor ${t.name} has external ${e.key} "${e.value}"`,
        );
      }
      if (e.key === "offset") offset = v;
      else length = v;
    }
  }
  if (location === undefined || location === "") {
    throw new QuantdError("MODEL_INVALID", `${modelPath}: external tensor ${t.name} has no location`);
  }
  return { location, offset, length };
}

/** Resolves an external data location inside `dir`, refusing paths that leave it. */
function resolveInside(
  dir: string,
  location: string,
  modelPath: string,
  tensor: string,
  code: "MODEL_INVALID" | "USAGE" = "MODEL_INVALID",
): string {
  const full = resolve(dir, location);
  const rel = relative(dir, full);
  if (isAbsolute(location) || rel === "" || rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw new QuantdError(
      code,
      `${modelPath}: external data location "${location}" of tensor ${tensor} is outside the model's directory`,
    );
  }
  return full;
}

/** A tensor kept in an external data file: its reference, and the file it names (inside the model's directory). */
interface ExternalTensor {
  tensor: TensorProto;
  ref: ExternalRef;
  file: string;
}

/**
 * The external tensors of `model`, read from `modelPath`, in order; each is
 * resolved when reached, so a bad reference fails where a walk meets it.
 *
 * @throws MODEL_INVALID for a malformed reference or a location outside the model's directory
 */
function* externalTensors(model: ModelProto, modelPath: string): Generator<ExternalTensor> {
  const dir = dirname(resolve(modelPath));
  const pending: TensorProto[] = [];
  forEachModelTensor(model, (t) => {
    if (isExternal(t)) pending.push(t);
  });
  for (const tensor of pending) {
    const ref = externalRef(tensor, modelPath);
    yield { tensor, ref, file: resolveInside(dir, ref.location, modelPath, tensor.name) };
  }
}

async function loadExternalData(
  model: ModelProto,
  modelPath: string,
  onFile?: (path: string, bytes: number) => void,
): Promise<void> {
  const files = new Map<string, Uint8Array>();
  for (const { tensor: t, ref, file } of externalTensors(model, modelPath)) {
    let data = files.get(file);
    if (data === undefined) {
      data = await readBytes(file, `external data file of ${modelPath}`);
      files.set(file, data);
      onFile?.(file, data.byteLength);
    }
    t.rawData = data.subarray(ref.offset, externalEnd(t, ref, file, data.byteLength, modelPath));
    delete t.dataLocation;
    delete t.externalData;
  }
}

/**
 * Where an external tensor's bytes end in its file of `fileBytes` bytes.
 *
 * @throws MODEL_TRUNCATED when the file is too short for them, naming it
 * @throws MODEL_INVALID when their length is not the tensor's
 */
function externalEnd(
  t: TensorProto,
  ref: ExternalRef,
  file: string,
  fileBytes: number,
  modelPath: string,
): number {
  const end = ref.length === undefined ? fileBytes : ref.offset + ref.length;
  if (end > fileBytes || ref.offset > fileBytes) {
    throw new QuantdError(
      "MODEL_TRUNCATED",
      `external data file ${file} is truncated: tensor ${t.name} needs bytes ${ref.offset}..${end}, file has ${fileBytes}`,
    );
  }
  const expected = tensorByteLength(t);
  if (end - ref.offset !== expected) {
    throw new QuantdError(
      "MODEL_INVALID",
      `${modelPath}: external tensor ${t.name} (${dataTypeName(t.dataType)} ${JSON.stringify(t.dims)}) ` +
        `has ${end - ref.offset} bytes, expected ${expected}`,
    );
  }
  return end;
}

/** The size of an external data file. @throws FILE_NOT_FOUND | FILE_UNREADABLE, as {@link readBytes} */
async function externalFileBytes(file: string, modelPath: string): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch (err) {
    throw readFailure(err, file, `external data file of ${modelPath}`);
  }
}

/**
 * The external tensors of `model` as file slices, checked against the files'
 * sizes as {@link loadModel} checks them against their bytes.
 */
async function locateExternalData(
  model: ModelProto,
  modelPath: string,
): Promise<Map<TensorProto, FileSlice>> {
  const sizes = new Map<string, number>();
  const slices = new Map<TensorProto, FileSlice>();
  for (const { tensor: t, ref, file } of externalTensors(model, modelPath)) {
    let bytes = sizes.get(file);
    if (bytes === undefined) {
      bytes = await externalFileBytes(file, modelPath);
      sizes.set(file, bytes);
    }
    const end = externalEnd(t, ref, file, bytes, modelPath);
    slices.set(t, { file, offset: ref.offset, length: end - ref.offset });
  }
  return slices;
}

/**
 * Writes the model at `path`, which keeps tensors in external data files, as
 * one self-contained file at `target` (atomically, as {@link saveModel}): the
 * same bytes as saving `loadModel(path)` with `externalData: false`, but each
 * main-graph initializer's payload is copied from its side file in 1 MiB
 * reads, so the model is never in memory whole (a board promoting a large
 * model would otherwise hold it twice). The few external tensors elsewhere
 * (node attributes, subgraphs, functions) are read into memory.
 *
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE | MODEL_TRUNCATED | MODEL_NOT_ONNX | MODEL_INVALID, as {@link loadModel}
 *   (a side file cut short while it is copied is MODEL_TRUNCATED too)
 * @throws MODEL_INVALID when the model would exceed protobuf's 2 GiB limit
 * @throws DISK_FULL | FILE_WRITE_FAILED when the file cannot be written (nothing is left behind)
 */
export async function inlineExternalData(path: string, target: string): Promise<void> {
  const model = await loadModel(path, { loadExternalData: false });
  const slices = await locateExternalData(model, path);
  const mainGraph = new Set(model.graph.initializer);
  const streamed = new Map<TensorProto, FileSlice>();
  for (const [t, slice] of slices) {
    if (mainGraph.has(t)) {
      streamed.set(t, slice);
      continue;
    }
    t.rawData = await readSlice(slice);
    delete t.dataLocation;
    delete t.externalData;
  }
  const chunks = modelChunks(model, streamed);
  await writeFileDurable(target, (fh) => writeChunks(fh, chunks));
}

/**
 * Reads an ONNX model file and, by default, its external data.
 *
 * @throws FILE_NOT_FOUND when the model or an external data file does not exist
 * @throws FILE_UNREADABLE when it cannot be read (a directory, no permission)
 * @throws MODEL_TRUNCATED when the file (or an external data file) is empty or ends early
 * @throws MODEL_NOT_ONNX when the file is not an ONNX model
 * @throws MODEL_INVALID when an external data reference is malformed or leaves the model's directory
 */
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<ModelProto> {
  const bytes = await readBytes(path, "model file");
  const model = decodeFrom(bytes, path);
  if (options.loadExternalData ?? true) await loadExternalData(model, path, options.onExternalFile);
  return model;
}

/**
 * The external data files the tensors of the model at `path` refer to,
 * resolved and each once (none for a self-contained model): its size on disk
 * is its file plus these. Reads the model file, not the data.
 *
 * @throws as {@link loadModel}
 */
export async function externalDataFiles(path: string): Promise<string[]> {
  const model = await loadModel(path, { loadExternalData: false });
  return [...new Set(Array.from(externalTensors(model, path), (e) => e.file))];
}

/** External data settings for {@link saveModel}. */
export interface ExternalDataOptions {
  /** Side file name, relative to the model's directory. @defaultValue `<model file name>.data` */
  location?: string;
  /** Initializers with at least this many payload bytes go to the side file. @defaultValue 1024 */
  threshold?: number;
}

/** Options for {@link saveModel}. */
export interface SaveModelOptions {
  /**
   * `true` or settings: move large initializers to a side file. `false`: keep
   * everything in the model file. Unset: only when the model file would exceed
   * protobuf's 2 GiB limit.
   * @defaultValue undefined (automatic)
   */
  externalData?: boolean | ExternalDataOptions;
}

/** Offsets in the side file are multiples of this, so ORT can map tensors straight from the page cache. */
const EXTERNAL_ALIGNMENT = 4096;

interface ExternalPlan {
  model: ModelProto;
  location: string;
  chunks: { offset: number; bytes: Uint8Array }[];
}

/** A shallow copy of `model` whose large main-graph initializers point into a side file. */
function planExternal(model: ModelProto, options: ExternalDataOptions, modelPath: string): ExternalPlan {
  const location = options.location ?? `${basename(modelPath)}.data`;
  const dir = dirname(resolve(modelPath));
  resolveInside(dir, location, modelPath, "(all)", "USAGE");
  if (resolve(dir, location) === resolve(modelPath)) {
    throw new QuantdError("USAGE", `external data location ${location} is the model file itself`);
  }
  const threshold = options.threshold ?? 1024;
  const chunks: ExternalPlan["chunks"] = [];
  let offset = 0;
  const initializer = model.graph.initializer.map((t) => {
    if (t.dataType === 8 || isExternal(t)) return t;
    const bytes = tensorRawBytes(t);
    if (bytes.byteLength < threshold) return t;
    offset = Math.ceil(offset / EXTERNAL_ALIGNMENT) * EXTERNAL_ALIGNMENT;
    chunks.push({ offset, bytes });
    const ext: TensorProto = {
      name: t.name,
      dataType: t.dataType,
      dims: t.dims,
      dataLocation: 1,
      externalData: [
        { key: "location", value: location },
        { key: "offset", value: String(offset) },
        { key: "length", value: String(bytes.byteLength) },
      ],
    };
    if (t.docString !== undefined) ext.docString = t.docString;
    if (t.metadataProps !== undefined) ext.metadataProps = t.metadataProps;
    offset += bytes.byteLength;
    return ext;
  });
  return { model: { ...model, graph: { ...model.graph, initializer } }, location, chunks };
}

async function writeAll(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.byteLength - done, position + done);
    if (bytesWritten <= 0) throw new Error("write made no progress");
    done += bytesWritten;
  }
}

function sliceUnreadable(file: string, err: unknown): QuantdError {
  return new QuantdError("FILE_UNREADABLE", `cannot read external data file ${file}`, { cause: err });
}

/** A slice's file ended at `at`: it shrank after it was checked. */
function sliceCutShort(slice: FileSlice, at: number): QuantdError {
  return new QuantdError(
    "MODEL_TRUNCATED",
    `external data file ${slice.file} is truncated: it ended at byte ${at} while it was read`,
  );
}

/** Reads `length` bytes of `handle` at `position` into `into` at `at`; the bytes read (0 at the end). */
async function readAt(
  handle: FileHandle,
  file: string,
  into: Uint8Array,
  at: number,
  length: number,
  position: number,
): Promise<number> {
  try {
    return (await handle.read(into, at, length, position)).bytesRead;
  } catch (err) {
    throw sliceUnreadable(file, err);
  }
}

/** A slice's bytes, read alone (not its whole file). @throws FILE_UNREADABLE | MODEL_TRUNCATED */
async function readSlice(slice: FileSlice): Promise<Uint8Array> {
  let handle: FileHandle;
  try {
    handle = await open(slice.file, "r");
  } catch (err) {
    throw sliceUnreadable(slice.file, err);
  }
  try {
    const out = new Uint8Array(slice.length);
    let done = 0;
    while (done < slice.length) {
      const n = await readAt(handle, slice.file, out, done, slice.length - done, slice.offset + done);
      if (n === 0) throw sliceCutShort(slice, slice.offset + done);
      done += n;
    }
    return out;
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/**
 * Writes chunks to a file in order, gathering small ones in a 1 MiB buffer so
 * the file is written in few large writes; a file slice is read into that
 * buffer piece by piece, so no chunk is ever copied whole.
 */
class ChunkWriter {
  readonly #fh: FileHandle;
  readonly #gather = new Uint8Array(1 << 20);
  #filled = 0;
  #position = 0;
  readonly #inputs = new Map<string, FileHandle>();

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  async write(chunks: readonly Chunk[]): Promise<void> {
    try {
      for (const c of chunks) {
        if (c instanceof Uint8Array) await this.#bytes(c);
        else await this.#slice(c);
      }
      await this.#flush();
    } finally {
      for (const input of this.#inputs.values()) await input.close().catch(() => undefined);
    }
  }

  async #flush(): Promise<void> {
    if (this.#filled === 0) return;
    await writeAll(this.#fh, this.#gather.subarray(0, this.#filled), this.#position);
    this.#position += this.#filled;
    this.#filled = 0;
  }

  async #bytes(c: Uint8Array): Promise<void> {
    const gather = this.#gather;
    if (c.byteLength <= gather.byteLength - this.#filled) {
      gather.set(c, this.#filled);
      this.#filled += c.byteLength;
      return;
    }
    await this.#flush();
    if (c.byteLength < gather.byteLength) {
      gather.set(c, 0);
      this.#filled = c.byteLength;
    } else {
      await writeAll(this.#fh, c, this.#position);
      this.#position += c.byteLength;
    }
  }

  /**
   * @throws MODEL_TRUNCATED when the file ends before the slice (it shrank after it was checked)
   * @throws FILE_UNREADABLE when it cannot be opened or read
   */
  async #slice(slice: FileSlice): Promise<void> {
    const input = await this.#input(slice.file);
    let done = 0;
    while (done < slice.length) {
      if (this.#filled === this.#gather.byteLength) await this.#flush();
      const want = Math.min(slice.length - done, this.#gather.byteLength - this.#filled);
      const n = await readAt(input, slice.file, this.#gather, this.#filled, want, slice.offset + done);
      if (n === 0) throw sliceCutShort(slice, slice.offset + done);
      done += n;
      this.#filled += n;
    }
  }

  async #input(file: string): Promise<FileHandle> {
    let input = this.#inputs.get(file);
    if (input === undefined) {
      try {
        input = await open(file, "r");
      } catch (err) {
        throw sliceUnreadable(file, err);
      }
      this.#inputs.set(file, input);
    }
    return input;
  }
}

/** Writes chunks in order (see {@link ChunkWriter}). */
function writeChunks(fh: FileHandle, chunks: readonly Chunk[]): Promise<void> {
  return new ChunkWriter(fh).write(chunks);
}

/**
 * Writes a model file atomically (temp file in the same directory, fsync,
 * rename), with large initializers in a side file when asked or when needed
 * (see {@link SaveModelOptions.externalData}). The side file is written (the
 * same way) before the model file, so a model file never points at missing
 * data; when overwriting a pair in place, a crash between the two renames can
 * leave the old model file beside the new side file, so write to a fresh
 * directory and swap that when an old pair must survive crashes.
 * The in-memory model is not changed; large payloads are written from it by
 * reference, so do not modify it until the returned promise settles.
 *
 * @throws MODEL_INVALID when a tensor's external data was not loaded, or the model is over 2 GiB with `externalData: false`
 * @throws USAGE when the external data location is outside the model's directory or is the model file
 * @throws DISK_FULL when the disk fills up (nothing is left behind)
 * @throws FILE_WRITE_FAILED on other write errors
 */
export async function saveModel(
  model: ModelProto,
  path: string,
  options: SaveModelOptions = {},
): Promise<void> {
  forEachModelTensor(model, (t) => {
    if (isExternal(t) && t.rawData === undefined) {
      throw new QuantdError(
        "MODEL_INVALID",
        `tensor ${t.name} refers to external data that was not loaded; load the model with loadExternalData`,
      );
    }
  });
  let external: ExternalDataOptions | undefined;
  const opt = options.externalData;
  if (opt === true) external = {};
  else if (typeof opt === "object") external = opt;
  else if (opt === undefined && estimateEncodedSize(model) > PROTOBUF_LIMIT) external = {};

  let toEncode = model;
  if (external !== undefined) {
    const plan = planExternal(model, external, path);
    toEncode = plan.model;
    const dataPath = resolve(dirname(resolve(path)), plan.location);
    await writeFileDurable(dataPath, async (fh) => {
      for (const c of plan.chunks) await writeAll(fh, c.bytes, c.offset);
    });
  }
  const chunks = modelChunks(toEncode);
  await writeFileDurable(path, (fh) => writeChunks(fh, chunks));
}
