/**
 * The accuracy gate: does an int8 candidate behave like its fp32 parent on
 * held-out samples? No labels are needed — the fp32 model is the oracle — so the
 * gate works on whatever a board collected. Labels, where a sample has one, add
 * accuracy figures (and an optional accuracy-drop bound).
 *
 * The math here runs on logits already computed, so the fp32 logits of the
 * validation set are computed once and reused for every candidate the fallback
 * tries.
 */
import { QuantdError } from "../errors.ts";
import { clopperPearsonLower, DEFAULT_CONFIDENCE, samplesToCertify } from "./confidence.ts";
import type { TaskFigures } from "./task-metrics.ts";

/** Logits of `rows` samples over `cols` classes, row-major. */
export interface LogitMatrix {
  readonly data: Float32Array;
  readonly rows: number;
  readonly cols: number;
}

/** How closely a candidate follows the reference on one sample set. */
export interface GateMetrics {
  /** Samples compared. */
  n: number;
  /** Fraction of samples whose top-1 class is the same in both models (0..1). */
  agreement: number;
  /** Samples whose top-1 class differs. */
  disagreements: number;
  /** Largest |candidate − reference| over every logit. */
  maxAbsLogitDiff: number;
  /** Mean |candidate − reference| over every logit. */
  meanAbsLogitDiff: number;
  /** Samples that carry a label (accuracy figures use only these). */
  labelled: number;
  /** Reference (fp32) accuracy on the labelled samples, when there are any. */
  accuracyReference?: number;
  /** Candidate (int8) accuracy on the labelled samples, when there are any. */
  accuracyCandidate?: number;
  /** `accuracyReference − accuracyCandidate` (a fraction; positive means the candidate lost accuracy). */
  accuracyDrop?: number;
  /** Samples the gate counts: `n`, less the near-ties when {@link GateSpec.ignoreMargin} is set. */
  gateN: number;
  /** Samples among those that agree. */
  gateAgreements: number;
  /** Confidence level of {@link GateMetrics.agreementLower} (0..1). */
  confidence: number;
  /** One-sided Clopper–Pearson lower bound of the agreement the gate counts, at `confidence`. */
  agreementLower: number;
  /**
   * Flips split by fp32's own top-2 margin (softmax probability of its best
   * class minus the second's). Absent where no top-2 margin is defined
   * (multi-label decisions, embeddings, regression values): not measured, not 0.
   */
  margin?: MarginView;
  /**
   * Confidence level the bound was computed at, when validation looked at the
   * gate more than once (early stopping spends the confidence among the looks:
   * see `lookLevels`), so that `agreementLower` holds at `confidence` whenever
   * validation stopped. Absent: `confidence` itself.
   */
  boundLevel?: number;
  /** Samples the set held, when validation stopped before the end of it. */
  planned?: number;
  /** Why validation stopped early: the bound had `passed`, or could no longer pass (`failed`). */
  stopped?: "passed" | "failed";
  /**
   * Dynamic int8 (ranges taken per batch): flips in each form serving runs a
   * sample in, over the samples run. The gate counted a sample as agreeing
   * only when it agreed in both (see `validate.ts`). Absent for other candidates.
   */
  servingForms?: ServingForms;
  /**
   * The task's own figures, for a model other than a single-text classifier:
   * what a trial is (`n` counts tokens or label decisions there) and the point
   * checks (mean cosine, Pearson, …) the gate also applies (see `task-metrics.ts`).
   */
  task?: TaskFigures;
}

/** Dynamic int8's flips in each form serving runs a sample in (another task's: samples with a trial that differs). */
export interface ServingForms {
  /** Samples whose top-1 class differs from fp32's in their serving batch (one token length, up to 16). */
  batchedFlips: number;
  /** Samples whose top-1 class differs run alone, as an idle server runs them. */
  aloneFlips: number;
}

/** Where flips happen: on near-ties no int8 model can keep, or on inputs fp32 is sure of. */
export interface MarginView {
  /** Margin below which an input counts as a near-tie. */
  threshold: number;
  /** Samples whose fp32 margin is below `threshold`. */
  nearTies: number;
  /** Flips among them. */
  nearTieFlips: number;
  /** Flips on the other (confident) samples. */
  confidentFlips: number;
  /** True when the gate left the near-ties out (`--ignore-margin`). */
  ignored: boolean;
}

/** Margin of the near-tie view when the gate does not ignore near-ties. */
export const DEFAULT_NEAR_TIE_MARGIN = 0.01;

/** Options of {@link compareLogits} beyond the samples themselves. */
export interface CompareOptions {
  /** @defaultValue {@link DEFAULT_CONFIDENCE} */
  confidence?: number;
  /** Leave samples whose fp32 margin is below this out of the gate's count. @defaultValue 0 (count all) */
  ignoreMargin?: number;
  /** Level of the bound (see {@link GateMetrics.boundLevel}). @defaultValue `confidence` */
  boundLevel?: number;
}

/** The thresholds a candidate must meet. */
export interface GateSpec {
  /** Smallest accepted top-1 agreement, a fraction. @defaultValue {@link DEFAULT_GATE_AGREEMENT} */
  minAgreement: number;
  /** Largest accepted accuracy drop (fraction), checked only when labels exist. @defaultValue no bound */
  maxAccuracyDrop?: number;
  /** Confidence level of the agreement's lower bound. @defaultValue {@link DEFAULT_CONFIDENCE} */
  confidence?: number;
  /**
   * What must clear `minAgreement`: the lower confidence bound (`bound`), or,
   * by explicit choice, the point estimate (`point`), which a small validation
   * set passes by luck. @defaultValue "bound"
   */
  decideOn?: GateDecision;
  /** fp32 top-2 margin under which a sample is a near-tie the gate leaves out. @defaultValue 0 (none left out) */
  ignoreMargin?: number;
}

/** What the gate compares with its threshold. */
export type GateDecision = "bound" | "point";

/** The default gate: 99.5 % top-1 agreement with fp32. */
export const DEFAULT_GATE_AGREEMENT = 0.995;

/** Outcome of {@link checkGate}. */
export interface GateVerdict {
  passed: boolean;
  /** One sentence per unmet threshold (empty when passed). */
  failures: string[];
}

/**
 * Index of the largest value of each row. Ties go to the lowest index (as
 * numpy's argmax) so both models break ties the same way; NaN never wins, and a
 * row of NaN yields -1, which agrees with nothing.
 */
export function argmaxRows(m: LogitMatrix): Int32Array {
  const out = new Int32Array(m.rows);
  for (let r = 0; r < m.rows; r++) {
    let best = -1;
    let bestValue = Number.NEGATIVE_INFINITY;
    for (let c = 0; c < m.cols; c++) {
      const v = m.data[r * m.cols + c]!;
      if (v > bestValue || (best === -1 && v === bestValue)) {
        best = c;
        bestValue = v;
      }
    }
    out[r] = best;
  }
  return out;
}

/**
 * Compares candidate logits with reference logits, sample by sample.
 *
 * @param labels - per-sample class labels; `undefined` entries (unlabelled samples) are left out of accuracy
 * @throws DATA_MISMATCH when the matrices (or labels) do not describe the same samples
 */
export function compareLogits(
  reference: LogitMatrix,
  candidate: LogitMatrix,
  labels?: readonly (number | undefined)[],
  options: CompareOptions = {},
): GateMetrics {
  if (reference.rows !== candidate.rows || reference.cols !== candidate.cols) {
    throw new QuantdError(
      "DATA_MISMATCH",
      `logits shapes differ: reference [${reference.rows}, ${reference.cols}], candidate [${candidate.rows}, ${candidate.cols}]`,
    );
  }
  if (labels !== undefined && labels.length !== reference.rows) {
    throw new QuantdError("DATA_MISMATCH", `${labels.length} labels for ${reference.rows} samples`);
  }
  const n = reference.rows;
  const ignoreMargin = options.ignoreMargin ?? 0;
  const tieMargin = ignoreMargin > 0 ? ignoreMargin : DEFAULT_NEAR_TIE_MARGIN;
  const { agree, nearTies, nearTieFlips, labelled, refCorrect, candCorrect } = countAgreement(
    argmaxRows(reference),
    argmaxRows(candidate),
    topTwoMargins(reference),
    tieMargin,
    labels,
  );
  const { maxAbs, sumAbs, total } = logitError(reference, candidate);
  const confidence = options.confidence ?? DEFAULT_CONFIDENCE;
  const level = options.boundLevel ?? confidence;
  const ignored = ignoreMargin > 0;
  const gateN = ignored ? n - nearTies : n;
  const gateAgreements = ignored ? agree - (nearTies - nearTieFlips) : agree;
  const metrics: GateMetrics = {
    n,
    agreement: n === 0 ? 0 : agree / n,
    disagreements: n - agree,
    maxAbsLogitDiff: maxAbs,
    meanAbsLogitDiff: total === 0 ? 0 : sumAbs / total,
    labelled,
    gateN,
    gateAgreements,
    confidence,
    agreementLower: clopperPearsonLower(gateAgreements, gateN, level),
    margin: {
      threshold: tieMargin,
      nearTies,
      nearTieFlips,
      confidentFlips: n - agree - nearTieFlips,
      ignored,
    },
  };
  if (level !== confidence) metrics.boundLevel = level;
  if (labelled > 0) {
    metrics.accuracyReference = refCorrect / labelled;
    metrics.accuracyCandidate = candCorrect / labelled;
    metrics.accuracyDrop = (refCorrect - candCorrect) / labelled;
  }
  return metrics;
}

/** Per-sample counts of {@link compareLogits}: top-1 agreement, near-ties and their flips, accuracy of both models. */
function countAgreement(
  refTop: Int32Array,
  candTop: Int32Array,
  margins: Float64Array,
  tieMargin: number,
  labels: readonly (number | undefined)[] | undefined,
): {
  agree: number;
  nearTies: number;
  nearTieFlips: number;
  labelled: number;
  refCorrect: number;
  candCorrect: number;
} {
  const c = { agree: 0, nearTies: 0, nearTieFlips: 0, labelled: 0, refCorrect: 0, candCorrect: 0 };
  for (let r = 0; r < refTop.length; r++) {
    const top = refTop[r]!;
    const same = top !== -1 && top === candTop[r];
    if (same) c.agree++;
    if (margins[r]! < tieMargin) {
      c.nearTies++;
      if (!same) c.nearTieFlips++;
    }
    const label = labels?.[r];
    if (label !== undefined) {
      c.labelled++;
      if (top === label) c.refCorrect++;
      if (candTop[r] === label) c.candCorrect++;
    }
  }
  return c;
}

/** Largest and summed |candidate − reference| over every logit (NaN counts as infinitely far). */
function logitError(
  reference: LogitMatrix,
  candidate: LogitMatrix,
): { maxAbs: number; sumAbs: number; total: number } {
  let maxAbs = 0;
  let sumAbs = 0;
  const total = reference.rows * reference.cols;
  for (let i = 0; i < total; i++) {
    const d = Math.abs(candidate.data[i]! - reference.data[i]!);
    // NaN in either model is as far off as it gets
    const dd = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
    if (dd > maxAbs) maxAbs = dd;
    sumAbs += dd;
  }
  return { maxAbs, sumAbs, total };
}

/**
 * fp32's confidence in its own answer, per row: softmax probability of the
 * best class minus the second's (1 for a one-class output, 0 for a row with
 * NaN). A flip where this is tiny is a near-tie that rounding alone decides.
 */
export function topTwoMargins(m: LogitMatrix): Float64Array {
  const out = new Float64Array(m.rows);
  for (let r = 0; r < m.rows; r++) {
    let max = Number.NEGATIVE_INFINITY;
    for (let c = 0; c < m.cols; c++) max = Math.max(max, m.data[r * m.cols + c]!);
    if (!Number.isFinite(max)) continue;
    let sum = 0;
    let best = 0;
    let second = 0;
    for (let c = 0; c < m.cols; c++) {
      const e = Math.exp(m.data[r * m.cols + c]! - max);
      sum += e;
      if (e > best) {
        second = best;
        best = e;
      } else if (e > second) second = e;
    }
    out[r] = Number.isFinite(sum) && sum > 0 ? (best - second) / sum : 0;
  }
  return out;
}

/**
 * Checks metrics against a gate. An empty sample set never passes: a gate with
 * nothing to look at has not been met. By default the agreement's lower
 * confidence bound must clear the threshold, so a set too small to tell 99.5 %
 * from 95 % fails, and says how many samples it would take.
 */
export function checkGate(metrics: GateMetrics, spec: GateSpec): GateVerdict {
  const failures: string[] = [];
  const confidence = spec.confidence ?? DEFAULT_CONFIDENCE;
  const decideOn = spec.decideOn ?? "bound";
  const level = metrics.boundLevel ?? confidence;
  const needed = samplesToCertify(spec.minAgreement, level);
  const lower =
    metrics.confidence === confidence
      ? metrics.agreementLower
      : clopperPearsonLower(metrics.gateAgreements, metrics.gateN, level);
  const point = metrics.gateN === 0 ? 0 : metrics.gateAgreements / metrics.gateN;
  // What the counts count: samples, or another task's trials (tokens, label decisions).
  const units = `${metrics.task?.unit ?? "sample"}s`;
  if (metrics.gateN === 0) failures.push("no validation samples");
  else if (decideOn === "bound" && metrics.stopped === "failed") {
    failures.push(
      `agreement ${describeAgreement(metrics, confidence)}: stopped after ${formatCount(metrics.n)} of ` +
        `${formatCount(metrics.planned ?? metrics.n)} ${units}, as its lower bound could no longer reach the gate ` +
        `${pct(spec.minAgreement)} (${metrics.gateN - metrics.gateAgreements} ${units} differ)`,
    );
  } else if (decideOn === "bound" && (metrics.planned ?? metrics.gateN) < needed) {
    failures.push(
      `${formatCount(metrics.gateN)} held-out samples cannot certify ${pct(spec.minAgreement)} agreement ` +
        `at ${formatConfidence(confidence)} even with no flip: it takes ${formatCount(needed)}`,
    );
  } else if (decideOn === "bound" && lower < spec.minAgreement) {
    failures.push(
      `agreement ${describeAgreement(metrics, confidence)}: its lower bound is below the gate ${pct(spec.minAgreement)} ` +
        `(${metrics.gateN - metrics.gateAgreements} of ${formatCount(metrics.gateN)} samples differ)`,
    );
  } else if (decideOn === "point" && point < spec.minAgreement) {
    failures.push(
      `top-1 agreement ${pct(point)} is below the gate ${pct(spec.minAgreement)} ` +
        `(${metrics.gateN - metrics.gateAgreements} of ${formatCount(metrics.gateN)} samples differ)`,
    );
  }
  for (const c of metrics.task?.checks ?? []) {
    if (!c.passed) failures.push(`${c.name} ${c.value.toFixed(4)} is below ${c.min}`);
  }
  if (spec.maxAccuracyDrop !== undefined && metrics.accuracyDrop !== undefined) {
    if (metrics.accuracyDrop > spec.maxAccuracyDrop) {
      failures.push(
        `accuracy drop ${pct(metrics.accuracyDrop)} exceeds the bound ${pct(spec.maxAccuracyDrop)}`,
      );
    }
  }
  return { passed: failures.length === 0, failures };
}

/**
 * Orders candidates from best to worst: higher lower bound, then higher
 * agreement, then smaller mean logit error. Used to pick the "best candidate"
 * a failed gate reports.
 */
export function compareCandidates(a: GateMetrics, b: GateMetrics): number {
  if (a.agreementLower !== b.agreementLower) return b.agreementLower - a.agreementLower;
  if (a.agreement !== b.agreement) return b.agreement - a.agreement;
  return a.meanAbsLogitDiff - b.meanAbsLogitDiff;
}

/**
 * The agreement as every quantd surface prints it:
 * `99.8 % (≥ 99.3 % at 95 %, n = 1,024)`. Both figures are rounded down, so
 * the printed bound never reads above the gate when the gate failed.
 *
 * @param confidence - print the bound at this level instead of the metrics' own
 */
export function describeAgreement(
  m: Pick<GateMetrics, "n" | "agreement" | "agreementLower" | "confidence" | "gateN" | "gateAgreements"> & {
    margin?: Pick<MarginView, "ignored" | "nearTies">;
    boundLevel?: number;
    planned?: number;
  },
  confidence: number = m.confidence,
): string {
  const lower =
    confidence === m.confidence
      ? m.agreementLower
      : clopperPearsonLower(m.gateAgreements, m.gateN, m.boundLevel ?? confidence);
  const ignored = m.margin?.ignored === true && m.margin.nearTies > 0;
  const point = ignored ? (m.gateN === 0 ? 0 : m.gateAgreements / m.gateN) : m.agreement;
  const early = m.planned !== undefined && m.planned > m.n ? ` of ${formatCount(m.planned)}` : "";
  const tail = `${early}${ignored ? ` without ${formatCount(m.margin?.nearTies ?? 0)} near-ties` : ""}`;
  return `${floorPct(point)} (≥ ${floorPct(lower)} at ${formatConfidence(confidence)}, n = ${formatCount(m.gateN)}${tail})`;
}

/**
 * The agreement line of a recorded validation (a job result's `validation`, as
 * stored or received over MQTT): `99.8 % (≥ 99.3 % at 95 %, n = 1,024), gate
 * 99.5 % on the bound`. Results recorded before the bound existed print their
 * point estimate and n. `undefined` when `v` holds no agreement.
 */
export function describeRecordedAgreement(v: unknown): string | undefined {
  if (typeof v !== "object" || v === null) return undefined;
  const r = v as Record<string, unknown>;
  const num = (x: unknown): number | undefined => (typeof x === "number" ? x : undefined);
  const agreement = num(r["agreement"]);
  const n = num(r["n"]);
  if (agreement === undefined || n === undefined) return undefined;
  const gate = (typeof r["gate"] === "object" && r["gate"] !== null ? r["gate"] : {}) as Record<
    string,
    unknown
  >;
  const min = num(gate["minAgreement"]);
  const on = gate["decideOn"] === "point" ? "point estimate" : "bound";
  const gateText = min === undefined ? "" : `, gate ${Number((min * 100).toFixed(3))} % on the ${on}`;
  const lower = num(r["agreementLower"]);
  const confidence = num(r["confidence"]);
  const gateN = num(r["gateN"]);
  const gateAgreements = num(r["gateAgreements"]);
  const boundLevel = num(r["boundLevel"]);
  const planned = num(r["planned"]);
  if (
    lower === undefined ||
    confidence === undefined ||
    gateN === undefined ||
    gateAgreements === undefined
  ) {
    return `${pct(agreement)} of ${formatCount(n)} held-out${gateText}`;
  }
  const margin = r["margin"] as Partial<MarginView> | undefined;
  // Another task's trials (tokens, label decisions) and figures (cosine, Pearson), so a report says what agreed.
  const task = r["task"] as Partial<TaskFigures> | undefined;
  const taskText =
    task !== undefined &&
    typeof task === "object" &&
    typeof task.kind === "string" &&
    task.kind !== "classification"
      ? ` (${task.kind}: ${task.unit ?? "sample"}s${describeTaskPoints(task.figures)})`
      : "";
  return `${describeAgreement({
    n,
    agreement,
    agreementLower: lower,
    confidence,
    gateN,
    gateAgreements,
    ...(boundLevel !== undefined ? { boundLevel } : {}),
    ...(planned !== undefined ? { planned } : {}),
    ...(margin !== undefined && typeof margin === "object"
      ? { margin: { ignored: margin.ignored === true, nearTies: margin.nearTies ?? 0 } }
      : {}),
  })}${taskText}${gateText}`;
}

/** `, mean cosine 0.9998, Pearson 0.9991`: the point figures a task's report records, for one line. */
function describeTaskPoints(figures: unknown): string {
  if (typeof figures !== "object" || figures === null) return "";
  const f = figures as Record<string, unknown>;
  const parts: string[] = [];
  if (typeof f["meanCosine"] === "number") parts.push(`mean cosine ${f["meanCosine"].toFixed(4)}`);
  if (typeof f["pearson"] === "number") parts.push(`Pearson ${f["pearson"].toFixed(4)}`);
  return parts.map((p) => `, ${p}`).join("");
}

/** Share of 1 − confidence spent on the last look (the whole set); the earlier looks share the rest. */
export const FINAL_LOOK_SHARE = 0.8;

/**
 * Levels of the bounds when the gate is checked at `looks` growing prefixes:
 * together they hold at `confidence` (Bonferroni: the α of the looks add up
 * to α). The last look, on the whole set, keeps most of α, so a set that runs
 * to its end is judged almost as if nobody had looked early; the earlier looks
 * need stronger evidence to stop.
 */
export function lookLevels(confidence: number, looks: number): { interim: number; final: number } {
  if (looks <= 1) return { interim: confidence, final: confidence };
  const alpha = 1 - confidence;
  return { interim: 1 - (alpha * (1 - FINAL_LOOK_SHARE)) / (looks - 1), final: 1 - alpha * FINAL_LOOK_SHARE };
}

/** `1,024`: thousands separated, as the report line shows sample counts. */
export function formatCount(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "∞";
}

/** `95 %`, `99.9 %`. */
export function formatConfidence(c: number): string {
  return `${Number((c * 100).toFixed(2))} %`;
}

/** A share as a percentage with one decimal, rounded down (a bound never reads higher than it is): `99.8 %`. */
export function floorPct(x: number): string {
  // The epsilon keeps 0.998 (997.9999… after scaling) from flooring to 99.7.
  return `${(Math.floor(x * 1000 + 1e-7) / 10).toFixed(1)} %`;
}

/**
 * Reads a gate threshold as users write it: a percentage (`99.5`) or a
 * fraction (`0.995`). Values above 1 are percentages.
 *
 * @throws USAGE when the value is not within 0..100
 */
export function parseGateThreshold(raw: number): number {
  if (!Number.isFinite(raw) || raw < 0 || raw > 100) {
    throw new QuantdError("USAGE", `gate must be a percentage (0..100) or a fraction (0..1), got ${raw}`);
  }
  return raw > 1 ? raw / 100 : raw;
}

function pct(x: number): string {
  return `${(x * 100).toFixed(2)} %`;
}
