/**
 * Counting the embedding rows calibration inputs read, and which of them are
 * hot: per input (not per token), positions broadcast over a run, the share
 * threshold, ids outside the table, the cap.
 */
import { describe, expect, test } from "bun:test";
import { makeTensor } from "../../src/onnx/tensor.ts";
import { DataType } from "../../src/onnx/types.ts";
import { HOT_ROW_SHARE, hotRows, MAX_HOT_ROWS, RowReadCounter } from "../../src/quant/row-reads.ts";

const ids64 = (dims: number[], values: number[]) => ({
  type: "int64" as const,
  dims,
  data: BigInt64Array.from(values, BigInt),
});

describe("RowReadCounter", () => {
  test("counts each input once per row it reads, however often", () => {
    const c = new RowReadCounter();
    // two inputs of 4 tokens: [CLS]=2 … [SEP]=3; word 7 twice in the first
    c.add(ids64([2, 4], [2, 7, 7, 3, 2, 9, 5, 3]), 2);
    const r = c.result();
    expect(r.rowReads.inputs).toBe(2);
    expect(Object.fromEntries(r.rowReads.rows)).toEqual({ 2: 2, 3: 2, 7: 1, 9: 1, 5: 1 });
    expect(r.rowReads.type).toBe("int64");
    expect([r.min, r.max]).toEqual([2, 9]);
  });

  test("ids shared by a run (positions [1, seq]) are read by every input of it", () => {
    const c = new RowReadCounter();
    c.add(ids64([1, 3], [0, 1, 2]), 8);
    c.add(ids64([1, 5], [0, 1, 2, 3, 4]), 2);
    const rows = c.result().rowReads.rows;
    expect(rows.get(0)).toBe(10);
    expect(rows.get(2)).toBe(10);
    expect(rows.get(3)).toBe(2);
    expect(c.result().rowReads.inputs).toBe(10);
  });

  test("int32 ids keep their type; a constant index is read by every input", () => {
    const c = new RowReadCounter();
    c.add({ type: "int32", dims: [1, 2], data: Int32Array.of(4, 5) }, 1);
    expect(c.result().rowReads.type).toBe("int32");
    const k = new RowReadCounter();
    k.addConstant(makeTensor("pos", DataType.INT64, [3], BigInt64Array.of(0n, 1n, 2n)), 6);
    expect(Object.fromEntries(k.result().rowReads.rows)).toEqual({ 0: 6, 1: 6, 2: 6 });
  });

  test("float ids are refused", () => {
    const c = new RowReadCounter();
    expect(() => c.add({ type: "float32", dims: [1], data: Float32Array.of(1) }, 1)).toThrow(
      /int64 or int32/,
    );
  });
});

describe("hotRows", () => {
  const reads = (inputs: number, rows: Record<number, number>) => ({
    inputs,
    rows: new Map(Object.entries(rows).map(([k, v]) => [Number(k), v])),
    type: "int64" as const,
  });

  test("rows read by at least half the inputs, most read first", () => {
    expect(HOT_ROW_SHARE).toBe(0.5);
    expect(hotRows([reads(10, { 2: 10, 3: 9, 7: 5, 8: 4 })], 100)).toEqual([2, 3, 7]);
  });

  test("the best share under any of a table's Gathers counts; ids outside the table never", () => {
    expect(hotRows([reads(10, { 1: 2 }), reads(4, { 1: 4, 5: 1 })], 10)).toEqual([1]);
    expect(hotRows([reads(4, { [-1]: 4, 10: 4, 9: 4 })], 10)).toEqual([9]);
    expect(hotRows([reads(0, { 1: 0 })], 10)).toEqual([]);
  });

  test("at most MAX_HOT_ROWS, the most read kept", () => {
    // rows 0–99 read by every input but 99 − id: row 0 least, row 99 most
    const many = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [i, 1000 - 99 + i]));
    const hot = hotRows([reads(1000, many)], 1000);
    expect(hot).toHaveLength(MAX_HOT_ROWS);
    expect(hot[0]).toBe(99);
    expect(hot.at(-1)).toBe(100 - MAX_HOT_ROWS);
  });
});
