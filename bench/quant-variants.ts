/**
 * Side-by-side figures for the int8 formats `quantizeModel` can write, against
 * ONNX Runtime 1.30's reference outputs, on the shared BERT-Mini: file size,
 * top-1 agreement with fp32 and accuracy on the SST-2 dev set (runtime
 * `evaluate`, unpadded batches), and latency at seq 128, batch 1, one thread,
 * measured interleaved (every model in turn, repeated), as median per-run wall
 * time and process CPU time per run (the CPU figure is what to trust when other
 * processes share the cores: it does not count time spent waiting for one).
 *
 *   bun bench/quant-variants.ts                      # defaults + formats, 30 rounds
 *   bun bench/quant-variants.ts --rounds 60          # steadier latency
 *   bun bench/quant-variants.ts --variants static-qdq,dynamic --methods minmax,mse
 *
 * Prints figures, asserts nothing. Exits 0 with a message when ../shared is absent.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { encodeModel, loadModel, saveModel } from "../src/onnx/codec.ts";
import type { CalibrationMethod } from "../src/quant/methods.ts";
import { type QuantizeModelOptions, quantizeModel } from "../src/quant/quantize.ts";
import { loadClassifier } from "../src/runtime/classifier.ts";
import { evaluate } from "../src/runtime/evaluate.ts";
import { createOrtSession } from "../src/runtime/ort-session.ts";
import { type BatchEncoding, loadTokenizer } from "../src/runtime/tokenizer.ts";
import { readSamplesTsv } from "../src/runtime/tsv.ts";
import type { InferenceSession, Tensor } from "../src/runtime/types.ts";
import { median } from "../src/core/stats.ts";

const repoRoot = resolve(import.meta.dir, "..");
const shared = resolve(repoRoot, "../shared");
const modelDir = join(shared, "models/sst2-bert-mini");
const fp32Path = join(modelDir, "model.onnx");

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

const VARIANTS: Record<string, QuantizeModelOptions> = {
  "static-qdq": { type: "static", format: "qdq" },
  "static-fused": { type: "static", format: "fused" },
  dynamic: { type: "dynamic" },
  "static-fused-attention": { type: "static", format: "fused", quantizeAttentionMatMuls: true },
  "static-fused-per-tensor-emb": { type: "static", format: "fused", embeddingGranularity: "per-tensor" },
};

async function main(): Promise<void> {
  if (!existsSync(fp32Path)) {
    console.log(`shared reference material not found at ${shared}; nothing to measure`);
    return;
  }
  const rounds = Number(arg("rounds", "30"));
  const variants = arg("variants", "static-qdq,static-fused,dynamic").split(",");
  const methods = arg("methods", "minmax").split(",") as CalibrationMethod[];
  const work = mkdtempSync(join(tmpdir(), "quantd-variants-"));
  try {
    const fp32 = await loadModel(fp32Path);
    const fp32Bytes = encodeModel(fp32).byteLength;
    const tokenizer = await loadTokenizer(modelDir);
    const calib = await readSamplesTsv(join(shared, "data/sst2/calibration-128.tsv"));
    const batches: BatchEncoding[] = [];
    for (let i = 0; i < calib.length; i += 8) {
      batches.push(tokenizer.encodeBatch(calib.slice(i, i + 8).map((s) => s.text)));
    }
    const models: { label: string; path: string; bytes: number; note: string }[] = [
      { label: "fp32", path: fp32Path, bytes: fp32Bytes, note: "" },
      {
        label: "ORT static (ref)",
        path: join(modelDir, "reference/model.ort-static-minmax.onnx"),
        bytes: Bun.file(join(modelDir, "reference/model.ort-static-minmax.onnx")).size,
        note: "",
      },
      {
        label: "ORT dynamic (ref)",
        path: join(modelDir, "reference/model.ort-dynamic.onnx"),
        bytes: Bun.file(join(modelDir, "reference/model.ort-dynamic.onnx")).size,
        note: "",
      },
    ];
    for (const v of variants) {
      const base = VARIANTS[v];
      if (base === undefined)
        throw new Error(`unknown variant ${v}; known: ${Object.keys(VARIANTS).join(", ")}`);
      for (const method of base.type === "static" ? methods : ["-"]) {
        const opts = (base.type === "static" ? { ...base, method } : base) as QuantizeModelOptions;
        const r = await quantizeModel(fp32, { ...opts, calibration: batches });
        const label = base.type === "static" ? `${v}/${method}` : v;
        const path = join(work, `${label.replace("/", "-")}.onnx`);
        await saveModel(r.model, path);
        models.push({
          label,
          path,
          bytes: encodeModel(r.model).byteLength,
          note: `calib ${r.timings.calibrationMs.toFixed(0)} ms, rewrite ${r.timings.quantizationMs.toFixed(0)} ms`,
        });
      }
    }

    const dev = await readSamplesTsv(join(repoRoot, "calib/samples/sst2-dev.tsv"));
    const reference = await loadClassifier(fp32Path, { tokenizerDir: modelDir });
    const quality = new Map<string, string>();
    for (const m of models.slice(1)) {
      const c = await loadClassifier(m.path, { tokenizerDir: modelDir });
      // batch 1: dynamic models depend on what else is in the batch
      const res = await evaluate(c, dev, { compare: reference, batchSize: 1 });
      quality.set(
        m.label,
        `agreement ${((res.agreement ?? 0) * 100).toFixed(2)} %, accuracy ${((res.accuracy ?? 0) * 100).toFixed(2)} % (fp32 ${((res.compareAccuracy ?? 0) * 100).toFixed(2)} %)`,
      );
      await c.release();
    }
    await reference.release();

    const latency = await interleaved(
      models.map((m) => m.path),
      rounds,
    );
    const refIdx = models.findIndex((m) => m.label === "ORT dynamic (ref)");
    const staticIdx = models.findIndex((m) => m.label === "ORT static (ref)");
    const faster = (k: number): number =>
      Math.min(latency[refIdx]![k === 0 ? "wall" : "cpu"], latency[staticIdx]![k === 0 ? "wall" : "cpu"]);
    console.log(`seq 128, batch 1, 1 thread, ${rounds} interleaved rounds × 10 runs`);
    for (const [i, m] of models.entries()) {
      const l = latency[i]!;
      console.log(
        [
          m.label.padEnd(28),
          `size ${((m.bytes / fp32Bytes) * 100).toFixed(2).padStart(6)} %`,
          `p50 ${l.wall.toFixed(3)} ms (${(l.wall / faster(0)).toFixed(3)}×)`,
          `cpu ${l.cpu.toFixed(3)} ms (${(l.cpu / faster(1)).toFixed(3)}×)`,
          quality.get(m.label) ?? "",
          m.note,
        ].join("  "),
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function seq128Feeds(session: InferenceSession): Record<string, Tensor> {
  const seq = 128;
  const ids = new BigInt64Array(seq);
  for (let i = 0; i < seq; i++) ids[i] = BigInt(i === 0 ? 2 : i === seq - 1 ? 3 : 1000 + ((i * 37) % 5000));
  const all: Record<string, Tensor> = {
    input_ids: { type: "int64", data: ids, dims: [1, seq] },
    attention_mask: { type: "int64", data: new BigInt64Array(seq).fill(1n), dims: [1, seq] },
    token_type_ids: { type: "int64", data: new BigInt64Array(seq), dims: [1, seq] },
  };
  return Object.fromEntries(session.inputNames.map((n) => [n, all[n]!]));
}

async function interleaved(
  paths: readonly string[],
  rounds: number,
): Promise<{ wall: number; cpu: number }[]> {
  const sessions: InferenceSession[] = [];
  for (const p of paths)
    sessions.push(await createOrtSession(p, { intraOpThreads: 1, graphOptimizationLevel: "all" }));
  const feeds = sessions.map(seq128Feeds);
  for (const [k, s] of sessions.entries()) for (let i = 0; i < 30; i++) await s.run(feeds[k]!);
  const wall: number[][] = paths.map(() => []);
  const cpu: number[][] = paths.map(() => []);
  const per = 10;
  for (let r = 0; r < rounds; r++) {
    for (const [k, s] of sessions.entries()) {
      const c0 = process.cpuUsage();
      for (let i = 0; i < per; i++) {
        const t0 = performance.now();
        await s.run(feeds[k]!);
        wall[k]!.push(performance.now() - t0);
      }
      const c = process.cpuUsage(c0);
      cpu[k]!.push((c.user + c.system) / 1000 / per);
    }
  }
  for (const s of sessions) await s.release();
  return paths.map((_, k) => ({ wall: median(wall[k]!), cpu: median(cpu[k]!) }));
}

await main();
