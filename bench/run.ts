/**
 * `bun run bench`: the comparison that matters, in one process tree on this
 * machine, written to `bench/results/latest.{json,svg,md}`.
 *
 * - BERT-Mini family: the shared fp32 model (the repository copy when `../shared`
 *   is absent), ONNX Runtime's quantization tool outputs from
 *   `../shared/models/sst2-bert-mini/reference/` (skipped with a note without
 *   `../shared`), and quantd's static and dynamic int8 of it (made here with
 *   `quantd quantize`, or given). Latency
 *   on real SST-2 dev sentences cut or padded to each length; accuracy and top-1
 *   agreement with fp32 on the 872 dev sentences.
 * - BERT-base family: the synthetic BERT-base (12 × 768) in fp32, built to a
 *   temporary file by the fixture builder, and quantd's static and dynamic int8 of it.
 *
 * Not part of the test suite; speed and memory are read here, never asserted.
 *
 *   bun run bench                              # default run, a few minutes on 2 cores
 *   bun run bench --runs 50 --threads 1,2      # more runs, more thread counts
 *   bun run bench --quantd-static A.onnx --quantd-dynamic B.onnx \
 *                 --quantd-base-static C.onnx --quantd-base-dynamic D.onnx   # already quantized
 *   bun run bench --no-base                    # skip BERT-base
 *   bun run bench --no-quantize                # no quantd rows (fp32 and ORT only)
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { renderChartSvg } from "../src/bench/chart.ts";
import { createModelData, type LabelledText } from "../src/bench/data.ts";
import { defaultThreads } from "../src/bench/defaults.ts";
import type { Shape } from "../src/bench/inputs.ts";
import { type BenchModel, type BenchOptions, type BenchResult, runBench } from "../src/bench/measure.ts";
import { createBenchProgress } from "../src/bench/progress.ts";
import { machineInfo, renderMarkdown, renderTerminalTable, toBenchDocument } from "../src/bench/report.ts";
import { isQuantdError } from "../src/errors.ts";
import { readSamplesTsv } from "../src/runtime/tsv.ts";

const repoRoot = resolve(import.meta.dir, "..");
const shared = resolve(repoRoot, "../shared");
const sharedMini = join(shared, "models/sst2-bert-mini");
const repoMini = join(repoRoot, "calib/models/sst2-bert-mini/model.onnx");
const devTsv = join(repoRoot, "calib/samples/sst2-dev.tsv");
const trainTsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");
const syntheticBuilder = join(repoRoot, "test/fixtures/build-synthetic-bert.ts");

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? undefined : process.argv[i + 1];
}

function intArg(name: string, fallback: number, min: number): number {
  const raw = arg(name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min) {
    console.error(`error USAGE: --${name} must be an integer >= ${min}, got ${raw}`);
    process.exit(2);
  }
  return n;
}

/** Paths of models quantd has already quantized (static QDQ and dynamic int8). */
export interface QuantdVariants {
  static?: string;
  dynamic?: string;
}

/**
 * quantd's int8 rows of one family, from already-quantized files (made by
 * {@link quantizeWithQuantd}, or given with `--quantd-*` flags). No row is
 * invented for a variant that is absent.
 */
export function quantdInt8Models(family: string, prefix: string, variants: QuantdVariants): BenchModel[] {
  const out: BenchModel[] = [];
  if (variants.static !== undefined)
    out.push({ label: `${prefix} quantd static int8`, path: variants.static, family });
  if (variants.dynamic !== undefined) {
    out.push({ label: `${prefix} quantd dynamic int8`, path: variants.dynamic, family });
  }
  return out;
}

/**
 * Quantizes `fp32` with `quantd quantize` in a child process, so the
 * quantizer's peak memory stays out of this process, and the path is the one
 * users take.
 *
 * @returns the int8 path, or a note saying why there is none
 */
function quantizeWithQuantd(
  fp32: string,
  mode: "static" | "dynamic",
  out: string,
  extra: readonly string[],
): { path?: string; note?: string } {
  console.error(`== quantd quantize --mode ${mode} ${fp32}`);
  const t0 = performance.now();
  const r = spawnSync(
    process.execPath,
    [join(repoRoot, "src/cli/main.ts"), "quantize", "--model", fp32, "--out", out, "--mode", mode, ...extra],
    { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8", cwd: repoRoot },
  );
  if (r.status !== 0 || !existsSync(out)) {
    const last = (r.stderr ?? "").trim().split("\n").at(-1) ?? "";
    return { note: `quantd ${mode} int8 of ${fp32} not measured: quantize failed (${last})` };
  }
  console.error(`   done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return { path: out };
}

/**
 * The quantd variants of one family: files given with `--<prefix>-static` /
 * `--<prefix>-dynamic`, else quantized here (unless `--no-quantize`).
 */
function quantdVariants(
  prefix: string,
  fp32: string,
  dir: string,
  extra: readonly string[],
  notes: string[],
): QuantdVariants {
  const v: QuantdVariants = {};
  for (const mode of ["static", "dynamic"] as const) {
    const given = arg(`${prefix}-${mode}`);
    if (given !== undefined) {
      v[mode] = resolve(given);
      continue;
    }
    if (process.argv.includes("--no-quantize")) continue;
    const made = quantizeWithQuantd(fp32, mode, join(dir, `${prefix}.${mode}.onnx`), extra);
    if (made.path !== undefined) v[mode] = made.path;
    if (made.note !== undefined) {
      console.error(made.note);
      notes.push(made.note);
    }
  }
  return v;
}

/** Builds the synthetic BERT-base with the fixture builder, in a child process (it allocates ~0.5 GB). */
function buildSyntheticBase(dir: string): { path?: string; note?: string } {
  if (!existsSync(syntheticBuilder)) {
    return { note: `synthetic BERT-base rows skipped: ${syntheticBuilder} does not exist yet` };
  }
  const out = join(dir, "synthetic-bert-base.onnx");
  const r = spawnSync(process.execPath, [syntheticBuilder, "--preset", "base", "--out", out], {
    stdio: ["ignore", "ignore", "pipe"],
    encoding: "utf8",
  });
  if (r.status !== 0 || !existsSync(out)) {
    return {
      note: `synthetic BERT-base rows skipped: the builder failed (${(r.stderr ?? "").trim().slice(-300)})`,
    };
  }
  return { path: out };
}

async function runFamily(label: string, opts: BenchOptions): Promise<BenchResult> {
  console.error(`== ${label}: ${opts.models.length} models`);
  const progress = createBenchProgress();
  try {
    return await runBench({ ...opts, onProgress: (e) => progress.update(e) });
  } finally {
    progress.done();
  }
}

async function main(): Promise<void> {
  const runs = intArg("runs", 30, 1);
  const warmup = intArg("warmup", 3, 0);
  const threadsArg = arg("threads");
  const threads = threadsArg === undefined ? [defaultThreads()] : threadsArg.split(",").map(Number);
  if (threads.some((t) => !Number.isSafeInteger(t) || t < 1)) {
    console.error(`error USAGE: --threads must be a list of integers >= 1, got ${threadsArg}`);
    process.exit(2);
  }
  const outDir = resolve(arg("out") ?? join(repoRoot, "bench/results"));
  const notes: string[] = [];
  const tmp = mkdtempSync(join(tmpdir(), "quantd-bench-"));

  try {
    // BERT-Mini family.
    const hasShared = existsSync(join(sharedMini, "model.onnx"));
    const miniFp32 = hasShared ? join(sharedMini, "model.onnx") : repoMini;
    const mini: BenchModel[] = [{ label: "bert-mini fp32", path: miniFp32, family: "bert-mini" }];
    if (hasShared) {
      mini.push(
        {
          label: "bert-mini ORT static int8",
          path: join(sharedMini, "reference/model.ort-static-minmax.onnx"),
          family: "bert-mini",
        },
        {
          label: "bert-mini ORT dynamic int8",
          path: join(sharedMini, "reference/model.ort-dynamic.onnx"),
          family: "bert-mini",
        },
      );
    } else {
      const why = `ONNX Runtime reference rows skipped: ${shared} is absent`;
      console.error(why);
      notes.push(why, "bert-mini fp32 is the repository copy calib/models/sst2-bert-mini/model.onnx");
    }
    // quantd calibrates on the same 128 sentences as the ORT reference, and validates on train sentences.
    const calib = hasShared ? join(shared, "data/sst2/calibration-128.tsv") : trainTsv;
    const miniExtra = ["--calib", calib, "--samples", "128", "--validate", trainTsv, "--val-samples", "512"];
    if (process.argv.includes("--no-quantize")) notes.push("quantd int8 rows not measured (--no-quantize)");
    else {
      notes.push(
        `quantd int8 of bert-mini: quantd quantize (defaults) calibrated on ${hasShared ? "../shared/data/sst2/calibration-128.tsv" : "the first 128 rows of calib/samples/sst2-train-4k.tsv"}, gate validated on 512 train sentences`,
      );
    }
    mini.push(
      ...quantdInt8Models(
        "bert-mini",
        "bert-mini",
        quantdVariants("quantd", miniFp32, tmp, miniExtra, notes),
      ),
    );
    const samples: LabelledText[] = (await readSamplesTsv(devTsv, { requireLabels: true })).map((s) => ({
      text: s.text,
      label: s.label!,
    }));
    notes.push(
      `bert-mini rows: latency on real SST-2 dev sentences cut or padded to each seq; accuracy and agreement ` +
        `with fp32 on all ${samples.length} dev sentences (calib/samples/sst2-dev.tsv)`,
    );
    const miniShapes: Shape[] = [
      { batch: 1, seq: 32 },
      { batch: 1, seq: 128 },
      { batch: 8, seq: 128 },
    ];
    const miniResult = await runFamily("BERT-Mini", {
      models: mini,
      shapes: miniShapes,
      threads,
      runs,
      warmup,
      // Every variant is BERT-Mini, with BERT-Mini's tokenizer (quantd's int8 files sit in a temporary folder).
      data: (m) => createModelData(m, samples, { tokenizerDir: dirname(miniFp32) }),
    });

    // BERT-base family.
    let baseResult: BenchResult | undefined;
    if (process.argv.includes("--no-base")) {
      notes.push("synthetic BERT-base rows skipped (--no-base)");
    } else {
      const built = buildSyntheticBase(tmp);
      if (built.note !== undefined) {
        console.error(built.note);
        notes.push(built.note);
      }
      if (built.path !== undefined) {
        const base: BenchModel[] = [
          { label: "bert-base fp32 (synthetic)", path: built.path, family: "bert-base" },
        ];
        // Random weights: logits are near ties, so top-1 agreement means little; the gate is off (--gate 0).
        const baseExtra = [
          "--tokenizer",
          join(repoRoot, "calib/models/sst2-bert-mini"),
          "--calib",
          trainTsv,
          "--samples",
          "32",
          "--val-samples",
          "32",
          "--gate",
          "0",
        ];
        const variants = quantdVariants("quantd-base", built.path, tmp, baseExtra, notes);
        base.push(...quantdInt8Models("bert-base", "bert-base", variants));
        if (!process.argv.includes("--no-quantize")) {
          notes.push(
            "quantd int8 of the synthetic bert-base: calibrated on 32 SST-2 train sentences (BERT-Mini tokenizer), gate off",
          );
        }
        notes.push(
          "bert-base rows: synthetic BERT-base (12 layers, hidden 768, random weights) on synthetic token ids",
        );
        baseResult = await runFamily("BERT-base", {
          models: base,
          shapes: [{ batch: 1, seq: 128 }],
          threads,
          runs: Math.min(runs, 20),
          warmup: Math.min(warmup, 2),
        });
        if (runs > 20) notes.push("bert-base rows use at most 20 timed runs");
      }
    }

    const result: BenchResult = {
      rows: [...miniResult.rows, ...(baseResult?.rows ?? [])],
      runs,
      warmup,
      seed: miniResult.seed,
      realText: false,
    };
    const machine = machineInfo();
    const doc = toBenchDocument(result, machine, notes);
    // Temporary paths mean nothing in a committed file; the label says what the model is.
    for (const row of doc.rows)
      if (row.path.startsWith(tmp)) row.path = "(temporary) synthetic-bert-base.onnx";
    for (const row of doc.rows)
      if (row.path.startsWith(repoRoot)) row.path = row.path.slice(repoRoot.length + 1);
    for (const row of doc.rows)
      if (row.path.startsWith(shared)) row.path = `../shared${row.path.slice(shared.length)}`;

    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, "latest.json"), `${JSON.stringify(doc, null, 2)}\n`);
    const subtitle =
      `${machine.cpu}, ${machine.cores} cores · Bun ${machine.bun} · onnxruntime ${machine.onnxruntime} · ` +
      `${machine.date.slice(0, 16).replace("T", " ")} UTC`;
    writeFileSync(
      join(outDir, "latest.svg"),
      renderChartSvg(doc.rows, { title: "quantd bench: fp32 vs int8 variants", subtitle }),
    );
    writeFileSync(join(outDir, "latest.md"), `# quantd bench results\n\n${renderMarkdown(doc)}`);
    for (const line of renderTerminalTable(result)) console.log(line);
    if (notes.length > 0) console.log(`\n${notes.map((n) => `note: ${n}`).join("\n")}`);
    console.log(`\nwrote ${join(outDir, "latest.json")}, latest.svg, latest.md`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (err) {
  if (isQuantdError(err)) {
    console.error(err.toLine());
    process.exit(1);
  }
  throw err;
}
