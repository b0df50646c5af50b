/**
 * Percentiles, defined once for every layer. Two definitions exist on purpose:
 * linear interpolation (numpy's default), which reports figures (bench,
 * evaluation, telemetry), and nearest rank, which the registry's swap check
 * compares against a threshold so that the figure is always one observed
 * latency. Callers that need errors on empty or non-finite series (the bench)
 * validate before calling.
 */

/**
 * The `p`-th percentile of ascending `sorted` values with linear interpolation
 * between closest ranks (numpy's default, Hyndman & Fan type 7): fractional
 * rank `h = (p / 100) * (n - 1)`, interpolated between `floor(h)` and
 * `ceil(h)`. So p0 is the minimum, p100 the maximum and p50 the usual median.
 * NaN for no values.
 *
 * @param p - percentile in [0, 100]
 */
export function percentileOfSorted(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const h = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(h);
  const hi = Math.ceil(h);
  const a = sorted[lo]!;
  const b = sorted[hi]!;
  return a + (h - lo) * (b - a);
}

/** {@link percentileOfSorted} of unsorted values (copied, not sorted in place); NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  return percentileOfSorted(ascending(values), p);
}

/** The median ({@link percentile} 50: the mean of the two middle values for an even count); NaN for none. */
export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/**
 * The `p`-th percentile by nearest rank: the smallest observed value with at
 * least `p` % of the values at or below it. NaN for no values.
 *
 * @param p - percentile in (0, 100]
 */
export function nearestRankPercentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = ascending(values);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function ascending(values: readonly number[]): number[] {
  return [...values].sort((a, b) => a - b);
}
