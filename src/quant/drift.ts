/**
 * Distribution shift, as far as input length tells it: token-length
 * histograms of the calibration, validation and live samples, the distance
 * between them, and what a quantized model's calibration covered.
 *
 * Calibrated and validated on short phrases, a model passed the gate and then
 * agreed on only 98.90 % of full sentences: ranges seen on short inputs do not
 * cover the activations of long ones, and a validation set of short inputs
 * cannot see it. Length is the cheap proxy a board can count on every request.
 */

/** Upper bounds (exclusive) of the length buckets, in tokens; the last bucket is open. The store's buckets. */
export const LENGTH_EDGES: readonly number[] = [8, 16, 32, 64, 128, 256];

/** Distance between two length distributions above which quantd warns. */
export const DRIFT_WARN_DISTANCE = 0.25;

/** Token lengths of a sample set, bucketed. */
export interface LengthHistogram {
  /** Samples per bucket: `[0, 8)`, `[8, 16)`, … `[256, ∞)`. */
  counts: number[];
  n: number;
  /** Longest sample, in tokens (0 when empty). */
  max: number;
}

/** What a quantized model's ranges were measured on: inputs up to `maxTokens` long. */
export interface LengthCoverage {
  maxTokens: number;
  /** `calibration` for static int8 (its ranges), `validation` for dynamic (what the gate saw). */
  basis: "calibration" | "validation";
}

/** The bucket of a token length. */
export function lengthBucket(tokens: number): number {
  let b = 0;
  while (b < LENGTH_EDGES.length && tokens >= LENGTH_EDGES[b]!) b++;
  return b;
}

/** Buckets token lengths. */
export function lengthHistogram(lengths: Iterable<number>): LengthHistogram {
  const counts = new Array<number>(LENGTH_EDGES.length + 1).fill(0);
  let n = 0;
  let max = 0;
  for (const t of lengths) {
    counts[lengthBucket(t)]!++;
    n++;
    if (t > max) max = t;
  }
  return { counts, n, max };
}

/**
 * Total variation distance between two length distributions (half the sum of
 * the bucket shares' differences): 0 for the same shape, 1 for disjoint ones.
 * 0 when either is empty (nothing to compare).
 */
export function lengthDistance(a: LengthHistogram, b: LengthHistogram): number {
  if (a.n === 0 || b.n === 0) return 0;
  let d = 0;
  for (let i = 0; i < a.counts.length; i++)
    d += Math.abs((a.counts[i] ?? 0) / a.n - (b.counts[i] ?? 0) / b.n);
  return d / 2;
}

/** The bucket edge below which a share `q` of the samples fall (`∞` for the open bucket). */
function quantileEdge(h: LengthHistogram, q: number): string {
  let seen = 0;
  for (let i = 0; i < h.counts.length; i++) {
    seen += h.counts[i]!;
    if (seen >= q * h.n) return i < LENGTH_EDGES.length ? `< ${LENGTH_EDGES[i]}` : `≥ ${LENGTH_EDGES.at(-1)}`;
  }
  return "-";
}

/** `n = 128, half < 16 tokens, 95 % < 64, longest 61`. */
export function describeLengths(h: LengthHistogram): string {
  if (h.n === 0) return "none";
  return `n = ${h.n.toLocaleString("en-US")}, half ${quantileEdge(h, 0.5)} tokens, 95 % ${quantileEdge(h, 0.95)}, longest ${h.max}`;
}

/** The length sets a report compares. */
export interface LengthSets {
  calibration: LengthHistogram;
  validation: LengthHistogram;
  /** Live traffic, when the caller (the agent) counted it. */
  live?: LengthHistogram;
}

/**
 * One warning per pair of sets whose lengths differ by more than
 * {@link DRIFT_WARN_DISTANCE}, and one when live inputs are longer than any
 * calibration sample.
 */
export function lengthWarnings(sets: LengthSets, coverage: LengthCoverage | undefined): string[] {
  const warnings: string[] = [];
  const pair = (what: string, a: LengthHistogram, b: LengthHistogram, why: string): void => {
    const d = lengthDistance(a, b);
    if (d > DRIFT_WARN_DISTANCE) {
      warnings.push(
        `${what} differ in length (distance ${d.toFixed(2)}): ${describeLengths(a)} vs ${describeLengths(b)}; ${why}`,
      );
    }
  };
  pair(
    "calibration and validation samples",
    sets.calibration,
    sets.validation,
    "the gate checks inputs unlike those the ranges were measured on",
  );
  if (sets.live !== undefined) {
    pair(
      "validation samples and live traffic",
      sets.validation,
      sets.live,
      "the gate's agreement may not hold on what the device serves",
    );
    if (coverage !== undefined && sets.live.max > coverage.maxTokens) {
      warnings.push(
        `live inputs reach ${sets.live.max} tokens, longer than any ${coverage.basis} sample (${coverage.maxTokens})`,
      );
    }
  }
  return warnings;
}
