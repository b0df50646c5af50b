/**
 * `quantd demo`: what quantd does, end to end, on the model and samples shipped
 * in the repository, with nothing else needed (no `../shared`, no network).
 *
 * The demo is a list of named steps sharing one state, each printing its own
 * lines; later steps (calibrate → quantize → validate → bench → serve) are
 * added to {@link DEMO_STEPS} as those parts land.
 */
import { statSync } from "node:fs";
import { arch, cpus } from "node:os";
import { relative } from "node:path";
import { QuantdError } from "../../errors.ts";
import type { Classifier } from "../../runtime/classifier.ts";
import { type EvalResult, evaluate } from "../../runtime/evaluate.ts";
import { ORT_VERSION } from "../../runtime/ort-session.ts";
import { readSamplesTsv } from "../../runtime/tsv.ts";
import type { Command, CommandContext } from "../command.ts";
import { JSON_FLAG, openClassifier, THREADS_FLAG } from "../model-flags.ts";
import { expectNoPositionals, flagBool, flagInt } from "../parse.ts";
import { PACKAGE_ROOT, SHIPPED_DEV_TSV, SHIPPED_MODEL } from "../paths.ts";
import { createProgress, formatBytes, formatMs, formatPercent, renderTable } from "../render.ts";

/** Sentences the demo classifies: clear cases both ways and a hedged one. */
export const DEMO_SENTENCES: readonly string[] = [
  "a gripping , beautifully acted film that stays with you long after the credits roll .",
  "the plot is thin , the jokes fall flat and the ending drags on forever .",
  "one of the most delightful surprises of the year .",
  "an utterly forgettable sequel that nobody asked for .",
  "it 's not a great movie , but it has its moments .",
];

/** What the steps share and what the summary reports. */
export interface DemoState {
  threads: number;
  /** Evaluate only the first N dev sentences (all when undefined). */
  limit: number | undefined;
  classifier?: Classifier;
  loadMs?: number;
  evaluation?: EvalResult;
  evalWallMs?: number;
  /** Machine-readable results, keyed by step name (printed by `--json`). */
  results: Record<string, unknown>;
}

/** One step of the demo. */
export interface DemoStep {
  /** Short name, shown as `[i/n] name` and used as the key in `--json` output. */
  name: string;
  /** Runs the step; writes human lines through `say` (muted under `--json`). */
  run(state: DemoState, say: (line: string) => void): Promise<void>;
}

function shown(path: string): string {
  const rel = relative(PACKAGE_ROOT, path);
  return rel.startsWith("..") ? path : rel;
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new QuantdError("INTERNAL", `demo step order: ${what} is not ready`);
  return value;
}

/** Loads the shipped fp32 model, its tokenizer and labels. */
const loadStep: DemoStep = {
  name: "load",
  async run(state, say) {
    const t0 = performance.now();
    state.classifier = await openClassifier(SHIPPED_MODEL, { threads: String(state.threads) });
    state.loadMs = performance.now() - t0;
    const bytes = statSync(SHIPPED_MODEL).size;
    const labels = state.classifier.labels;
    say(`${shown(SHIPPED_MODEL)}: fp32, ${formatBytes(bytes)}, labels ${labels.join(", ")}`);
    const cores = cpus();
    const cpu = `${cores.length} × ${cores[0]?.model.trim() || "unknown CPU"} (${arch()})`;
    say(
      `loaded in ${formatMs(state.loadMs)}: onnxruntime ${ORT_VERSION}, ${state.threads} thread(s) on ${cpu}`,
    );
    state.results["load"] = {
      model: SHIPPED_MODEL,
      bytes,
      labels,
      loadMs: state.loadMs,
      onnxruntime: ORT_VERSION,
      cpu,
      threads: state.threads,
    };
  },
};

/** Classifies a few sentences. */
const classifyStep: DemoStep = {
  name: "classify",
  async run(state, say) {
    const classifier = need(state.classifier, "the model");
    const out = await classifier.classify(DEMO_SENTENCES);
    const rows = out.map((r, i) => [r.label, r.score.toFixed(4), DEMO_SENTENCES[i]!]);
    for (const line of renderTable(rows, ["left", "right", "left"])) say(line);
    state.results["classify"] = out.map((r, i) => ({
      text: DEMO_SENTENCES[i],
      label: r.label,
      score: r.score,
    }));
  },
};

/** Accuracy and per-sentence latency on the shipped SST-2 dev set, one sentence per run. */
const evaluateStep: DemoStep = {
  name: "evaluate",
  async run(state, say) {
    const classifier = need(state.classifier, "the model");
    const all = await readSamplesTsv(SHIPPED_DEV_TSV, { requireLabels: true, labels: classifier.labels });
    const samples = state.limit === undefined ? all : all.slice(0, state.limit);
    const progress = createProgress("evaluate");
    const t0 = performance.now();
    let r: EvalResult;
    try {
      // Batch 1: a board serves one request at a time, so per-sentence latency is the figure that matters.
      r = await evaluate(classifier, samples, {
        batchSize: 1,
        onProgress: (done, total) => progress.update(done, total),
      });
    } finally {
      progress.done();
    }
    const wallMs = performance.now() - t0;
    state.evaluation = r;
    state.evalWallMs = wallMs;
    const throughput = (r.n / wallMs) * 1000;
    say(`${shown(SHIPPED_DEV_TSV)}: ${r.n} labelled sentences, one per inference run`);
    const rows = [
      ["accuracy", r.accuracy === undefined ? "n/a" : formatPercent(r.accuracy)],
      ["latency p50", `${formatMs(r.latency.p50MsPerBatch)} per sentence (inference)`],
      ["latency p90", `${formatMs(r.latency.p90MsPerBatch)} per sentence (inference)`],
      ["throughput", `${throughput.toFixed(0)} sentences/s (tokenize + infer, 1 at a time)`],
    ];
    for (const line of renderTable(rows)) say(line);
    state.results["evaluate"] = {
      data: SHIPPED_DEV_TSV,
      n: r.n,
      accuracy: r.accuracy,
      latencyMsP50: r.latency.p50MsPerBatch,
      latencyMsP90: r.latency.p90MsPerBatch,
      throughputPerSec: throughput,
    };
  },
};

/** The steps, in order. Later issues add calibrate, quantize, validate, bench and serve here. */
export const DEMO_STEPS: readonly DemoStep[] = [loadStep, classifyStep, evaluateStep];

function summary(state: DemoState): string[] {
  const e = state.evaluation;
  const rows: string[][] = [["model", `${shown(SHIPPED_MODEL)} (fp32)`]];
  if (e !== undefined) {
    if (e.accuracy !== undefined)
      rows.push(["accuracy", `${formatPercent(e.accuracy)} on ${e.n} SST-2 dev sentences`]);
    rows.push([
      "latency",
      `p50 ${formatMs(e.latency.p50MsPerBatch)}, p90 ${formatMs(e.latency.p90MsPerBatch)}`,
    ]);
    if (state.evalWallMs !== undefined) {
      rows.push(["throughput", `${((e.n / state.evalWallMs) * 1000).toFixed(0)} sentences/s`]);
    }
  }
  rows.push(["next", "int8 quantization, validation and benchmarking join this demo as they land"]);
  return renderTable(rows).map((l) => `  ${l}`);
}

async function runDemo(ctx: CommandContext, state: DemoState, json: boolean): Promise<void> {
  const say = json ? () => {} : (line: string) => ctx.out(`      ${line}`);
  if (!json) ctx.out("quantd demo: the shipped fp32 BERT-Mini SST-2 sentiment model on this machine\n");
  for (const [i, step] of DEMO_STEPS.entries()) {
    if (!json) ctx.out(`[${i + 1}/${DEMO_STEPS.length}] ${step.name}`);
    await step.run(state, say);
  }
  if (json) ctx.out(JSON.stringify({ steps: DEMO_STEPS.map((s) => s.name), ...state.results }));
  else {
    ctx.out("\nSummary");
    for (const line of summary(state)) ctx.out(line);
  }
}

/** The `demo` command. */
export const demoCommand: Command = {
  name: "demo",
  summary: "run quantd on the shipped BERT-Mini SST-2 model: classify, evaluate, report",
  usage: "[--threads N] [--limit N] [--json]",
  description:
    "Loads the fp32 BERT-Mini SST-2 model shipped in calib/models/sst2-bert-mini, classifies a few " +
    "sentences, and evaluates it on the 872 labelled SST-2 dev sentences in calib/samples/sst2-dev.tsv, " +
    "one sentence per inference run (as a board serves requests): accuracy, latency per sentence " +
    "(p50, p90) and throughput. Needs nothing outside the repository.\n\n" +
    "With --json, prints one object with each step's results.",
  flags: [
    THREADS_FLAG,
    {
      name: "limit",
      type: "string",
      value: "N",
      description: "evaluate only the first N dev sentences",
      default: "all 872",
    },
    JSON_FLAG,
  ],
  async run(ctx) {
    expectNoPositionals(ctx.positionals);
    const state: DemoState = {
      threads: flagInt(ctx.flags, "threads", { min: 1, max: 256 }, 1),
      limit: flagInt(ctx.flags, "limit", { min: 1 }),
      results: {},
    };
    try {
      await runDemo(ctx, state, flagBool(ctx.flags, "json"));
    } finally {
      await state.classifier?.release();
    }
    return 0;
  },
};
