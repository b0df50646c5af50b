import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { isQuantdError } from "../../src/errors.ts";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { GraphIndex } from "../../src/onnx/graph.ts";
import { tensorToFloat32 } from "../../src/onnx/tensor.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { calibrate } from "../../src/quant/calibrate.ts";
import { CALIBRATION_METHODS } from "../../src/quant/methods.ts";
import { feedsForEncoding } from "../../src/runtime/classifier.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { type BatchEncoding, loadTokenizer, type Tokenizer } from "../../src/runtime/tokenizer.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";

/** Model-running tests share two cores with other suites; bun's 5 s default is too tight. */
const SLOW_TEST_MS = 60_000;
const L0 = "/bert/encoder/layer.0";
/** Inputs of MatMuls with a constant weight (mixed-sign activations). */
const MATMUL_INPUTS = [
  "/bert/embeddings/LayerNorm/LayerNormalization_output_0",
  `${L0}/attention/self/Reshape_3_output_0`,
  `${L0}/attention/output/LayerNorm/LayerNormalization_output_0`,
  `${L0}/intermediate/intermediate_act_fn/Mul_1_output_0`,
];
/** The additive mask (Where(mask, 0, -3.4e38)) and the scores it is added to. */
const MASK = "/bert/Where_1_output_0";
const SCORES = `${L0}/attention/self/Add_output_0`;
const MASK_CONSTANT = "/bert/Constant_29_output_0";
const WEIGHT = "onnx::MatMul_520";
const RUNTIME_TENSORS = [...MATMUL_INPUTS, MASK, SCORES];
const ALL = [...RUNTIME_TENSORS, "attention_mask", WEIGHT, MASK_CONSTANT];

let model: ModelProto;
let tokenizer: Tokenizer;
let sentences: string[];
/** The 16 sentences in right-padded batches of 4 (so padding is present). */
let padded: BatchEncoding[];

function trainSentences(n: number): string[] {
  const lines = readFileSync(resolve(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").split("\n");
  const out: string[] = [];
  for (const line of lines.slice(1)) {
    const tab = line.indexOf("\t");
    const text = line.slice(tab + 1).trim();
    if (tab > 0 && text.length > 0) out.push(text);
    if (out.length === n) break;
  }
  return out;
}

beforeAll(async () => {
  model = await loadModel(shippedModelPath);
  tokenizer = await loadTokenizer(shippedModelDir);
  sentences = trainSentences(16);
  padded = [];
  for (let i = 0; i < sentences.length; i += 4) padded.push(tokenizer.encodeBatch(sentences.slice(i, i + 4)));
  // the test is about padding only if some batch has it
  expect(padded.some((b) => b.lengths.some((l) => l !== b.seqLen))).toBe(true);
}, SLOW_TEST_MS);

/** Exact min/max of each tensor, fetched directly, one unpadded sentence per run. */
async function directMinMax(names: readonly string[], batches: readonly BatchEncoding[]) {
  const graph = { ...model.graph, output: [...model.graph.output] };
  const index = new GraphIndex(graph);
  for (const n of names) index.addGraphOutput(n);
  // the same optimization level calibrate uses by default, so fused kernels do not differ in the last bit
  const session = await createOrtSession(encodeModel({ ...model, graph }), {
    graphOptimizationLevel: "basic",
  });
  const mm = new Map<string, { min: number; max: number; sentinel: number }>();
  for (const n of names) mm.set(n, { min: Infinity, max: -Infinity, sentinel: 0 });
  try {
    for (const enc of batches) {
      const out = await session.run(feedsForEncoding(session, enc), names);
      for (const n of names) {
        const data = out[n]!.data as Float32Array;
        const m = mm.get(n)!;
        for (const v of data) {
          if (Math.abs(v) >= 1e30) {
            m.sentinel++;
            continue;
          }
          if (v < m.min) m.min = v;
          if (v > m.max) m.max = v;
        }
      }
    }
  } finally {
    await session.release();
  }
  return mm;
}

describe("calibrate on the shipped BERT-Mini", () => {
  test(
    "minmax equals the exact min/max of the same tensors fetched directly",
    async () => {
      const result = await calibrate(model, ALL, padded, { method: "minmax", batchSize: 1 });
      expect(result.samples).toBe(16);
      expect(result.batches).toBe(16);
      const singles = sentences.map((s) => tokenizer.encodeBatch([s]));
      const exact = await directMinMax(RUNTIME_TENSORS, singles);
      for (const name of RUNTIME_TENSORS) {
        const r = result.ranges.get(name)!;
        const e = exact.get(name)!;
        expect([name, r.min, r.max]).toEqual([name, e.min, e.max]);
        expect(r.sentinel).toBe(0);
        expect(r.nonFinite).toBe(0);
      }
      for (const name of MATMUL_INPUTS) {
        const r = result.ranges.get(name)!;
        expect(r.min).toBeLessThan(0);
        expect(r.max).toBeGreaterThan(0);
      }
      // graph input, observed from the (unpadded) feeds: all ones
      const am = result.ranges.get("attention_mask")!;
      expect([am.min, am.max]).toEqual([1, 1]);
      // initializer: observed once from its value
      const w = tensorToFloat32(new GraphIndex(model.graph).constant(WEIGHT)!);
      let wmin = Infinity;
      let wmax = -Infinity;
      for (const v of w) {
        wmin = Math.min(wmin, v);
        wmax = Math.max(wmax, v);
      }
      expect([result.ranges.get(WEIGHT)!.min, result.ranges.get(WEIGHT)!.max]).toEqual([wmin, wmax]);
      // the exporter's -3.4e38 constant is counted as a sentinel, never a range
      const mc = result.ranges.get(MASK_CONSTANT)!;
      expect([mc.min, mc.max, mc.count, mc.sentinel]).toEqual([0, 0, 0, 1]);
    },
    SLOW_TEST_MS,
  );

  test(
    "padding never reaches the statistics",
    async () => {
      // run directly on the padded batches: the scores then hold mask sentinels and pad rows
      const pollutedDirect = await directMinMax([SCORES, MASK], padded);
      expect(pollutedDirect.get(SCORES)!.sentinel).toBeGreaterThan(0);
      const fromPadded = await calibrate(model, RUNTIME_TENSORS, padded, { method: "minmax" });
      const singles = sentences.map((s) => tokenizer.encodeBatch([s]));
      const fromSingles = await calibrate(model, RUNTIME_TENSORS, singles, {
        method: "minmax",
        batchSize: 1,
      });
      for (const name of RUNTIME_TENSORS) {
        const a = fromPadded.ranges.get(name)!;
        const b = fromSingles.ranges.get(name)!;
        expect(a.sentinel).toBe(0);
        expect(a.count).toBe(b.count);
        // same-length rows batched together: equal up to GEMM blocking differences
        expect(Math.abs(a.min - b.min)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(b.min)));
        expect(Math.abs(a.max - b.max)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(b.max)));
      }
      const mask = fromPadded.ranges.get(MASK)!;
      expect([mask.min, mask.max]).toEqual([0, 0]);
    },
    SLOW_TEST_MS,
  );

  test(
    "every method runs and gives finite ranges with min ≤ 0 ≤ max",
    async () => {
      for (const method of CALIBRATION_METHODS) {
        const result = await calibrate(model, RUNTIME_TENSORS, padded, { method });
        expect(result.samples).toBe(16);
        for (const name of RUNTIME_TENSORS) {
          const r = result.ranges.get(name)!;
          expect(Number.isFinite(r.min) && Number.isFinite(r.max)).toBe(true);
          expect(r.min).toBeLessThanOrEqual(0);
          expect(r.max).toBeGreaterThanOrEqual(0);
          expect(r.min).toBeGreaterThanOrEqual(r.observedMin);
          expect(r.max).toBeLessThanOrEqual(r.observedMax);
          if (method === "percentile" || method === "entropy" || method === "mse") {
            expect(r.histogram?.counts.length).toBe(2048);
          }
        }
      }
    },
    SLOW_TEST_MS,
  );

  test(
    "a stream gives the same ranges as an array, with progress",
    async () => {
      async function* stream(): AsyncGenerator<BatchEncoding> {
        for (const b of padded) yield b;
      }
      const progress: [number, number][] = [];
      const fromStream = await calibrate(model, MATMUL_INPUTS, stream(), {
        method: "percentile",
        onProgress: (done, total) => progress.push([done, total]),
      });
      const fromArray = await calibrate(model, MATMUL_INPUTS, padded, { method: "percentile" });
      for (const name of MATMUL_INPUTS) {
        expect(fromStream.ranges.get(name)!.min).toBe(fromArray.ranges.get(name)!.min);
        expect(fromStream.ranges.get(name)!.max).toBe(fromArray.ranges.get(name)!.max);
      }
      expect(progress.at(-1)![0]).toBe(16);
      expect(Number.isNaN(progress.at(-1)![1])).toBe(true);
      for (let i = 1; i < progress.length; i++) expect(progress[i]![0]).toBeGreaterThan(progress[i - 1]![0]);
    },
    SLOW_TEST_MS,
  );

  test(
    "bad requests are clear errors",
    async () => {
      const codeOf = async (p: Promise<unknown>): Promise<string> => {
        try {
          await p;
          return "no error";
        } catch (err) {
          return isQuantdError(err) ? err.code : `not a QuantdError: ${err}`;
        }
      };
      expect(await codeOf(calibrate(model, ["no/such/tensor"], padded, { method: "minmax" }))).toBe(
        "CALIB_FAILED",
      );
      expect(await codeOf(calibrate(model, MATMUL_INPUTS, [], { method: "minmax" }))).toBe("CALIB_EMPTY");
      expect(await codeOf(calibrate(model, MATMUL_INPUTS, padded, { method: "minmax", batchSize: 0 }))).toBe(
        "USAGE",
      );
      const broken: BatchEncoding = { ...padded[0]!, lengths: padded[0]!.lengths.map(() => 1) };
      expect(await codeOf(calibrate(model, MATMUL_INPUTS, [broken], { method: "minmax" }))).toBe(
        "CALIB_FAILED",
      );
    },
    SLOW_TEST_MS,
  );
});
