import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  checkShapeFits,
  findVocabSize,
  findVocabSizeInGraph,
  syntheticFeeds,
} from "../../src/bench/inputs.ts";
import type { TensorInfo } from "../../src/runtime/types.ts";
import { codeOf } from "../helpers/error-code.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { ONNX_FLOAT, ONNX_INT64, tinyOnnxModel } from "../helpers/tiny-onnx.ts";

const BERT_INPUTS: TensorInfo[] = [
  { name: "input_ids", type: "int64", dims: ["batch", "sequence"] },
  { name: "attention_mask", type: "int64", dims: ["batch", "sequence"] },
  { name: "token_type_ids", type: "int64", dims: ["batch", "sequence"] },
];

describe("syntheticFeeds", () => {
  test("ids in [1000, vocab), mask all ones, token types zeros, [batch, seq] dims", () => {
    const feeds = syntheticFeeds(BERT_INPUTS, { batch: 3, seq: 40 }, { vocabSize: 1200, seed: 7 });
    const ids = feeds["input_ids"]!;
    expect(ids.type).toBe("int64");
    expect(ids.dims).toEqual([3, 40]);
    const values = [...(ids.data as BigInt64Array)].map(Number);
    expect(values).toHaveLength(120);
    expect(Math.min(...values)).toBeGreaterThanOrEqual(1000);
    expect(Math.max(...values)).toBeLessThan(1200);
    // random, not constant
    expect(new Set(values).size).toBeGreaterThan(20);
    expect([...(feeds["attention_mask"]!.data as BigInt64Array)].every((v) => v === 1n)).toBe(true);
    expect([...(feeds["token_type_ids"]!.data as BigInt64Array)].every((v) => v === 0n)).toBe(true);
  });
  test("the same seed gives the same ids (models of a comparison and the memory child agree)", () => {
    const a = syntheticFeeds(BERT_INPUTS, { batch: 2, seq: 8 }, { vocabSize: 30522, seed: 3 });
    const b = syntheticFeeds(BERT_INPUTS, { batch: 2, seq: 8 }, { vocabSize: 30522, seed: 3 });
    const c = syntheticFeeds(BERT_INPUTS, { batch: 2, seq: 8 }, { vocabSize: 30522, seed: 4 });
    expect([...(a["input_ids"]!.data as BigInt64Array)]).toEqual([
      ...(b["input_ids"]!.data as BigInt64Array),
    ]);
    expect([...(a["input_ids"]!.data as BigInt64Array)]).not.toEqual([
      ...(c["input_ids"]!.data as BigInt64Array),
    ]);
  });
  test("a vocabulary of 1000 or fewer gives random ids in [1, vocab)", () => {
    const feeds = syntheticFeeds(BERT_INPUTS.slice(0, 1), { batch: 1, seq: 64 }, { vocabSize: 50 });
    const values = [...(feeds["input_ids"]!.data as BigInt64Array)].map(Number);
    expect(values.every((v) => v >= 1 && v < 50)).toBe(true);
    expect(new Set(values).size).toBeGreaterThan(10);
    const one = syntheticFeeds(BERT_INPUTS.slice(0, 1), { batch: 1, seq: 4 }, { vocabSize: 1 });
    expect([...(one["input_ids"]!.data as BigInt64Array)]).toEqual([0n, 0n, 0n, 0n]);
  });
  test("int32 inputs and position ids", () => {
    const feeds = syntheticFeeds(
      [
        { name: "input_ids", type: "int32", dims: [-1, -1] },
        { name: "position_ids", type: "int64", dims: ["b", "s"] },
      ],
      { batch: 2, seq: 3 },
      { vocabSize: 5000 },
    );
    expect(feeds["input_ids"]!.data).toBeInstanceOf(Int32Array);
    expect([...(feeds["position_ids"]!.data as BigInt64Array)]).toEqual([0n, 1n, 2n, 0n, 1n, 2n]);
  });
  test("a fixed dimension that differs from the shape is MODEL_INPUTS_MISMATCH", () => {
    const fixed: TensorInfo = { name: "input_ids", type: "int64", dims: [1, 128] };
    expect(codeOf(() => checkShapeFits(fixed, { batch: 1, seq: 128 }))).toBeUndefined();
    expect(codeOf(() => checkShapeFits(fixed, { batch: 1, seq: 32 }))).toBe("MODEL_INPUTS_MISMATCH");
    expect(codeOf(() => checkShapeFits(fixed, { batch: 8, seq: 128 }))).toBe("MODEL_INPUTS_MISMATCH");
    expect(codeOf(() => syntheticFeeds([fixed], { batch: 1, seq: 32 }, { vocabSize: 9 }))).toBe(
      "MODEL_INPUTS_MISMATCH",
    );
  });
  test("inputs that are not BERT inputs, or not integers, are refused", () => {
    const pixel: TensorInfo = { name: "pixel_values", type: "float32", dims: ["b", "s"] };
    expect(codeOf(() => syntheticFeeds([pixel], { batch: 1, seq: 4 }, { vocabSize: 9 }))).toBe(
      "MODEL_INPUTS_MISMATCH",
    );
    const floatIds: TensorInfo = { name: "input_ids", type: "float32", dims: ["b", "s"] };
    expect(codeOf(() => syntheticFeeds([floatIds], { batch: 1, seq: 4 }, { vocabSize: 9 }))).toBe(
      "MODEL_INPUTS_MISMATCH",
    );
    expect(codeOf(() => syntheticFeeds(BERT_INPUTS, { batch: 0, seq: 4 }, { vocabSize: 9 }))).toBe("USAGE");
  });
});

test("findVocabSize reads config.json beside the shipped model", () => {
  expect(findVocabSize(shippedModelPath)).toBe(16384);
  expect(findVocabSize("/nonexistent/dir/model.onnx")).toBeUndefined();
});

test("findVocabSizeInGraph reads the embedding table gathered by input_ids", async () => {
  expect(await findVocabSizeInGraph(shippedModelPath)).toBe(16384);
  const dir = mkdtempSync(join(tmpdir(), "quantd-vocab-"));
  try {
    const path = join(dir, "cast.onnx");
    writeFileSync(
      path,
      tinyOnnxModel(
        [{ opType: "Cast", inputs: ["input_ids"], outputs: ["y"], intAttrs: { to: ONNX_FLOAT } }],
        [{ name: "input_ids", elemType: ONNX_INT64, dims: ["b", "s"] }],
        [{ name: "y", elemType: ONNX_FLOAT, dims: ["b", "s"] }],
      ),
    );
    expect(await findVocabSizeInGraph(path)).toBeUndefined();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
