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
 * The job's `report` message goes into the outbox once the job engine has
 * recorded its end, whatever the end (the engine's report hook, wired in
 * services.ts); the fleet link sends what the outbox holds.
 *
 * A checkpoint records each completed stage; a resumed job skips those whose
 * artefacts are intact (the candidate's SHA-256 is checked before it is
 * benchmarked and again before it is promoted), so a corrupt candidate is never
 * promoted. Refusals — gate not met, slower or larger than the active model,
 * a candidate that does not load — end the job REJECTED with the reasons and the
 * quantizer's report; the serving model is untouched.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { type CandidateComparison, describeLatencyRatio } from "../bench/compare.ts";
import { sha256FileSync } from "../core/hash.ts";
import { isQuantdError, QuantdError, type QuantdErrorCode } from "../errors.ts";
import type { JobContext, JobHandler, JobVerdict } from "../jobs/handler.ts";
import type { LengthHistogram } from "../quant/drift.ts";
import { DRIFT_MIN_INPUTS } from "./drift.ts";
import type { PoolSample, SamplePool } from "../quant/pipeline.ts";
import { QUANTIZE_REPORT_FILE, type QuantizeReport } from "../quant/report.ts";
import { planSplit, splitRequestOf, validationSizeFor } from "../quant/split.ts";
import type { TaskOverride } from "../runtime/task.ts";
import type { ModelVersionView } from "../server/types.ts";
import type { ModelKind } from "../store/models.ts";
import type { Sample } from "../store/samples.ts";
import type { Store } from "../store/store.ts";
import { recordAutoOutcome } from "../device/auto-choices.ts";
import { SOURCE_METRIC } from "./registry.ts";
import { detectDevice } from "../device/detect.ts";
import { reportedFp32Of } from "./recalibration-base.ts";
import { compareCandidateInChild, runQuantizationInChild } from "./job-child.ts";
import {
  DEFAULT_MAX_LATENCY_RATIO,
  DEFAULT_MAX_MEMORY_RATIO,
  DEFAULT_RECALIBRATE_BENCH_RUNS,
  gateOf,
  parseRecalibrateParams,
  type RecalibrateJobParams,
} from "./recalibrate-params.ts";

/** The job type in the store. */
export const RECALIBRATE_JOB = "recalibrate";
/** The job type of the fleet's `quantize-dynamic` command: a recalibration to dynamic int8. */
export const QUANTIZE_DYNAMIC_JOB = "quantize-dynamic";
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

/**
 * Live inputs counted before their token lengths are compared with the
 * samples' (the report's length-distribution warning), as the drift monitor
 * trusts a share only from {@link DRIFT_MIN_INPUTS}. The warning fires above a
 * total variation distance of 0.25 over 7 length buckets; n live inputs drawn
 * from the samples' own distribution stray from it by about
 * √(2/π) · Σ √(pᵢ(1 − pᵢ)/n) / 2 on average, at most ≈ 1/√n (7 equal
 * buckets): 0.07 at 200, a quarter of the threshold, while 4 inputs stray by
 * about 0.5 by chance alone.
 */
const MIN_LIVE_LENGTHS = DRIFT_MIN_INPUTS;

/** The key of a promoted version's metrics naming the fp32 model it was quantized from. */
export const BASE_METRIC = "base";

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
  /** Defaults for parameters a job leaves out (the agent's config). */
  defaults?: RecalibrateJobParams;
  /** Where `--mode auto` winners are recorded with the board profile (`quantd device` shows them). @defaultValue not recorded */
  stateDir?: string;
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

/** SHA-256 of a file, lower-case hex, or `undefined` when it cannot be read (a checkpointed candidate that is gone). */
export function fileSha256(path: string): string | undefined {
  try {
    return sha256FileSync(path);
  } catch {
    return undefined;
  }
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

/** A recalibration's result without the quantizer's bulky per-tensor tables: what its report carries over MQTT. */
export function slimRecalibrationResult(result: unknown): unknown {
  if (typeof result !== "object" || result === null || !("report" in result)) return result;
  const { report, ...rest } = result as { report?: unknown };
  if (typeof report !== "object" || report === null) return result;
  const { ranges: _r, layerError: _l, ...slim } = report as QuantizeReport;
  return { ...rest, report: slim };
}

/** Records a verdict's figures in the store: both models' benchmark runs and the candidate's metrics. */
function recordFigures(store: RecalibrationDeps["store"], jobId: string, verdict: RecalibrationResult): void {
  const b = verdict.bench;
  const v = verdict.candidate?.version;
  if (b !== undefined) {
    const config = { shape: b.shape, threads: b.threads, runs: b.runs };
    store.bench.add({
      name: "recalibrate-active",
      jobId,
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
      jobId,
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
      job: jobId,
      ...(verdict.validation !== undefined ? { validation: verdict.validation } : {}),
      ...(b !== undefined ? { bench: b } : {}),
    });
  }
}

/**
 * Why a candidate slower than the active model is refused; undefined when it
 * is not slower, or when the operator prefers size and it is smaller (said in
 * the job's log). Against fp32 the refusal says that fp32 keeps serving.
 */
function latencyRefusal(
  bench: BenchFigures,
  p: RecalibrateJobParams,
  activeKind: string | undefined,
  report: QuantizeReport | undefined,
  log: (line: string) => void,
): string | undefined {
  const maxLat = p.maxLatencyRatio ?? DEFAULT_MAX_LATENCY_RATIO;
  if (bench.latencyRatio <= maxLat) return undefined;
  const figures = `${describeLatencyRatio(bench.latencyRatio, 3)} > ${maxLat} (p50 ${bench.candidateP50Ms.toFixed(2)} vs ${bench.activeP50Ms.toFixed(2)} ms)`;
  const size = `${((bench.candidateBytes / bench.activeBytes) * 100).toFixed(1)} % of its size`;
  if (p.prefer === "size" && bench.candidateBytes < bench.activeBytes) {
    log(`slower than the active model (${figures}) but ${size}: served, as quantize.prefer = size asks`);
    return undefined;
  }
  if (activeKind !== "fp32") return `slower than the active model: ${figures}`;
  const which =
    report?.auto !== undefined
      ? `none of the ${report.candidates.length} int8 forms --mode auto built beats fp32 on this board`
      : "the int8 candidate is slower than fp32 on this board";
  return `${which}: fp32 keeps serving (${figures}); quantize.prefer = "size" would serve int8 anyway (${size})`;
}

/**
 * How a candidate fared against the fp32 model it was built from, for the
 * board record beside an auto winner: it beats fp32 only when faster; up to
 * the job's latency ratio it is within that much of fp32 (and serves); on a
 * board where no int8 form beats fp32, fp32 keeps serving unless the operator
 * prefers size.
 *
 * @param slower - {@link latencyRefusal}'s reason, when the candidate is refused as slower
 */
export function againstFp32(
  bench: BenchFigures,
  p: RecalibrateJobParams,
  slower: string | undefined,
): string {
  const maxLat = p.maxLatencyRatio ?? DEFAULT_MAX_LATENCY_RATIO;
  const ratio = `latency ratio ${bench.latencyRatio.toFixed(3)} to fp32`;
  if (slower !== undefined) return `no int8 form beats fp32 on this board (${ratio}): fp32 keeps serving`;
  if (bench.latencyRatio > maxLat)
    return `slower than fp32 (${ratio}), served as quantize.prefer = size asks`;
  if (bench.latencyRatio < 1) return `beats fp32 on this board (${ratio})`;
  const slowerBy = ((bench.latencyRatio - 1) * 100).toFixed(1);
  return `within ${slowerBy} % of fp32 on this board (${ratio}, allowed up to ${maxLat})`;
}

/** Why a benchmark's candidate is refused: slower or larger than the active model beyond the job's ratios. */
function benchRefusals(bench: BenchFigures, p: RecalibrateJobParams, slower: string | undefined): string[] {
  const reasons: string[] = [];
  const maxMem = p.maxMemoryRatio ?? DEFAULT_MAX_MEMORY_RATIO;
  if (slower !== undefined) reasons.push(slower);
  if (bench.memoryRatio !== undefined && bench.memoryRatio > maxMem) {
    reasons.push(
      `uses more memory than the active model: peak RSS ratio ${bench.memoryRatio.toFixed(3)} > ${maxMem}`,
    );
  }
  return reasons;
}

/**
 * One attempt at a recalibration, as its five stages (see the file's
 * header): each stage method either moves the job on (returns undefined) or
 * ends it with a verdict. What the stages share — the parameters, the
 * checkpoint, the picked samples, the active model, the quantizer's report,
 * the candidate — lives on the run.
 */
class RecalibrationRun {
  readonly #deps: RecalibrationDeps;
  readonly #ctx: JobContext;
  readonly #p: RecalibrateJobParams;
  readonly #baseModel: string;
  readonly #threads: number;
  readonly #stageMs: Record<string, number> = {};
  readonly #cp: Checkpoint;
  readonly #candidatePath: string;
  readonly #reportPath: string;
  #calibration: Sample[] = [];
  #validation: Sample[] = [];
  #samples: RecalibrationResult["samples"] = { calibration: 0, validation: 0, pool: 0 };
  #active: RecalibrationResult["active"] = { path: "" };
  #report: QuantizeReport | undefined;
  #candidate: NonNullable<RecalibrationResult["candidate"]> | undefined;
  #bench: BenchFigures | undefined;

  constructor(deps: RecalibrationDeps, ctx: JobContext, forced: Pick<RecalibrateJobParams, "mode">) {
    this.#deps = deps;
    this.#ctx = ctx;
    this.#p = { ...deps.defaults, ...parseRecalibrateParams(ctx.job.params), ...forced };
    this.#baseModel = typeof deps.baseModel === "function" ? deps.baseModel() : deps.baseModel;
    this.#threads = deps.threads ?? 1;
    this.#cp = (ctx.readCheckpoint() as Checkpoint | undefined) ?? {};
    this.#candidatePath = join(ctx.workDir, "candidate.onnx");
    this.#reportPath = join(ctx.workDir, "report.json");
  }

  /** Runs the stages in order; the first that ends the job gives its verdict. */
  async run(): Promise<JobVerdict> {
    await this.#pick();
    this.#readActive();
    return (
      (await this.#quantize()) ??
      (await this.#benchmark()) ??
      (await this.#promote()) ??
      (await this.#finish())
    );
  }

  async #timed<T>(name: string, fn: () => Promise<T> | T): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.#stageMs[name] = (this.#stageMs[name] ?? 0) + (performance.now() - t0);
    }
  }

  #save(): void {
    this.#ctx.writeCheckpoint(this.#cp as Record<string, unknown>);
  }

  #result(decision: RecalibrationResult["decision"], reasons: string[]): RecalibrationResult {
    const report = this.#report;
    return {
      decision,
      reasons,
      samples: this.#samples,
      active: this.#active,
      stageMs: this.#stageMs,
      ...(report !== undefined ? { validation: { ...report.metrics, gate: report.gate }, report } : {}),
    };
  }

  /** The figures into the store, as the `report` stage (the report message is queued once the job has ended). */
  #recordReport(verdict: RecalibrationResult): void {
    this.#ctx.stage("report", 0.95);
    recordFigures(this.#deps.store, this.#ctx.job.id, verdict);
  }

  /** 1. Disjoint calibration and validation samples: the checkpointed pick when its samples are all still stored. */
  async #pick(): Promise<void> {
    const { store } = this.#deps;
    const cp = this.#cp;
    this.#ctx.stage("pick", 0.02);
    const pool = store.samples.count();
    await this.#timed("pick", () => {
      if (cp.pick !== undefined) {
        const c = cp.pick.calibration.map((id) => store.samples.get(id));
        const v = cp.pick.validation.map((id) => store.samples.get(id));
        if (c.every((s) => s !== undefined) && v.every((s) => s !== undefined)) {
          this.#calibration = c as Sample[];
          this.#validation = v as Sample[];
          return;
        }
        // Evicted meanwhile: pick afresh (and everything after the pick is stale).
        delete cp.quantize;
        delete cp.benchmark;
      }
      if (pool < 2) {
        throw new QuantdError(
          "CALIB_EMPTY",
          `the sample pool holds ${pool} sample(s); a recalibration needs at least 2 (collect some first)`,
          { details: { pool } },
        );
      }
      // Validation sized from the gate; when the pool is short, validation gets the samples first.
      const gate = gateOf(this.#p);
      const req = {
        ...splitRequestOf(gate, this.#p.samples, this.#p.validationSamples ?? validationSizeFor(gate)),
        // Dynamic int8 calibrates nothing: every sample picked validates.
        ...(this.#p.mode === "dynamic" ? { noCalibration: true } : {}),
      };
      const plan = planSplit(pool, req, "samples in the pool");
      this.#ctx.log(`split: ${plan.line}`);
      const pick = store.samples.pickDisjoint(plan.calibration, plan.validation, this.#p.seed ?? 1);
      this.#calibration = pick.calibration;
      this.#validation = pick.validation;
      cp.pick = {
        calibration: this.#calibration.map((s) => s.id),
        validation: this.#validation.map((s) => s.id),
        pool,
      };
      this.#save();
    });
    this.#samples = { calibration: this.#calibration.length, validation: this.#validation.length, pool };
  }

  /** What the candidate must beat: the active version when its file is there, else the fp32 base. */
  #readActive(): void {
    const activeRecord = this.#deps.store.models.active();
    const path =
      activeRecord !== undefined && existsSync(activeRecord.path) ? activeRecord.path : this.#baseModel;
    this.#active = {
      path,
      ...(activeRecord !== undefined && activeRecord.path === path
        ? { sha256: activeRecord.sha256, version: activeRecord.id, kind: activeRecord.kind }
        : { kind: "fp32" }),
    };
    try {
      this.#active.bytes = statSync(path).size;
    } catch {
      // reported by the benchmark
    }
  }

  #readReport(): QuantizeReport | undefined {
    try {
      return JSON.parse(readFileSync(this.#reportPath, "utf8")) as QuantizeReport;
    } catch {
      return undefined;
    }
  }

  /**
   * The live traffic's token lengths, when enough were counted to compare
   * with the samples' ({@link MIN_LIVE_LENGTHS}); fewer are left out of the
   * report, and the job's log says so.
   */
  #liveLengths(): LengthHistogram | undefined {
    const live = this.#deps.liveLengths?.();
    if (live === undefined || live.n === 0) return undefined;
    if (live.n >= MIN_LIVE_LENGTHS) return live;
    this.#ctx.log(
      `live traffic: ${live.n} input(s) counted, fewer than the ${MIN_LIVE_LENGTHS} its lengths are compared with the samples' on`,
    );
    return undefined;
  }

  /** The quantizer's options for this run, in a child process. */
  #quantizeInChild(): ReturnType<typeof runQuantizationInChild> {
    const { deps, p } = { deps: this.#deps, p: this.#p };
    const ctx = this.#ctx;
    const gate = gateOf(p);
    const live = this.#liveLengths();
    return runQuantizationInChild({
      signal: ctx.signal,
      model: this.#baseModel,
      calib: fixedPool("store", this.#calibration, this.#validation),
      out: this.#candidatePath,
      report: this.#reportPath,
      mode: p.mode ?? "static",
      ...(p.method !== undefined ? { method: p.method } : {}),
      gate: gate.minAgreement,
      ...(gate.maxAccuracyDrop !== undefined ? { maxAccuracyDrop: gate.maxAccuracyDrop } : {}),
      ...(gate.confidence !== undefined ? { confidence: gate.confidence } : {}),
      ...(gate.decideOn !== undefined ? { decideOn: gate.decideOn } : {}),
      ...(gate.ignoreMargin !== undefined ? { ignoreMargin: gate.ignoreMargin } : {}),
      ...(p.trialBudget !== undefined ? { trialBudget: p.trialBudget } : {}),
      samples: this.#calibration.length,
      validationSamples: this.#validation.length,
      ...(deps.tokenizerDir !== undefined ? { tokenizerDir: deps.tokenizerDir } : {}),
      ...(deps.task !== undefined ? { task: deps.task } : {}),
      threads: this.#threads,
      // fp32 logits of stored samples, kept for the next candidate and the next job.
      referenceCacheDb: deps.store.db.path,
      ...(live !== undefined ? { liveLengths: live } : {}),
      onProgress: (line) => {
        // The quantizer's progress lines are its stage boundaries: each is a cancellation point.
        if (line.startsWith("validating") || line.startsWith("fallback")) ctx.stage("validate", 0.4);
        else if (line.startsWith("writing")) ctx.stage("write", 0.55);
        else if (line.startsWith("quantizing")) ctx.stage("calibrate", 0.1);
        else ctx.check();
      },
    });
  }

  /**
   * `mode: "auto"`: the winner and why it won go to the board record `quantd device` shows, and
   * after a benchmark against fp32, how it fared there (`vsFp32`).
   */
  #recordAutoWinner(report: QuantizeReport | undefined, vsFp32?: string): void {
    const dir = this.#deps.stateDir;
    if (dir === undefined || report?.auto === undefined) return;
    try {
      recordAutoOutcome(dir, this.#baseModel, report, detectDevice().profile, vsFp32, this.#baseSource());
    } catch (err) {
      this.#ctx.log(`the auto winner was not recorded: ${QuantdError.from(err).message}`);
    }
  }

  /**
   * The file the user gave for the base when the base is the registry's copy of
   * it (`<state-dir>/models/<sha256>.onnx`): its version's recorded source.
   */
  #baseSource(): string | undefined {
    try {
      const version = this.#deps.store.models.list().find((v) => v.path === this.#baseModel);
      const source = version?.metrics[SOURCE_METRIC];
      return typeof source === "string" && source !== this.#baseModel ? source : undefined;
    } catch {
      return undefined; // a busy store: the record names the copy
    }
  }

  /**
   * A gate the held-out samples cannot certify, with what the agent's operator
   * can do about it (the quantizer's own advice names `quantize` flags): more
   * samples in the pool, or the job's parameters, as `quantd job recalibrate`
   * and a fleet command set them. Other gate failures are left as they are.
   */
  #uncertifiable(err: QuantdError): QuantdError {
    const needed = err.details?.["needed"];
    if (typeof needed !== "number") return err;
    const cut = err.message.indexOf("; ");
    const what = cut < 0 ? err.message : err.message.slice(0, cut);
    const { pool } = this.#samples;
    return new QuantdError(
      "GATE_NOT_MET",
      `${what}; the pool holds ${pool.toLocaleString("en-US")} sample(s) and this job held out ` +
        `${this.#samples.validation.toLocaleString("en-US")}: collect more samples (quantd collect, or capture.enabled ` +
        "for live traffic), hold out more (job parameter validationSamples: quantd job recalibrate --validation-samples N), " +
        "lower the gate (gate: --gate) or decide on the point estimate (decideOn point: --gate-on point)",
      // Not the quantizer's error as a cause: its advice is for `quantize`'s user.
      err.details === undefined ? {} : { details: err.details },
    );
  }

  /** The base is an int8 model (the agent was started on one, with no fp32 model on record): what to do about it. */
  #noFp32Base(err: QuantdError): QuantdError {
    // A report beside it that names an fp32 file now gone or changed is a record, of a file that no longer serves.
    const named = reportedFp32Of(this.#baseModel);
    const record =
      named === undefined
        ? "which the agent has no record of"
        : `which its ${QUANTIZE_REPORT_FILE} names, ${named.path}, but that file is gone or changed since (not the size it had)`;
    return new QuantdError(
      "MODEL_ALREADY_QUANTIZED",
      `${this.#baseModel} is already int8, and a recalibration starts from the fp32 model it was quantized from, ` +
        `${record}: start the agent on the fp32 model (quantd agent --model FP32.onnx, or ` +
        "config key model), or promote it (quantd agent promote FP32.onnx); recalibrations then start from it",
      { cause: err, details: { ...err.details, model: this.#baseModel } },
    );
  }

  /** 2. Calibrate, quantize, validate (in a child process), unless an intact candidate is checkpointed. */
  async #quantize(): Promise<JobVerdict | undefined> {
    const cp = this.#cp;
    if (cp.quantize !== undefined && fileSha256(this.#candidatePath) === cp.quantize.sha256) {
      this.#report = this.#readReport();
      this.#ctx.log("resuming: the candidate from the previous attempt is intact");
    } else {
      delete cp.quantize;
      delete cp.benchmark;
      this.#ctx.stage("calibrate", 0.05);
      try {
        // In a child process: its memory goes back to the system when it ends, and the agent keeps serving.
        this.#report = (await this.#timed("quantize", () => this.#quantizeInChild())).report;
        this.#recordAutoWinner(this.#report);
      } catch (err) {
        if (isQuantdError(err, "MODEL_ALREADY_QUANTIZED")) throw this.#noFp32Base(err);
        if (!isQuantdError(err, "GATE_NOT_MET")) throw err;
        this.#report = this.#readReport();
        const error = this.#uncertifiable(err);
        const verdict = this.#result("rejected", [error.message]);
        await this.#timed("report", () => this.#recordReport(verdict));
        return { state: "REJECTED", result: verdict, error };
      }
      const sha256 = fileSha256(this.#candidatePath);
      if (sha256 === undefined)
        throw new QuantdError("FILE_WRITE_FAILED", `the candidate ${this.#candidatePath} was not written`);
      cp.quantize = { sha256, bytes: statSync(this.#candidatePath).size, kind: kindOfReport(this.#report) };
      this.#save();
    }
    this.#candidate = { sha256: cp.quantize.sha256, bytes: cp.quantize.bytes, kind: cp.quantize.kind };
    return undefined;
  }

  #cand(): NonNullable<RecalibrationResult["candidate"]> {
    if (this.#candidate === undefined) throw new QuantdError("INTERNAL", "no candidate before its stage");
    return this.#candidate;
  }

  /** Ends the job REJECTED: the candidate recorded as a rejected version, the figures in the store. */
  #reject(reasons: string[], error: QuantdError): JobVerdict {
    const { store } = this.#deps;
    const candidate = this.#cand();
    let version = store.models.getBySha256(candidate.sha256);
    if (version === undefined) {
      version = store.models.add({
        sha256: candidate.sha256,
        path: this.#candidatePath,
        kind: candidate.kind,
        metrics: { job: this.#ctx.job.id },
      });
    }
    if (version.state === "candidate") version = store.models.reject(version.id, reasons.join("; "));
    candidate.version = version.id;
    const verdict: RecalibrationResult = {
      ...this.#result("rejected", reasons),
      candidate,
      ...(this.#bench !== undefined ? { bench: this.#bench } : {}),
    };
    this.#recordReport(verdict);
    return { state: "REJECTED", result: verdict, error };
  }

  /** The candidate on disk is still the one checkpointed (a corrupt candidate is never benchmarked or promoted). */
  #verifyCandidate(): QuantdError | undefined {
    if (fileSha256(this.#candidatePath) === this.#cand().sha256) return undefined;
    return new QuantdError(
      "MODEL_INVALID",
      `the candidate ${this.#candidatePath} changed on disk since it was written (SHA-256 mismatch); not promoted`,
    );
  }

  /** 3. Candidate vs the active model under the same conditions (the checkpointed figures for the same active model). */
  async #benchmark(): Promise<JobVerdict | undefined> {
    const cp = this.#cp;
    if (cp.benchmark === undefined || cp.benchmark.activePath !== this.#active.path) {
      this.#ctx.stage("benchmark", 0.65);
      const changed = this.#verifyCandidate();
      if (changed !== undefined) return this.#reject([changed.message], changed);
      const runs = this.#p.benchRuns ?? DEFAULT_RECALIBRATE_BENCH_RUNS;
      let comparison: CandidateComparison;
      try {
        comparison = await this.#timed("benchmark", () =>
          compareCandidateInChild(this.#active.path, this.#candidatePath, {
            threads: this.#threads,
            runs,
            warmup: Math.min(5, runs),
            memory: this.#p.benchMemory ?? true,
            signal: this.#ctx.signal,
          }),
        );
      } catch (err) {
        const qe = QuantdError.from(err, "BENCH_FAILED");
        if (qe.details?.["which"] === "candidate" && CANDIDATE_FAULTS.has(qe.code))
          return this.#reject([qe.message], qe);
        throw qe;
      }
      this.#ctx.check();
      const figures = benchFigures(comparison, runs);
      const slower = latencyRefusal(figures, this.#p, this.#active.kind, this.#report, (l) =>
        this.#ctx.log(l),
      );
      if (this.#active.kind === "fp32")
        this.#recordAutoWinner(this.#report, againstFp32(figures, this.#p, slower));
      cp.benchmark = {
        figures,
        reasons: benchRefusals(figures, this.#p, slower),
        activePath: this.#active.path,
      };
      this.#save();
    }
    this.#bench = cp.benchmark.figures;
    const { reasons } = cp.benchmark;
    return reasons.length === 0
      ? undefined
      : this.#reject(reasons, new QuantdError("BENCH_FAILED", reasons.join("; ")));
  }

  /** 4. The last vetting (a release's labelled set), then the registry copies, verifies and hot-swaps it. */
  async #promote(): Promise<JobVerdict | undefined> {
    const { deps } = { deps: this.#deps };
    const cp = this.#cp;
    const candidate = this.#cand();
    const already = deps.store.models.getBySha256(candidate.sha256);
    if (cp.promote !== undefined || already?.state === "active") {
      const version = cp.promote?.version ?? already?.id;
      if (version !== undefined) candidate.version = version;
      this.#ctx.log("resuming: the candidate was already promoted");
      return undefined;
    }
    const vet = deps.vet;
    if (vet !== undefined) {
      this.#ctx.stage("vet", 0.8);
      const reasons = await this.#timed("vet", () => vet(this.#candidatePath, this.#ctx));
      if (reasons.length > 0)
        return this.#reject(reasons, new QuantdError("GATE_NOT_MET", reasons.join("; ")));
    }
    this.#ctx.stage("promote", 0.85);
    const changed = this.#verifyCandidate();
    if (changed !== undefined) return this.#reject([changed.message], changed);
    const report = this.#report;
    const metrics: Record<string, unknown> = {
      ...deps.promoteMetrics,
      job: this.#ctx.job.id,
      // The next recalibration starts from the same fp32 model (see services.ts's recalibrationBase).
      [BASE_METRIC]: this.#baseModel,
      ...(report !== undefined ? { validation: report.metrics, gate: report.gate } : {}),
      // What the serving agent counts live inputs against (see agent/drift.ts).
      ...(report?.coverage !== undefined ? { coverage: report.coverage } : {}),
      bench: this.#bench,
    };
    let promoted: ModelVersionView;
    try {
      promoted = await this.#timed("promote", () =>
        deps.promoter.promote(this.#candidatePath, { metrics, kind: candidate.kind }),
      );
    } catch (err) {
      const qe = QuantdError.from(err, "INTERNAL");
      if (!CANDIDATE_FAULTS.has(qe.code)) throw qe;
      return this.#reject([qe.message], qe);
    }
    candidate.version = promoted.id;
    cp.promote = { version: promoted.id };
    this.#save();
    return undefined;
  }

  /** 5. The figures into the store; the job succeeded. */
  async #finish(): Promise<JobVerdict> {
    const verdict: RecalibrationResult = {
      ...this.#result("promoted", []),
      candidate: this.#cand(),
      ...(this.#bench !== undefined ? { bench: this.#bench } : {}),
    };
    await this.#timed("report", () => this.#recordReport(verdict));
    return { state: "SUCCEEDED", result: verdict };
  }
}

/**
 * The recalibration job's handler (`forced.mode: "dynamic"` for the fleet's
 * quantize-dynamic jobs).
 *
 * Ends REJECTED with `GATE_NOT_MET` (agreement or accuracy below the gate),
 * `BENCH_FAILED` (slower or larger than the active model) or the candidate's
 * load error; FAILED with `CALIB_EMPTY`, `DISK_FULL`, `FILE_WRITE_FAILED`,
 * `STORE_BUSY`… when the device could not do the work.
 */
export function createRecalibrationHandler(
  deps: RecalibrationDeps,
  forced: Pick<RecalibrateJobParams, "mode"> = {},
): JobHandler {
  return {
    reportResult: slimRecalibrationResult,
    run: (ctx) => new RecalibrationRun(deps, ctx, forced).run(),
  };
}
