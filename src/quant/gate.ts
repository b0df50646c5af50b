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
}

/** The thresholds a candidate must meet. */
export interface GateSpec {
  /** Smallest accepted top-1 agreement, a fraction. @defaultValue {@link DEFAULT_GATE_AGREEMENT} */
  minAgreement: number;
  /** Largest accepted accuracy drop (fraction), checked only when labels exist. @defaultValue no bound */
  maxAccuracyDrop?: number;
}

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
  const refTop = argmaxRows(reference);
  const candTop = argmaxRows(candidate);
  let agree = 0;
  let labelled = 0;
  let refCorrect = 0;
  let candCorrect = 0;
  for (let r = 0; r < n; r++) {
    const top = refTop[r]!;
    if (top !== -1 && top === candTop[r]) agree++;
    const label = labels?.[r];
    if (label !== undefined) {
      labelled++;
      if (top === label) refCorrect++;
      if (candTop[r] === label) candCorrect++;
    }
  }
  let maxAbs = 0;
  let sumAbs = 0;
  const total = n * reference.cols;
  for (let i = 0; i < total; i++) {
    const d = Math.abs(candidate.data[i]! - reference.data[i]!);
    // NaN in either model is as far off as it gets
    const dd = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
    if (dd > maxAbs) maxAbs = dd;
    sumAbs += dd;
  }
  const metrics: GateMetrics = {
    n,
    agreement: n === 0 ? 0 : agree / n,
    disagreements: n - agree,
    maxAbsLogitDiff: maxAbs,
    meanAbsLogitDiff: total === 0 ? 0 : sumAbs / total,
    labelled,
  };
  if (labelled > 0) {
    metrics.accuracyReference = refCorrect / labelled;
    metrics.accuracyCandidate = candCorrect / labelled;
    metrics.accuracyDrop = (refCorrect - candCorrect) / labelled;
  }
  return metrics;
}

/**
 * Checks metrics against a gate. An empty sample set never passes: a gate with
 * nothing to look at has not been met.
 */
export function checkGate(metrics: GateMetrics, spec: GateSpec): GateVerdict {
  const failures: string[] = [];
  if (metrics.n === 0) failures.push("no validation samples");
  else if (metrics.agreement < spec.minAgreement) {
    failures.push(
      `top-1 agreement ${pct(metrics.agreement)} is below the gate ${pct(spec.minAgreement)} ` +
        `(${metrics.disagreements} of ${metrics.n} samples differ)`,
    );
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
 * Orders candidates from best to worst: higher agreement, then smaller mean
 * logit error. Used to pick the "best candidate" a failed gate reports.
 */
export function compareCandidates(a: GateMetrics, b: GateMetrics): number {
  if (a.agreement !== b.agreement) return b.agreement - a.agreement;
  return a.meanAbsLogitDiff - b.meanAbsLogitDiff;
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
