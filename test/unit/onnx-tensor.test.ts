import { describe, expect, test } from "bun:test";
import {
  bfloat16ToFloat32,
  dataTypeName,
  float16ToFloat32,
  float32ToFloat16,
  isExternal,
  makeTensor,
  tensorByteLength,
  tensorElementCount,
  tensorRawBytes,
  tensorToArray,
  tensorToFloat32,
} from "../../src/onnx/tensor.ts";
import { DataType } from "../../src/onnx/types.ts";
import { codeOf } from "../helpers/error-code.ts";

describe("tensor helpers", () => {
  test("names, counts and byte lengths", () => {
    expect(dataTypeName(DataType.FLOAT16)).toBe("FLOAT16");
    expect(dataTypeName(99)).toBe("UNKNOWN(99)");
    expect(tensorElementCount({ dims: [] })).toBe(1);
    expect(tensorElementCount({ dims: [2, 0, 3] })).toBe(0);
    expect(tensorByteLength({ name: "a", dataType: DataType.INT64, dims: [3, 2] })).toBe(48);
    expect(tensorByteLength({ name: "a", dataType: DataType.INT4, dims: [3] })).toBe(2);
    expect(tensorByteLength({ name: "a", dataType: DataType.BOOL, dims: [5] })).toBe(5);
    expect(codeOf(() => tensorByteLength({ name: "s", dataType: DataType.STRING, dims: [1] }))).toBe(
      "QUANT_UNSUPPORTED",
    );
  });

  test("unaligned rawData is read correctly and the result is a copy", () => {
    const backing = new Uint8Array(1 + 12);
    backing.set(new Uint8Array(Float32Array.of(1.5, -2, 3e10).buffer), 1);
    const t = { name: "w", dataType: DataType.FLOAT, dims: [3], rawData: backing.subarray(1) } as const;
    const a = tensorToArray({ ...t, dims: [3] });
    expect(a).toEqual(Float32Array.of(1.5, -2, 3e10));
    (a as Float32Array)[0] = 7;
    expect(tensorToArray({ ...t, dims: [3] })[0]).toBe(1.5);
  });

  test("payload size mismatches and unloaded external data are MODEL_INVALID", () => {
    const t = makeTensor("w", DataType.FLOAT, [2], Float32Array.of(1, 2));
    expect(codeOf(() => tensorToArray({ ...t, dims: [3] }))).toBe("MODEL_INVALID");
    expect(codeOf(() => tensorToArray({ ...t, rawData: new Uint8Array(7) }))).toBe("MODEL_INVALID");
    const ext = { name: "e", dataType: DataType.FLOAT, dims: [2], dataLocation: 1 } as const;
    expect(isExternal({ ...ext, dims: [2] })).toBe(true);
    expect(codeOf(() => tensorToArray({ ...ext, dims: [2] }))).toBe("MODEL_INVALID");
  });

  test("makeTensor checks the array kind and length, and copies", () => {
    expect(codeOf(() => makeTensor("w", DataType.FLOAT, [2], Float64Array.of(1, 2)))).toBe("MODEL_INVALID");
    expect(codeOf(() => makeTensor("w", DataType.INT8, [3], Int8Array.of(1, 2)))).toBe("MODEL_INVALID");
    const data = Int8Array.of(1, -2);
    const t = makeTensor("w", DataType.INT8, [2], data);
    data[0] = 100;
    expect(tensorToArray(t)).toEqual(Int8Array.of(1, -2));
    // Buffers are Uint8Arrays too.
    expect(tensorToArray(makeTensor("b", DataType.UINT8, [2], Buffer.from([3, 4])))).toEqual(
      Uint8Array.of(3, 4),
    );
  });

  test("tensorRawBytes encodes typed fields little-endian", () => {
    const t = makeTensor("w", DataType.INT32, [2], Int32Array.of(1, -1), { raw: false });
    expect(Array.from(tensorRawBytes(t))).toEqual([1, 0, 0, 0, 255, 255, 255, 255]);
    const b = makeTensor("b", DataType.BOOL, [2], Uint8Array.of(0, 1), { raw: false });
    expect(Array.from(tensorRawBytes(b))).toEqual([0, 1]);
  });

  test("float16 and bfloat16 conversions", () => {
    expect(float16ToFloat32(0x3c00)).toBe(1);
    expect(float16ToFloat32(0xc000)).toBe(-2);
    expect(float16ToFloat32(0x7bff)).toBe(65504);
    expect(float16ToFloat32(0x0001)).toBe(2 ** -24);
    expect(float16ToFloat32(0x7c00)).toBe(Infinity);
    expect(Number.isNaN(float16ToFloat32(0x7e00))).toBe(true);
    expect(float32ToFloat16(1)).toBe(0x3c00);
    expect(float32ToFloat16(65504)).toBe(0x7bff);
    expect(float32ToFloat16(1e6)).toBe(0x7c00);
    expect(float32ToFloat16(2 ** -24)).toBe(0x0001);
    expect(float32ToFloat16(-0)).toBe(0x8000);
    // Round to nearest even: 1 + 2^-11 is halfway between 1 and the next half.
    expect(float32ToFloat16(1 + 2 ** -11)).toBe(0x3c00);
    expect(float32ToFloat16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    for (let h = 0; h < 0x7c00; h += 97) expect(float32ToFloat16(float16ToFloat32(h))).toBe(h);
    expect(bfloat16ToFloat32(0x3f80)).toBe(1);
    const f16 = makeTensor("h", DataType.FLOAT16, [2], Uint16Array.of(0x3c00, 0xc000));
    expect(tensorToFloat32(f16)).toEqual(Float32Array.of(1, -2));
    const i64 = makeTensor("i", DataType.INT64, [2], BigInt64Array.of(5n, -3n));
    expect(tensorToFloat32(i64)).toEqual(Float32Array.of(5, -3));
  });
});

describe("payloads inside a larger buffer", () => {
  test("a rawData view into a Node Buffer reads only its own bytes", () => {
    // Node's Buffer.slice() shares memory; a copy made with it once returned the whole pool.
    const pool = Buffer.alloc(64, 0xff);
    const values = new Float32Array([1.5, -2, 3.25]);
    Buffer.from(values.buffer).copy(pool, 13);
    const t = makeTensor("w", DataType.FLOAT, [3], new Float32Array(3));
    t.rawData = pool.subarray(13, 25);
    expect(Array.from(tensorToArray(t) as Float32Array)).toEqual([1.5, -2, 3.25]);
  });
});
