/**
 * Reading and building tensor payloads. A `TensorProto` holds its values either
 * in `rawData` (little-endian bytes) or in one of the typed fields
 * (`floatData`, `int32Data`, …, with the narrow types widened into `int32Data`
 * as ONNX specifies); these helpers hide the difference.
 */
import { QuantdError } from "../errors.ts";
import type { AttributeProto, GraphProto, SparseTensorProto, TensorProto } from "./types.ts";
import { DataType } from "./types.ts";

/** The typed arrays {@link tensorToArray} returns and {@link makeTensor} accepts. */
export type TensorArray =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array
  | Int8Array
  | Uint8Array;

const NAMES: ReadonlyMap<number, string> = new Map(Object.entries(DataType).map(([k, v]) => [v, k]));

/** The spec name of a data type (`FLOAT`, `INT64`, …), or `UNKNOWN(n)`. */
export function dataTypeName(dataType: number): string {
  return NAMES.get(dataType) ?? `UNKNOWN(${dataType})`;
}

/** Bits per element of the fixed-size data types; STRING and unknown types are absent. */
const BITS: ReadonlyMap<number, number> = new Map<number, number>([
  [DataType.FLOAT, 32],
  [DataType.UINT8, 8],
  [DataType.INT8, 8],
  [DataType.UINT16, 16],
  [DataType.INT16, 16],
  [DataType.INT32, 32],
  [DataType.INT64, 64],
  [DataType.BOOL, 8],
  [DataType.FLOAT16, 16],
  [DataType.DOUBLE, 64],
  [DataType.UINT32, 32],
  [DataType.UINT64, 64],
  [DataType.COMPLEX64, 64],
  [DataType.COMPLEX128, 128],
  [DataType.BFLOAT16, 16],
  [DataType.FLOAT8E4M3FN, 8],
  [DataType.FLOAT8E4M3FNUZ, 8],
  [DataType.FLOAT8E5M2, 8],
  [DataType.FLOAT8E5M2FNUZ, 8],
  [DataType.UINT4, 4],
  [DataType.INT4, 4],
  [DataType.FLOAT4E2M1, 4],
  [DataType.FLOAT8E8M0, 8],
  [DataType.UINT2, 2],
  [DataType.INT2, 2],
]);

/** Number of elements: the product of `dims` (1 for a scalar). */
export function tensorElementCount(t: Pick<TensorProto, "dims">): number {
  let n = 1;
  for (const d of t.dims) n *= d;
  return n;
}

/**
 * Size in bytes of the tensor's dense little-endian payload (sub-byte types
 * packed, rounded up).
 *
 * @throws QUANT_UNSUPPORTED for STRING and unknown data types
 */
export function tensorByteLength(t: Pick<TensorProto, "dims" | "dataType" | "name">): number {
  const bits = BITS.get(t.dataType);
  if (bits === undefined) {
    throw new QuantdError(
      "QUANT_UNSUPPORTED",
      `tensor ${t.name} has data type ${dataTypeName(t.dataType)}, which has no fixed byte size`,
    );
  }
  return Math.ceil((tensorElementCount(t) * bits) / 8);
}

/** Whether the payload lives in an external data file (`data_location = EXTERNAL`). */
export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === 1;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Copies `bytes` into a fresh, aligned buffer, byte-swapping elements of `size` bytes on big-endian hosts. */
function copyLE(bytes: Uint8Array, size: number): ArrayBuffer {
  // Not `bytes.slice()`: on a Node Buffer, slice() returns a view of the whole
  // pooled buffer, so `.buffer` would be the entire model file.
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  if (!LITTLE_ENDIAN && size > 1) {
    for (let i = 0; i + size <= copy.length; i += size) copy.subarray(i, i + size).reverse();
  }
  return copy.buffer;
}

function payloadError(t: TensorProto, what: string): QuantdError {
  return new QuantdError("MODEL_INVALID", `tensor ${t.name} (${dataTypeName(t.dataType)}): ${what}`, {
    details: { tensor: t.name, dataType: dataTypeName(t.dataType), dims: t.dims },
  });
}

/**
 * The tensor's values as a fresh typed array the caller owns (never a view of
 * the model's buffer, so mutating it does not change the model):
 * FLOAT → Float32Array, DOUBLE → Float64Array, FLOAT16 and BFLOAT16 → Uint16Array
 * of raw bits (see {@link float16ToFloat32}), INT64 → BigInt64Array, UINT64 →
 * BigUint64Array, INT32 → Int32Array, UINT32 → Uint32Array, INT16 → Int16Array,
 * UINT16 → Uint16Array, INT8 → Int8Array, UINT8 and BOOL → Uint8Array.
 * Reads `rawData` (unaligned offsets are fine) or the typed field.
 *
 * @throws MODEL_INVALID when the payload is external and not loaded, or its size does not match `dims`
 * @throws QUANT_UNSUPPORTED for other data types (STRING, COMPLEX, float8, 4-bit)
 */
export function tensorToArray(t: TensorProto): TensorArray {
  if (t.rawData === undefined && isExternal(t)) {
    throw payloadError(t, "data is in an external file that was not loaded");
  }
  const n = tensorElementCount(t);
  const out = decodePayload(t);
  if (out.length !== n) {
    throw payloadError(t, `payload holds ${out.length} elements, dims ${JSON.stringify(t.dims)} need ${n}`);
  }
  return out;
}

function decodePayload(t: TensorProto): TensorArray {
  const raw = t.rawData;
  const bits = BITS.get(t.dataType);
  if (raw !== undefined && bits !== undefined && bits >= 8 && raw.byteLength % (bits / 8) !== 0) {
    throw payloadError(t, `raw data length ${raw.byteLength} is not a multiple of the element size`);
  }
  switch (t.dataType) {
    case DataType.FLOAT:
      return raw ? new Float32Array(copyLE(raw, 4)) : Float32Array.from(t.floatData ?? []);
    case DataType.DOUBLE:
      return raw ? new Float64Array(copyLE(raw, 8)) : Float64Array.from(t.doubleData ?? []);
    case DataType.FLOAT16:
    case DataType.BFLOAT16:
    case DataType.UINT16:
      return raw ? new Uint16Array(copyLE(raw, 2)) : Uint16Array.from(t.int32Data ?? []);
    case DataType.INT16:
      return raw ? new Int16Array(copyLE(raw, 2)) : Int16Array.from(t.int32Data ?? []);
    case DataType.INT32:
      return raw ? new Int32Array(copyLE(raw, 4)) : Int32Array.from(t.int32Data ?? []);
    case DataType.UINT32:
      return raw ? new Uint32Array(copyLE(raw, 4)) : Uint32Array.from(t.uint64Data ?? [], (v) => Number(v));
    case DataType.INT64:
      return raw ? new BigInt64Array(copyLE(raw, 8)) : BigInt64Array.from(t.int64Data ?? []);
    case DataType.UINT64:
      return raw ? new BigUint64Array(copyLE(raw, 8)) : BigUint64Array.from(t.uint64Data ?? []);
    case DataType.INT8:
      return raw ? new Int8Array(copyLE(raw, 1)) : Int8Array.from(t.int32Data ?? []);
    case DataType.UINT8:
      return raw ? new Uint8Array(copyLE(raw, 1)) : Uint8Array.from(t.int32Data ?? []);
    case DataType.BOOL:
      return raw
        ? new Uint8Array(copyLE(raw, 1))
        : Uint8Array.from(t.int32Data ?? [], (v) => (v !== 0 ? 1 : 0));
    default:
      throw new QuantdError(
        "QUANT_UNSUPPORTED",
        `tensor ${t.name}: reading ${dataTypeName(t.dataType)} payloads is not supported`,
      );
  }
}

/**
 * The tensor's values as float32, converting from any real numeric type
 * (FLOAT16/BFLOAT16 decoded from their bits, int64 through `Number`).
 *
 * @throws as {@link tensorToArray}
 */
export function tensorToFloat32(t: TensorProto): Float32Array {
  const a = tensorToArray(t);
  if (a instanceof Float32Array) return a;
  const out = new Float32Array(a.length);
  if (t.dataType === DataType.FLOAT16) {
    for (let i = 0; i < a.length; i++) out[i] = float16ToFloat32(a[i] as number);
  } else if (t.dataType === DataType.BFLOAT16) {
    for (let i = 0; i < a.length; i++) out[i] = bfloat16ToFloat32(a[i] as number);
  } else {
    for (let i = 0; i < a.length; i++) out[i] = Number(a[i]);
  }
  return out;
}

const ARRAY_KINDS: ReadonlyMap<number, new (length: number) => TensorArray> = new Map<
  number,
  new (
    length: number,
  ) => TensorArray
>([
  [DataType.FLOAT, Float32Array],
  [DataType.DOUBLE, Float64Array],
  [DataType.FLOAT16, Uint16Array],
  [DataType.BFLOAT16, Uint16Array],
  [DataType.UINT16, Uint16Array],
  [DataType.INT16, Int16Array],
  [DataType.INT32, Int32Array],
  [DataType.UINT32, Uint32Array],
  [DataType.INT64, BigInt64Array],
  [DataType.UINT64, BigUint64Array],
  [DataType.INT8, Int8Array],
  [DataType.UINT8, Uint8Array],
  [DataType.BOOL, Uint8Array],
]);

/** Options for {@link makeTensor}. */
export interface MakeTensorOptions {
  /** Store the payload as `rawData` (as exporters do) rather than in a typed field. @defaultValue true */
  raw?: boolean;
  /** Free text kept in the model file (`doc_string`). */
  docString?: string;
}

/**
 * Builds a dense tensor. The payload is copied, so later changes to `data` do
 * not reach the tensor. `data` must be the typed array {@link tensorToArray}
 * returns for `dataType` (e.g. Uint16Array of bits for FLOAT16).
 *
 * @param raw - see {@link MakeTensorOptions.raw}
 * @throws MODEL_INVALID when the array kind or length does not match `dataType`/`dims`
 */
export function makeTensor(
  name: string,
  dataType: DataType,
  dims: readonly number[],
  data: TensorArray,
  options: MakeTensorOptions = {},
): TensorProto {
  const kind = ARRAY_KINDS.get(dataType);
  const t: TensorProto = { name, dataType, dims: [...dims] };
  if (options.docString !== undefined) t.docString = options.docString;
  if (kind === undefined) {
    throw new QuantdError("MODEL_INVALID", `makeTensor(${name}): ${dataTypeName(dataType)} is not supported`);
  }
  if (!(data instanceof kind)) {
    throw new QuantdError(
      "MODEL_INVALID",
      `makeTensor(${name}): ${dataTypeName(dataType)} needs a ${kind.name}, got ${data.constructor.name}`,
    );
  }
  const n = tensorElementCount(t);
  if (data.length !== n) {
    throw new QuantdError(
      "MODEL_INVALID",
      `makeTensor(${name}): ${data.length} values for dims ${JSON.stringify(dims)} (${n} elements)`,
    );
  }
  if (options.raw ?? true) {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    t.rawData = new Uint8Array(copyLE(bytes, data.BYTES_PER_ELEMENT));
    return t;
  }
  switch (dataType) {
    case DataType.FLOAT:
      t.floatData = Array.from(data as Float32Array);
      break;
    case DataType.DOUBLE:
      t.doubleData = Array.from(data as Float64Array);
      break;
    case DataType.INT64:
      t.int64Data = Array.from(data as BigInt64Array);
      break;
    case DataType.UINT64:
      t.uint64Data = Array.from(data as BigUint64Array);
      break;
    case DataType.UINT32:
      t.uint64Data = Array.from(data as Uint32Array, (v) => BigInt(v));
      break;
    case DataType.BOOL:
      t.int32Data = Array.from(data as Uint8Array, (v) => (v !== 0 ? 1 : 0));
      break;
    default:
      t.int32Data = Array.from(data as Int32Array);
  }
  return t;
}

/**
 * The tensor's dense payload as little-endian bytes: `rawData` itself when
 * present (not a copy), else encoded from the typed field. This is what an
 * external data file stores.
 *
 * @throws as {@link tensorToArray} when the payload has to be encoded
 */
export function tensorRawBytes(t: TensorProto): Uint8Array {
  if (t.rawData !== undefined) return t.rawData;
  const a = tensorToArray(t);
  if (t.dataType === DataType.BOOL) return Uint8Array.from(a as Uint8Array, (v) => (v !== 0 ? 1 : 0));
  return new Uint8Array(copyLE(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), a.BYTES_PER_ELEMENT));
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** Decodes IEEE half-precision bits (as stored in a FLOAT16 tensor) to a number. */
export function float16ToFloat32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : Number.NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Encodes a number as IEEE half-precision bits, rounding to nearest even (overflow → ±Infinity). */
export function float32ToFloat16(value: number): number {
  F32[0] = value;
  const x = U32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1) === 1)) h++;
    return sign | h;
  }
  let h = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) {
    h++;
    if (h === 0x400) {
      h = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | h;
}

/** Decodes bfloat16 bits (the top half of a float32) to a number. */
export function bfloat16ToFloat32(bits: number): number {
  U32[0] = (bits & 0xffff) << 16;
  return F32[0]!;
}

/** Where a tensor sits in a model, for {@link forEachTensor} callbacks. */
export type TensorSite =
  | { kind: "initializer"; graph: GraphProto }
  | { kind: "sparse-initializer"; graph: GraphProto; sparse: SparseTensorProto }
  | { kind: "attribute"; graph: GraphProto; attribute: AttributeProto };

/**
 * Calls `fn` on every tensor of a graph and its subgraphs: initializers, sparse
 * initializer values/indices, and tensors in node attributes (Constant values,
 * ConstantOfShape values, …).
 */
export function forEachTensor(graph: GraphProto, fn: (t: TensorProto, site: TensorSite) => void): void {
  for (const t of graph.initializer) fn(t, { kind: "initializer", graph });
  for (const s of graph.sparseInitializer ?? []) {
    fn(s.values, { kind: "sparse-initializer", graph, sparse: s });
    fn(s.indices, { kind: "sparse-initializer", graph, sparse: s });
  }
  for (const node of graph.node) {
    for (const a of node.attribute) {
      const site: TensorSite = { kind: "attribute", graph, attribute: a };
      if (a.t !== undefined) fn(a.t, site);
      for (const t of a.tensors ?? []) fn(t, site);
      if (a.sparseTensor !== undefined) {
        fn(a.sparseTensor.values, site);
        fn(a.sparseTensor.indices, site);
      }
      for (const s of a.sparseTensors ?? []) {
        fn(s.values, site);
        fn(s.indices, site);
      }
      if (a.g !== undefined) forEachTensor(a.g, fn);
      for (const g of a.graphs ?? []) forEachTensor(g, fn);
    }
  }
}
