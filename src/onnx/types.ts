/**
 * In-memory form of an ONNX model: plain objects that mirror `onnx.proto`
 * (IR version 10) field for field, in camelCase. The codec (`codec.ts`) turns
 * bytes into these and back; graph passes edit them in place.
 *
 * Conventions:
 * - Tensor payloads keep the storage form they were read in (`rawData` or a typed
 *   field), so a load/save round trip is byte-identical. Use `tensor.ts` to read
 *   or build payloads rather than touching the fields directly.
 * - int64 payloads are `bigint`; int64 dims and attribute ints are `number`
 *   (shapes and axes fit; INT64 max/min sentinels are preserved by the codec).
 */

/** ONNX `TensorProto.DataType` values. */
export const DataType = {
  UNDEFINED: 0,
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  COMPLEX64: 14,
  COMPLEX128: 15,
  BFLOAT16: 16,
  FLOAT8E4M3FN: 17,
  FLOAT8E4M3FNUZ: 18,
  FLOAT8E5M2: 19,
  FLOAT8E5M2FNUZ: 20,
  UINT4: 21,
  INT4: 22,
  FLOAT4E2M1: 23,
  FLOAT8E8M0: 24,
  UINT2: 25,
  INT2: 26,
} as const;
/** A `TensorProto.DataType` value. */
export type DataType = (typeof DataType)[keyof typeof DataType];

/** ONNX `AttributeProto.AttributeType` values. */
export const AttributeType = {
  UNDEFINED: 0,
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  GRAPH: 5,
  SPARSE_TENSOR: 11,
  TYPE_PROTO: 13,
  FLOATS: 6,
  INTS: 7,
  STRINGS: 8,
  TENSORS: 9,
  GRAPHS: 10,
  SPARSE_TENSORS: 12,
  TYPE_PROTOS: 14,
} as const;
/** An `AttributeProto.AttributeType` value. */
export type AttributeType = (typeof AttributeType)[keyof typeof AttributeType];

/** `StringStringEntryProto`. */
export interface StringStringEntry {
  key: string;
  value: string;
}

/** `TensorProto`. Read and build payloads with `tensor.ts` rather than through these fields. */
export interface TensorProto {
  name: string;
  dataType: DataType;
  dims: number[];
  rawData?: Uint8Array;
  floatData?: number[];
  /** Also holds int8/uint8/int16/uint16/bool/float16 values, as ONNX specifies. */
  int32Data?: number[];
  int64Data?: bigint[];
  doubleData?: number[];
  uint64Data?: bigint[];
  stringData?: Uint8Array[];
  /** 0 = DEFAULT, 1 = EXTERNAL. */
  dataLocation?: number;
  externalData?: StringStringEntry[];
  docString?: string;
  /** Part of a larger tensor this one is (rare; kept for round trips). */
  segment?: { begin: number; end: number };
  metadataProps?: StringStringEntry[];
}

/** `SparseTensorProto`: COO values and indices of a dense tensor of shape `dims`. */
export interface SparseTensorProto {
  values: TensorProto;
  indices: TensorProto;
  dims: number[];
}

/** `TensorShapeProto`. */
export interface TensorShapeProto {
  dim: Dimension[];
}

/** `TensorShapeProto.Dimension`: a fixed size, a symbolic name, or unknown. */
export interface Dimension {
  dimValue?: number;
  dimParam?: string;
  denotation?: string;
}

/** `TypeProto`: exactly one of the `*Type` fields is set. */
export interface TypeProto {
  tensorType?: { elemType: DataType; shape?: { dim: Dimension[] } };
  sequenceType?: { elemType?: TypeProto };
  mapType?: { keyType: DataType; valueType?: TypeProto };
  optionalType?: { elemType?: TypeProto };
  sparseTensorType?: { elemType: DataType; shape?: TensorShapeProto };
  opaqueType?: { domain: string; name: string };
  /** Fields without a typed slot, kept as decoded for round trips (the codec puts none here today). */
  other?: Record<string, unknown>;
  denotation?: string;
}

/** `ValueInfoProto`. */
export interface ValueInfoProto {
  name: string;
  type?: TypeProto;
  docString?: string;
  metadataProps?: StringStringEntry[];
}

/** `AttributeProto`. */
export interface AttributeProto {
  name: string;
  type: AttributeType;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: TensorProto;
  g?: GraphProto;
  floats?: number[];
  ints?: number[];
  strings?: Uint8Array[];
  tensors?: TensorProto[];
  graphs?: GraphProto[];
  sparseTensor?: SparseTensorProto;
  sparseTensors?: SparseTensorProto[];
  tp?: TypeProto;
  typeProtos?: TypeProto[];
  refAttrName?: string;
  docString?: string;
}

/** `NodeProto`. */
export interface NodeProto {
  name: string;
  opType: string;
  domain: string;
  input: string[];
  output: string[];
  attribute: AttributeProto[];
  docString?: string;
  /** Selects an overloaded model-local function (IR 10). */
  overload?: string;
  metadataProps?: StringStringEntry[];
  /** Fields without a typed slot (device/sharding configurations), kept as decoded for round trips. */
  other?: Record<string, unknown>;
}

/** `GraphProto`. */
export interface GraphProto {
  name: string;
  node: NodeProto[];
  initializer: TensorProto[];
  input: ValueInfoProto[];
  output: ValueInfoProto[];
  valueInfo: ValueInfoProto[];
  docString?: string;
  sparseInitializer?: SparseTensorProto[];
  quantizationAnnotation?: TensorAnnotation[];
  metadataProps?: StringStringEntry[];
  /** Fields without a typed slot, kept as decoded for round trips (the codec puts none here today). */
  other?: Record<string, unknown>;
}

/** `TensorAnnotation`: names of the scale/zero-point tensors of a quantized tensor. */
export interface TensorAnnotation {
  tensorName: string;
  quantParameterTensorNames: StringStringEntry[];
}

/** `TrainingInfoProto` (kept for round trips; quantd never trains). */
export interface TrainingInfoProto {
  initialization?: GraphProto;
  algorithm?: GraphProto;
  initializationBinding: StringStringEntry[];
  updateBinding: StringStringEntry[];
}

/** `FunctionProto`: a model-local function called by nodes with its domain and name. */
export interface FunctionProto {
  name: string;
  domain: string;
  overload?: string;
  input: string[];
  output: string[];
  /** Names of attributes without default values. */
  attribute: string[];
  /** Attributes with default values. */
  attributeProto: AttributeProto[];
  node: NodeProto[];
  opsetImport: OperatorSetId[];
  valueInfo: ValueInfoProto[];
  docString?: string;
  metadataProps?: StringStringEntry[];
}

/** `OperatorSetIdProto`. The empty domain (or `ai.onnx`) is the default ONNX domain. */
export interface OperatorSetId {
  domain: string;
  version: number;
}

/** `ModelProto`. */
export interface ModelProto {
  irVersion: number;
  opsetImport: OperatorSetId[];
  producerName: string;
  producerVersion: string;
  domain: string;
  modelVersion: number;
  docString: string;
  graph: GraphProto;
  metadataProps: StringStringEntry[];
  trainingInfo?: TrainingInfoProto[];
  functions?: FunctionProto[];
  /** Fields without a typed slot (device configurations), kept as decoded for round trips. */
  other?: Record<string, unknown>;
}
