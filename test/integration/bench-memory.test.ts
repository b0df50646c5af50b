/**
 * Peak memory is measured in a fresh child process per model: the figure is
 * positive, includes the model (the 30 MB BERT-Mini costs more than the tiny
 * synthetic BERT of 2 × 32), and a model the child cannot load comes back as that model's error.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { compareCandidate } from "../../src/bench/compare.ts";
import { measurePeakMemory } from "../../src/bench/memory.ts";
import { isQuantdError } from "../../src/errors.ts";
import { saveModel } from "../../src/onnx/codec.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";

let dir: string;
let tiny: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "quantd-bench-mem-"));
  tiny = join(dir, "tiny-bert.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), tiny);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

// vocabSize 512: ids valid for both the tiny synthetic BERT and BERT-Mini
const probe = { shape: { batch: 1, seq: 64 }, threads: 1, vocabSize: 512, runs: 2, seed: 1 };

test("a larger model has a larger peak resident memory in its own process", async () => {
  const small = await measurePeakMemory({ ...probe, model: tiny });
  const large = await measurePeakMemory({ ...probe, model: shippedModelPath });
  for (const m of [small, large]) {
    expect(m.peakRssBytes).toBeGreaterThan(0);
    expect(m.peakRssBytes).toBeGreaterThanOrEqual(m.rssBytes);
    expect(m.peakRssBytes).toBeGreaterThan(m.baselineRssBytes);
    expect(m.loadMs).toBeGreaterThan(0);
  }
  // BERT-Mini holds 30 MB of fp32 weights, the tiny BERT 0.1 MB; allow for allocator slack, not for no difference
  expect(large.peakRssBytes - small.peakRssBytes).toBeGreaterThan(20 * 1024 * 1024);
});

test("a model the child cannot load is reported with the child's error code", async () => {
  const broken = join(dir, "broken.onnx");
  writeFileSync(broken, "not a model");
  let err: unknown;
  try {
    await measurePeakMemory({ ...probe, model: broken });
  } catch (e) {
    err = e;
  }
  expect(isQuantdError(err, "MODEL_LOAD_FAILED")).toBe(true);
  expect((err as Error).message).toContain("broken.onnx");
});

test("compareCandidate: the promotion step's figures, and the failing side named", async () => {
  const same = await compareCandidate(shippedModelPath, shippedModelPath, {
    shape: { batch: 1, seq: 16 },
    runs: 4,
    warmup: 1,
    memory: false,
  });
  expect(same.latencyRatio).toBeGreaterThan(0);
  expect(same.latencyRatio).toBeCloseTo(same.candidate.ratio!.medianOfPairs, 12);
  expect(same.memoryRatio).toBeUndefined();
  let err: unknown;
  try {
    await compareCandidate(shippedModelPath, join(dir, "absent.onnx"), { runs: 2, warmup: 0, memory: false });
  } catch (e) {
    err = e;
  }
  expect(isQuantdError(err, "FILE_NOT_FOUND")).toBe(true);
  expect((err as Error).message).toStartWith("candidate model:");
});
