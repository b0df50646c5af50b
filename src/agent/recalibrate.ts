/**
 * The recalibration job: builds an int8 model from what the device has seen
 * and serves it if it is as good and faster.
 *
 * Stages (persisted as the job's stage; artefacts in the job's work directory):
 *   1. `pick`      — disjoint calibration and validation samples from the store
 *   2. `calibrate` / `validate` — the quantizer (`runQuantization`): calibrate,
 *      quantize, compare with fp32 on the held-out samples (agreement gate,
 *      sensitivity fallback), write the candidate atomically
 *   3. `benchmark` — candidate vs the active model under the same conditions
 *   4. `promote`   — the registry copies, verifies and hot-swaps it
 *   5. `report`    — figures into the store (model metrics, bench results)
 *
 * The job's `report` message goes into the outbox once the runner has recorded
 * its end, whatever the end (see {@link createRecalibrationRunner}); the fleet
 * link sends what the outbox holds and does not report these jobs again.
 *
 * A checkpoint records each completed stage; a resumed job skips those whose
 * artefacts are intact (the candidate's SHA-256 is checked before it is
 * benchmarked and again before it is promoted), so a corrupt candidate is never
 * promoted. Refusals — gate not met, slower or larger than the active model,
 * a candidate that does not load — end the job REJECTED with the reasons and the
 * quantizer's report; the serving model is untouched.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import type { CandidateComparison } from "../bench/compare.ts";
import { sha256FileSync } from "../core/hash.ts";
import { isQuantdError, QuantdError, type QuantdErrorCode } from "../errors.ts";
import { encodeReport } from "../fleet/protocol.ts";
import { CALIBRATION_METHODS, type CalibrationMethod } from "../quant/methods.ts";
import type { PoolSample, SamplePool } from "../quant/pipeline.ts";
import type { LengthHistogram } from "../quant/drift.ts";
import type { GateDecision } from "../quant/gate.ts";
import type { QuantizeReport } from "../quant/report.ts";
import { gateSpecOf, planSplit, splitRequestOf, validationSizeFor } from "../quant/split.ts";
import type { TaskOverride } from "../runtime/task.ts";
import type { ModelVersionView } from "../server/types.ts";
import type { Job } from "../store/jobs.ts";
import type { ModelKind } from "../store/models.ts";
import type { Sample } from "../store/samples.ts";
import type { Store } from "../store/store.ts";
import { compareCandidateInChild, runQuantizationInChild } from "./job-child.ts";
import {
  isFinished,
  type JobContext,
  type JobHandler,
  JobRunner,
  type JobRunnerOptions,
  type JobVerdict,
} from "./jobs.ts";

/** The job type in the store. */
export const RECALIBRATE_JOB = "recalibrate";
/** Default calibration samples of a recalibration. */
export const DEFAULT_RECALIBRATE_SAMPLES = 128;
/** Default held-out validation samples: sized from the default gate (2,752 for 99.5 % at 95 %; see `validationSizeFor`). */
export const DEFAULT_RECALIBRATE_VALIDATION = validationSizeFor(gateSpecOf({}));
/** Default largest accepted candidate/active latency ratio: a candidate more than 5 % slower is refused. */
export const DEFAULT_MAX_LATENCY_RATIO = 1.05;
/** Default largest accepted candidate/active peak-RSS ratio. */
export const DEFAULT_MAX_MEMORY_RATIO = 1.1;
/** Default benchmark: timed runs per model (the bench library's interleaved pairs). */
export const DEFAULT_RECALIBRATE_BENCH_RUNS = 30;

/** Parameters of a recalibration job (as stored with the job; every field optional). */
export interface RecalibrateJobParams {
  /** Calibration samples. @defaultValue {@link DEFAULT_RECALIBRATE_SAMPLES} */
  samples?: number;
  /** Held-out validation samples. @defaultValue sized from the gate ({@link DEFAULT_RECALIBRATE_VALIDATION} for the default one) */
  validationSamples?: number;
  /** Calibration method. @defaultValue the quantizer's default */
  method?: CalibrationMethod;
  /** int8 format. @defaultValue "static" */
  mode?: "static" | "dynamic" | "auto";
  /** Minimum top-1 agreement with fp32 (a fraction), or the fleet's `{minAgreement, maxAccuracyDrop}`. @defaultValue the quantizer's gate */
  gate?: number | { minAgreement?: number; maxAccuracyDrop?: number };
  /** What must clear the gate: the agreement's lower bound or, explicitly, its point estimate. @defaultValue "bound" */
  decideOn?: GateDecision;
  /** Confidence of the lower bound (a fraction). @defaultValue 0.95 */
  confidence?: number;
  /** Leave near-ties (fp32 top-2 margin below this) out of the gate. @defaultValue 0 */
  ignoreMargin?: number;
  /** Seed of the sample pick. @defaultValue 1 */
  seed?: number;
  /** Sensitivity-fallback rebuilds allowed when the gate is not met (0: none). @defaultValue the quantizer's */
  trialBudget?: number;
  /** @defaultValue {@link DEFAULT_MAX_LATENCY_RATIO} */
  maxLatencyRatio?: number;
  /** @defaultValue {@link DEFAULT_MAX_MEMORY_RATIO} */
  maxMemoryRatio?: number;
  /** Timed benchmark runs per model. @defaultValue {@link DEFAULT_RECALIBRATE_BENCH_RUNS} */
  benchRuns?: number;
  /** Measure peak memory (two child processes). @defaultValue true */
  benchMemory?: boolean;
}

/** The part of the registry the job needs: the agent's `ModelRegistry` satisfies it. */
export interface Promoter {
  /**
   * Copies, verifies and serves a candidate.
   *
   * @throws MODEL_* / INFERENCE_FAILED for a candidate that does not load or run (recorded as rejected)
   * @throws DISK_FULL | FILE_WRITE_FAILED | STORE_* when it cannot be recorded (serving unchanged)
   */
  promote(
    candidatePath: string,
    options: { metrics?: Record<string, unknown>; kind?: ModelKind },
  ): Promise<ModelVersionView>;
}

/** What the job needs. */
export interface RecalibrationDeps {
  store: Pick<Store, "samples" | "models" | "bench" | "db">;
  promoter: Promoter;
  /**
   * The fp32 model every recalibration starts from (never an int8 one); a
   * function is asked at each job's start (the base changes with a release).
   */
  baseModel: string | (() => string);
  /** Tokenizer directory. @defaultValue beside the base model */
  tokenizerDir?: string;
  /** What the agent's config sets over the model's detected task: validation judges that task. @defaultValue detected */
  task?: TaskOverride;
  /** Intra-op threads of the job's sessions (leave cores to serving). @defaultValue 1 */
  threads?: number;
  /** Names in the report's outbox topic `quantd/v1/{fleet}/{device}/report`. @defaultValue fleet `local`, device the host name */
  fleet?: string;
  device?: string;
  /** Defaults for parameters a job leaves out (the agent's config). */
  defaults?: RecalibrateJobParams;
  /** Token lengths of the live traffic the agent served, for the report's comparison with the samples'. */
  liveLengths?: () => LengthHistogram | undefined;
  /**
   * A last check of the candidate before it is promoted (a release's labelled
   * validation set): reasons to reject it, empty to go on.
   */
  vet?: (candidatePath: string, ctx: JobContext) => Promise<string[]>;
  /** Kept in the promoted version's metrics (the release it came from and its fp32 base). */
  promoteMetrics?: Record<string, unknown>;
}

/** How the recalibration ended, in the job's result and the report message. */
export interface RecalibrationResult {
  decision: "promoted" | "rejected";
  /** Why it was rejected (empty when promoted). */
  reasons: string[];
  samples: { calibration: number; validation: number; pool: number };
  candidate?: { sha256: string; bytes: number; kind: ModelKind; version?: number };
  active: { path: string; sha256?: string; version?: number; kind?: string; bytes?: number };
  /** Gate figures on the held-out samples (agreement, accuracy of both models). */
  validation?: QuantizeReport["metrics"] & { gate: QuantizeReport["gate"] };
  bench?: BenchFigures;
  /** Wall time of each stage this attempt ran, ms. */
  stageMs: Record<string, number>;
  /** The quantizer's report (absent when it did not get that far). */
  report?: QuantizeReport;
}

/** The benchmark figures kept from a comparison. */
export interface BenchFigures {
  shape: { batch: number; seq: number };
  threads: number;
  runs: number;
  activeP50Ms: number;
  candidateP50Ms: number;
  activeP90Ms: number;
  candidateP90Ms: number;
  /** Median of per-pair candidate/active latency ratios. */
  latencyRatio: number;
  activePeakRssBytes?: number;
  candidatePeakRssBytes?: number;
  memoryRatio?: number;
  activeBytes: number;
  candidateBytes: number;
}

/** The checkpoint of a recalibration, one key per completed stage. */
interface Checkpoint {
  pick?: { calibration: number[]; validation: number[]; pool: number };
  quantize?: { sha256: string; bytes: number; kind: ModelKind };
  benchmark?: { figures: BenchFigures; reasons: string[]; activePath: string };
  promote?: { version: number };
}

function fail(code: QuantdErrorCode, message: string): never {
  throw new QuantdError(code, message);
}

function fraction(v: unknown, key: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !(v > 0 && v <= 1))
    fail("USAGE", `${key} must be a fraction in (0, 1], got ${JSON.stringify(v)}`);
  return v;
}

function positiveInt(v: unknown, key: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
    fail("USAGE", `${key} must be an integer in 1…${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Validates job parameters (they come from the CLI, a schedule or the fleet).
 *
 * @throws USAGE naming the bad key
 */
export function parseRecalibrateParams(raw: Record<string, unknown>): RecalibrateJobParams {
  const out: RecalibrateJobParams = {};
  const samples = positiveInt(raw["samples"], "samples", 100_000);
  if (samples !== undefined) out.samples = samples;
  const validation = positiveInt(raw["validationSamples"], "validationSamples", 100_000);
  if (validation !== undefined) out.validationSamples = validation;
  const method = raw["method"];
  if (method !== undefined) {
    if (typeof method !== "string" || !CALIBRATION_METHODS.includes(method as CalibrationMethod)) {
      fail("USAGE", `method must be one of ${CALIBRATION_METHODS.join(", ")}, got ${JSON.stringify(method)}`);
    }
    out.method = method as CalibrationMethod;
  }
  const mode = raw["mode"];
  if (mode !== undefined) {
    if (mode !== "static" && mode !== "dynamic" && mode !== "auto") {
      fail("USAGE", `mode must be static, dynamic or auto, got ${JSON.stringify(mode)}`);
    }
    out.mode = mode;
  }
  const gate = raw["gate"];
  if (typeof gate === "number") out.gate = fraction(gate, "gate")!;
  else if (typeof gate === "object" && gate !== null && !Array.isArray(gate)) {
    const g = gate as Record<string, unknown>;
    const minAgreement = fraction(g["minAgreement"], "gate.minAgreement");
    const maxAccuracyDrop = fraction(g["maxAccuracyDrop"], "gate.maxAccuracyDrop");
    out.gate = {
      ...(minAgreement !== undefined ? { minAgreement } : {}),
      ...(maxAccuracyDrop !== undefined ? { maxAccuracyDrop } : {}),
    };
    // The fleet's gate object may carry how to decide too (`quantd fleet recalibrate` sends one object).
    if (raw["decideOn"] === undefined && g["decideOn"] !== undefined)
      raw = { ...raw, decideOn: g["decideOn"] };
    if (raw["confidence"] === undefined && g["confidence"] !== undefined)
      raw = { ...raw, confidence: g["confidence"] };
  } else if (gate !== undefined) fail("USAGE", `gate must be a fraction or {minAgreement, maxAccuracyDrop}`);
  const decideOn = raw["decideOn"];
  if (decideOn !== undefined) {
    if (decideOn !== "bound" && decideOn !== "point") {
      fail("USAGE", `decideOn must be bound or point, got ${JSON.stringify(decideOn)}`);
    }
    out.decideOn = decideOn;
  }
  const confidence = fraction(raw["confidence"], "confidence");
  if (confidence !== undefined) {
    if (confidence >= 1) fail("USAGE", "confidence must be below 1");
    out.confidence = confidence;
  }
  const ignoreMargin = raw["ignoreMargin"];
  if (ignoreMargin !== undefined) {
    if (typeof ignoreMargin !== "number" || !(ignoreMargin >= 0 && ignoreMargin < 1)) {
      fail("USAGE", `ignoreMargin must be a margin in [0, 1), got ${JSON.stringify(ignoreMargin)}`);
    }
    out.ignoreMargin = ignoreMargin;
  }
  const seed = raw["seed"];
  if (seed !== undefined) {
    if (typeof seed !== "number" || !Number.isSafeInteger(seed)) fail("USAGE", "seed must be an integer");
    out.seed = seed;
  }
  for (const key of ["maxLatencyRatio", "maxMemoryRatio"] as const) {
    const v = raw[key];
    if (v === undefined) continue;
    if (typeof v !== "number" || !(v > 0 && v < 100)) fail("USAGE", `${key} must be a positive ratio`);
    out[key] = v;
  }
  const budget = raw["trialBudget"];
  if (budget !== undefined) {
    if (typeof budget !== "number" || !Number.isInteger(budget) || budget < 0 || budget > 1000) {
      fail("USAGE", `trialBudget must be an integer in 0…1000, got ${JSON.stringify(budget)}`);
    }
    out.trialBudget = budget;
  }
  const runs = positiveInt(raw["benchRuns"], "benchRuns", 100_000);
  if (runs !== undefined) out.benchRuns = runs;
  const memory = raw["benchMemory"];
  if (memory !== undefined) {
    if (typeof memory !== "boolean") fail("USAGE", "benchMemory must be true or false");
    out.benchMemory = memory;
  }
  return out;
}

/** The gate a job's parameters ask for. */
function gateOf(p: RecalibrateJobParams): ReturnType<typeof gateSpecOf> {
  const g = p.gate;
  const minAgreement = typeof g === "number" ? g : g?.minAgreement;
  const maxAccuracyDrop = typeof g === "object" ? g.maxAccuracyDrop : undefined;
  return gateSpecOf({
    ...(minAgreement !== undefined ? { gate: minAgreement } : {}),
    ...(maxAccuracyDrop !== undefined ? { maxAccuracyDrop } : {}),
    ...(p.confidence !== undefined ? { confidence: p.confidence } : {}),
    ...(p.decideOn !== undefined ? { decideOn: p.decideOn } : {}),
    ...(p.ignoreMargin !== undefined ? { ignoreMargin: p.ignoreMargin } : {}),
  });
}

/** SHA-256 of a file, lower-case hex, or `undefined` when it cannot be read (a checkpointed candidate that is gone). */
export function fileSha256(path: string): string | undefined {
  try {
    return sha256FileSync(path);
  } catch {
    return undefined;
  }
}

/** `quantd/v1/{fleet}/{device}/report`. */
export function reportTopic(fleet: string, device: string): string {
  return `quantd/v1/${fleet}/${device}/report`;
}

function defaultDevice(): string {
  const h = hostname()
    .replace(/[^A-Za-z0-9_.-]/g, "-")
    .replace(/^[^A-Za-z0-9]+/, "");
  return h === "" ? "device" : h.slice(0, 64);
}

function kindOfReport(report: QuantizeReport): ModelKind {
  return report.mode === "dynamic" ? "int8-dynamic" : "int8-static";
}

/** A fixed pick as the quantizer's sample pool: it hands out exactly these sets. */
function fixedPool(name: string, calibration: readonly Sample[], validation: readonly Sample[]): SamplePool {
  const conv = (s: Sample): PoolSample => ({ text: s.text, pair: s.pair, label: s.label, id: s.id });
  return {
    name,
    count: () => calibration.length + validation.length,
    pickDisjoint: () => ({ calibration: calibration.map(conv), validation: validation.map(conv) }),
  };
}

/** Error codes that mean the candidate itself is bad (rejected) rather than the device failing (failed). */
const CANDIDATE_FAULTS: ReadonlySet<QuantdErrorCode> = new Set([
  "MODEL_NOT_ONNX",
  "MODEL_TRUNCATED",
  "MODEL_INVALID",
  "MODEL_INPUTS_MISMATCH",
  "MODEL_LOAD_FAILED",
  "INFERENCE_FAILED",
]);

function benchFigures(c: CandidateComparison, runs: number): BenchFigures {
  const f: BenchFigures = {
    shape: { ...c.candidate.shape },
    threads: c.candidate.threads,
    runs,
    activeP50Ms: c.active.latency.p50,
    candidateP50Ms: c.candidate.latency.p50,
    activeP90Ms: c.active.latency.p90,
    candidateP90Ms: c.candidate.latency.p90,
    latencyRatio: c.latencyRatio,
    activeBytes: c.active.sizeBytes,
    candidateBytes: c.candidate.sizeBytes,
  };
  const am = c.active.memory;
  const cm = c.candidate.memory;
  if (am !== undefined && !("error" in am)) f.activePeakRssBytes = am.peakRssBytes;
  if (cm !== undefined && !("error" in cm)) f.candidatePeakRssBytes = cm.peakRssBytes;
  if (c.memoryRatio !== undefined) f.memoryRatio = c.memoryRatio;
  return f;
}

/** The result without the quantizer's bulky per-tensor tables: what travels over MQTT. */
function slimResult(result: unknown): unknown {
  if (typeof result !== "object" || result === null || !("report" in result)) return result;
  const { report, ...rest } = result as { report?: unknown };
  if (typeof report !== "object" || report === null) return result;
  const { ranges: _r, layerError: _l, ...slim } = report as QuantizeReport;
  return { ...rest, report: slim };
}

/** The `report` message of a finished job (the fleet's {@link ReportMessage} shape). */
export function recalibrationReport(job: Job, device: string): Record<string, unknown> {
  return {
    id: job.id,
    device,
    jobId: job.id,
    type: job.type,
    state: job.state,
    ...(job.result !== null ? { result: slimResult(job.result) } : {}),
    ...(job.error !== null ? { error: job.error } : {}),
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
  };
}

/**
 * The recalibration job's handler.
 *
 * Ends REJECTED with `GATE_NOT_MET` (agreement or accuracy below the gate),
 * `BENCH_FAILED` (slower or larger than the active model) or the candidate's
 * load error; FAILED with `CALIB_EMPTY`, `DISK_FULL`, `FILE_WRITE_FAILED`,
 * `STORE_BUSY`… when the device could not do the work.
 */
export function createRecalibrationHandler(deps: RecalibrationDeps): JobHandler {
  const threads = deps.threads ?? 1;
  const { store } = deps;

  /** Records the figures in the store (the report message is queued once the job has ended). */
  const finishReport = (ctx: JobContext, verdict: RecalibrationResult): void => {
    ctx.stage("report", 0.95);
    const b = verdict.bench;
    const v = verdict.candidate?.version;
    if (b !== undefined) {
      const config = { shape: b.shape, threads: b.threads, runs: b.runs };
      store.bench.add({
        name: "recalibrate-active",
        jobId: ctx.job.id,
        modelVersionId: verdict.active.version ?? null,
        modelSha256: verdict.active.sha256 ?? null,
        config,
        metrics: {
          p50Ms: b.activeP50Ms,
          p90Ms: b.activeP90Ms,
          peakRssBytes: b.activePeakRssBytes ?? null,
          bytes: b.activeBytes,
        },
      });
      store.bench.add({
        name: "recalibrate-candidate",
        jobId: ctx.job.id,
        modelVersionId: v ?? null,
        modelSha256: verdict.candidate?.sha256 ?? null,
        config,
        metrics: {
          p50Ms: b.candidateP50Ms,
          p90Ms: b.candidateP90Ms,
          peakRssBytes: b.candidatePeakRssBytes ?? null,
          bytes: b.candidateBytes,
          latencyRatio: b.latencyRatio,
          memoryRatio: b.memoryRatio ?? null,
        },
      });
    }
    if (v !== undefined) {
      store.models.updateMetrics(v, {
        job: ctx.job.id,
        ...(verdict.validation !== undefined ? { validation: verdict.validation } : {}),
        ...(b !== undefined ? { bench: b } : {}),
      });
    }
  };

  return {
    async run(ctx: JobContext): Promise<JobVerdict> {
      const p: RecalibrateJobParams = { ...deps.defaults, ...parseRecalibrateParams(ctx.job.params) };
      const baseModel = typeof deps.baseModel === "function" ? deps.baseModel() : deps.baseModel;
      const stageMs: Record<string, number> = {};
      const timed = async <T>(name: string, fn: () => Promise<T> | T): Promise<T> => {
        const t0 = performance.now();
        try {
          return await fn();
        } finally {
          stageMs[name] = (stageMs[name] ?? 0) + (performance.now() - t0);
        }
      };
      const cp: Checkpoint = (ctx.readCheckpoint() as Checkpoint | undefined) ?? {};
      const save = (): void => ctx.writeCheckpoint(cp as Record<string, unknown>);
      const candidatePath = join(ctx.workDir, "candidate.onnx");
      const reportPath = join(ctx.workDir, "report.json");

      // ---- 1. pick
      ctx.stage("pick", 0.02);
      let calibration: Sample[] = [];
      let validation: Sample[] = [];
      const pool = store.samples.count();
      await timed("pick", () => {
        if (cp.pick !== undefined) {
          const get = (id: number): Sample | undefined => store.samples.get(id);
          const c = cp.pick.calibration.map(get);
          const v = cp.pick.validation.map(get);
          // Evicted meanwhile: pick afresh (and everything after the pick is stale).
          if (c.every((s) => s !== undefined) && v.every((s) => s !== undefined)) {
            calibration = c as Sample[];
            validation = v as Sample[];
            return;
          }
          delete cp.quantize;
          delete cp.benchmark;
        }
        if (pool < 2) {
          throw new QuantdError(
            "CALIB_EMPTY",
            `the sample pool holds ${pool} sample(s); a recalibration needs at least 2 (collect some first)`,
            {
              details: { pool },
            },
          );
        }
        // Validation sized from the gate; when the pool is short, validation gets the samples first.
        const gate = gateOf(p);
        const req = splitRequestOf(gate, p.samples, p.validationSamples ?? validationSizeFor(gate));
        const plan = planSplit(pool, req, "samples in the pool");
        ctx.log(`split: ${plan.line}`);
        const pick = store.samples.pickDisjoint(plan.calibration, plan.validation, p.seed ?? 1);
        calibration = pick.calibration;
        validation = pick.validation;
        cp.pick = {
          calibration: calibration.map((s) => s.id),
          validation: validation.map((s) => s.id),
          pool,
        };
        save();
      });
      const samples = { calibration: calibration.length, validation: validation.length, pool };

      const activeRecord = store.models.active();
      const activePath =
        activeRecord !== undefined && existsSync(activeRecord.path) ? activeRecord.path : baseModel;
      const active: RecalibrationResult["active"] = {
        path: activePath,
        ...(activeRecord !== undefined && activeRecord.path === activePath
          ? { sha256: activeRecord.sha256, version: activeRecord.id, kind: activeRecord.kind }
          : { kind: "fp32" }),
      };
      try {
        active.bytes = statSync(activePath).size;
      } catch {
        // reported by the benchmark
      }

      let report: QuantizeReport | undefined;
      const readReport = (): QuantizeReport | undefined => {
        try {
          return JSON.parse(readFileSync(reportPath, "utf8")) as QuantizeReport;
        } catch {
          return undefined;
        }
      };
      const result = (decision: RecalibrationResult["decision"], reasons: string[]): RecalibrationResult => ({
        decision,
        reasons,
        samples,
        active,
        stageMs,
        ...(report !== undefined ? { validation: { ...report.metrics, gate: report.gate }, report } : {}),
      });

      // ---- 2. calibrate, quantize, validate
      if (cp.quantize !== undefined && fileSha256(candidatePath) === cp.quantize.sha256) {
        report = readReport();
        ctx.log("resuming: the candidate from the previous attempt is intact");
      } else {
        delete cp.quantize;
        delete cp.benchmark;
        ctx.stage("calibrate", 0.05);
        const gate = gateOf(p);
        const live = deps.liveLengths?.();
        try {
          // In a child process: its memory goes back to the system when it ends, and the agent keeps serving.
          const r = await timed("quantize", () =>
            runQuantizationInChild({
              signal: ctx.signal,
              model: baseModel,
              calib: fixedPool("store", calibration, validation),
              out: candidatePath,
              report: reportPath,
              mode: p.mode ?? "static",
              ...(p.method !== undefined ? { method: p.method } : {}),
              gate: gate.minAgreement,
              ...(gate.maxAccuracyDrop !== undefined ? { maxAccuracyDrop: gate.maxAccuracyDrop } : {}),
              ...(gate.confidence !== undefined ? { confidence: gate.confidence } : {}),
              ...(gate.decideOn !== undefined ? { decideOn: gate.decideOn } : {}),
              ...(gate.ignoreMargin !== undefined ? { ignoreMargin: gate.ignoreMargin } : {}),
              ...(p.trialBudget !== undefined ? { trialBudget: p.trialBudget } : {}),
              samples: calibration.length,
              validationSamples: validation.length,
              ...(deps.tokenizerDir !== undefined ? { tokenizerDir: deps.tokenizerDir } : {}),
              ...(deps.task !== undefined ? { task: deps.task } : {}),
              threads,
              // fp32 logits of stored samples, kept for the next candidate and the next job.
              referenceCacheDb: store.db.path,
              ...(live !== undefined && live.n > 0 ? { liveLengths: live } : {}),
              onProgress: (line) => {
                // The quantizer's progress lines are its stage boundaries: each is a cancellation point.
                if (line.startsWith("validating") || line.startsWith("fallback")) ctx.stage("validate", 0.4);
                else if (line.startsWith("writing")) ctx.stage("write", 0.55);
                else if (line.startsWith("quantizing")) ctx.stage("calibrate", 0.1);
                else ctx.check();
              },
            }),
          );
          report = r.report;
        } catch (err) {
          if (!isQuantdError(err, "GATE_NOT_MET")) throw err;
          report = readReport();
          const verdict = result("rejected", [err.message]);
          await timed("report", () => finishReport(ctx, verdict));
          return { state: "REJECTED", result: verdict, error: err };
        }
        const sha256 = fileSha256(candidatePath);
        if (sha256 === undefined)
          throw new QuantdError("FILE_WRITE_FAILED", `the candidate ${candidatePath} was not written`);
        cp.quantize = { sha256, bytes: statSync(candidatePath).size, kind: kindOfReport(report) };
        save();
      }
      const cand = cp.quantize;
      const candidate: NonNullable<RecalibrationResult["candidate"]> = {
        sha256: cand.sha256,
        bytes: cand.bytes,
        kind: cand.kind,
      };
      const rejectCandidate = (reasons: string[], error: QuantdError, bench?: BenchFigures): JobVerdict => {
        const known = store.models.getBySha256(cand.sha256);
        let version = known;
        if (known === undefined) {
          version = store.models.add({
            sha256: cand.sha256,
            path: candidatePath,
            kind: cand.kind,
            metrics: { job: ctx.job.id },
          });
        }
        if (version?.state === "candidate") version = store.models.reject(version.id, reasons.join("; "));
        if (version !== undefined) candidate.version = version.id;
        const verdict: RecalibrationResult = {
          ...result("rejected", reasons),
          candidate,
          ...(bench !== undefined ? { bench } : {}),
        };
        finishReport(ctx, verdict);
        return { state: "REJECTED", result: verdict, error };
      };
      const verifyCandidate = (): void => {
        if (fileSha256(candidatePath) !== cand.sha256) {
          throw new QuantdError(
            "MODEL_INVALID",
            `the candidate ${candidatePath} changed on disk since it was written (SHA-256 mismatch); not promoted`,
          );
        }
      };

      // ---- 3. benchmark
      let bench: BenchFigures;
      if (cp.benchmark !== undefined && cp.benchmark.activePath === activePath) {
        bench = cp.benchmark.figures;
      } else {
        ctx.stage("benchmark", 0.65);
        try {
          verifyCandidate();
        } catch (err) {
          const qe = QuantdError.from(err);
          return rejectCandidate([qe.message], qe);
        }
        const runs = p.benchRuns ?? DEFAULT_RECALIBRATE_BENCH_RUNS;
        let comparison: CandidateComparison;
        try {
          comparison = await timed("benchmark", () =>
            compareCandidateInChild(activePath, candidatePath, {
              threads,
              runs,
              warmup: Math.min(5, runs),
              memory: p.benchMemory ?? true,
              signal: ctx.signal,
            }),
          );
        } catch (err) {
          const qe = QuantdError.from(err, "BENCH_FAILED");
          if (qe.details?.["which"] === "candidate" && CANDIDATE_FAULTS.has(qe.code))
            return rejectCandidate([qe.message], qe);
          throw qe;
        }
        ctx.check();
        bench = benchFigures(comparison, runs);
        const reasons: string[] = [];
        const maxLat = p.maxLatencyRatio ?? DEFAULT_MAX_LATENCY_RATIO;
        const maxMem = p.maxMemoryRatio ?? DEFAULT_MAX_MEMORY_RATIO;
        if (bench.latencyRatio > maxLat) {
          reasons.push(
            `slower than the active model: latency ratio ${bench.latencyRatio.toFixed(3)} > ${maxLat} (p50 ${bench.candidateP50Ms.toFixed(2)} vs ${bench.activeP50Ms.toFixed(2)} ms)`,
          );
        }
        if (bench.memoryRatio !== undefined && bench.memoryRatio > maxMem) {
          reasons.push(
            `uses more memory than the active model: peak RSS ratio ${bench.memoryRatio.toFixed(3)} > ${maxMem}`,
          );
        }
        cp.benchmark = { figures: bench, reasons, activePath };
        save();
      }
      if (cp.benchmark.reasons.length > 0) {
        return rejectCandidate(
          cp.benchmark.reasons,
          new QuantdError("BENCH_FAILED", cp.benchmark.reasons.join("; ")),
          bench,
        );
      }

      // ---- 4. promote
      const metrics: Record<string, unknown> = {
        ...deps.promoteMetrics,
        job: ctx.job.id,
        ...(report !== undefined ? { validation: report.metrics, gate: report.gate } : {}),
        // What the serving agent counts live inputs against (see agent/drift.ts).
        ...(report?.coverage !== undefined ? { coverage: report.coverage } : {}),
        bench,
      };
      const already = store.models.getBySha256(cand.sha256);
      if (cp.promote !== undefined || already?.state === "active") {
        candidate.version = cp.promote?.version ?? already?.id;
        ctx.log("resuming: the candidate was already promoted");
      } else {
        const vet = deps.vet;
        if (vet !== undefined) {
          ctx.stage("vet", 0.8);
          const reasons = await timed("vet", () => vet(candidatePath, ctx));
          if (reasons.length > 0) {
            return rejectCandidate(reasons, new QuantdError("GATE_NOT_MET", reasons.join("; ")), bench);
          }
        }
        ctx.stage("promote", 0.85);
        try {
          verifyCandidate();
        } catch (err) {
          const qe = QuantdError.from(err);
          return rejectCandidate([qe.message], qe, bench);
        }
        let promoted: ModelVersionView;
        try {
          promoted = await timed("promote", () =>
            deps.promoter.promote(candidatePath, { metrics, kind: cand.kind }),
          );
        } catch (err) {
          const qe = QuantdError.from(err, "INTERNAL");
          if (!CANDIDATE_FAULTS.has(qe.code)) throw qe;
          return rejectCandidate([qe.message], qe, bench);
        }
        candidate.version = promoted.id;
        cp.promote = { version: promoted.id };
        save();
      }

      // ---- 5. report
      const verdict: RecalibrationResult = { ...result("promoted", []), candidate, bench };
      await timed("report", () => finishReport(ctx, verdict));
      return { state: "SUCCEEDED", result: verdict };
    },
  };
}

/** Options of {@link createRecalibrationRunner}. */
export interface RecalibrationRunnerOptions
  extends RecalibrationDeps,
    Pick<JobRunnerOptions, "timeoutMs" | "pollMs" | "schedule" | "log" | "onUpdate"> {
  store: Store;
  /** The state directory: work directories go to `<stateDir>/jobs`, stale temporary files are cleaned in `<stateDir>/models`. */
  stateDir: string;
  /**
   * Handlers of further job types built on the recalibration (the fleet's
   * release job, `release.ts`), made from these same options; their jobs are
   * reported like recalibrations.
   */
  moreHandlers?: (options: RecalibrationRunnerOptions) => Readonly<Record<string, JobHandler>>;
}

/** `<stateDir>/jobs`: the jobs' work directories and the runner lock. */
export function jobsDir(stateDir: string): string {
  return join(stateDir, "jobs");
}

/**
 * A {@link JobRunner} that runs recalibration jobs in a state directory.
 *
 * Every recalibration job that ends — succeeded, rejected, failed (an empty
 * pool, a full disk, cancelled, timed out, interrupted too often) — queues
 * exactly one `report` message in the store's outbox, here, after the runner
 * recorded the end and before `onUpdate` hears of it. The outbox keeps it
 * whether or not a fleet link runs in this process (`quantd job --wait` has
 * none); the agent's link drains it.
 */
export function createRecalibrationRunner(options: RecalibrationRunnerOptions): JobRunner {
  const device = options.device ?? defaultDevice();
  const handlers: Readonly<Record<string, JobHandler>> = {
    [RECALIBRATE_JOB]: createRecalibrationHandler(options),
    ...options.moreHandlers?.(options),
  };
  const topic = reportTopic(options.fleet ?? "local", device);
  // The runner announces an end once; the set guards against a second announcement queuing a second report.
  const reported = new Set<string>();
  const onUpdate = (job: Job): void => {
    if (handlers[job.type] !== undefined && isFinished(job) && !reported.has(job.id)) {
      reported.add(job.id);
      if (reported.size > 256) reported.delete(reported.values().next().value ?? "");
      try {
        // Within the fleet's report cap, or the controller would refuse the whole report.
        options.store.outbox.enqueue(topic, encodeReport(recalibrationReport(job, device)));
      } catch (err) {
        options.log?.(`job ${job.id}: report not queued: ${QuantdError.from(err).toLine()}`);
      }
    }
    options.onUpdate?.(job);
  };
  return new JobRunner({
    jobs: options.store.jobs,
    workRoot: jobsDir(options.stateDir),
    handlers,
    tempDirs: [join(options.stateDir, "models")],
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.pollMs !== undefined ? { pollMs: options.pollMs } : {}),
    ...(options.schedule !== undefined ? { schedule: options.schedule } : {}),
    ...(options.log !== undefined ? { log: options.log } : {}),
    onUpdate,
  });
}
