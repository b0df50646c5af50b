/**
 * `quantd demo`: what quantd does, end to end, on the model and samples shipped
 * in the repository, with nothing else needed (no `../shared`, no network).
 *
 * The demo is a list of named steps sharing one state, each printing its own
 * lines; later steps (calibrate → quantize → validate → bench → serve) are
 * added to {@link DEMO_STEPS} as those parts land.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { arch, cpus, tmpdir } from "node:os";
import { join, relative } from "node:path";
import { type Agent, startAgent } from "../../agent/agent.ts";
import { loadAgentConfig } from "../../agent/config.ts";
import { isFinished } from "../../agent/jobs.ts";
import { RECALIBRATE_JOB, type RecalibrationResult } from "../../agent/recalibrate.ts";
import { QuantdError } from "../../errors.ts";
import { type Classifier, loadClassifier } from "../../runtime/classifier.ts";
import { type EvalResult, evaluate } from "../../runtime/evaluate.ts";
import { ORT_VERSION } from "../../runtime/ort-session.ts";
import { readSamplesTsv } from "../../runtime/tsv.ts";
import type { Job } from "../../store/jobs.ts";
import type { Command, CommandContext } from "../command.ts";
import { JSON_FLAG, openClassifier, THREADS_FLAG } from "../model-flags.ts";
import { expectNoPositionals, flagBool, flagInt } from "../parse.ts";
import { PACKAGE_ROOT, SHIPPED_DEV_TSV, SHIPPED_MODEL, SHIPPED_MODEL_DIR } from "../paths.ts";
import { createProgress, formatBytes, formatMs, formatPercent, renderTable } from "../render.ts";
import { describeRecalibration } from "./job.ts";

/** The shipped SST-2 training sample the demo seeds the agent's store with. */
export const SHIPPED_TRAIN_TSV: string = join(PACKAGE_ROOT, "calib/samples/sst2-train-4k.tsv");

/** The demo's recalibration: the agent's defaults, without the memory benchmark (it spawns processes). */
export const DEMO_RECALIBRATION = {
  samples: 128,
  validationSamples: 256,
  benchRuns: 30,
  benchMemory: false,
} as const;

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
  /** Temporary directory of the agent's state and socket (removed at the end). */
  agentDir?: string;
  agent?: Agent;
  socketPath?: string;
  /** The finished recalibration job. */
  job?: Job;
  jobWallMs?: number;
  /** The promoted int8 model file, when the job promoted one. */
  int8Path?: string;
  /** What the socket answered for {@link DEMO_SENTENCES}. */
  served?: { version: number; kind: string; sameAsFp32: number; n: number };
  /** int8 evaluated on the dev set against fp32 (`compare`), one sentence per run. */
  comparison?: EvalResult;
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

/** Starts the agent on a temporary state directory and socket, serving the fp32 model. */
const agentStep: DemoStep = {
  name: "agent",
  async run(state, say) {
    const dir = mkdtempSync(join(tmpdir(), "quantd-demo-"));
    state.agentDir = dir;
    // env {}: the demo shows the shipped defaults, whatever QUANTD_* the shell holds.
    const config = loadAgentConfig({
      profile: { threads: state.threads, samplePool: { maxRows: 20_000, maxBytes: 8 * 1024 * 1024 } },
      defaultModel: SHIPPED_MODEL,
      env: {},
      flags: { stateDir: join(dir, "state"), socket: join(dir, "quantd.sock") },
    });
    const t0 = performance.now();
    const agent = await startAgent(config);
    state.agent = agent;
    state.socketPath = config.socketPath;
    const v = agent.registry.activeVersion();
    say(`state directory ${dir}: SQLite store, model registry, job runner`);
    say(
      `serving ${v?.kind} model version ${v?.id} on ${config.socketPath} (started in ${formatMs(performance.now() - t0)})`,
    );
    state.results["agent"] = {
      stateDir: config.stateDir,
      socket: config.socketPath,
      version: v?.id,
      kind: v?.kind,
    };
  },
};

/** Fills the agent's sample pool from the shipped training sample (as `quantd collect` or live capture would). */
const seedStep: DemoStep = {
  name: "seed",
  async run(state, say) {
    const agent = need(state.agent, "the agent");
    const rows = await readSamplesTsv(SHIPPED_TRAIN_TSV);
    const r = agent.store.samples.add(
      rows.map((row) => ({ text: row.text, label: row.label ?? null })),
      { source: "file" },
    );
    const stats = agent.store.samples.stats();
    say(
      `${shown(SHIPPED_TRAIN_TSV)}: ${rows.length} sentences → pool of ${stats.rows} (${r.duplicates} duplicates dropped), ${formatBytes(stats.bytes)} of text`,
    );
    state.results["seed"] = { file: SHIPPED_TRAIN_TSV, read: rows.length, ...r, pool: stats.rows };
  },
};

/** Queues a recalibration job; the agent's runner picks, calibrates, quantizes, validates, benchmarks and promotes. */
const recalibrateStep: DemoStep = {
  name: "recalibrate",
  async run(state, say) {
    const agent = need(state.agent, "the agent");
    const runner = need(agent.jobs, "the agent's job runner");
    const t0 = performance.now();
    const queued = agent.store.jobs.create({ type: RECALIBRATE_JOB, params: { ...DEMO_RECALIBRATION } });
    runner.wake();
    say(
      `job ${queued.id}: ${DEMO_RECALIBRATION.samples} calibration + ${DEMO_RECALIBRATION.validationSamples} held-out samples from the pool`,
    );
    let last = "";
    let job = agent.store.jobs.require(queued.id);
    while (!isFinished(job)) {
      if (job.stage !== null && job.stage !== last) {
        say(`  ${formatMs(performance.now() - t0).padStart(8)}  ${job.stage}`);
        last = job.stage;
      }
      await Bun.sleep(100);
      job = agent.store.jobs.require(queued.id);
    }
    state.job = job;
    state.jobWallMs = performance.now() - t0;
    for (const line of describeRecalibration(job)) say(line);
    const r = job.result as RecalibrationResult | null;
    const active = agent.store.models.active();
    if (job.state === "SUCCEEDED" && active !== undefined && active.kind !== "fp32")
      state.int8Path = active.path;
    state.results["recalibrate"] = {
      job: job.id,
      state: job.state,
      error: job.error,
      wallMs: state.jobWallMs,
      result: r,
    };
  },
};

/** Classifies the demo sentences through the agent's Unix socket (`POST /v1/classify`). */
const serveStep: DemoStep = {
  name: "serve",
  async run(state, say) {
    const socket = need(state.socketPath, "the socket");
    const res = await fetch("http://localhost/v1/classify", {
      unix: socket,
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ texts: DEMO_SENTENCES }),
    });
    const body = (await res.json()) as {
      results?: { label: string; score: number }[];
      model?: { version: number; kind: string };
      error?: { code: string; message: string };
    };
    if (!res.ok || body.results === undefined || body.model === undefined) {
      throw new QuantdError(
        "INTERNAL",
        `the agent answered ${res.status}: ${body.error?.message ?? "no results"}`,
      );
    }
    const fp32 = (state.results["classify"] as { label: string }[] | undefined) ?? [];
    const rows = body.results.map((r, i) => [r.label, r.score.toFixed(4), DEMO_SENTENCES[i]!]);
    for (const line of renderTable(rows, ["left", "right", "left"])) say(line);
    const same = body.results.filter((r, i) => fp32[i]?.label === r.label).length;
    say(
      `answered by ${body.model.kind} model version ${body.model.version} over ${socket}; ${same}/${body.results.length} labels as fp32`,
    );
    state.served = {
      version: body.model.version,
      kind: body.model.kind,
      sameAsFp32: same,
      n: body.results.length,
    };
    state.results["serve"] = { ...state.served, results: body.results };
  },
};

/** The promoted int8 model against fp32 on the dev set, on the same sentences, one per run. */
const compareStep: DemoStep = {
  name: "compare",
  async run(state, say) {
    const fp32 = need(state.classifier, "the model");
    if (state.int8Path === undefined) {
      say("no int8 model was promoted: nothing to compare (see the recalibration above)");
      return;
    }
    const int8 = await loadClassifier(state.int8Path, {
      tokenizerDir: SHIPPED_MODEL_DIR,
      session: { intraOpThreads: state.threads },
    });
    try {
      const all = await readSamplesTsv(SHIPPED_DEV_TSV, { requireLabels: true, labels: fp32.labels });
      const samples = state.limit === undefined ? all : all.slice(0, state.limit);
      const progress = createProgress("compare");
      let r: EvalResult;
      try {
        r = await evaluate(int8, samples, {
          batchSize: 1,
          compare: fp32,
          onProgress: (done, total) => progress.update(done, total),
        });
      } finally {
        progress.done();
      }
      state.comparison = r;
      const rows = [
        ["", "fp32", "int8"],
        ["size", formatBytes(statSync(SHIPPED_MODEL).size), formatBytes(statSync(state.int8Path).size)],
        ["accuracy", pct(r.compareAccuracy), pct(r.accuracy)],
        ["latency p50", ms(r.compareLatency?.p50MsPerBatch), ms(r.latency.p50MsPerBatch)],
        ["latency p90", ms(r.compareLatency?.p90MsPerBatch), ms(r.latency.p90MsPerBatch)],
      ];
      say(`${shown(SHIPPED_DEV_TSV)}: ${r.n} sentences, both models on the same inputs, one per run`);
      for (const line of renderTable(rows, ["left", "right", "right"])) say(line);
      say(
        `agreement: int8 picks the fp32 class on ${pct(r.agreement)} of them (${r.disagreements ?? 0} differ)`,
      );
      state.results["compare"] = {
        n: r.n,
        fp32: {
          bytes: statSync(SHIPPED_MODEL).size,
          accuracy: r.compareAccuracy,
          latencyMsP50: r.compareLatency?.p50MsPerBatch,
          latencyMsP90: r.compareLatency?.p90MsPerBatch,
        },
        int8: {
          bytes: statSync(state.int8Path).size,
          accuracy: r.accuracy,
          latencyMsP50: r.latency.p50MsPerBatch,
          latencyMsP90: r.latency.p90MsPerBatch,
        },
        agreement: r.agreement,
      };
    } finally {
      await int8.release();
    }
  },
};

function pct(x: number | undefined): string {
  return x === undefined ? "n/a" : formatPercent(x);
}

function ms(x: number | undefined): string {
  return x === undefined ? "n/a" : formatMs(x);
}

/** The steps, in order. */
export const DEMO_STEPS: readonly DemoStep[] = [
  loadStep,
  classifyStep,
  evaluateStep,
  agentStep,
  seedStep,
  recalibrateStep,
  serveStep,
  compareStep,
];

/** The recalibration's lines of the summary: what the job did and int8 against fp32. */
function int8Summary(state: DemoState): string[][] {
  const rows: string[][] = [];
  const job = state.job;
  if (job === undefined) return rows;
  const r = job.result as RecalibrationResult | null;
  const secs = state.jobWallMs === undefined ? "" : ` in ${(state.jobWallMs / 1000).toFixed(1)} s`;
  if (job.state !== "SUCCEEDED" || r === null) {
    rows.push([
      "recalibration",
      `${job.state}${secs}: ${job.error?.code ?? ""} ${job.error?.message ?? ""}`.trim(),
    ]);
    return rows;
  }
  rows.push([
    "recalibration",
    `${job.state}${secs}: ${r.samples.calibration} calibration + ${r.samples.validation} held-out store samples, ` +
      `${r.candidate?.kind} promoted as version ${r.candidate?.version}`,
  ]);
  rows.push([
    "stages",
    Object.entries(r.stageMs)
      .map(([k, v]) => `${k} ${formatMs(v)}`)
      .join(", "),
  ]);
  if (r.validation !== undefined) {
    rows.push([
      "held-out gate",
      `int8 = fp32 on ${formatPercent(r.validation.agreement)} of ${r.validation.n} (gate ${formatPercent(r.validation.gate.minAgreement)})`,
    ]);
  }
  const c = state.comparison;
  if (state.int8Path !== undefined) {
    const fp32Bytes = statSync(SHIPPED_MODEL).size;
    const int8Bytes = statSync(state.int8Path).size;
    rows.push([
      "size",
      `fp32 ${formatBytes(fp32Bytes)} → int8 ${formatBytes(int8Bytes)} (${(fp32Bytes / int8Bytes).toFixed(1)}× smaller)`,
    ]);
  }
  if (c !== undefined) {
    rows.push([
      "dev accuracy",
      `fp32 ${pct(c.compareAccuracy)} → int8 ${pct(c.accuracy)} on ${c.n} sentences`,
    ]);
    rows.push(["dev agreement", `int8 = fp32 on ${pct(c.agreement)}`]);
    const f = c.compareLatency?.p50MsPerBatch;
    const i = c.latency.p50MsPerBatch;
    rows.push([
      "dev latency",
      `p50 fp32 ${ms(f)} → int8 ${ms(i)}${f !== undefined ? ` (${(f / i).toFixed(2)}× faster)` : ""}, ` +
        `p90 ${ms(c.compareLatency?.p90MsPerBatch)} → ${ms(c.latency.p90MsPerBatch)} per sentence`,
    ]);
  }
  if (state.served !== undefined) {
    rows.push([
      "socket",
      `${state.served.n} sentences served by ${state.served.kind} version ${state.served.version}, ${state.served.sameAsFp32}/${state.served.n} labels as fp32`,
    ]);
  }
  return rows;
}

function summary(state: DemoState): string[] {
  const e = state.evaluation;
  const rows: string[][] = [["model", `${shown(SHIPPED_MODEL)} (fp32)`]];
  if (e !== undefined) {
    if (e.accuracy !== undefined)
      rows.push(["accuracy", `${formatPercent(e.accuracy)} on ${e.n} SST-2 dev sentences (fp32)`]);
    // With the int8 comparison, its latency rows (both models on the same inputs) replace fp32's alone.
    if (state.comparison === undefined) {
      rows.push([
        "latency",
        `p50 ${formatMs(e.latency.p50MsPerBatch)}, p90 ${formatMs(e.latency.p90MsPerBatch)}`,
      ]);
      if (state.evalWallMs !== undefined) {
        rows.push(["throughput", `${((e.n / state.evalWallMs) * 1000).toFixed(0)} sentences/s`]);
      }
    }
  }
  rows.push(...int8Summary(state));
  return renderTable(rows).map((l) => `  ${l}`);
}

async function runDemo(ctx: CommandContext, state: DemoState, json: boolean): Promise<void> {
  const say = json ? () => {} : (line: string) => ctx.out(`      ${line}`);
  if (!json) {
    ctx.out(
      "quantd demo: the shipped fp32 BERT-Mini SST-2 sentiment model on this machine, then the agent " +
        "recalibrating it to int8 from its sample store and serving it over a Unix socket\n",
    );
  }
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
  summary:
    "run quantd on the shipped BERT-Mini SST-2 model: classify, evaluate, recalibrate to int8 in the agent, serve, compare",
  usage: "[--threads N] [--limit N] [--json]",
  description:
    "Loads the fp32 BERT-Mini SST-2 model shipped in calib/models/sst2-bert-mini, classifies a few " +
    "sentences, and evaluates it on the 872 labelled SST-2 dev sentences in calib/samples/sst2-dev.tsv, " +
    "one sentence per inference run (as a board serves requests): accuracy, latency per sentence " +
    "(p50, p90) and throughput. Then starts the agent on a temporary state directory and Unix socket, " +
    "seeds its sample store with calib/samples/sst2-train-4k.tsv, queues a recalibration job (disjoint " +
    "calibration and held-out samples from the store, calibrate, quantize, validate against fp32, benchmark " +
    "against the serving fp32 model, promote with a hot swap), classifies the sentences again through the " +
    "socket, and compares int8 with fp32 on the dev sentences (size, accuracy, agreement, latency). The " +
    "temporary directory is removed at the end. Needs nothing outside the repository.\n\n" +
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
      await state.agent?.stop();
      if (state.agentDir !== undefined) rmSync(state.agentDir, { recursive: true, force: true });
      await state.classifier?.release();
    }
    return 0;
  },
};
