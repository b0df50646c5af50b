/**
 * Calibration speed and memory on the shipped BERT-Mini: the time to calibrate
 * N SST-2 training sentences observing every activation input of every MatMul,
 * per method, against plain fp32 inference over the same sentences (same
 * length-bucketed batches, and batch 1). Peak RSS (VmHWM) is printed at the
 * end; run once with `--samples 128` and once with `--samples 1024` to compare.
 *
 *   bun bench/calibration.ts                       # 128 samples, every method
 *   bun bench/calibration.ts --samples 1024 --methods minmax,entropy
 *   bun bench/calibration.ts --batch-size 1
 *   bun bench/calibration.ts --no-baseline --methods minmax --samples 1024   # peak RSS of calibration alone
 *
 * Not part of the test suite; figures are printed, never asserted.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadModel } from "../src/onnx/codec.ts";
import { GraphIndex } from "../src/onnx/graph.ts";
import { calibrate } from "../src/quant/calibrate.ts";
import { CALIBRATION_METHODS, type CalibrationMethod } from "../src/quant/methods.ts";
import { feedsForEncoding } from "../src/runtime/classifier.ts";
import { createOrtSession } from "../src/runtime/ort-session.ts";
import { type BatchEncoding, loadTokenizer } from "../src/runtime/tokenizer.ts";

const repoRoot = resolve(import.meta.dir, "..");
const modelDir = resolve(repoRoot, "calib/models/sst2-bert-mini");
const { values } = parseArgs({
  options: {
    samples: { type: "string", default: "128" },
    methods: { type: "string", default: CALIBRATION_METHODS.join(",") },
    "batch-size": { type: "string", default: "8" },
    threads: { type: "string", default: "1" },
    "no-baseline": { type: "boolean", default: false },
  },
});
const samples = Number(values.samples);
const batchSize = Number(values["batch-size"]);
const threads = Number(values.threads);
const methods = values.methods.split(",") as CalibrationMethod[];

function peakRssMb(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m === null ? Number.NaN : Number(m[1]) / 1024;
}

const lines = readFileSync(resolve(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").split("\n").slice(1);
const sentences = lines
  .map((l) => l.slice(l.indexOf("\t") + 1).trim())
  .filter((s) => s.length > 0)
  .slice(0, samples);
const tokenizer = await loadTokenizer(modelDir);
const singles: BatchEncoding[] = sentences.map((s) => tokenizer.encodeBatch([s]));

// Length-bucketed batches, as the calibration runner forms them, for a fair fp32 baseline.
function bucketed(bs: number): BatchEncoding[] {
  const byLen = new Map<number, string[]>();
  for (let i = 0; i < sentences.length; i++) {
    const len = singles[i]!.seqLen;
    const group = byLen.get(len) ?? [];
    group.push(sentences[i]!);
    byLen.set(len, group);
  }
  const out: BatchEncoding[] = [];
  for (const group of byLen.values()) {
    for (let i = 0; i < group.length; i += bs) out.push(tokenizer.encodeBatch(group.slice(i, i + bs)));
  }
  return out;
}

const model = await loadModel(resolve(modelDir, "model.onnx"));
const index = new GraphIndex(model.graph);
const observed = [
  ...new Set(
    model.graph.node
      .filter((n) => n.opType === "MatMul" || n.opType === "Gemm")
      .flatMap((n) => n.input.slice(0, 2))
      .filter((t) => t !== "" && index.constant(t) === undefined),
  ),
];

const session = { intraOpThreads: threads };
async function fp32Ms(batches: readonly BatchEncoding[]): Promise<number> {
  const s = await createOrtSession(resolve(modelDir, "model.onnx"), session);
  try {
    await s.run(feedsForEncoding(s, batches[0]!)); // warm-up
    const t0 = performance.now();
    for (const b of batches) await s.run(feedsForEncoding(s, b));
    return performance.now() - t0;
  } finally {
    await s.release();
  }
}

const buckets = bucketed(batchSize);
const baseline = values["no-baseline"] !== true;
const fpBucketed = baseline ? await fp32Ms(buckets) : Number.NaN;
const fpSingle = baseline ? await fp32Ms(singles) : Number.NaN;
console.log(
  `${sentences.length} samples, ${observed.length} observed tensors (MatMul/Gemm activation inputs), ` +
    `batch size ${batchSize}, ${threads} thread(s)`,
);
if (baseline) {
  console.log(
    `fp32 inference: ${fpBucketed.toFixed(0)} ms in ${buckets.length} length-bucketed batches; ` +
      `${fpSingle.toFixed(0)} ms one by one`,
  );
}
for (const method of methods) {
  const r = await calibrate(model, observed, singles, { method, batchSize, session });
  console.log(
    `calibrate ${method.padEnd(14)} ${r.elapsedMs.toFixed(0).padStart(6)} ms  (${r.batches} runs, ` +
      `${(r.elapsedMs / fpBucketed).toFixed(2)}× fp32 bucketed; setup ${r.timings.setupMs.toFixed(0)} ms, ` +
      `inference ${r.timings.inferenceMs.toFixed(0)} ms, observers ${r.timings.observeMs.toFixed(0)} ms)`,
  );
}
console.log(`peak RSS ${peakRssMb().toFixed(0)} MB`);
