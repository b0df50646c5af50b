/**
 * The candidates of a quantization run: each int8 format asked for is built,
 * validated against fp32 and, when it misses the gate, sent through the
 * fallback (other calibration methods first, then nodes kept in fp32). The
 * second stage of `runQuantization`; the third picks among what it returns.
 * `--mode auto` validates its builds fastest first and leaves what is slower
 * than a passing one unvalidated ({@link validateInLatencyOrder}).
 */
import { isQuantdError, QuantdError } from "../errors.ts";
import type { ModelProto } from "../onnx/types.ts";
import type { BatchEncoding } from "../runtime/tokenizer.ts";
import type { SessionOptions } from "../runtime/types.ts";
import { tryBiasCorrection } from "./bias-correction.ts";
import { checkGate, compareCandidates, type GateMetrics, type GateSpec } from "./gate.ts";
import { trialFigures, tryTensorMethods, type ValidatedBuild } from "./method-mix.ts";
import type { CalibrationMethod } from "./methods.ts";
import { type ActivationType, describeWeightOnly, type QuantizeMode, type StaticFormat } from "./plan.ts";
import { planningGraph, type QuantizeResult, quantizeModel, requantize } from "./quantize.ts";
import type {
  BiasCorrectionTrial,
  CandidateEntry,
  FallbackTrial,
  GraphChanges,
  LayerErrorEntry,
  MethodTrial,
  SkippedNodeEntry,
  TensorMethodTrial,
  TensorRangeEntry,
} from "./report.ts";
import { type FallbackResult, measureLayerErrors, runFallback, sensitivityTargets } from "./sensitivity.ts";

/** One format to build: a mode and, for static, how it is calibrated and written. */
export interface FormatChoice {
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

/** Calibration methods the fallback tries, in order, before keeping any node in fp32. */
const FALLBACK_METHODS: readonly CalibrationMethod[] = ["percentile", "mse", "entropy"];

/** One int8 format tried, with its fallback history. */
export interface Candidate extends FormatChoice {
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
  /** Builds with a calibration method per tensor, tried after the methods. */
  tensorMethodTrials: TensorMethodTrial[];
  /** The build with its biases corrected, tried after the methods (absent when not tried). */
  biasCorrectionTrial?: BiasCorrectionTrial;
  skipped: SkippedNodeEntry[];
  /** Nodes whose weight is int8 on disk but that compute in fp32 (weight-only targets), with what the report says. */
  weightOnly: SkippedNodeEntry[];
  /** What was done to the graph before quantizing it (opset upgrade, contrib ops lowered). */
  graph: GraphChanges;
  ranges: Record<string, TensorRangeEntry>;
  calibrationMs: number;
  quantizationMs: number;
  p50Ms?: number;
}

/** How every candidate of a run is built (resolved from the run's options). */
export interface BuildSettings {
  gate: GateSpec;
  /** Fallback rebuilds allowed per candidate format. */
  budget: number;
  /** Nodes the user excluded. */
  exclude: readonly string[];
  perChannel: boolean;
  reduceRange: boolean;
  /** Static calibration method. */
  method: CalibrationMethod;
  /** How static MatMuls are written. */
  format: StaticFormat;
  session: SessionOptions;
}

/** What the candidates are built from and judged by. */
export interface CandidateInputs {
  fp32: ModelProto;
  /** Calibration batches (static builds). */
  calibration: readonly BatchEncoding[];
  /** Batches the sensitivity probe runs. */
  probe: readonly BatchEncoding[];
  /** Validates a candidate against fp32 on the held-out samples. */
  validate(model: ModelProto, mode: QuantizeMode): Promise<GateMetrics>;
  progress(line: string): void;
}

/** What {@link buildCandidates} and {@link validateInLatencyOrder} return. */
export interface BuiltCandidates {
  /** Candidates validated (and, when they missed the gate, sent through the fallback). */
  candidates: Candidate[];
  /** Formats that could not be built (auto mode goes on without them). */
  failed: CandidateEntry[];
  /**
   * Formats built and timed but not validated: slower than a candidate that
   * had already passed, so they could not have been chosen.
   */
  notValidated: CandidateEntry[];
  /** Time spent in the fallback (methods, rebuilds and their validations), ms. */
  fallbackMs: number;
}

/** One format's first build, not validated yet. */
export interface FormatBuild {
  format: FormatChoice;
  result: QuantizeResult;
}

/** What {@link buildFormats} returns: the first build of every format that could be built. */
export interface BuiltFormats {
  builds: FormatBuild[];
  /** Formats that could not be built (auto mode goes on without them). */
  failed: CandidateEntry[];
  /** Calibration ranges computed so far, by method (the fallback's method trials reuse them). */
  ranges: RangeCache;
}

/** The mode and format fields of a candidate, for a report entry or an error's details. */
export function formatFields(c: FormatChoice): {
  mode: QuantizeMode;
  method?: CalibrationMethod;
  format?: StaticFormat;
  activations?: ActivationType;
} {
  return {
    mode: c.mode,
    ...(c.method !== undefined ? { method: c.method } : {}),
    ...(c.format !== undefined ? { format: c.format } : {}),
    ...(c.activations !== undefined ? { activations: c.activations } : {}),
  };
}

/** `static/minmax/qdq`, `static/minmax/fused/s8s8`, `dynamic`. */
export function describeFormat(c: {
  mode: QuantizeMode;
  method?: string;
  format?: string;
  activations?: string;
}): string {
  // uint8 activations (U8S8) are the default and go unnamed; S8S8 says so.
  const pairing = c.activations === "int8" ? "s8s8" : undefined;
  return [c.mode, c.method, c.format, pairing].filter((x) => x !== undefined).join("/");
}

/** The formats a run builds: what `--mode` names, or for `auto` the board profile's (or the default) list. */
export function formatsToTry(
  requested: QuantizeMode | "auto",
  s: BuildSettings,
  activations: ActivationType | undefined,
  auto: readonly AutoCandidate[] | undefined,
): FormatChoice[] {
  const staticChoice = (format: StaticFormat, act: ActivationType): FormatChoice => ({
    mode: "static",
    method: s.method,
    format,
    activations: act,
  });
  if (requested === "auto") {
    return (auto ?? DEFAULT_AUTO_CANDIDATES).map((c) =>
      c.mode === "static"
        ? staticChoice(c.format ?? s.format, c.activations ?? "uint8")
        : { mode: "dynamic" },
    );
  }
  return requested === "static" ? [staticChoice(s.format, activations ?? "uint8")] : [{ mode: "dynamic" }];
}

/**
 * Calibration ranges a run has computed, by method: both static formats (and
 * the fallback's method trials) share one calibration pass per method.
 */
export class RangeCache {
  readonly byMethod = new Map<CalibrationMethod, QuantizeResult["ranges"]>();
  /** Calibration time of the first static build (what the report shows). */
  calibrationMs = 0;
}

/**
 * The first build of every format, in order, none validated yet. In auto mode
 * a format that cannot be built is recorded and the others go on.
 *
 * @throws QUANT_* from the quantizer (outside auto mode), USAGE always
 */
export async function buildFormats(
  formats: readonly FormatChoice[],
  inputs: CandidateInputs,
  settings: BuildSettings,
  autoMode: boolean,
): Promise<BuiltFormats> {
  const out: BuiltFormats = { builds: [], failed: [], ranges: new RangeCache() };
  for (const f of formats) {
    inputs.progress(`quantizing (${describeFormat(f)})`);
    try {
      const result = await buildFormat(
        f,
        f.method ?? settings.method,
        inputs.fp32,
        inputs.calibration,
        settings,
        out.ranges,
      );
      out.builds.push({ format: f, result });
    } catch (err) {
      // In auto mode one format failing must not sink the other.
      if (!autoMode || (isQuantdError(err) && err.code === "USAGE")) throw err;
      out.failed.push(failedEntry(f, err));
    }
  }
  return out;
}

/**
 * Validates every build, in order, each sent through the fallback when it
 * misses the gate (`--mode static|dynamic`, and `auto --validate-all`).
 */
export async function buildCandidates(
  built: BuiltFormats,
  inputs: CandidateInputs,
  settings: BuildSettings,
): Promise<BuiltCandidates> {
  const out: BuiltCandidates = { candidates: [], failed: built.failed, notValidated: [], fallbackMs: 0 };
  for (const b of built.builds)
    out.candidates.push(await validateBuild(b, built.ranges, inputs, settings, out));
  return out;
}

/**
 * `--mode auto`'s validation: the builds in the order of their measured
 * latency (`p50Ms[i]` is `built.builds[i]`'s), fastest first, each validated
 * and sent through the fallback when it misses the gate, until one passes as
 * built (or with other calibration ranges: the same graph, the same
 * latency). Auto keeps the fastest candidate that meets the gate, so a build
 * at least as slow as one that passed can never be chosen: it is left
 * unvalidated, and the report says which format passed first. A pass that
 * needed nodes kept in fp32 is slower than its build was timed, so the next
 * builds are still validated (the choice then times the passing ones again).
 */
export async function validateInLatencyOrder(
  built: BuiltFormats,
  p50Ms: readonly number[],
  inputs: CandidateInputs,
  settings: BuildSettings,
): Promise<BuiltCandidates> {
  const out: BuiltCandidates = { candidates: [], failed: built.failed, notValidated: [], fallbackMs: 0 };
  const order = built.builds.map((_, i) => i).sort((a, b) => p50Ms[a]! - p50Ms[b]!);
  // Filled in latency order, reported in the order the formats were asked for.
  const validated: (Candidate | undefined)[] = [];
  const skipped: (CandidateEntry | undefined)[] = [];
  let passedFirst: { label: string; p50Ms: number } | undefined;
  for (const i of order) {
    const b = built.builds[i]!;
    const p50 = p50Ms[i]!;
    if (passedFirst !== undefined && p50 >= passedFirst.p50Ms) {
      skipped[i] = {
        ...formatFields(b.format),
        passed: false,
        chosen: false,
        p50Ms: p50,
        validated: false,
        note: `not validated: ${passedFirst.label} passed first`,
      };
      continue;
    }
    const c = await validateBuild(b, built.ranges, inputs, settings, out);
    const sameGraph = c.keptSensitive.length === 0;
    if (sameGraph) c.p50Ms = p50;
    validated[i] = c;
    if (c.passed && sameGraph) passedFirst ??= { label: describeFormat(c), p50Ms: p50 };
  }
  out.candidates = validated.filter((c) => c !== undefined);
  out.notValidated = skipped.filter((c) => c !== undefined);
  return out;
}

/** One build validated and, when it misses the gate, improved by the fallback (its time added to `out`). */
async function validateBuild(
  b: FormatBuild,
  ranges: RangeCache,
  inputs: CandidateInputs,
  settings: BuildSettings,
  out: BuiltCandidates,
): Promise<Candidate> {
  inputs.progress(`validating (${describeFormat(b.format)})`);
  const metrics = await inputs.validate(b.result.model, b.format.mode);
  const t = performance.now();
  const candidate = await improveCandidate(b.format, { result: b.result, metrics }, inputs, settings, ranges);
  out.fallbackMs += performance.now() - t;
  return candidate;
}

/** The report entry of a format that could not be built. */
function failedEntry(f: FormatChoice, err: unknown): CandidateEntry {
  return {
    ...formatFields(f),
    agreement: 0,
    meanAbsLogitDiff: Number.POSITIVE_INFINITY,
    passed: false,
    chosen: false,
    note: QuantdError.from(err, "QUANT_FAILED").toLine(),
  };
}

/** One build of a format: static with `method`'s ranges (computed once per run and method), or dynamic. */
async function buildFormat(
  f: FormatChoice,
  method: CalibrationMethod,
  fp32: ModelProto,
  calibration: readonly BatchEncoding[],
  s: BuildSettings,
  ranges: RangeCache,
): Promise<QuantizeResult> {
  const common = { perChannel: s.perChannel, reduceRange: s.reduceRange, exclude: s.exclude };
  if (f.mode === "dynamic") return quantizeModel(fp32, { type: "dynamic", ...common });
  const known = ranges.byMethod.get(method);
  const result = await quantizeModel(fp32, {
    type: "static",
    method,
    format: f.format ?? s.format,
    activations: f.activations ?? "uint8",
    ...common,
    ...(known !== undefined ? { ranges: known } : { calibration }),
  });
  if (known === undefined) {
    if (ranges.byMethod.size === 0) ranges.calibrationMs = result.timings.calibrationMs;
    ranges.byMethod.set(method, result.ranges);
  }
  return result;
}

/**
 * A validated build of a format, after the fallback when it missed the gate,
 * cheapest first: other calibration methods for the whole model
 * ({@link tryMethods}), a method per tensor (`method-mix.ts`) and the bias
 * correction of the best of those (`bias-correction.ts`) cost time and no
 * bytes; then nodes kept in fp32 (`runFallback`, its rebuilds keeping the
 * corrections), the best estimated gain per byte first. Each trial is
 * recorded with what it bought.
 */
async function improveCandidate(
  f: FormatChoice,
  built: ValidatedBuild,
  inputs: CandidateInputs,
  s: BuildSettings,
  ranges: RangeCache,
): Promise<Candidate> {
  const label = describeFormat(f);
  const method = f.method ?? s.method;
  const rank = (result: QuantizeResult) => {
    const targets = sensitivityTargets(
      inputs.fp32,
      result.plan.quantized.map((t) => t.node),
    );
    return (model: ModelProto) =>
      measureLayerErrors(inputs.fp32, model, targets, inputs.probe, { session: s.session });
  };
  const validate = (model: ModelProto) => inputs.validate(model, f.mode);
  const tried =
    f.mode === "static" && s.budget > 0 && !checkGate(built.metrics, s.gate).passed
      ? await tryMethods({ ...built, method }, s.gate, async (m) => {
          inputs.progress(`fallback (${label}): calibrating with ${m} instead`);
          const alt = await buildFormat(f, m, inputs.fp32, inputs.calibration, s, ranges);
          return { result: alt, metrics: await validate(alt.model) };
        })
      : { start: { ...built, method }, trials: [], builds: new Map<CalibrationMethod, ValidatedBuild>() };
  const start = tried.start;
  const mixed =
    tried.trials.length > 0 && !checkGate(start.metrics, s.gate).passed
      ? await tryTensorMethods(start, tried.builds, s.gate, {
          rank: rank(start.result),
          rebuild: (r) => {
            inputs.progress(`fallback (${label}): a calibration method per tensor`);
            return requantize(inputs.fp32, { options: start.result.options, ranges: r }, []);
          },
          validate,
        })
      : { best: start, trials: [] };
  const corrected =
    tried.trials.length > 0 && !checkGate(mixed.best.metrics, s.gate).passed
      ? await correctBiases(mixed.best, label, inputs, s, validate)
      : { best: mixed.best };
  const base = corrected.best.result;
  const builds = new Map<ModelProto, QuantizeResult>([[base.model, base]]);
  const fb = await runFallback(
    { model: base.model, metrics: corrected.best.metrics },
    {
      rebuild: async (keep) => {
        inputs.progress(`fallback (${label}): keeping ${keep.length} node(s) in fp32`);
        const r = await requantize(inputs.fp32, base, keep);
        builds.set(r.model, r);
        return r.model;
      },
      validate,
      rank: rank(base),
    },
    { gate: s.gate, budget: s.budget, ignore: s.exclude, weightReaders: base.plan.weightReaders },
  );
  const best = builds.get(fb.best.model) ?? base;
  return candidateOf(
    f,
    { first: built.result, base, best, method: start.method },
    fb,
    {
      methods: tried.trials,
      tensors: mixed.trials,
      ...(corrected.trial !== undefined ? { bias: corrected.trial } : {}),
    },
    s,
    ranges,
  );
}

/**
 * The fallback's bias-correction step (`bias-correction.ts`) on `start`, the
 * best build of the calibration methods: its rebuilds reuse `start`'s options
 * and ranges, so only the biases differ.
 */
function correctBiases(
  start: ValidatedBuild,
  label: string,
  inputs: CandidateInputs,
  s: BuildSettings,
  validate: (model: ModelProto) => Promise<GateMetrics>,
): Promise<{ best: ValidatedBuild; trial?: BiasCorrectionTrial }> {
  inputs.progress(`fallback (${label}): correcting biases, layer by layer`);
  const { options, ranges } = start.result;
  return tryBiasCorrection(start, planningGraph(inputs.fp32).model, inputs.calibration, s.gate, {
    rebuild: (c) => requantize(inputs.fp32, { options, ranges, biasCorrections: c }, []),
    validate,
    session: s.session,
  });
}

/** The candidate record of a format after its fallback. */
function candidateOf(
  f: FormatChoice,
  builds: { first: QuantizeResult; base: QuantizeResult; best: QuantizeResult; method: CalibrationMethod },
  fb: FallbackResult<ModelProto>,
  steps: { methods: MethodTrial[]; tensors: TensorMethodTrial[]; bias?: BiasCorrectionTrial },
  s: BuildSettings,
  ranges: RangeCache,
): Candidate {
  const verdict = checkGate(fb.best.metrics, s.gate);
  const isStatic = f.mode === "static";
  return {
    mode: f.mode,
    ...(isStatic
      ? {
          method: builds.method,
          format: f.format ?? s.format,
          ...(f.activations !== undefined ? { activations: f.activations } : {}),
        }
      : {}),
    model: fb.best.model,
    metrics: fb.best.metrics,
    passed: verdict.passed,
    failures: verdict.failures,
    keptSensitive: fb.keptFp32,
    layerError: fb.ranking,
    quantizedNodes: builds.best.plan.quantized.map((t) => t.node),
    trials: fb.trials,
    methodTrials: steps.methods,
    tensorMethodTrials: steps.tensors,
    ...(steps.bias !== undefined ? { biasCorrectionTrial: steps.bias } : {}),
    skipped: builds.best.plan.skipped
      .filter((x) => !(x.reason === "excluded" && !s.exclude.includes(x.node)))
      .map((x) => ({ node: x.node, opType: x.opType, reason: x.reason, detail: x.detail })),
    weightOnly: builds.best.plan.quantized
      .filter((t) => t.kind === "weight-only")
      .map((t) => ({
        node: t.node,
        opType: t.opType,
        reason: t.kind,
        detail: describeWeightOnly(t, s.perChannel),
      })),
    graph: { opset: builds.first.opset, lowered: builds.first.lowered },
    ranges: rangesOf(builds.base),
    calibrationMs: isStatic ? ranges.calibrationMs : 0,
    quantizationMs: builds.first.timings.quantizationMs,
  };
}

/**
 * The first step of the fallback for a static candidate that misses the gate:
 * the same model calibrated with the other methods of {@link FALLBACK_METHODS}
 * (percentile clips outliers, MSE and entropy pick the range that loses the
 * least). A method costs a calibration pass and a validation (which stops as
 * soon as it cannot pass), and not a byte of model size, so it goes before any
 * node is kept in fp32. Stops at the first that passes; otherwise the best
 * (highest bound) is where the next step starts, and every method's build is
 * what the per-tensor step mixes.
 */
async function tryMethods(
  first: ValidatedBuild & { method: CalibrationMethod },
  gate: GateSpec,
  build: (m: CalibrationMethod) => Promise<ValidatedBuild>,
): Promise<{
  start: ValidatedBuild & { method: CalibrationMethod };
  trials: MethodTrial[];
  builds: Map<CalibrationMethod, ValidatedBuild>;
}> {
  let start = first;
  const builds = new Map<CalibrationMethod, ValidatedBuild>([[first.method, first]]);
  const trials: MethodTrial[] = [];
  for (const m of FALLBACK_METHODS.filter((x) => x !== first.method)) {
    const t0 = performance.now();
    const alt = await build(m);
    builds.set(m, alt);
    const passed = checkGate(alt.metrics, gate).passed;
    trials.push({ method: m, ...trialFigures(alt.metrics, first.metrics, passed, performance.now() - t0) });
    if (passed || compareCandidates(alt.metrics, start.metrics) < 0) start = { ...alt, method: m };
    if (passed) break;
  }
  return { start, trials, builds };
}

/** The report's ranges of a build: each tensor's calibrated range with its scale and zero point. */
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
