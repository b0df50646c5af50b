/**
 * `quantd bench`: latency, throughput, load time, size and peak memory of model
 * variants side by side. A thin layer over `src/bench/`: it parses flags, runs
 * {@link runBench}, prints the table and writes the JSON and SVG files.
 */
import { writeFileSync } from "node:fs";
import { basename, dirname } from "node:path";
import { renderChartSvg } from "../../bench/chart.ts";
import { createModelData } from "../../bench/data.ts";
import { DEFAULT_BATCHES, DEFAULT_RUNS, DEFAULT_SEQS, DEFAULT_WARMUP } from "../../bench/defaults.ts";
import { findMaxPositions, type Shape } from "../../bench/inputs.ts";
import { type BenchModel, type ModelData, runBench } from "../../bench/measure.ts";
import { createBenchProgress } from "../../bench/progress.ts";
import { machineInfo, renderTerminalTable, toBenchDocument } from "../../bench/report.ts";
import { QuantdError } from "../../errors.ts";
import { modelFileOf } from "../../runtime/model-files.ts";
import { readSamplesTsv } from "../../runtime/tsv.ts";
import { addClassifierAgreements, benchTasks, classifiersOnly, renderBenchTasks } from "../bench-tasks.ts";
import type { Command } from "../command.ts";
import { defaultCliThreads, JSON_FLAG, THREADS_DEFAULT_TEXT } from "../model-flags.ts";
import {
  expectNoPositionals,
  flagBool,
  flagInt,
  flagIntList,
  flagList,
  flagString,
  usageError,
} from "../parse.ts";

/**
 * Table labels for model paths: the file name without `.onnx`, prefixed by its
 * folder when two files share a name (`model.onnx` in several folders).
 */
export function modelLabels(paths: readonly string[]): string[] {
  const short = paths.map((p) => basename(p).replace(/\.onnx$/i, ""));
  const labels = short.map((s, i) =>
    short.filter((x) => x === s).length > 1 ? `${basename(dirname(paths[i]!))}/${s}` : s,
  );
  // Still equal (same folder name too, or the same file twice): number them.
  return labels.map((l, i) => (labels.filter((x) => x === l).length > 1 ? `${l}#${i + 1}` : l));
}

function writeOut(path: string, text: string, what: string): void {
  try {
    writeFileSync(path, text);
  } catch (err) {
    throw new QuantdError("FILE_WRITE_FAILED", `cannot write the ${what} to ${path}`, { cause: err });
  }
}

/**
 * Rejects arguments; `--json FILE` (the flag's meaning before `--out`) gets a hint.
 * @throws USAGE
 */
function rejectPositionals(positionals: readonly string[]): void {
  const first = positionals[0];
  if (first !== undefined && /\.json$/i.test(first)) {
    throw usageError(
      `unexpected argument "${first}": --json prints the results on stdout; write them to a file with --out ${first}`,
      { argument: first },
    );
  }
  expectNoPositionals(positionals);
}

/**
 * Refuses a sequence length beyond a model's position table before anything
 * runs: onnxruntime would fail in the embeddings with a broadcast error that
 * does not say why. A model that cannot be read is left to fail in its rows.
 *
 * @throws USAGE naming the model, its bound and where the bound comes from
 */
async function checkSeqFits(models: readonly BenchModel[], seqs: readonly number[]): Promise<void> {
  const longest = Math.max(...seqs);
  for (const m of models) {
    const max = await findMaxPositions(m.path);
    if (max !== undefined && longest > max.positions) {
      throw usageError(
        `--seq ${longest} is beyond the maximum length of ${m.label}: ${max.positions} tokens ` +
          `(${max.source}); use --seq up to ${max.positions}`,
        { flag: "seq", value: longest, max: max.positions, model: m.path },
      );
    }
  }
}

/** The `bench` command. */
export const benchCommand: Command = {
  name: "bench",
  summary: "compare latency, throughput, load time, size and peak memory of models",
  usage:
    "--model A.onnx [--model B.onnx …] [--seq 32,128] [--batch 1,8] [--threads 1,N] [--runs N] [--warmup N] " +
    "[--data FILE.tsv] [--out OUT.json] [--plot OUT.svg] [--json]",
  description:
    "Runs every model at every shape (batch × seq) and thread count: warm-up runs, then timed runs " +
    "interleaved across models (A B A B …) so that machine drift affects all alike. Prints p50/p90/p99 " +
    "latency, throughput (sequences/s), session load time, file size, peak resident memory of a fresh " +
    "child process that loads the model and runs it, and the median of per-run latency ratios to the " +
    "first model.\n\n" +
    "Inputs are random token ids (fixed seed) with a full attention mask, unless --data gives labelled " +
    "text: then each model's tokenizer (beside the model or one folder up, or --tokenizer) cuts or pads " +
    "it to each seq, and the table adds accuracy and top-1 agreement with the first model.\n\n" +
    "Below the table a line per model names its task (detected from the model and its files) and, with " +
    "--data, gives that agreement as the quantize gate reads it: with its 95 % lower bound and n. For models " +
    "other than sentence classifiers, --data (texts, or pairs in two text columns; no labels needed) gives " +
    "instead the task's own agreement with the first model, as the quantize gate counts it: tokens, label " +
    "decisions, samples at cosine ≥ 0.98 with the mean cosine and neighbour overlap, regression values with " +
    "Pearson; their latency runs on synthetic ids.\n\n" +
    "A missing or broken model, a shape a model rejects or data that does not fit a model is an error in " +
    "that model's rows; the others still run, and the exit code is 1. A --seq beyond a model's maximum " +
    "length (max_position_embeddings in its config.json, else its position-embedding table) is a usage " +
    "error before anything runs.\n\n" +
    "--json prints the results document on stdout instead of the table; --out writes the same document " +
    "to a file beside the table.",
  flags: [
    {
      name: "model",
      type: "string",
      multiple: true,
      value: "FILE|DIR",
      description: "an .onnx model or a model directory; the first is the baseline",
    },
    {
      name: "seq",
      type: "string",
      multiple: true,
      value: "N,…",
      description: "sequence lengths",
      default: DEFAULT_SEQS.join(","),
    },
    {
      name: "batch",
      type: "string",
      multiple: true,
      value: "N,…",
      description: "batch sizes",
      default: DEFAULT_BATCHES.join(","),
    },
    {
      name: "threads",
      type: "string",
      multiple: true,
      value: "N,…",
      description: "intra-op thread counts",
      default: THREADS_DEFAULT_TEXT,
    },
    {
      name: "runs",
      type: "string",
      value: "N",
      description: "timed runs per row (>= 1)",
      default: String(DEFAULT_RUNS),
    },
    {
      name: "warmup",
      type: "string",
      value: "N",
      description: "untimed runs first (>= 0)",
      default: String(DEFAULT_WARMUP),
    },
    {
      name: "data",
      type: "string",
      value: "FILE.tsv",
      description: "labelled text (label<TAB>sentence with a header)",
    },
    {
      name: "tokenizer",
      type: "string",
      value: "DIR",
      description: "tokenizer directory for --data (default: beside each model)",
    },
    { name: "out", type: "string", value: "OUT.json", description: "write the results as JSON to this file" },
    {
      name: "plot",
      type: "string",
      value: "OUT.svg",
      description: "write an SVG chart of latency and memory",
    },
    { name: "no-memory", type: "boolean", description: "skip the peak-memory child processes" },
    {
      name: "seed",
      type: "string",
      value: "N",
      description: "seed of the synthetic token ids",
      default: "1",
    },
    JSON_FLAG,
  ],
  async run(ctx) {
    rejectPositionals(ctx.positionals);
    const paths = flagList(ctx.flags, "model");
    if (paths.length === 0) throw usageError("bench needs at least one --model FILE", { flag: "model" });
    const seqs = flagIntList(ctx.flags, "seq", { min: 1, max: 8192 }, DEFAULT_SEQS);
    const batches = flagIntList(ctx.flags, "batch", { min: 1, max: 4096 }, DEFAULT_BATCHES);
    const threads = flagIntList(ctx.flags, "threads", { min: 1, max: 1024 }, [defaultCliThreads()]);
    const runs = flagInt(ctx.flags, "runs", { min: 1 }, DEFAULT_RUNS);
    const warmup = flagInt(ctx.flags, "warmup", { min: 0 }, DEFAULT_WARMUP);
    const seed = flagInt(ctx.flags, "seed", { min: 0 }, 1);
    const dataPath = flagString(ctx.flags, "data");
    const tokenizerDir = flagString(ctx.flags, "tokenizer");
    const json = flagBool(ctx.flags, "json");
    const outPath = flagString(ctx.flags, "out");
    const plotPath = flagString(ctx.flags, "plot");

    const labels = modelLabels(paths);
    const models: BenchModel[] = paths.map((path, i) => ({ label: labels[i]!, path: modelFileOf(path) }));
    const shapes: Shape[] = batches.flatMap((batch) => seqs.map((seq) => ({ batch, seq })));
    await checkSeqFits(models, seqs);

    // Another task than a sentence classifier is judged by its own metric on the data, not by label accuracy.
    const tasks = await benchTasks(models, tokenizerDir, dataPath);
    let data: ((m: BenchModel) => Promise<ModelData>) | undefined;
    if (dataPath !== undefined && classifiersOnly(tasks)) {
      const samples = await readSamplesTsv(dataPath, { requireLabels: true });
      const labelled = samples.map((s) => ({ text: s.text, label: s.label! }));
      data = (m) => createModelData(m, labelled, tokenizerDir === undefined ? {} : { tokenizerDir });
    }

    const progress = createBenchProgress();
    const result = await runBench({
      models,
      shapes,
      threads,
      runs,
      warmup,
      seed,
      memory: !flagBool(ctx.flags, "no-memory"),
      onProgress: (e) => progress.update(e),
      ...(data !== undefined ? { data } : {}),
    }).finally(() => progress.done());

    addClassifierAgreements(tasks, result.rows);
    const machine = machineInfo();
    const doc = { ...toBenchDocument(result, machine), tasks };
    if (json) ctx.out(JSON.stringify(doc));
    else for (const line of [...renderTerminalTable(result), ...renderBenchTasks(tasks)]) ctx.out(line);
    if (outPath !== undefined) {
      writeOut(outPath, `${JSON.stringify(doc, null, 2)}\n`, "JSON results");
      ctx.err(`wrote ${outPath}`);
    }
    if (plotPath !== undefined) {
      const subtitle = `${machine.cpu}, ${machine.cores} cores · Bun ${machine.bun} · onnxruntime ${machine.onnxruntime} · ${machine.date.slice(0, 10)}`;
      writeOut(plotPath, renderChartSvg(result.rows, { title: "quantd bench", subtitle }), "chart");
      ctx.err(`wrote ${plotPath}`);
    }
    return result.rows.some((r) => r.status === "error") ? 1 : 0;
  },
};
