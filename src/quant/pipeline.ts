/**
 * The whole of `quantd quantize`, as a library function the CLI and the agent's
 * recalibration job both call. It reads as its stages ({@link runQuantization}):
 *
 * 1. samples: split into calibration and held-out validation sets (`samples.ts`);
 * 2. reference: the fp32 model, its tokenizer, the encoded samples and the validator;
 * 3. candidates: each format built, validated against fp32, and sent through the
 *    fallback when it misses the gate (`candidates.ts`); `auto` times the builds
 *    first and validates them fastest first, up to the first that passes;
 * 4. choose: the fastest passing candidate (`auto`), or the best failing one (`choose.ts`);
 * 5. report: the report (`run-report.ts`), then the int8 model written atomically,
 *    or GATE_NOT_MET.
 *
 * Failure rule: nothing is ever written at `out` unless a candidate passed the
 * gate, and what is written appears in one rename (the codec's atomic save), so
 * a crash or a full disk leaves either the old file or none.
 *
 * Samples come from a TSV path or from a {@link SamplePool} (the agent's SQLite
 * store satisfies it), so this layer never opens a database itself.
 */
import { accessSync, constants, existsSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join, resolve } from "node:path";
import { peakRssBytes } from "../core/process-memory.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { loadModel, saveModel } from "../onnx/codec.ts";
import { positionTable } from "../onnx/graph.ts";
import type { ModelProto } from "../onnx/types.ts";
import { loadModelTokenizer } from "../runtime/classifier.ts";
import { findModelFiles, MODEL_DIR_FILES, type ModelFiles } from "../runtime/model-files.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { TaskOverride } from "../runtime/task.ts";
import type { Tokenizer } from "../runtime/tokenizer.ts";
import type { SessionOptions } from "../runtime/types.ts";
import { DEFAULT_CALIBRATION_BATCH_SIZE } from "./calibrate.ts";
import {
  type AutoCandidate,
  type BuildSettings,
  type BuiltCandidates,
  buildCandidates,
  buildFormats,
  type CandidateInputs,
  formatsToTry,
  validateInLatencyOrder,
} from "./candidates.ts";
import { type Choice, type ChoiceInputs, chooseCandidate, timeModels } from "./choose.ts";
import type { LengthHistogram } from "./drift.ts";
import { DEFAULT_GATE_AGREEMENT, type GateDecision, type GateMetrics, type GateSpec } from "./gate.ts";
import { assertRunnableGraph } from "./graph-check.ts";
import type { CalibrationMethod, RequestedMode } from "./methods.ts";
import {
  type ActivationType,
  assertFloat32Model,
  assertNotQuantized,
  defaultQuantizeOptions,
  type QuantizeMode,
  type StaticFormat,
} from "./plan.ts";
import { planningGraph } from "./quantize.ts";
import { describeFile, type FileFacts, type QuantizeReport, writeReport } from "./report.ts";
import { buildReport, gateNotMetError } from "./run-report.ts";
import { loadSplit, type SamplePool, type SampleSplit } from "./samples.ts";
import { DEFAULT_TRIAL_BUDGET, measureLayerErrors, sensitivityTargets } from "./sensitivity.ts";
import { assertCertifiable, gateSpecOf, type SplitRequest, splitRequestOf } from "./split.ts";
import type { TaskThresholds } from "./task-metrics.ts";
import { checkSampleInputs, createTaskValidator, taskOfModel } from "./task-validate.ts";
import {
  createValidator,
  type EncodedSamples,
  encodeSamples,
  type ReferenceLogitsCache,
  type Validator,
} from "./validate.ts";

// The quantizer's entry point also names what its callers pass in and get back.
export type { AutoCandidate } from "./candidates.ts";
export { AUTO_BENCH_SEQ, measureP50 } from "./choose.ts";
export {
  type PoolSample,
  type QuantSample,
  readSampleTsv,
  type SamplePool,
  type SampleSplit,
  splitPool,
  splitSamples,
} from "./samples.ts";
export {
  assertCertifiable,
  DEFAULT_CALIBRATION_SAMPLES,
  gateSpecOf,
  MIN_CALIBRATION_SAMPLES,
  planSplit,
  type SplitPlan,
  type SplitRequest,
  splitRequestOf,
} from "./split.ts";
export {
  collectLogits,
  type EncodedSamples,
  encodeSamples,
  type ReferenceLogitsCache,
  VALIDATION_BATCH,
} from "./validate.ts";

/** Samples the sensitivity probe runs (both models, every quantized node exposed). */
export const SENSITIVITY_PROBE_SAMPLES = 32;

/** Options of {@link runQuantization}. */
export interface RunQuantizationOptions {
  /** The fp32 `.onnx` model (or a directory holding `model.onnx`). */
  model: string;
  /** Samples: a TSV (`label<TAB>sentence`, header) or a {@link SamplePool}. */
  calib: string | SamplePool;
  /** Where the int8 model goes. Nothing is written there unless the gate is met. */
  out: string;
  /** @defaultValue "static" */
  mode?: RequestedMode;
  /** Static calibration method. @defaultValue the quantizer's default (`defaultQuantizeOptions`) */
  method?: CalibrationMethod;
  /** How static int8 MatMuls are written (portable QDQ or onnxruntime's fused kernel). @defaultValue the quantizer's default */
  format?: StaticFormat;
  /** Static activation type (U8S8 or S8S8 with the int8 weights); `auto` takes it from `autoCandidates`. @defaultValue "uint8" */
  activations?: ActivationType;
  /** Calibration samples. @defaultValue {@link DEFAULT_CALIBRATION_SAMPLES} */
  samples?: number;
  /** Held-out validation samples. @defaultValue every sample left after calibration */
  validationSamples?: number;
  /** A separate TSV of held-out samples; then all of `calib` may calibrate. */
  validate?: string;
  /** Per-channel weight scales. @defaultValue the quantizer's default (true) */
  perChannel?: boolean;
  /** 7-bit ranges, for x86 without VNNI. @defaultValue false */
  reduceRange?: boolean;
  /** fp32 node names never to quantize. @defaultValue [] */
  exclude?: readonly string[];
  /** Smallest accepted top-1 agreement (fraction). @defaultValue {@link DEFAULT_GATE_AGREEMENT} */
  gate?: number;
  /** Largest accepted accuracy drop (fraction), when samples carry labels. @defaultValue no bound */
  maxAccuracyDrop?: number;
  /** Confidence level of the agreement's lower bound. @defaultValue {@link DEFAULT_CONFIDENCE} */
  confidence?: number;
  /** Decide on the lower bound (default) or, explicitly, on the point estimate. @defaultValue "bound" */
  decideOn?: GateDecision;
  /** Leave near-ties (fp32 top-2 margin below this) out of the gate. @defaultValue 0 */
  ignoreMargin?: number;
  /** Fallback rebuilds allowed per candidate format. @defaultValue {@link DEFAULT_TRIAL_BUDGET} */
  trialBudget?: number;
  /** Write the report JSON here (also when the gate is not met). */
  report?: string;
  /** Tokenizer directory. @defaultValue beside the model */
  tokenizerDir?: string;
  /** Intra-op threads of every session this run opens. @defaultValue the number of cores */
  threads?: number;
  /** Seed of a pool's pick. @defaultValue 1 */
  seed?: number;
  /**
   * What `--mode auto` builds and times, and why (a board profile's `auto`).
   * @defaultValue both static forms with uint8 activations, and dynamic
   */
  autoCandidates?: { candidates: readonly AutoCandidate[]; why: string };
  /** fp32 logits kept across runs (the agent's store). @defaultValue none: computed every run */
  referenceCache?: ReferenceLogitsCache;
  /**
   * `--mode auto`: validate every candidate, each with its own figures. By
   * default the candidates are timed first and validated fastest first until
   * one passes: a slower one could not be chosen, so it is left unvalidated.
   * @defaultValue false
   */
  validateAll?: boolean;
  /** Stop validating a candidate once its verdict is certain (see `validate.ts`). @defaultValue true */
  earlyStop?: boolean;
  /** Token lengths of live traffic (the agent counts them), reported beside the samples' and warned about. */
  liveLengths?: LengthHistogram;
  /** What the user set over the model's detected task (`--task`, `--threshold`, …). @defaultValue detected */
  task?: TaskOverride;
  /** Thresholds of the task metrics (embeddings, regression). @defaultValue `DEFAULT_TASK_THRESHOLDS` */
  taskThresholds?: Partial<TaskThresholds>;
  /** Progress lines (for a CLI's stderr). */
  onProgress?: (line: string) => void;
}

/** What {@link runQuantization} returns when the int8 model was written. */
export interface QuantizationResult {
  /** Absolute path of the written int8 model. */
  out: string;
  report: QuantizeReport;
}

/**
 * The longest sequence the model's position embedding table allows, when the
 * graph has one (`*position_embeddings*` initializer of two dims).
 */
export function modelMaxPositions(model: ModelProto): number | undefined {
  return positionTable(model)?.rows;
}

/** A run's resolved settings and checked paths (stage 0, no I/O beyond `stat`). */
interface Run {
  opts: RunQuantizationOptions;
  t0: number;
  progress: (line: string) => void;
  requestedMode: RequestedMode;
  settings: BuildSettings;
  splitReq: SplitRequest;
  files: ModelFiles;
  /** The samples' source as the report names it. */
  calibName: string;
}

/** The fp32 side of a run: the model, its tokenizer, the encoded samples and the validator. */
interface Reference {
  fp32: ModelProto;
  facts: FileFacts;
  /** Bytes of an external-data model's side files (the size ratio compares whole models). */
  externalBytes: number;
  tokenizer: Tokenizer;
  maxLength: number;
  calibration: EncodedSamples;
  probe: EncodedSamples;
  validator: Validator;
  /** Time spent validating candidates, ms. */
  validationMs: number;
}

/** The run's candidates, and how long timing them before validation took (auto mode), ms. */
interface Candidates extends BuiltCandidates {
  timedMs: number;
}

/**
 * Quantizes a model end to end and writes it only if it passes the gate.
 *
 * @throws FILE_NOT_FOUND when the model or the samples file does not exist
 * @throws CALIB_EMPTY when there are no samples to calibrate and validate on
 * @throws MODEL_ALREADY_QUANTIZED when the model already holds quantization operators
 * @throws GATE_NOT_MET when no candidate meets the gate within the trial budget;
 *   `details.best` carries its figures and nothing is written at `out`
 * @throws FILE_WRITE_FAILED when `out` (or the report) cannot be written
 * @throws USAGE when `out` is the model itself or `exclude` names an unknown node
 * @throws TOKENIZER_NOT_FOUND, MODEL_NOT_ONNX, MODEL_LOAD_FAILED, INFERENCE_FAILED, QUANT_* from the layers below
 */
export async function runQuantization(opts: RunQuantizationOptions): Promise<QuantizationResult> {
  const run = startRun(opts);
  try {
    const model = await loadFp32(run);
    const split = await takeSamples(run);
    const ref = await loadReference(run, split, model);
    const built = await buildAllCandidates(run, ref, split);
    const choice = await choose(run, ref, split, built);
    return await reportAndWrite(run, ref, split, built, choice);
  } catch (err) {
    throw await blameFp32File(run, err);
  }
}

/**
 * onnxruntime refusing a model quantd made in memory (the calibration copy, a
 * candidate) names only its size; when the user's fp32 file is refused too,
 * the fault is there, and that error, naming the file, is the one to show.
 * Only on that failure path: a run that loads costs no extra session.
 */
async function blameFp32File(run: Run, err: unknown): Promise<unknown> {
  if (!isQuantdError(err, "MODEL_LOAD_FAILED") || err.details?.["bytes"] === undefined) return err;
  try {
    const session = await createOrtSession(run.files.model, {
      intraOpThreads: 1,
      graphOptimizationLevel: "disabled",
    });
    await session.release();
    return err;
  } catch (fp32Err) {
    return fp32Err;
  }
}

/** The options {@link buildSettingsOf} reads. */
export type BuildSettingsOptions = Pick<
  RunQuantizationOptions,
  "trialBudget" | "exclude" | "perChannel" | "reduceRange" | "method" | "format" | "threads"
>;

/**
 * What candidates are built and validated with: each option given, else the
 * quantizer's default (one intra-op thread per core). Benchmarks and tests of
 * `--mode auto` call it too, so their settings are the run's.
 */
export function buildSettingsOf(opts: BuildSettingsOptions, gate: GateSpec): BuildSettings {
  const defaults = defaultQuantizeOptions("static");
  return {
    gate,
    budget: opts.trialBudget ?? DEFAULT_TRIAL_BUDGET,
    exclude: [...new Set(opts.exclude ?? [])],
    perChannel: opts.perChannel ?? defaults.perChannel,
    reduceRange: opts.reduceRange ?? defaults.reduceRange,
    method: opts.method ?? defaults.method,
    format: opts.format ?? defaults.format,
    session: { intraOpThreads: opts.threads ?? availableParallelism() } satisfies SessionOptions,
  };
}

/** Stage 0: options resolved to settings, and the cheap checks (a bad path fails in milliseconds, not after calibration). */
function startRun(opts: RunQuantizationOptions): Run {
  const t0 = performance.now();
  const gate = gateSpecOf(opts);
  const settings = buildSettingsOf(opts, gate);
  const files = findModelFiles(opts.model, opts.tokenizerDir);
  const inputs = inputFilesOf(opts, files);
  checkOutPath(opts.out, files.model, "--out", inputs);
  if (opts.report !== undefined) {
    checkOutPath(opts.report, files.model, "--report", inputs);
    if (resolve(opts.report) === resolve(opts.out)) {
      throw new QuantdError("USAGE", "--report and --out must be different files");
    }
  }
  return {
    opts,
    t0,
    progress: opts.onProgress ?? (() => undefined),
    requestedMode: opts.mode ?? "static",
    settings,
    splitReq: {
      ...splitRequestOf(gate, opts.samples, opts.validationSamples),
      ...(opts.mode === "dynamic" ? { noCalibration: true } : {}),
    },
    files,
    calibName: typeof opts.calib === "string" ? opts.calib : opts.calib.name,
  };
}

/** Stage 1b: the samples, split. */
async function takeSamples(run: Run): Promise<SampleSplit> {
  const split = await loadSplit(run.opts, run.splitReq);
  run.progress(`split: ${split.line}`);
  return split;
}

/**
 * Stage 1: the fp32 model loaded and checked before anything about the
 * samples is: an fp16, already quantized, un-runnable or un-rewritable model is refused
 * first, not after the user went to find more samples. The rewritability
 * check is the quantizer's own first steps (opset upgrade, contrib lowering):
 * graph walks, no calibration.
 */
async function loadFp32(run: Run): Promise<{ fp32: ModelProto; externalBytes: number }> {
  run.progress(`loading ${run.files.model}`);
  let externalBytes = 0;
  const external: string[] = [];
  const fp32 = await loadModel(run.files.model, {
    onExternalFile: (path, bytes) => {
      externalBytes += bytes;
      external.push(resolve(path));
    },
  });
  for (const [path, flag] of [
    [run.opts.out, "--out"],
    [run.opts.report, "--report"],
  ] as const) {
    if (path !== undefined) refuseInputFile(path, flag, external);
  }
  assertNotQuantized(fp32);
  assertFloat32Model(fp32);
  assertRunnableGraph(fp32);
  planningGraph(fp32);
  return { fp32, externalBytes };
}

/**
 * Stage 2: the fp32 model's tokenizer, the encoded samples, and the validator
 * for its task; refused when the held-out set cannot certify the gate.
 */
async function loadReference(
  run: Run,
  split: SampleSplit,
  { fp32, externalBytes }: { fp32: ModelProto; externalBytes: number },
): Promise<Reference> {
  const facts = await describeFile(run.files.model);
  // Before any sample is encoded: a tokenizer from another model fails calibration with an index error.
  const tokenizer = await loadModelTokenizer(run.files, fp32);
  const maxLength = tokenizer.maxLength;
  const validator = validatorFor(run, split, { fp32, facts, tokenizer, maxLength });
  // Refused before calibration when the held-out set cannot certify the gate: counted in the bound's trials,
  // which for a token classifier (tokens) or a multi-label head (label decisions) outnumber the samples.
  assertCertifiable(run.settings.gate, validator.trials.count, run.splitReq.needed, validator.trials.unit);
  return {
    fp32,
    facts,
    externalBytes,
    tokenizer,
    maxLength,
    calibration: encodeSamples(tokenizer, split.calibration, DEFAULT_CALIBRATION_BATCH_SIZE, maxLength),
    probe: encodeSamples(tokenizer, split.validation.slice(0, SENSITIVITY_PROBE_SAMPLES), 8, maxLength),
    validator,
    validationMs: 0,
  };
}

/**
 * A single-text classifier gets the validator of logits; other tasks compare
 * their own outputs. Both stop early and keep fp32's outputs in the cache.
 */
function validatorFor(
  run: Run,
  split: SampleSplit,
  m: { fp32: ModelProto; facts: FileFacts; tokenizer: Tokenizer; maxLength: number },
): Validator {
  const opts = run.opts;
  const task = taskOfModel(m.fp32, run.files, opts.task);
  checkSampleInputs(task, [...split.calibration, ...split.validation], run.files.model);
  const common = {
    tokenizer: m.tokenizer,
    maxLength: m.maxLength,
    samples: split.validation,
    gate: run.settings.gate,
    fp32: { path: run.files.model, sha256: m.facts.sha256 },
    session: run.settings.session,
    // Without an attention mask padding would change every shorter sample's logits: one sample at a time.
    ...(m.fp32.graph.input.some((i) => i.name === "attention_mask") ? {} : { batchSize: 1 }),
    ...(opts.referenceCache !== undefined ? { cache: opts.referenceCache } : {}),
    earlyStop: opts.earlyStop ?? true,
  };
  if (task.kind === "classification") return createValidator(common);
  return createTaskValidator({
    ...common,
    task,
    ...(opts.taskThresholds !== undefined ? { thresholds: opts.taskThresholds } : {}),
  });
}

/**
 * Stage 3: every format asked for, built, validated and improved by the
 * fallback (`candidates.ts`). `--mode auto` times the builds first and
 * validates them fastest first, stopping at the first that passes (what is
 * slower could not be chosen), unless `validateAll`.
 */
async function buildAllCandidates(run: Run, ref: Reference, split: SampleSplit): Promise<Candidates> {
  const inputs: CandidateInputs = {
    fp32: ref.fp32,
    calibration: ref.calibration.batches,
    probe: ref.probe.batches,
    validate: async (model: ModelProto, mode: QuantizeMode): Promise<GateMetrics> => {
      const t = performance.now();
      try {
        return (await ref.validator.validate(model, mode === "dynamic")).metrics;
      } finally {
        ref.validationMs += performance.now() - t;
      }
    },
    progress: run.progress,
  };
  const formats = formatsToTry(
    run.requestedMode,
    run.settings,
    run.opts.activations,
    run.opts.autoCandidates?.candidates,
  );
  const autoMode = run.requestedMode === "auto";
  const builds = await buildFormats(formats, inputs, run.settings, autoMode);
  if (!autoMode || run.opts.validateAll === true || builds.builds.length <= 1) {
    return { ...(await buildCandidates(builds, inputs, run.settings)), timedMs: 0 };
  }
  run.progress(`benchmarking ${builds.builds.length} candidates, to validate the fastest first`);
  const timed = await timeModels(
    builds.builds.map((b) => b.result.model),
    choiceInputs(run, ref, split),
  );
  return {
    ...(await validateInLatencyOrder(builds, timed.p50Ms, inputs, run.settings)),
    timedMs: timed.ms,
  };
}

/** What the auto comparison runs with. */
function choiceInputs(run: Run, ref: Reference, split: SampleSplit): ChoiceInputs {
  return {
    autoMode: run.requestedMode === "auto",
    tokenizer: ref.tokenizer,
    maxLength: ref.maxLength,
    texts: split.validation.map((s) => s.text),
    session: run.settings.session,
    progress: run.progress,
  };
}

/**
 * Stage 4: the candidate to write (`choose.ts`), with its per-layer error
 * measured when the fallback did not rank it (the report wants it anyway).
 */
async function choose(run: Run, ref: Reference, split: SampleSplit, built: Candidates): Promise<Choice> {
  const choice = await chooseCandidate(built, choiceInputs(run, ref, split), built.timedMs);
  const chosen = choice.chosen;
  if (chosen.layerError.length === 0) {
    const t = performance.now();
    chosen.layerError = await measureLayerErrors(
      ref.fp32,
      chosen.model,
      sensitivityTargets(ref.fp32, chosen.quantizedNodes),
      ref.probe.batches,
      { session: run.settings.session },
    );
    built.fallbackMs += performance.now() - t;
  }
  return choice;
}

/**
 * Stage 5: the report, written with the int8 model when the chosen candidate
 * passed; otherwise written alone and GATE_NOT_MET thrown.
 */
async function reportAndWrite(
  run: Run,
  ref: Reference,
  split: SampleSplit,
  built: Candidates,
  choice: Choice,
): Promise<QuantizationResult> {
  const opts = run.opts;
  const report = buildReport({
    requestedMode: run.requestedMode,
    settings: run.settings,
    fp32: { model: ref.fp32, facts: ref.facts },
    samples: {
      split,
      source: run.calibName,
      validationSource: opts.validate ?? run.calibName,
      maxLength: ref.maxLength,
      calibration: ref.calibration,
      validation: {
        lengths: ref.validator.lengths,
        truncated: ref.validator.truncated,
        summary: ref.validator.summary(),
      },
      ...(opts.liveLengths !== undefined ? { live: opts.liveLengths } : {}),
    },
    candidates: { built: built.candidates, failed: built.failed, notValidated: built.notValidated },
    choice,
    ...(opts.autoCandidates?.why !== undefined ? { autoWhy: opts.autoCandidates.why } : {}),
    timings: {
      validationMs: ref.validationMs,
      fallbackMs: built.fallbackMs,
      benchmarkMs: choice.benchmarkMs,
    },
  });
  const finish = async (): Promise<void> => {
    report.timings.totalMs = performance.now() - run.t0;
    report.peakRssBytes = peakRssBytes();
    if (opts.report !== undefined) await writeReport(opts.report, report);
  };
  if (!choice.chosen.passed) {
    await finish();
    throw gateNotMetError(choice.chosen, run.settings.gate.minAgreement, opts.out, opts.report);
  }
  run.progress(`writing ${opts.out}`);
  await saveModel(choice.chosen.model, opts.out);
  const int8 = await describeFile(opts.out);
  report.model.int8 = int8;
  report.model.sizeRatio = int8.bytes / (ref.facts.bytes + ref.externalBytes);
  await finish();
  return { out: resolve(opts.out), report };
}

/**
 * The user's files a run reads besides the model (whose external data files
 * are known once it is read): the tokenizer and config files beside it and in
 * the tokenizer directory, the samples and the validation file. An output
 * path naming one would overwrite it.
 */
function inputFilesOf(opts: RunQuantizationOptions, files: ModelFiles): string[] {
  const dirs = new Set([dirname(files.model), files.tokenizerDir]);
  const out = [...dirs].flatMap((d) => MODEL_DIR_FILES.map((name) => join(d, name)));
  if (files.configPath !== undefined) out.push(files.configPath);
  // A store's pool is named by its file in the CLI; the agent's pool by no file.
  const calib = typeof opts.calib === "string" ? opts.calib : opts.calib.name;
  if (existsSync(calib)) out.push(calib);
  if (opts.validate !== undefined) out.push(opts.validate);
  return out.map((p) => resolve(p));
}

/** @throws USAGE when `path` is one of `inputs` (absolute paths): quantd never overwrites what it reads */
function refuseInputFile(path: string, flag: string, inputs: readonly string[]): void {
  const target = resolve(path);
  if (!inputs.includes(target)) return;
  throw new QuantdError(
    "USAGE",
    `${flag} ${path} is one of the files this run reads; quantd never overwrites its inputs: write elsewhere`,
    { details: { flag, path: target } },
  );
}

/**
 * @throws USAGE when `out` is the model itself or one of `inputs`; FILE_WRITE_FAILED when its
 *   directory is not writable
 */
function checkOutPath(out: string, model: string, flag: string, inputs: readonly string[]): void {
  if (resolve(out) === resolve(model)) {
    throw new QuantdError(
      "USAGE",
      `${flag} must not be the input model; quantd never overwrites the fp32 model`,
    );
  }
  refuseInputFile(out, flag, inputs);
  const dir = dirname(resolve(out));
  try {
    if (!statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
    accessSync(dir, constants.W_OK);
  } catch (err) {
    throw new QuantdError("FILE_WRITE_FAILED", `cannot write ${out}: ${dir} is not a writable directory`, {
      cause: err,
      details: { path: out },
    });
  }
  try {
    if (statSync(out).isDirectory()) {
      throw new QuantdError("FILE_WRITE_FAILED", `cannot write ${out}: it is a directory`, {
        details: { path: out },
      });
    }
  } catch (err) {
    if (isQuantdError(err)) throw err;
    // absent: fine
  }
}
