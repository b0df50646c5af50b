/**
 * One row per encoder fixture (`test/fixtures/exporters/index.ts`: each
 * exporter's graph shape of the synthetic BERT, onnxruntime-optimized copies,
 * external data, the shipped BERT-Mini): static int8 with default flags and
 * dynamic int8, each validated against fp32 on held-out SST-2 sentences, with
 * top-1 agreement, the size ratio, the fp32 weight nodes left and why, the
 * graph changes made before quantizing (opset upgrade, contrib ops lowered),
 * and the p50 latency of fp32 and static int8 at batch 1 × 128 tokens (runs
 * interleaved, so load from other jobs hits both alike; the ratio is the
 * median of per-pair ratios).
 *
 *   bun bench/encoders.ts                  # mini-sized synthetic fixtures (4 × 256) + the shipped model
 *   bun bench/encoders.ts --size tiny      # 2 × 32 (what the tests use; per-row embedding scales weigh more)
 *   bun bench/encoders.ts --only ort-extended,ts-opset11-tanh-mul --val 1024 --calib 128
 *   bun bench/encoders.ts --decide-on point  # gate on the point estimate (default: its 95 % lower bound)
 *   bun bench/encoders.ts --markdown FILE  # also write the table to FILE
 *   bun bench/encoders.ts --only arch-roberta --runs 50  # latency runs per model (default 30)
 *   bun bench/encoders.ts --only arch-albert,arch-albert-ort-extended --arch-size base --margins
 *       # architecture rows at ALBERT-base's dimensions (768 wide, 12 heads, FFN 3072, 12 layer calls,
 *       # 512 positions; each keeps its own embedding width and tokenizer), with fp32's margins
 *
 * A fixture that fails prints its error code in the row; the script never
 * fails on a miss (the targets — gate met, ≤ 27 % size — are read, not asserted).
 * The architecture fixtures of `test/fixtures/encoders/` (DistilBERT,
 * RoBERTa, ALBERT, …; `arch-*` rows, at their own default size unless
 * `--arch-size` names another) follow. `--margins` adds, per fixture, fp32's
 * margin |logit1 − logit0| over the static run's held-out rows (that the
 * planted sentiment path still decides at that depth and width).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { isQuantdError } from "../src/errors.ts";
import { medianRatio, percentile } from "../src/bench/stats.ts";
import { runQuantization } from "../src/quant/pipeline.ts";
import { readSampleTsv, splitSamples } from "../src/quant/samples.ts";
import type { QuantizeReport } from "../src/quant/report.ts";
import { feedsForEncoding, loadClassifier } from "../src/runtime/classifier.ts";
import {
  type ArchitectureShape,
  architectureEncoderFixtures,
  type EncoderFixture,
  shippedEncoderFixtures,
  syntheticEncoderFixtures,
  TEST_BERT,
} from "../test/fixtures/exporters/index.ts";
import { SYNTHETIC_BERT_PRESETS, type SyntheticBertConfig } from "../test/fixtures/synthetic-bert.ts";

const repoRoot = resolve(import.meta.dir, "..");
const shippedDir = join(repoRoot, "calib/models/sst2-bert-mini");
const poolTsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");

const { values } = parseArgs({
  options: {
    size: { type: "string", default: "mini" },
    only: { type: "string" },
    calib: { type: "string", default: "128" },
    val: { type: "string", default: "1024" },
    "decide-on": { type: "string", default: "bound" },
    threads: { type: "string", default: "1" },
    runs: { type: "string", default: "30" },
    markdown: { type: "string" },
    "arch-size": { type: "string", default: "own" },
    margins: { type: "boolean", default: false },
  },
});

const SIZES: Record<string, SyntheticBertConfig> = {
  tiny: TEST_BERT,
  // BERT-Mini's shape with the shipped tokenizer's vocabulary, so the shipped WordPiece tokenizer fits.
  mini: { ...SYNTHETIC_BERT_PRESETS.mini, vocab: 16384 },
};

/** Sizes of the architecture rows: each fixture's own, or a real checkpoint's dimensions for all of them. */
const ARCH_SIZES: Record<string, ArchitectureShape | undefined> = {
  own: undefined,
  // ALBERT-base (albert-base-v2): BERT-base's layer shape, its one layer called 12 times.
  base: { size: { hidden: 768, heads: 12, intermediate: 3072, maxPositions: 512 }, layers: 12 },
};

/** One fixture's figures in one mode. */
interface ModeRow {
  agreement?: number;
  /** The agreement's 95 % lower confidence bound, what the default gate decides on. */
  lower?: number;
  sizeRatio?: number;
  fp32Left: string[];
  error?: string;
  report?: QuantizeReport;
}

function keptSummary(report: QuantizeReport): string[] {
  return report.keptFp32.map((k) => `${k.opType ?? "?"} ${k.node} (${k.detail ?? k.reason})`);
}

async function quantize(
  model: string,
  out: string,
  mode: "static" | "dynamic",
  samples: string,
): Promise<ModeRow> {
  try {
    const { report } = await runQuantization({
      model,
      calib: samples,
      out,
      mode,
      samples: Number(values.calib),
      validationSamples: Number(values.val),
      decideOn: values["decide-on"] === "point" ? "point" : "bound",
      threads: Number(values.threads),
    });
    const row: ModeRow = {
      agreement: report.metrics.agreement,
      lower: report.metrics.agreementLower,
      fp32Left: keptSummary(report),
      report,
    };
    if (report.model.sizeRatio !== undefined) row.sizeRatio = report.model.sizeRatio;
    return row;
  } catch (err) {
    return { fp32Left: [], error: isQuantdError(err) ? `${err.code}: ${err.message}` : String(err) };
  }
}

/** p50 latencies of two models on one batch of 1 × 128 tokens, runs interleaved. */
interface Latency {
  fp32Ms: number;
  int8Ms: number;
  /** Median of per-pair int8/fp32 ratios. */
  ratio: number;
}

async function latency(fp32: string, int8: string): Promise<Latency | string> {
  const session = { intraOpThreads: Number(values.threads) };
  const a = await loadClassifier(fp32, { session });
  const b = await loadClassifier(int8, { session });
  try {
    const text = readFileSync(poolTsv, "utf8").split("\n").slice(1, 40).join(" ");
    const enc = a.tokenizer.encodeBatch([text], { maxLength: 128, padding: "max_length" });
    const feedsA = feedsForEncoding(a.session, enc);
    const feedsB = feedsForEncoding(b.session, enc);
    const timeOne = async (c: typeof a, feeds: typeof feedsA): Promise<number> => {
      const t0 = performance.now();
      await c.session.run(feeds, [c.outputName]);
      return performance.now() - t0;
    };
    for (let w = 0; w < 5; w++) {
      await timeOne(a, feedsA);
      await timeOne(b, feedsB);
    }
    const ta: number[] = [];
    const tb: number[] = [];
    for (let r = 0; r < Number(values.runs); r++) {
      ta.push(await timeOne(a, feedsA));
      tb.push(await timeOne(b, feedsB));
    }
    return { fp32Ms: percentile(ta, 50), int8Ms: percentile(tb, 50), ratio: medianRatio(ta, tb) };
  } catch (err) {
    return isQuantdError(err) ? `${err.code}: ${err.message}` : String(err);
  } finally {
    await a.release();
    await b.release();
  }
}

const pct = (x: number | undefined): string => (x === undefined ? "—" : `${(x * 100).toFixed(2)} %`);
const agreement = (r: ModeRow): string =>
  r.error !== undefined ? "FAILED" : `${pct(r.agreement)} (≥ ${pct(r.lower)})`;

/** fp32's margins |logit1 − logit0| over the held-out rows a static run validates on, as one line. */
async function fp32Margins(name: string, model: string, samples: string): Promise<string> {
  const req = { calibration: Number(values.calib), validation: Number(values.val), needed: 1, gateWords: "" };
  const { validation } = splitSamples(await readSampleTsv(samples), req, false, samples);
  const c = await loadClassifier(model, { session: { intraOpThreads: Number(values.threads) } });
  try {
    const out = await c.classify(validation.map((v) => v.text));
    const m = out.map((o) => Math.abs(o.logits[1]! - o.logits[0]!));
    const below = [0.05, 0.1, 0.2].map((t) => pct(m.filter((x) => x < t).length / m.length)).join(" / ");
    return (
      `${name}: fp32 margin |logit1 − logit0| over ${m.length} held-out rows: median ${percentile(m, 50).toFixed(2)}, ` +
      `1st percentile ${percentile(m, 1).toFixed(3)}, smallest ${Math.min(...m).toFixed(4)}; below 0.05 / 0.1 / 0.2: ${below}`
    );
  } finally {
    await c.release();
  }
}

/** One fixture's table row: static and dynamic int8 of it, and latency of the static one. */
async function benchFixture(
  f: EncoderFixture,
  dir: string,
  samples: string,
): Promise<{ row: string; model: string }> {
  const model = await f.build(join(dir, f.name), shippedDir);
  const st = await quantize(model, join(dir, f.name, "int8-static.onnx"), "static", samples);
  const dy = await quantize(model, join(dir, f.name, "int8-dynamic.onnx"), "dynamic", samples);
  const graph = st.report?.graph ?? dy.report?.graph;
  const opset =
    graph === undefined
      ? "—"
      : graph.opset.from === graph.opset.to
        ? `${graph.opset.to}`
        : `${graph.opset.from}→${graph.opset.to}`;
  const lowered =
    graph === undefined || graph.lowered.length === 0
      ? "—"
      : [...new Set(graph.lowered.map((l) => l.opType))].join(", ");
  // Static's nodes even when dynamic failed (its error follows them), so a dynamic miss hides nothing.
  const left =
    (st.error ?? (st.fp32Left.length === 0 ? "none" : `${st.fp32Left.length}: ${st.fp32Left.join("; ")}`)) +
    (st.error === undefined && dy.error !== undefined ? `; dynamic: ${dy.error}` : "");
  const lat = st.error === undefined ? await latency(model, join(dir, f.name, "int8-static.onnx")) : "—";
  const times =
    typeof lat === "string"
      ? `${lat} | —`
      : `${lat.fp32Ms.toFixed(2)} ms | ${lat.int8Ms.toFixed(2)} ms (${lat.ratio.toFixed(2)} ×)`;
  const row = `| ${f.name} | ${agreement(st)} | ${pct(st.sizeRatio)} | ${agreement(dy)} | ${pct(dy.sizeRatio)} | ${times} | ${opset} | ${lowered} | ${left} |`;
  return { row, model };
}

async function main(): Promise<void> {
  const config = SIZES[values.size];
  if (config === undefined) throw new Error(`--size must be one of ${Object.keys(SIZES).join(", ")}`);
  if (!(values["arch-size"] in ARCH_SIZES)) {
    throw new Error(`--arch-size must be one of ${Object.keys(ARCH_SIZES).join(", ")}`);
  }
  const archShape = ARCH_SIZES[values["arch-size"]];
  const only = values.only?.split(",").filter((s) => s !== "");
  const all: EncoderFixture[] = [
    ...syntheticEncoderFixtures(config),
    ...shippedEncoderFixtures(join(shippedDir, "model.onnx")),
    ...architectureEncoderFixtures(archShape),
  ];
  const fixtures = only === undefined ? all : all.filter((f) => only.includes(f.name));
  const dir = mkdtempSync(join(tmpdir(), "quantd-bench-encoders-"));
  const samples = join(dir, "samples.tsv");
  const pool = readFileSync(poolTsv, "utf8").trim().split("\n");
  writeFileSync(samples, `${pool.slice(0, 1 + Number(values.calib) + Number(values.val)).join("\n")}\n`);
  const archWords =
    archShape === undefined
      ? ""
      : `; arch-* rows at ${archShape.size.hidden} wide, ${archShape.size.heads} heads, FFN ${archShape.size.intermediate}, ${archShape.layers} layer calls, ${archShape.size.maxPositions} positions (--arch-size ${values["arch-size"]})`;
  const lines = [
    `encoders: synthetic ${values.size} (${config.layers} × ${config.hidden}, vocab ${config.vocab}) + shipped BERT-Mini${archWords}; ` +
      `${values.calib} calibration / ${values.val} held-out SST-2 train sentences; default flags, gate 99.5 % on the ${values["decide-on"] === "point" ? "point estimate" : "95 % lower bound"}`,
    "",
    "| fixture | static agreement (95 % bound) | static size | dynamic agreement (bound) | dynamic size | p50 fp32 | p50 static int8 (ratio) | opset | lowered | fp32 weight nodes left (why) |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  console.log(lines.join("\n"));
  const notes: string[] = [];
  try {
    for (const f of fixtures) {
      const { row, model } = await benchFixture(f, dir, samples);
      lines.push(row);
      console.log(row);
      if (values.margins) {
        notes.push(await fp32Margins(f.name, model, samples));
        console.log(notes.at(-1));
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (values.markdown !== undefined) {
    writeFileSync(values.markdown, `${[...lines, ...(notes.length > 0 ? ["", ...notes] : [])].join("\n")}\n`);
  }
}

await main();
