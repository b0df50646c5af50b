/**
 * A short real benchmark on real models: the shipped BERT-Mini (twice, to get a
 * ratio), a corrupt file, a missing file and a model that fixes its sequence
 * length. The good rows are measured, each bad one carries its own error, and
 * the JSON document and the SVG chart are well formed.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { renderChartSvg } from "../../src/bench/chart.ts";
import { createModelData } from "../../src/bench/data.ts";
import { type BenchResult, type BenchRow, type BenchRowOk, runBench } from "../../src/bench/measure.ts";
import { toBenchDocument } from "../../src/bench/report.ts";
import { readSamplesTsv } from "../../src/runtime/tsv.ts";
import { shippedDevTsv, shippedModelPath } from "../helpers/paths.ts";
import { saveModel } from "../../src/onnx/codec.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { ONNX_FLOAT, ONNX_INT64, tinyOnnxModel } from "../helpers/tiny-onnx.ts";

let dir: string;
let broken: string;
let fixedSeq: string;
let result: BenchResult;

function rowOf(rows: BenchRow[], model: string, seq: number): BenchRow {
  const r = rows.find((x) => x.model === model && x.shape.seq === seq);
  if (r === undefined) throw new Error(`no row ${model} s${seq}`);
  return r;
}

function ok(r: BenchRow): BenchRowOk {
  if (r.status !== "ok") throw new Error(`row ${r.model} failed: ${r.error.code} ${r.error.message}`);
  return r;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "quantd-bench-"));
  broken = join(dir, "broken.onnx");
  // the first 4 KiB of a real model: a truncated download
  writeFileSync(broken, readFileSync(shippedModelPath).subarray(0, 4096));
  fixedSeq = join(dir, "fixed-seq16.onnx");
  writeFileSync(
    fixedSeq,
    tinyOnnxModel(
      [{ opType: "Cast", inputs: ["input_ids"], outputs: ["logits"], intAttrs: { to: ONNX_FLOAT } }],
      [{ name: "input_ids", elemType: ONNX_INT64, dims: [1, 16] }],
      [{ name: "logits", elemType: ONNX_FLOAT, dims: [1, 16] }],
    ),
  );
  result = await runBench({
    models: [
      { label: "mini", path: shippedModelPath },
      { label: "broken", path: broken },
      { label: "missing", path: join(dir, "nope.onnx") },
      { label: "fixed", path: fixedSeq, vocabSize: 100 },
      { label: "mini-again", path: shippedModelPath },
    ],
    shapes: [
      { batch: 1, seq: 16 },
      { batch: 2, seq: 32 },
    ],
    threads: [1],
    runs: 6,
    warmup: 1,
    memory: false,
  });
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("runBench on real models", () => {
  test("one row per model and shape, in order", () => {
    expect(result.rows).toHaveLength(10);
    expect(result.rows.slice(0, 5).map((r) => r.model)).toEqual([
      "mini",
      "broken",
      "missing",
      "fixed",
      "mini-again",
    ]);
  });
  test("good rows carry latency, throughput, load time and size", () => {
    for (const seq of [16, 32]) {
      const r = ok(rowOf(result.rows, "mini", seq));
      expect(r.latenciesMs).toHaveLength(6);
      expect(r.latency.n).toBe(6);
      expect(r.latency.p50).toBeGreaterThan(0);
      expect(r.latency.p90).toBeGreaterThanOrEqual(r.latency.p50);
      expect(r.latency.p99).toBeGreaterThanOrEqual(r.latency.p90);
      expect(r.throughput).toBeCloseTo((r.shape.batch * 1000) / r.latency.mean, 6);
      expect(r.loadMs).toBeGreaterThan(0);
      expect(r.sizeBytes).toBe(statSync(shippedModelPath).size);
      expect(r.memory).toBeUndefined();
      expect(r.ratio).toBeUndefined();
    }
  });
  test("later models get the per-pair ratio to the first", () => {
    const r = ok(rowOf(result.rows, "mini-again", 32));
    expect(r.ratio?.baseline).toBe("mini");
    expect(r.ratio!.medianOfPairs).toBeGreaterThan(0);
    expect(r.ratio!.p50).toBeCloseTo(r.latency.p50 / ok(rowOf(result.rows, "mini", 32)).latency.p50, 9);
  });
  test("a broken model, a missing one and a rejected shape are errors in their own rows", () => {
    for (const seq of [16, 32]) {
      const b = rowOf(result.rows, "broken", seq);
      // A truncated download named as one, not as onnxruntime's "Protobuf parsing failed".
      expect(b.status === "error" && b.error.code).toBe("MODEL_TRUNCATED");
      const m = rowOf(result.rows, "missing", seq);
      expect(m.status === "error" && m.error.code).toBe("FILE_NOT_FOUND");
    }
    // the fixed-shape model runs at its own shape and refuses the other
    expect(ok(rowOf(result.rows, "fixed", 16)).latency.n).toBe(6);
    const rejected = rowOf(result.rows, "fixed", 32);
    expect(rejected.status === "error" && rejected.error.code).toBe("MODEL_INPUTS_MISMATCH");
    expect(rejected.status === "error" && rejected.error.message).toContain("b2×s32");
  });
  test("the JSON document round-trips and the chart has a bar per measured row", () => {
    const doc = JSON.parse(JSON.stringify(toBenchDocument(result)));
    expect(doc.schema).toBe("quantd-bench/1");
    expect(doc.machine.cores).toBeGreaterThan(0);
    expect(doc.machine.onnxruntime).toMatch(/^\d+\.\d+/);
    expect(doc.rows).toHaveLength(10);
    expect(doc.rows.filter((r: BenchRow) => r.status === "ok")).toHaveLength(5);
    const svg = renderChartSvg(result.rows);
    expect(svg.startsWith("<svg ")).toBe(true);
    for (const model of ["mini", "mini-again"]) {
      expect(svg.match(new RegExp(`<rect class="bar" data-model="${model}"`, "g"))).toHaveLength(2);
    }
    expect(svg.match(/<rect class="bar" data-model="fixed"/g)).toHaveLength(1);
  });
});

test("with labelled data: real-text feeds, accuracy, agreement; data that does not fit is that model's error", async () => {
  const samples = (await readSamplesTsv(shippedDevTsv, { requireLabels: true }))
    .slice(0, 48)
    .map((s) => ({ text: s.text, label: s.label! }));
  const badLabels = samples.map((s, i) => ({ text: s.text, label: i === 5 ? 7 : s.label }));
  const r = await runBench({
    models: [
      { label: "mini", path: shippedModelPath },
      { label: "mini-again", path: shippedModelPath },
      { label: "fixed", path: fixedSeq },
      { label: "mini-3", path: shippedModelPath },
    ],
    shapes: [{ batch: 2, seq: 24 }],
    threads: [1],
    runs: 3,
    warmup: 1,
    memory: false,
    data: (m) => createModelData(m, m.label === "mini-again" ? badLabels : samples),
  });
  const first = ok(r.rows[0]!);
  expect(r.realText).toBe(true);
  const q = first.quality;
  if (q === undefined || "error" in q) throw new Error("no quality for the first model");
  expect(q.samples).toBe(48);
  // BERT-Mini scores about 83% on SST-2 dev; 48 sentences leave room either way, but not chance level
  expect(q.accuracy).toBeGreaterThan(0.6);
  expect(q.agreement).toBeUndefined();
  // labels beyond the model's two classes: latency still measured, quality is a DATA_MISMATCH
  const again = ok(r.rows[1]!);
  expect(again.quality !== undefined && "error" in again.quality && again.quality.error.code).toBe(
    "DATA_MISMATCH",
  );
  // no tokenizer beside the fixed-shape model: its row says so
  const fixedRow = r.rows[2]!;
  expect(fixedRow.status === "error" && fixedRow.error.code).toBe("TOKENIZER_NOT_FOUND");
  // the same model again agrees with the first on every sentence
  const third = ok(r.rows[3]!);
  expect(third.quality).toEqual({ samples: 48, accuracy: q.accuracy, agreement: 1 });
});

test("a short run on the tiny synthetic BERT, memory included, gives a well-formed JSON document and chart", async () => {
  const tiny = join(dir, "tiny-bert.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), tiny);
  // no config.json beside it: the vocabulary size (512) comes from the graph
  const r = await runBench({
    models: [{ label: "tiny", path: tiny }],
    shapes: [
      { batch: 1, seq: 16 },
      { batch: 4, seq: 64 },
    ],
    threads: [1],
    runs: 5,
    warmup: 1,
    memoryRuns: 1,
  });
  expect(r.rows).toHaveLength(2);
  for (const row of r.rows) {
    const o = ok(row);
    expect(o.latency.n).toBe(5);
    const m = o.memory;
    if (m === undefined || "error" in m) throw new Error(`no memory figure: ${JSON.stringify(m)}`);
    expect(m.peakRssBytes).toBeGreaterThan(m.baselineRssBytes);
  }
  const doc = JSON.parse(JSON.stringify(toBenchDocument(r)));
  expect(doc.rows.map((x: BenchRow) => `${x.model} ${x.shape.batch}x${x.shape.seq} ${x.status}`)).toEqual([
    "tiny 1x16 ok",
    "tiny 4x64 ok",
  ]);
  expect(typeof doc.machine.date).toBe("string");
  const svg = renderChartSvg(r.rows);
  expect(svg.startsWith("<svg ")).toBe(true);
  // one bar per shape in the latency panel and one in the memory panel
  expect(svg.match(/<rect class="bar" data-model="tiny"/g)).toHaveLength(4);
});

test("an external-data model's size counts its data file (model.onnx + model.onnx_data), as quantize's ratio does", async () => {
  const sub = join(dir, "external");
  mkdirSync(sub);
  const path = join(sub, "model.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), path, {
    externalData: { location: "model.onnx_data" },
  });
  const r = await runBench({
    models: [{ label: "external", path }],
    shapes: [{ batch: 1, seq: 16 }],
    threads: [1],
    runs: 2,
    warmup: 1,
    memory: false,
  });
  const total = statSync(path).size + statSync(join(sub, "model.onnx_data")).size;
  expect(statSync(path).size).toBeLessThan(total / 2);
  expect(ok(r.rows[0]!).sizeBytes).toBe(total);
});
