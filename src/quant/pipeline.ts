/**
 * The whole of `quantd quantize`, as a library function the CLI and the agent's
 * recalibration job both call: load the fp32 model, split the samples into
 * calibration and held-out validation sets, quantize, validate against fp32,
 * fall back to fp32 for the most sensitive nodes when the gate is not met, pick
 * the fastest passing format (`auto`), write the int8 model atomically and
 * describe everything in a report.
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
import { dirname, resolve } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { peakRssBytes } from "../core/process-memory.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { encodeModel, loadModel, saveModel } from "../onnx/codec.ts";
import type { ModelProto } from "../onnx/types.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { findModelFiles } from "../runtime/model-files.ts";
import { createOrtSession, ORT_VERSION } from "../runtime/ort-session.ts";
import { type BatchEncoding, loadTokenizer } from "../runtime/tokenizer.ts";
import { isPairFile, readInputsTsv } from "../runtime/input-tsv.ts";
import type { TaskOverride } from "../runtime/task.ts";
import { readSamplesTsv } from "../runtime/tsv.ts";
import type { InferenceSession, SessionOptions } from "../runtime/types.ts";
import {
  checkGate,
  compareCandidates,
  DEFAULT_GATE_AGREEMENT,
  describeAgreement,
  type GateDecision,
  type GateMetrics,
  type GateSpec,
} from "./gate.ts";
import { DEFAULT_CALIBRATION_BATCH_SIZE } from "./calibrate.ts";
import type { CalibrationMethod } from "./methods.ts";
import {
  type ActivationType,
  assertFloat32Model,
  assertNotQuantized,
  defaultQuantizeOptions,
  type QuantizeMode,
  type StaticFormat,
} from "./plan.ts";
import { type QuantizeResult, quantizeModel, requantize } from "./quantize.ts";
import {
  type CandidateEntry,
  describeFile,
  type FallbackTrial,
  type GraphChanges,
  type KeptFp32Node,
  type LayerErrorEntry,
  type MethodTrial,
  type QuantizeReport,
  REPORT_SCHEMA,
  type SkippedNodeEntry,
  type TensorRangeEntry,
  writeReport,
} from "./report.ts";
import { DEFAULT_TRIAL_BUDGET, measureLayerErrors, runFallback, sensitivityTargets } from "./sensitivity.ts";
import {
  type LengthCoverage,
  type LengthHistogram,
  type LengthSets,
  lengthHistogram,
  lengthWarnings,
} from "./drift.ts";
import type { TaskThresholds } from "./task-metrics.ts";
import { createTaskValidator, taskOfModel } from "./task-validate.ts";
import { createValidator, encodeSamples, type ReferenceLogitsCache } from "./validate.ts";
import {
  assertCertifiable,
  DEFAULT_CALIBRATION_SAMPLES,
  gateSpecOf,
  planSplit,
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

/** What a user may ask for: a format, or `auto` to let quantd measure and choose. */
export type RequestedMode = QuantizeMode | "auto";

/** Samples the sensitivity probe runs (both models, every quantized node exposed). */
export const SENSITIVITY_PROBE_SAMPLES = 32;
/** Sequence length of the latency comparison `auto` makes (the shape quantd's latency targets are stated for). */
export const AUTO_BENCH_SEQ = 128;

/** One text to calibrate or validate on. */
export interface QuantSample {
  text: string;
  /** The second text of a pair (a pair classifier's samples). */
  pair?: string;
  /** Class id, when known. */
  label?: number;
  /** Where it came from, for messages (`calib.tsv:12`, `store#42`). */
  origin: string;
  /** The pool's id of the sample, when it came from one (keys the fp32 logits cache). */
  id?: number;
}

/** A sample as a pool hands it out (the store's rows fit this shape). */
export interface PoolSample {
  text: string;
  /** The second text of a pair. */
  pair?: string | null;
  label?: number | null;
  id?: number;
}

/**
 * A source of samples that can hand out disjoint calibration and validation
 * sets: the agent's SQLite `SampleStore` satisfies it.
 */
export interface SamplePool {
  /** Shown in messages and the report (e.g. the database path). */
  readonly name: string;
  /** Samples held. */
  count(): number;
  /** Two disjoint picks. @throws CALIB_EMPTY when the pool holds fewer than `nCalib + nVal` */
  pickDisjoint(
    nCalib: number,
    nVal: number,
    seed: number,
  ): { calibration: readonly PoolSample[]; validation: readonly PoolSample[] };
}

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

/** Samples split into disjoint sets. */
export interface SampleSplit {
  calibration: QuantSample[];
  validation: QuantSample[];
  /** Samples the source held (before the split). */
  available: number;
  /** How the split departed from what was asked, if it did. */
  warnings: string[];
  /** The split in one line: sizes, and why (see {@link planSplit}). */
  line: string;
}

/**
 * The longest sequence the model's position embedding table allows, when the
 * graph has one (`*position_embeddings*` initializer of two dims).
 */
export function modelMaxPositions(model: ModelProto): number | undefined {
  for (const t of model.graph.initializer) {
    if (/position_embeddings/i.test(t.name) && t.dims.length === 2) return t.dims[0];
  }
  return undefined;
}

/**
 * Splits samples into disjoint calibration and validation sets, in file order:
 * the first calibrate, the following ones validate ({@link planSplit} sizes
 * both). A gate checked on calibration samples would prove nothing, so at least
 * one row is always held out.
 *
 * @throws CALIB_EMPTY when there are no samples, or only one and no separate validation set
 */
export function splitSamples(
  samples: readonly QuantSample[],
  req: SplitRequest,
  separateValidation: boolean,
  source: string,
): SampleSplit {
  const available = samples.length;
  if (available === 0) {
    throw new QuantdError("CALIB_EMPTY", `${source} holds no samples`, { details: { path: source } });
  }
  if (separateValidation) {
    const calibration = samples.slice(0, req.calibration ?? DEFAULT_CALIBRATION_SAMPLES);
    return {
      calibration,
      validation: [],
      available,
      warnings: [],
      line: `${available.toLocaleString("en-US")} rows: ${calibration.length} calibrate`,
    };
  }
  if (available < 2) {
    throw new QuantdError(
      "CALIB_EMPTY",
      `${source} holds 1 sample; quantd needs at least 2 (one to calibrate, one held out to validate)`,
      { details: { path: source, available } },
    );
  }
  const plan = planSplit(available, req);
  const warnings: string[] = [];
  if (req.validation !== undefined && plan.validation < req.validation) {
    warnings.push(`only ${plan.validation} held-out samples to validate on (asked for ${req.validation})`);
  }
  return {
    calibration: samples.slice(0, plan.calibration),
    validation: samples.slice(plan.calibration, plan.calibration + plan.validation),
    available,
    warnings,
    line: plan.line,
  };
}

/**
 * Disjoint sets from a pool, sized by {@link planSplit} (validation defaults to
 * every sample left after calibration).
 *
 * @throws CALIB_EMPTY when the pool holds fewer than 2 samples
 */
export function splitPool(pool: SamplePool, req: SplitRequest, seed: number): SampleSplit {
  const available = pool.count();
  if (available < 2) {
    throw new QuantdError(
      "CALIB_EMPTY",
      `${pool.name} holds ${available} sample(s); quantd needs at least 2`,
      {
        details: { path: pool.name, available },
      },
    );
  }
  const plan = planSplit(available, req, "samples");
  const warnings: string[] = [];
  if (req.validation !== undefined && plan.validation < req.validation) {
    warnings.push(
      `${pool.name} holds ${available} samples: calibrating on ${plan.calibration}, validating on ${plan.validation}`,
    );
  }
  const pick = pool.pickDisjoint(plan.calibration, plan.validation, seed);
  const conv = (s: PoolSample, i: number): QuantSample => ({
    text: s.text,
    ...(typeof s.pair === "string" ? { pair: s.pair } : {}),
    origin: `${pool.name}#${s.id ?? i}`,
    ...(typeof s.label === "number" ? { label: s.label } : {}),
    ...(s.id !== undefined ? { id: s.id } : {}),
  });
  return {
    calibration: pick.calibration.map(conv),
    validation: pick.validation.map(conv),
    available,
    warnings,
    line: plan.line,
  };
}

/**
 * Reads every sample of a TSV file.
 *
 * @throws FILE_NOT_FOUND when it does not exist
 * @throws CALIB_EMPTY when it holds no samples (empty, or a header only)
 * @throws DATA_MALFORMED, TEXT_* for a bad row (with file:line)
 */
export async function readSampleTsv(path: string): Promise<QuantSample[]> {
  if (!existsSync(path)) {
    throw new QuantdError("FILE_NOT_FOUND", `samples file ${path} does not exist`, { details: { path } });
  }
  try {
    if (await isPairFile(path)) {
      return (await readInputsTsv(path)).map((r) => ({
        text: typeof r.input === "string" ? r.input : r.input[0],
        ...(typeof r.input === "string" ? {} : { pair: r.input[1] }),
        origin: `${path}:${r.line}`,
        ...(r.label !== undefined && /^\d+$/.test(r.label) ? { label: Number(r.label) } : {}),
      }));
    }
    const rows = await readSamplesTsv(path);
    return rows.map((r) => ({
      text: r.text,
      origin: `${path}:${r.line}`,
      ...(r.label !== undefined ? { label: r.label } : {}),
    }));
  } catch (err) {
    if (isQuantdError(err, "DATA_EMPTY")) {
      throw new QuantdError("CALIB_EMPTY", `no samples to calibrate on: ${err.message}`, {
        cause: err,
        details: { path },
      });
    }
    throw err;
  }
}

/**
 * p50 latency of each model on the same batch, in ms: warm-up, then
 * interleaved runs (A B A B …) so machine drift (a Pi's thermal throttling)
 * hits every candidate alike.
 */
export async function measureP50(
  models: readonly Uint8Array[],
  encoding: BatchEncoding,
  session: SessionOptions,
  runs: number,
): Promise<number[]> {
  const sessions: InferenceSession[] = [];
  try {
    for (const m of models) sessions.push(await createOrtSession(m, session));
    const times = models.map(() => [] as number[]);
    for (const s of sessions) for (let w = 0; w < 5; w++) await s.run(feedsForEncoding(s, encoding));
    for (let r = 0; r < runs; r++) {
      for (const [k, s] of sessions.entries()) {
        const feeds = feedsForEncoding(s, encoding);
        const t0 = performance.now();
        await s.run(feeds);
        times[k]!.push(performance.now() - t0);
      }
    }
    return times.map((t) => {
      const sorted = [...t].sort((a, b) => a - b);
      const mid = (sorted.length - 1) / 2;
      return (sorted[Math.floor(mid)]! + sorted[Math.ceil(mid)]!) / 2;
    });
  } finally {
    for (const s of sessions) await s.release();
  }
}

/** Calibration methods the fallback tries, in order, before keeping any node in fp32. */
export const FALLBACK_METHODS: readonly CalibrationMethod[] = ["percentile", "mse", "entropy"];

/**
 * The first step of the fallback for a static candidate that misses the gate:
 * the same model calibrated with the other methods of {@link FALLBACK_METHODS}
 * (percentile clips outliers, MSE and entropy pick the range that loses the
 * least). A method costs a calibration pass and a validation (which stops as
 * soon as it cannot pass), and not a byte of model size, so it goes before any
 * node is kept in fp32. Stops at the first that passes; otherwise the best
 * (highest bound) is where the fp32 fallback starts.
 */
async function tryMethods(
  first: QuantizeResult,
  firstMetrics: GateMetrics,
  method: CalibrationMethod,
  gate: GateSpec,
  build: (m: CalibrationMethod) => Promise<{ result: QuantizeResult; metrics: GateMetrics }>,
): Promise<{
  start: { result: QuantizeResult; metrics: GateMetrics; method: CalibrationMethod };
  trials: MethodTrial[];
}> {
  let start = { result: first, metrics: firstMetrics, method };
  const trials: MethodTrial[] = [];
  for (const m of FALLBACK_METHODS.filter((x) => x !== method)) {
    const t0 = performance.now();
    const alt = await build(m);
    const passed = checkGate(alt.metrics, gate).passed;
    trials.push({
      method: m,
      agreement: alt.metrics.agreement,
      agreementLower: alt.metrics.agreementLower,
      meanAbsLogitDiff: alt.metrics.meanAbsLogitDiff,
      passed,
      ms: performance.now() - t0,
      bought: {
        agreement: alt.metrics.agreement - firstMetrics.agreement,
        agreementLower: alt.metrics.agreementLower - firstMetrics.agreementLower,
        meanAbsLogitDiff: alt.metrics.meanAbsLogitDiff - firstMetrics.meanAbsLogitDiff,
        bytes: 0,
      },
    });
    if (passed || compareCandidates(alt.metrics, start.metrics) < 0) start = { ...alt, method: m };
    if (passed) break;
  }
  return { start, trials };
}

/** One int8 format tried, with its fallback history. */
interface Candidate {
  mode: QuantizeMode;
  method?: CalibrationMethod;
  format?: StaticFormat;
  activations?: ActivationType;
  model: ModelProto;
  metrics: GateMetrics;
  passed: boolean;
  failures: string[];
  keptSensitive: LayerErrorEntry[];
  /** Per-layer error of the original build (worst first); measured late when the fallback did not run. */
  layerError: LayerErrorEntry[];
  /** Nodes quantized in `model`. */
  quantizedNodes: string[];
  trials: FallbackTrial[];
  /** Other calibration methods tried before the fp32 fallback. */
  methodTrials: MethodTrial[];
  skipped: SkippedNodeEntry[];
  /** What was done to the graph before quantizing it (opset upgrade, contrib ops lowered). */
  graph: GraphChanges;
  ranges: Record<string, TensorRangeEntry>;
  calibrationMs: number;
  quantizationMs: number;
  p50Ms?: number;
}

function describeFormat(c: {
  mode: QuantizeMode;
  method?: string;
  format?: string;
  activations?: string;
}): string {
  // uint8 activations (U8S8) are the default and go unnamed; S8S8 says so.
  const pairing = c.activations === "int8" ? "s8s8" : undefined;
  return [c.mode, c.method, c.format, pairing].filter((x) => x !== undefined).join("/");
}

/** One format to build: a mode and, for static, how it is calibrated and written. */
interface FormatChoice {
  mode: QuantizeMode;
  method?: CalibrationMethod;
  format?: StaticFormat;
  activations?: ActivationType;
}

/** One int8 form `--mode auto` may try (a board profile lists the ones worth timing on it). */
export interface AutoCandidate {
  mode: QuantizeMode;
  format?: StaticFormat;
  activations?: ActivationType;
}

/** `--mode auto`'s candidates without a board profile: both static forms with uint8 activations, and dynamic. */
const DEFAULT_AUTO_CANDIDATES: readonly AutoCandidate[] = [
  { mode: "static", format: "qdq" },
  { mode: "static", format: "fused" },
  { mode: "dynamic" },
];

/** Why the chosen candidate won, in one line, for the report. */
function autoDecision(chosen: Candidate, passing: readonly Candidate[], seq: number): string {
  if (passing.length <= 1) return `${describeFormat(chosen)}: the only candidate that met the gate`;
  const others = passing
    .filter((c) => c !== chosen)
    .sort((a, b) => (a.p50Ms ?? 0) - (b.p50Ms ?? 0))
    .map((c) => `${describeFormat(c)} ${(c.p50Ms ?? 0).toFixed(2)} ms`);
  return `${describeFormat(chosen)}: fastest candidate that met the gate, p50 ${(chosen.p50Ms ?? 0).toFixed(2)} ms at sequence ${seq} (then ${others.join(", ")})`;
}

/** @throws USAGE when `out` is the model itself; FILE_WRITE_FAILED when its directory is not writable */
function checkOutPath(out: string, model: string, flag: string): void {
  if (resolve(out) === resolve(model)) {
    throw new QuantdError(
      "USAGE",
      `${flag} must not be the input model; quantd never overwrites the fp32 model`,
    );
  }
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

function rangesOf(result: QuantizeResult): Record<string, TensorRangeEntry> {
  const out: Record<string, TensorRangeEntry> = {};
  for (const [name, r] of result.ranges) {
    const qp = result.qparams.get(name);
    out[name] = {
      min: r.min,
      max: r.max,
      ...(qp !== undefined ? { scale: qp.scale, zeroPoint: qp.zeroPoint } : {}),
    };
  }
  return out;
}

const UNSUPPORTED_REASONS: ReadonlySet<string> = new Set([
  "unsupported-op",
  "unsupported-attributes",
  "non-constant-weight",
  "mask-sentinel",
  "no-range",
  "unknown-op",
]);

function keptNodes(fp32: ModelProto, userExclude: readonly string[], c: Candidate): KeptFp32Node[] {
  const opOf = new Map(fp32.graph.node.map((n) => [n.name, n.opType]));
  const kept: KeptFp32Node[] = [];
  for (const name of userExclude) {
    const op = opOf.get(name);
    kept.push({ node: name, ...(op !== undefined ? { opType: op } : {}), reason: "user-exclude" });
  }
  for (const e of c.keptSensitive) {
    kept.push({
      node: e.node,
      opType: e.opType,
      reason: "sensitivity",
      detail: `adds relative error ${e.addedError.toPrecision(3)} (output error ${e.relError.toPrecision(3)})`,
    });
  }
  for (const s of c.skipped) {
    if (UNSUPPORTED_REASONS.has(s.reason)) {
      kept.push({
        node: s.node,
        opType: s.opType,
        reason: "unsupported",
        detail: s.detail === undefined ? s.reason : `${s.reason}: ${s.detail}`,
      });
    }
  }
  return kept;
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
  const t0 = performance.now();
  const progress = opts.onProgress ?? (() => undefined);
  const requestedMode = opts.mode ?? "static";
  const gate = gateSpecOf(opts);
  const threads = opts.threads ?? availableParallelism();
  const session: SessionOptions = { intraOpThreads: threads };
  const splitReq = splitRequestOf(gate, opts.samples, opts.validationSamples);
  const budget = opts.trialBudget ?? DEFAULT_TRIAL_BUDGET;
  const userExclude = [...new Set(opts.exclude ?? [])];
  const defaults = defaultQuantizeOptions("static");
  const perChannel = opts.perChannel ?? defaults.perChannel;
  const reduceRange = opts.reduceRange ?? defaults.reduceRange;
  const staticMethod = opts.method ?? defaults.method;
  const staticFormat = opts.format ?? defaults.format;

  // Cheap checks first: a bad path should fail in milliseconds, not after calibration.
  const files = findModelFiles(opts.model, opts.tokenizerDir);
  checkOutPath(opts.out, files.model, "--out");
  if (opts.report !== undefined) {
    checkOutPath(opts.report, files.model, "--report");
    if (resolve(opts.report) === resolve(opts.out)) {
      throw new QuantdError("USAGE", "--report and --out must be different files");
    }
  }
  const calibName = typeof opts.calib === "string" ? opts.calib : opts.calib.name;
  let split: SampleSplit;
  if (typeof opts.calib === "string") {
    split = splitSamples(await readSampleTsv(opts.calib), splitReq, opts.validate !== undefined, calibName);
  } else {
    split =
      opts.validate !== undefined
        ? {
            ...splitPool(
              opts.calib,
              {
                ...splitReq,
                calibration: Math.min(
                  splitReq.calibration ?? DEFAULT_CALIBRATION_SAMPLES,
                  opts.calib.count() - 1,
                ),
                validation: 1,
              },
              opts.seed ?? 1,
            ),
            validation: [],
          }
        : splitPool(opts.calib, splitReq, opts.seed ?? 1);
  }
  if (opts.validate !== undefined) {
    split.validation = (await readSampleTsv(opts.validate)).slice(0, opts.validationSamples);
    split.line = `${split.calibration.length} calibrate, ${split.validation.length} validate from ${opts.validate} (${splitReq.gateWords} needs ≥ ${splitReq.needed.toLocaleString("en-US")})`;
  }
  progress(`split: ${split.line}`);
  assertCertifiable(gate, split.validation.length, splitReq.needed);

  progress(`loading ${files.model}`);
  // The size ratio compares whole models: an external-data model's weights are in its side files.
  let externalBytes = 0;
  const fp32 = await loadModel(files.model, { onExternalFile: (_, bytes) => (externalBytes += bytes) });
  assertNotQuantized(fp32);
  assertFloat32Model(fp32);
  const fp32Facts = await describeFile(files.model);

  const tokOpts: { maxLength?: number; configPath?: string } = {};
  const positions = modelMaxPositions(fp32);
  if (positions !== undefined) tokOpts.maxLength = positions;
  if (files.configPath !== undefined) tokOpts.configPath = files.configPath;
  const tokenizer = await loadTokenizer(files.tokenizerDir, tokOpts);
  const maxLength = tokenizer.maxLength;
  const calib = encodeSamples(tokenizer, split.calibration, DEFAULT_CALIBRATION_BATCH_SIZE, maxLength);
  const probe = encodeSamples(tokenizer, split.validation.slice(0, SENSITIVITY_PROBE_SAMPLES), 8, maxLength);

  // A single-text classifier keeps the validator with early stop and the fp32 cache; other tasks compare their own outputs.
  const task = taskOfModel(fp32, files, opts.task);
  const validatorOptions = {
    tokenizer,
    maxLength,
    samples: split.validation,
    gate,
    fp32: { path: files.model, sha256: fp32Facts.sha256 },
    session,
    // Without an attention mask padding would change every shorter sample's logits: one sample at a time.
    ...(fp32.graph.input.some((i) => i.name === "attention_mask") ? {} : { batchSize: 1 }),
  };
  const validator =
    task.kind === "classification"
      ? createValidator({
          ...validatorOptions,
          ...(opts.referenceCache !== undefined ? { cache: opts.referenceCache } : {}),
          earlyStop: opts.earlyStop ?? true,
        })
      : createTaskValidator({
          ...validatorOptions,
          task,
          ...(opts.taskThresholds !== undefined ? { thresholds: opts.taskThresholds } : {}),
        });
  let validationMs = 0;
  let fallbackMs = 0;

  const validate = async (model: ModelProto, mode: QuantizeMode): Promise<GateMetrics> => {
    const t = performance.now();
    try {
      return (await validator.validate(model, mode === "dynamic")).metrics;
    } finally {
      validationMs += performance.now() - t;
    }
  };

  const formats: FormatChoice[] =
    requestedMode === "auto"
      ? (opts.autoCandidates?.candidates ?? DEFAULT_AUTO_CANDIDATES).map(
          (c): FormatChoice =>
            c.mode === "static"
              ? {
                  mode: "static",
                  method: staticMethod,
                  format: c.format ?? staticFormat,
                  activations: c.activations ?? "uint8",
                }
              : { mode: "dynamic" },
        )
      : requestedMode === "static"
        ? [
            {
              mode: "static",
              method: staticMethod,
              format: staticFormat,
              activations: opts.activations ?? "uint8",
            },
          ]
        : [{ mode: "dynamic" }];
  // Both static formats share one calibration: the ranges of the first static build.
  let staticRanges: QuantizeResult["ranges"] | undefined;
  // Ranges of the other methods the fallback tried, shared by the static formats.
  const methodRanges = new Map<CalibrationMethod, QuantizeResult["ranges"]>();
  let staticCalibrationMs = 0;

  const candidates: Candidate[] = [];
  const failedFormats: CandidateEntry[] = [];
  for (const f of formats) {
    const label = describeFormat(f);
    progress(`quantizing (${label})`);
    let first: QuantizeResult;
    try {
      first = await quantizeModel(
        fp32,
        f.mode === "static"
          ? {
              type: "static",
              method: f.method ?? staticMethod,
              format: f.format ?? staticFormat,
              activations: f.activations ?? "uint8",
              perChannel,
              reduceRange,
              exclude: userExclude,
              ...(staticRanges !== undefined ? { ranges: staticRanges } : { calibration: calib.batches }),
            }
          : { type: "dynamic", perChannel, reduceRange, exclude: userExclude },
      );
    } catch (err) {
      // In auto mode one format failing must not sink the other.
      if (requestedMode !== "auto" || (isQuantdError(err) && err.code === "USAGE")) throw err;
      failedFormats.push({
        mode: f.mode,
        ...(f.method !== undefined ? { method: f.method } : {}),
        ...(f.format !== undefined ? { format: f.format } : {}),
        ...(f.activations !== undefined ? { activations: f.activations } : {}),
        agreement: 0,
        meanAbsLogitDiff: Number.POSITIVE_INFINITY,
        passed: false,
        chosen: false,
        note: QuantdError.from(err, "QUANT_FAILED").toLine(),
      });
      continue;
    }
    if (f.mode === "static" && staticRanges === undefined) {
      staticRanges = first.ranges;
      staticCalibrationMs = first.timings.calibrationMs;
    }
    progress(`validating (${label})`);
    const firstMetrics = await validate(first.model, f.mode);
    const tFb = performance.now();
    // Other calibration methods first: they cost time, not bytes (see tryMethods).
    const tried =
      f.mode === "static" && budget > 0 && !checkGate(firstMetrics, gate).passed
        ? await tryMethods(first, firstMetrics, f.method ?? staticMethod, gate, async (m) => {
            progress(`fallback (${label}): calibrating with ${m} instead`);
            const known = methodRanges.get(m);
            const alt = await quantizeModel(fp32, {
              type: "static",
              method: m,
              format: f.format ?? staticFormat,
              activations: f.activations ?? "uint8",
              perChannel,
              reduceRange,
              exclude: userExclude,
              ...(known !== undefined ? { ranges: known } : { calibration: calib.batches }),
            });
            methodRanges.set(m, alt.ranges);
            return { result: alt, metrics: await validate(alt.model, f.mode) };
          })
        : { start: { result: first, metrics: firstMetrics, method: f.method ?? staticMethod }, trials: [] };
    const base = tried.start.result;
    const metrics = tried.start.metrics;
    const targets = sensitivityTargets(
      fp32,
      base.plan.quantized.map((t) => t.node),
    );
    let best = base;
    const builds = new Map<ModelProto, QuantizeResult>([[base.model, base]]);
    const fb = await runFallback(
      { model: base.model, metrics },
      {
        rebuild: async (keep) => {
          progress(`fallback (${label}): keeping ${keep.length} node(s) in fp32`);
          const r = await requantize(fp32, base, keep);
          builds.set(r.model, r);
          return r.model;
        },
        validate: (model) => validate(model, f.mode),
        rank: (model) => measureLayerErrors(fp32, model, targets, probe.batches, { session }),
      },
      { gate, budget, ignore: userExclude },
    );
    fallbackMs += performance.now() - tFb;
    best = builds.get(fb.best.model) ?? base;
    const verdict = checkGate(fb.best.metrics, gate);
    candidates.push({
      mode: f.mode,
      ...(f.mode === "static"
        ? {
            method: tried.start.method,
            format: f.format ?? staticFormat,
            ...(f.activations !== undefined ? { activations: f.activations } : {}),
          }
        : {}),
      model: fb.best.model,
      metrics: fb.best.metrics,
      passed: verdict.passed,
      failures: verdict.failures,
      keptSensitive: fb.keptFp32,
      layerError: fb.ranking,
      quantizedNodes: best.plan.quantized.map((t) => t.node),
      trials: fb.trials,
      methodTrials: tried.trials,
      skipped: best.plan.skipped
        .filter((s) => !(s.reason === "excluded" && !userExclude.includes(s.node)))
        .map((s) => ({ node: s.node, opType: s.opType, reason: s.reason, detail: s.detail })),
      graph: { opset: first.opset, lowered: first.lowered },
      ranges: rangesOf(base),
      calibrationMs: f.mode === "static" ? staticCalibrationMs : 0,
      quantizationMs: first.timings.quantizationMs,
    });
  }

  const passing = candidates.filter((c) => c.passed);
  let benchmarkMs = 0;
  if (requestedMode === "auto" && passing.length > 1) {
    progress(`benchmarking ${passing.length} passing candidates`);
    const tB = performance.now();
    const seq = Math.min(AUTO_BENCH_SEQ, maxLength);
    // Real tokens at the target length: the held-out texts run together, cut to `seq`.
    const text = split.validation.map((s) => s.text).join(" ");
    const enc = tokenizer.encodeBatch([text], { maxLength: seq, padding: "max_length" });
    const p50 = await measureP50(
      passing.map((c) => encodeModel(c.model)),
      enc,
      session,
      30,
    );
    passing.forEach((c, i) => {
      c.p50Ms = p50[i]!;
    });
    benchmarkMs = performance.now() - tB;
  }
  const chosen =
    passing.length > 0
      ? [...passing].sort((a, b) => (a.p50Ms ?? 0) - (b.p50Ms ?? 0))[0]
      : [...candidates].sort((a, b) => compareCandidates(a.metrics, b.metrics))[0];
  if (chosen === undefined) {
    throw new QuantdError("QUANT_FAILED", "no int8 format could be built", {
      details: { candidates: failedFormats },
    });
  }

  if (chosen.layerError.length === 0) {
    // The fallback ranks only when it has to; the report wants the per-layer error of the result anyway.
    const tL = performance.now();
    chosen.layerError = await measureLayerErrors(
      fp32,
      chosen.model,
      sensitivityTargets(fp32, chosen.quantizedNodes),
      probe.batches,
      { session },
    );
    fallbackMs += performance.now() - tL;
  }
  const isStatic = chosen.mode === "static";
  const lengths: LengthSets = {
    calibration: lengthHistogram(calib.lengths),
    validation: lengthHistogram(validator.lengths),
    ...(opts.liveLengths !== undefined ? { live: opts.liveLengths } : {}),
  };
  const coverage: LengthCoverage = isStatic
    ? { maxTokens: lengths.calibration.max, basis: "calibration" }
    : { maxTokens: lengths.validation.max, basis: "validation" };
  const report: QuantizeReport = {
    schema: REPORT_SCHEMA,
    createdAt: new Date().toISOString(),
    outcome: chosen.passed ? "written" : "gate-not-met",
    versions: { quantd: pkg.version, onnxruntime: ORT_VERSION },
    model: { fp32: fp32Facts },
    requestedMode,
    mode: chosen.mode,
    ...(chosen.method !== undefined ? { method: chosen.method } : {}),
    ...(chosen.format !== undefined ? { format: chosen.format } : {}),
    options: {
      perChannel,
      reduceRange,
      quantizeEmbeddings: defaults.quantizeEmbeddings,
      quantizeAttentionMatMuls: isStatic && defaults.quantizeAttentionMatMuls,
      exclude: userExclude,
    },
    samples: {
      source: calibName,
      validationSource: opts.validate ?? calibName,
      available: split.available,
      calibration: isStatic ? split.calibration.length : 0,
      validation: split.validation.length,
      truncated: { calibration: isStatic ? calib.truncated : 0, validation: validator.truncated },
      maxSequenceLength: maxLength,
      split: split.line,
      lengths,
    },
    coverage,
    gate: { ...gate, passed: chosen.passed, failures: chosen.failures },
    metrics: chosen.metrics,
    ranges: chosen.ranges,
    layerError: chosen.layerError,
    keptFp32: keptNodes(fp32, userExclude, chosen),
    skipped: chosen.skipped,
    graph: chosen.graph,
    ...(requestedMode === "auto"
      ? {
          auto: {
            why:
              opts.autoCandidates?.why ??
              "no board profile given: both static forms (uint8 activations) and dynamic",
            decision: autoDecision(chosen, passing, Math.min(AUTO_BENCH_SEQ, maxLength)),
          },
        }
      : {}),
    fallback: { budget, trials: chosen.trials, methods: chosen.methodTrials },
    candidates: [
      ...candidates.map(
        (c): CandidateEntry => ({
          mode: c.mode,
          ...(c.method !== undefined ? { method: c.method } : {}),
          ...(c.format !== undefined ? { format: c.format } : {}),
          ...(c.activations !== undefined ? { activations: c.activations } : {}),
          agreement: c.metrics.agreement,
          agreementLower: c.metrics.agreementLower,
          meanAbsLogitDiff: c.metrics.meanAbsLogitDiff,
          passed: c.passed,
          ...(c.p50Ms !== undefined ? { p50Ms: c.p50Ms } : {}),
          chosen: c === chosen && c.passed,
          ...(c !== chosen && c.passed ? { note: "slower than the chosen format" } : {}),
          ...(!c.passed ? { note: c.failures.join("; ") } : {}),
        }),
      ),
      ...failedFormats,
    ],
    timings: {
      calibrationMs: isStatic ? chosen.calibrationMs : 0,
      quantizationMs: chosen.quantizationMs,
      validationMs,
      fallbackMs,
      benchmarkMs,
      totalMs: 0,
    },
    peakRssBytes: 0,
    validation: validator.summary(),
    warnings: [...split.warnings, ...lengthWarnings(lengths, coverage)],
  };

  const finish = async (): Promise<void> => {
    report.timings.totalMs = performance.now() - t0;
    report.peakRssBytes = peakRssBytes();
    if (opts.report !== undefined) await writeReport(opts.report, report);
  };

  if (!chosen.passed) {
    await finish();
    const m = chosen.metrics;
    throw new QuantdError(
      "GATE_NOT_MET",
      `no int8 candidate met the gate of ${(gate.minAgreement * 100).toFixed(2)} % agreement; best: ` +
        `${describeFormat(chosen)} with agreement ${describeAgreement(m)} (mean |logit diff| ${m.meanAbsLogitDiff.toFixed(4)}) ` +
        `after ${chosen.trials.length} fallback trial(s)` +
        // A task's own checks (mean cosine, Pearson) fail a candidate whose agreement passes: say which.
        (m.task?.checks.some((c) => !c.passed)
          ? ` (${m.task.checks
              .filter((c) => !c.passed)
              .map((c) => `${c.name} ${c.value.toFixed(4)} is below ${c.min}`)
              .join("; ")})`
          : "") +
        `; nothing written at ${opts.out}`,
      {
        details: {
          best: {
            mode: chosen.mode,
            ...(chosen.method !== undefined ? { method: chosen.method } : {}),
            ...(chosen.format !== undefined ? { format: chosen.format } : {}),
            n: m.n,
            agreement: m.agreement,
            agreementLower: m.agreementLower,
            maxAbsLogitDiff: m.maxAbsLogitDiff,
            meanAbsLogitDiff: m.meanAbsLogitDiff,
            ...(m.accuracyDrop !== undefined ? { accuracyDrop: m.accuracyDrop } : {}),
            keptFp32: chosen.keptSensitive.map((k) => k.node),
          },
          gate: gate.minAgreement,
          trials: chosen.trials.length,
          failures: chosen.failures,
          ...(opts.report !== undefined ? { report: opts.report } : {}),
        },
      },
    );
  }

  progress(`writing ${opts.out}`);
  await saveModel(chosen.model, opts.out);
  const int8Facts = await describeFile(opts.out);
  report.model.int8 = int8Facts;
  report.model.sizeRatio = int8Facts.bytes / (fp32Facts.bytes + externalBytes);
  await finish();
  return { out: resolve(opts.out), report };
}
