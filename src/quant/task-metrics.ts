/**
 * How an int8 candidate is compared with its fp32 parent for each task, in the
 * one shape the accuracy gate judges: a count of trials and of trials where the
 * two models agree, whose one-sided Clopper–Pearson lower bound must clear the
 * gate (99.5 % by default), plus point statistics with thresholds of their own.
 *
 * | task | trial | agrees when | point checks |
 * | --- | --- | --- | --- |
 * | classification, pairs | a sample | same top-1 label | — |
 * | token classification | a non-special token | same top-1 label | — |
 * | multi-label | a (sample, label) decision | same side of the label's threshold | — |
 * | embeddings | a sample | cosine to fp32 ≥ 0.98 | mean cosine ≥ 0.99, top-5 neighbour overlap ≥ 0.9 |
 * | regression | a sample | \|int8 − fp32\| ≤ 5 % of fp32's spread (p95 − p5) | Pearson ≥ 0.99 |
 *
 * Why these defaults mean "indistinguishable for the user": a label or entity
 * that differs is visible, so those count flips. A vector is consumed through
 * similarities: at cosine 0.98 to its fp32 self, a vector's similarity to any
 * other moves by at most 0.2 (‖a − a'‖ = √(2 − 2·0.98)), well inside the gaps
 * a semantic search ranks on, and a bound on the share of samples above it is
 * the worst-1 % requirement made rigorous (≥ 99.5 % of samples, at 95 %); the
 * mean cosine and neighbour overlap catch a uniform drift and a reordering of
 * results that the per-sample test would pass. A regression value moving by 5 %
 * of the range its outputs span does not change a threshold decision a user
 * tuned on fp32 except at the edge; Pearson ≥ 0.99 keeps the ranking.
 *
 * Tokens of one sentence, and labels of one sample, are not independent trials:
 * their bound is tighter than a per-sample one would be. It is reported as
 * such (`unit`), and the per-sample figure (every token, or every label, of
 * the sample agrees) is reported beside it.
 */
import { percentile } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import { cosine } from "../runtime/pooling.ts";
import { neighbourOverlap, pearson } from "../runtime/stats.ts";
import type { TaskKind, TaskSpec } from "../runtime/task.ts";
import type { TaskOutputs } from "../runtime/task-model.ts";
import { clopperPearsonLower, DEFAULT_CONFIDENCE } from "./confidence.ts";
import { argmaxRows, compareLogits, type GateMetrics, type LogitMatrix } from "./gate.ts";

/** The per-task thresholds, with their defaults in {@link DEFAULT_TASK_THRESHOLDS}. */
export interface TaskThresholds {
  /** Embeddings: a sample agrees when its cosine to fp32 is at least this. */
  sampleCosine: number;
  /** Embeddings: smallest accepted mean cosine. */
  meanCosine: number;
  /** Embeddings: neighbours compared per sample. */
  neighbours: number;
  /** Embeddings: smallest accepted mean overlap of the top-k neighbour sets. */
  neighbourOverlap: number;
  /** Regression: a sample agrees when |Δ| is at most this fraction of fp32's p95 − p5. */
  regressionTolerance: number;
  /** Regression: smallest accepted Pearson correlation. */
  pearson: number;
}

/** See the module comment for why. */
export const DEFAULT_TASK_THRESHOLDS: Readonly<TaskThresholds> = {
  sampleCosine: 0.98,
  meanCosine: 0.99,
  neighbours: 5,
  neighbourOverlap: 0.9,
  regressionTolerance: 0.05,
  pearson: 0.99,
};

/** One point statistic and its threshold. */
export interface TaskCheck {
  name: string;
  value: number;
  /** The value must be at least `min`. */
  min: number;
  passed: boolean;
}

/** What a task's comparison adds to {@link GateMetrics}. */
export interface TaskFigures {
  kind: TaskKind;
  /** What one trial of the bound is. */
  unit: "sample" | "token" | "label decision";
  /** Samples compared. */
  samples: number;
  /** Samples whose every trial agrees (= agreement for per-sample units). */
  sampleAgreement: number;
  /** Task statistics: mean and worst-1 % cosine, overlap, Pearson, max abs error, … */
  figures: Record<string, number>;
  checks: TaskCheck[];
}

/** Options of {@link compareTaskOutputs}. */
export interface CompareTaskOptions {
  confidence?: number;
  boundLevel?: number;
  thresholds?: Partial<TaskThresholds>;
  /** Class labels of the samples (classification and pairs), for accuracy. */
  labels?: readonly (number | undefined)[];
}

function matrixOf(rows: readonly Float32Array[], cols: number): LogitMatrix {
  const data = new Float32Array(rows.reduce((s, r) => s + r.length, 0));
  let at = 0;
  for (const r of rows) {
    data.set(r, at);
    at += r.length;
  }
  return { data, rows: cols === 0 ? 0 : data.length / cols, cols };
}

/** Agreement figures of `k` of `n` trials as the gate reads them. */
function proportionMetrics(
  k: number,
  n: number,
  diff: { max: number; mean: number },
  confidence: number,
  level: number,
): GateMetrics {
  const metrics: GateMetrics = {
    n,
    agreement: n === 0 ? 0 : k / n,
    disagreements: n - k,
    maxAbsLogitDiff: diff.max,
    meanAbsLogitDiff: diff.mean,
    labelled: 0,
    gateN: n,
    gateAgreements: k,
    confidence,
    agreementLower: clopperPearsonLower(k, n, level),
    // No margin: a label decision, a vector or a value has no top-2 margin (not "0 near-ties").
  };
  if (level !== confidence) metrics.boundLevel = level;
  return metrics;
}

function absDiff(a: readonly Float32Array[], b: readonly Float32Array[]): { max: number; mean: number } {
  let max = 0;
  let sum = 0;
  let count = 0;
  for (const [i, row] of a.entries()) {
    for (let j = 0; j < row.length; j++) {
      const d = Math.abs(row[j]! - b[i]![j]!);
      const dd = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
      max = Math.max(max, dd);
      sum += dd;
      count++;
    }
  }
  return { max, mean: count === 0 ? 0 : sum / count };
}

/** What one trial of each task's bound is (see the module comment's table). */
export const TRIAL_UNIT: Readonly<Record<TaskKind, TaskFigures["unit"]>> = {
  classification: "sample",
  "pair-classification": "sample",
  "token-classification": "token",
  "multi-label": "label decision",
  embedding: "sample",
  regression: "sample",
};

/** The trials of one sample and how many of them agree. */
export interface SampleTrials {
  n: number;
  agree: number;
}

/** What judging one sample's trials needs beyond its two rows. */
export interface TrialRule {
  thresholds: TaskThresholds;
  /** Regression: the largest |Δ| that agrees ({@link regressionTolerance} of the fp32 values). */
  tolerance: number;
}

/**
 * Regression's agreement tolerance: a fraction of the spread (p95 − p5) of
 * fp32's values, or of 1 when they do not spread.
 */
export function regressionTolerance(reference: readonly Float32Array[], t: TaskThresholds): number {
  const values = reference.map((r) => r[0]!);
  const spread = percentile(values, 95) - percentile(values, 5);
  return t.regressionTolerance * (spread > 0 ? spread : 1);
}

/**
 * One sample's trials (see the module comment's table): its rows of fp32 and
 * of the candidate compared as the gate counts them. Validation runs it as
 * samples come, to stop a candidate that can no longer pass.
 */
export function sampleTrials(
  task: TaskSpec,
  reference: Float32Array,
  candidate: Float32Array,
  rule: TrialRule,
): SampleTrials {
  switch (task.kind) {
    case "classification":
    case "pair-classification":
    case "token-classification": {
      const refTop = topsOf(task, reference);
      const candTop = topsOf(task, candidate);
      const agree = refTop.reduce((k, top, r) => k + (top !== -1 && top === candTop[r] ? 1 : 0), 0);
      return { n: refTop.length, agree };
    }
    case "multi-label": {
      const cuts = decisionCuts(task);
      let agree = 0;
      for (let k = 0; k < reference.length; k++) {
        if (reference[k]! >= cuts[k]! === candidate[k]! >= cuts[k]!) agree++;
      }
      return { n: reference.length, agree };
    }
    case "embedding":
      return { n: 1, agree: cosine(reference, candidate) >= rule.thresholds.sampleCosine ? 1 : 0 };
    case "regression":
      return { n: 1, agree: Math.abs(candidate[0]! - reference[0]!) <= rule.tolerance ? 1 : 0 };
  }
}

/** The top class of each of a sample's rows (one, or one per token), as the gate compares them. */
function topsOf(task: TaskSpec, row: Float32Array): Int32Array {
  return argmaxRows(matrixOf([row], task.labels.length));
}

/** A multi-label head's decision cut per label, in logits (its probability threshold, 0.5 by default). */
function decisionCuts(task: TaskSpec): number[] {
  return (task.thresholds ?? task.labels.map(() => 0.5)).map((t) => Math.log(t / (1 - t)));
}

/**
 * Of one sample's outputs in dynamic int8's two serving forms (its batch and
 * alone), the one the gate judges, trial by trial: where either form's trial
 * differs from fp32, that form's (the batch's first), else the batch's; an
 * embedding or a regression value, one trial, takes the form farther from
 * fp32 (lower cosine, larger error). A trial of the result agrees exactly
 * when it agrees in both forms, whatever the threshold the gate applies.
 */
export function worseOfForms(
  task: TaskSpec,
  reference: Float32Array,
  forms: { batched: Float32Array; alone: Float32Array },
): Float32Array {
  const { batched, alone } = forms;
  switch (task.kind) {
    case "classification":
    case "pair-classification":
    case "token-classification": {
      const cols = task.labels.length;
      const refTop = topsOf(task, reference);
      const aloneTop = topsOf(task, alone);
      const batchedTop = topsOf(task, batched);
      const out = Float32Array.from(batched);
      for (let r = 0; r < refTop.length; r++) {
        if (batchedTop[r] === refTop[r] && aloneTop[r] !== refTop[r]) {
          out.set(alone.subarray(r * cols, (r + 1) * cols), r * cols);
        }
      }
      return out;
    }
    case "multi-label": {
      const cuts = decisionCuts(task);
      const agrees = (row: Float32Array, k: number): boolean =>
        reference[k]! >= cuts[k]! === row[k]! >= cuts[k]!;
      return batched.map((x, k) => (agrees(batched, k) && !agrees(alone, k) ? alone[k]! : x));
    }
    case "embedding":
      return cosine(reference, alone) < cosine(reference, batched) ? alone : batched;
    case "regression":
      return Math.abs(alone[0]! - reference[0]!) > Math.abs(batched[0]! - reference[0]!) ? alone : batched;
  }
}

/** What every task's comparison starts from: the samples' trials, and the settings of the bound. */
interface Comparison {
  task: TaskSpec;
  reference: TaskOutputs;
  candidate: TaskOutputs;
  trials: SampleTrials[];
  confidence: number;
  level: number;
  thresholds: TaskThresholds;
  tolerance: number;
  labels?: readonly (number | undefined)[];
}

/** The task figures every comparison shares: unit, samples and the share of samples whose every trial agrees. */
function figuresOf(c: Comparison): TaskFigures {
  const unit = TRIAL_UNIT[c.task.kind];
  const samples = c.reference.rows;
  const whole = c.trials.filter((t) => t.agree === t.n).length;
  return {
    kind: c.task.kind,
    unit,
    samples,
    sampleAgreement: samples === 0 ? 0 : whole / samples,
    figures: {},
    checks: [],
  };
}

/** Agreement of `c.trials` as the gate reads it, with the logits' distance. */
function trialMetrics(c: Comparison): GateMetrics {
  const k = c.trials.reduce((s, t) => s + t.agree, 0);
  const n = c.trials.reduce((s, t) => s + t.n, 0);
  return proportionMetrics(k, n, absDiff(c.reference.data, c.candidate.data), c.confidence, c.level);
}

/** Classification, pairs and tokens: top-1 labels compared by the classifier's own comparison (margins, accuracy). */
function compareLabels(c: Comparison): GateMetrics {
  const cols = c.task.labels.length;
  const token = c.task.kind === "token-classification";
  const m = compareLogits(
    matrixOf(c.reference.data, cols),
    matrixOf(c.candidate.data, cols),
    token ? undefined : c.labels,
    { confidence: c.confidence, boundLevel: c.level },
  );
  m.task = figuresOf(c);
  if (token) m.task.figures["tokens"] = m.n;
  return m;
}

function compareMultiLabel(c: Comparison): GateMetrics {
  const m = trialMetrics(c);
  m.task = figuresOf(c);
  return m;
}

function compareEmbeddings(c: Comparison): GateMetrics {
  const t = c.thresholds;
  const cos = c.reference.data.map((r, i) => cosine(r, c.candidate.data[i]!));
  const mean = cos.reduce((s, x) => s + x, 0) / Math.max(1, cos.length);
  const overlap = neighbourOverlap(c.reference.data, c.candidate.data, t.neighbours);
  const m = trialMetrics(c);
  m.task = figuresOf(c);
  m.task.figures = {
    meanCosine: mean,
    worst1PctCosine: percentile(cos, 1),
    minCosine: Math.min(...cos),
    neighbourOverlap: overlap,
  };
  m.task.checks = [
    { name: "mean cosine", value: mean, min: t.meanCosine, passed: mean >= t.meanCosine },
    {
      name: `top-${t.neighbours} neighbour overlap`,
      value: overlap,
      min: t.neighbourOverlap,
      passed: overlap >= t.neighbourOverlap,
    },
  ];
  return m;
}

function compareRegression(c: Comparison): GateMetrics {
  const ref = c.reference.data.map((r) => r[0]!);
  const cand = c.candidate.data.map((r) => r[0]!);
  const r = pearson(ref, cand);
  const m = trialMetrics(c);
  m.task = figuresOf(c);
  m.task.figures = {
    pearson: r,
    maxAbsError: Math.max(...ref.map((v, i) => Math.abs(cand[i]! - v))),
    tolerance: c.tolerance,
  };
  m.task.checks = [
    { name: "Pearson correlation", value: r, min: c.thresholds.pearson, passed: r >= c.thresholds.pearson },
  ];
  return m;
}

/** Each task's comparison. */
const COMPARE: Readonly<Record<TaskKind, (c: Comparison) => GateMetrics>> = {
  classification: compareLabels,
  "pair-classification": compareLabels,
  "token-classification": compareLabels,
  "multi-label": compareMultiLabel,
  embedding: compareEmbeddings,
  regression: compareRegression,
};

/**
 * Compares a candidate's task outputs with fp32's on the same samples (see the module comment).
 *
 * @throws DATA_MISMATCH when the outputs do not describe the same samples
 */
export function compareTaskOutputs(
  task: TaskSpec,
  reference: TaskOutputs,
  candidate: TaskOutputs,
  opts: CompareTaskOptions = {},
): GateMetrics {
  if (
    reference.rows !== candidate.rows ||
    reference.data.some((r, i) => r.length !== candidate.data[i]?.length)
  ) {
    throw new QuantdError(
      "DATA_MISMATCH",
      "reference and candidate outputs do not describe the same samples",
    );
  }
  const confidence = opts.confidence ?? DEFAULT_CONFIDENCE;
  const thresholds = { ...DEFAULT_TASK_THRESHOLDS, ...opts.thresholds };
  const rule = {
    thresholds,
    tolerance: task.kind === "regression" ? regressionTolerance(reference.data, thresholds) : 0,
  };
  return COMPARE[task.kind]({
    task,
    reference,
    candidate,
    trials: reference.data.map((r, i) => sampleTrials(task, r, candidate.data[i]!, rule)),
    confidence,
    level: opts.boundLevel ?? confidence,
    ...rule,
    ...(opts.labels !== undefined ? { labels: opts.labels } : {}),
  });
}

/**
 * One line for a task's figures, as the CLI and reports print it:
 * `task token-classification: agreement counts tokens (4,310 over 400 samples), every token agrees on 97.5 % of samples`.
 */
export function describeTaskFigures(t: TaskFigures): string {
  return [`task ${t.kind}: agreement counts ${t.unit}s`, ...taskFigureParts(t)].join("; ");
}

/** The figures of {@link describeTaskFigures} without the task's name: `every token agrees on …`, `cosine mean …`. */
export function taskFigureParts(t: TaskFigures): string[] {
  const parts: string[] = [];
  if (t.unit !== "sample")
    parts.push(`every ${t.unit} agrees on ${(t.sampleAgreement * 100).toFixed(1)} % of ${t.samples} samples`);
  const f = t.figures;
  if (f["meanCosine"] !== undefined) {
    parts.push(
      `cosine mean ${f["meanCosine"].toFixed(4)}, worst 1 % ${f["worst1PctCosine"]!.toFixed(4)}, min ${f["minCosine"]!.toFixed(4)}`,
    );
    parts.push(`neighbour overlap ${f["neighbourOverlap"]!.toFixed(3)}`);
  }
  if (f["pearson"] !== undefined) {
    parts.push(
      `Pearson ${f["pearson"].toFixed(4)}, max |error| ${f["maxAbsError"]!.toFixed(4)} (tolerance ${f["tolerance"]!.toFixed(4)})`,
    );
  }
  const failed = t.checks.filter((c) => !c.passed).map((c) => `${c.name} below ${c.min}`);
  if (failed.length > 0) parts.push(`failed: ${failed.join(", ")}`);
  return parts;
}
