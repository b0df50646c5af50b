/**
 * Calibration method per tensor: the step of the fallback between "another
 * method for the whole model" and "keep nodes in fp32".
 *
 * When no single method passes, each method may still be the best one for
 * some tensors: percentile for an activation with a long tail, MSE or entropy
 * for one whose outliers carry meaning. The per-layer error probe
 * (`sensitivity.ts`), run on each method's build, says how much error every
 * quantized node adds under each method. A tensor's score under a method is
 * the error added by the nodes that read it (a LayerNorm output feeds Q, K and
 * V), and its estimated gain is its score under the current method minus its
 * best score. A mixed build takes each tensor's range from its best method:
 * the ranges are already computed (one calibration per method), so a trial
 * costs a rewrite and a validation and no byte of model size, which is why it
 * goes before any node is kept in fp32 (whose cost is bytes). Trials go in the
 * order of estimated gain (every trial costs the same): all tensors with a
 * gain first, then the better-scoring half, and the report lists what each
 * bought.
 *
 * Per-channel activation ranges are not among the choices: onnxruntime's int8
 * MatMul kernels (MatMulInteger, MatMulIntegerToFloat, QLinearMatMul,
 * QAttention) take one scale for the activation operand.
 */
import type { ModelProto } from "../onnx/types.ts";
import { checkGate, compareCandidates, type GateMetrics, type GateSpec } from "./gate.ts";
import type { CalibrationMethod } from "./methods.ts";
import type { QuantPlan, TensorRange } from "./plan.ts";
import type { QuantizeResult } from "./quantize.ts";
import { boughtAgainst, type LayerErrorEntry, type TensorMethodTrial, type TrialFigures } from "./report.ts";

/** One tensor moved to another method, and why. */
export interface TensorMethodChoice {
  tensor: string;
  /** The method its range comes from in the mixed build. */
  method: CalibrationMethod;
  /** The method of the build the fallback starts from. */
  from: CalibrationMethod;
  /** Estimated gain: error its readers add under `from` minus under `method`. */
  gain: number;
}

/** Quantized nodes that read each observed activation tensor. */
export function tensorReaders(plan: Pick<QuantPlan, "quantized">): Map<string, string[]> {
  const readers = new Map<string, string[]>();
  const add = (tensor: string, node: string): void => {
    readers.set(tensor, [...(readers.get(tensor) ?? []), node]);
  };
  for (const t of plan.quantized) {
    switch (t.kind) {
      case "weight-matmul":
      case "packed-attention":
        add(t.activation, t.node);
        break;
      case "attention-matmul":
        for (const i of new Set(t.inputs)) add(i, t.node);
        break;
      case "weight-only":
      case "embedding":
        break;
    }
  }
  return readers;
}

/**
 * Each tensor's best method by the error its readers add, where it beats the
 * method of `from` (ties keep `from`): the best estimated gain first. A tensor
 * is scored only under methods whose probe measured every one of its readers.
 */
export function chooseTensorMethods(
  from: CalibrationMethod,
  errors: ReadonlyMap<CalibrationMethod, readonly LayerErrorEntry[]>,
  readers: ReadonlyMap<string, readonly string[]>,
): TensorMethodChoice[] {
  const added = new Map<CalibrationMethod, Map<string, number>>();
  for (const [m, entries] of errors) {
    // Raw, not clipped at 0: a node that adds less error than its input had (a LayerNorm after it renormalizes)
    // still says which method served it better.
    added.set(m, new Map(entries.map((e) => [e.node, e.addedError])));
  }
  const score = (m: CalibrationMethod, nodes: readonly string[]): number | undefined => {
    const byNode = added.get(m);
    let sum = 0;
    for (const n of nodes) {
      const e = byNode?.get(n);
      if (e === undefined) return undefined;
      sum += e;
    }
    return sum;
  };
  const choices: TensorMethodChoice[] = [];
  for (const [tensor, nodes] of readers) {
    const current = score(from, nodes);
    if (current === undefined) continue;
    let best: { method: CalibrationMethod; score: number } = { method: from, score: current };
    for (const m of added.keys()) {
      const s = score(m, nodes);
      if (s !== undefined && s < best.score) best = { method: m, score: s };
    }
    if (best.method !== from) choices.push({ tensor, method: best.method, from, gain: current - best.score });
  }
  return choices.sort((a, b) => b.gain - a.gain || (a.tensor < b.tensor ? -1 : 1));
}

/** `base` with the ranges of the chosen tensors taken from their method's calibration. */
export function mixRanges(
  base: ReadonlyMap<string, TensorRange>,
  byMethod: ReadonlyMap<CalibrationMethod, ReadonlyMap<string, TensorRange>>,
  choices: readonly TensorMethodChoice[],
): Map<string, TensorRange> {
  const out = new Map(base);
  for (const c of choices) {
    const r = byMethod.get(c.method)?.get(c.tensor);
    if (r !== undefined) out.set(c.tensor, r);
  }
  return out;
}

/** A no-byte trial's figures and what it bought against `from`. */
export function trialFigures(
  metrics: GateMetrics,
  from: GateMetrics,
  passed: boolean,
  ms: number,
): TrialFigures {
  return {
    agreement: metrics.agreement,
    agreementLower: metrics.agreementLower,
    meanAbsLogitDiff: metrics.meanAbsLogitDiff,
    passed,
    ms,
    bought: boughtAgainst(metrics, from, 0),
  };
}

/** Most mixed builds tried per candidate (all tensors with a gain, then the better half); like the methods, outside the trial budget. */
const MAX_MIX_TRIALS = 2;

/** What the mix step needs from its caller. */
export interface MixHooks {
  /** Per-layer error of a build, worst first (the fallback's probe). */
  rank(model: ModelProto): Promise<LayerErrorEntry[]>;
  /** Rebuilds the start with these ranges (a rewrite, no calibration). */
  rebuild(ranges: ReadonlyMap<string, TensorRange>): Promise<QuantizeResult>;
  validate(model: ModelProto): Promise<GateMetrics>;
}

/** A build and its figures. */
export interface ValidatedBuild {
  result: QuantizeResult;
  metrics: GateMetrics;
}

/**
 * The mix step (see the module comment): from `start` (calibrated with
 * `method`) and the builds of the other methods, mixed builds in the order of
 * their estimated gain, stopping at the first that passes. Returns the best
 * build seen (the start when no mix beat it) and the trials.
 */
export async function tryTensorMethods(
  start: ValidatedBuild & { method: CalibrationMethod },
  others: ReadonlyMap<CalibrationMethod, ValidatedBuild>,
  gate: GateSpec,
  hooks: MixHooks,
): Promise<{ best: ValidatedBuild; trials: TensorMethodTrial[] }> {
  const errors = new Map<CalibrationMethod, LayerErrorEntry[]>([
    [start.method, await hooks.rank(start.result.model)],
  ]);
  for (const [m, b] of others) if (m !== start.method) errors.set(m, await hooks.rank(b.result.model));
  const choices = chooseTensorMethods(start.method, errors, tensorReaders(start.result.plan));
  const byMethod = new Map([...others].map(([m, b]) => [m, b.result.ranges] as const));
  const sets = [choices, choices.slice(0, Math.floor(choices.length / 2))]
    .filter((s) => s.length > 0)
    .slice(0, MAX_MIX_TRIALS);
  let best: ValidatedBuild = start;
  let used: TensorMethodTrial | undefined;
  const trials: TensorMethodTrial[] = [];
  for (const set of sets) {
    const t0 = performance.now();
    const result = await hooks.rebuild(mixRanges(start.result.ranges, byMethod, set));
    const metrics = await hooks.validate(result.model);
    const passed = checkGate(metrics, gate).passed;
    const trial: TensorMethodTrial = {
      tensors: set.map((c) => ({ tensor: c.tensor, method: c.method, gain: c.gain })),
      ...trialFigures(metrics, start.metrics, passed, performance.now() - t0),
    };
    trials.push(trial);
    if (passed || compareCandidates(metrics, best.metrics) < 0) {
      best = { result, metrics };
      used = trial;
    }
    if (passed) break;
  }
  if (used !== undefined) used.used = true;
  return { best, trials };
}
