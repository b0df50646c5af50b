/**
 * Statistics of benchmark timings. Pure functions on arrays of milliseconds, so
 * they can be checked on fixed synthetic timings and reused by the agent's
 * promotion step without running a model.
 */
import { percentileOfSorted } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";

/** Summary of one series of latencies, in milliseconds. */
export interface LatencySummary {
  /** Number of timed runs. */
  n: number;
  mean: number;
  min: number;
  max: number;
  /** Sample standard deviation (n - 1 in the denominator); 0 for a single run. */
  stdev: number;
  p50: number;
  p90: number;
  p99: number;
}

function requireValues(values: readonly number[], what: string): void {
  if (values.length === 0) throw new QuantdError("BENCH_FAILED", `${what} of an empty series`);
  for (const v of values) {
    if (!Number.isFinite(v)) throw new QuantdError("BENCH_FAILED", `${what} of a series holding ${v}`);
  }
}

/**
 * The `p`-th percentile of `values` with linear interpolation between closest
 * ranks (numpy's default, Hyndman & Fan type 7): sort ascending, take the
 * fractional rank `h = (p / 100) * (n - 1)` and interpolate between the values
 * at `floor(h)` and `ceil(h)`. So p0 is the minimum, p100 the maximum and p50
 * the usual median. With few runs, p99 lies between the two slowest runs rather
 * than jumping to the slowest one.
 *
 * @param p - percentile in [0, 100]
 * @throws BENCH_FAILED when `values` is empty or holds a non-finite number
 * @throws USAGE when `p` is outside [0, 100]
 */
export function percentile(values: readonly number[], p: number): number {
  requireValues(values, `percentile ${p}`);
  if (!(p >= 0 && p <= 100)) throw new QuantdError("USAGE", `percentile must be in [0, 100], got ${p}`);
  return percentileOfSorted(
    [...values].sort((a, b) => a - b),
    p,
  );
}

/** Arithmetic mean. @throws BENCH_FAILED on an empty series */
export function mean(values: readonly number[]): number {
  requireValues(values, "mean");
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/** Median (the 50th percentile, averaging the two middle values for an even count). @throws BENCH_FAILED */
export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/** Summarizes a latency series. @throws BENCH_FAILED on an empty series */
export function summarize(latenciesMs: readonly number[]): LatencySummary {
  requireValues(latenciesMs, "summary");
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  const m = mean(sorted);
  let sq = 0;
  for (const v of sorted) sq += (v - m) * (v - m);
  return {
    n: sorted.length,
    mean: m,
    min: sorted[0]!,
    max: sorted.at(-1)!,
    stdev: sorted.length > 1 ? Math.sqrt(sq / (sorted.length - 1)) : 0,
    p50: percentileOfSorted(sorted, 50),
    p90: percentileOfSorted(sorted, 90),
    p99: percentileOfSorted(sorted, 99),
  };
}

/**
 * Per-pair ratios `b[i] / a[i]`. With interleaved runs, pair `i` is the i-th run
 * of each model, taken moments apart, so machine drift (thermal throttling, a
 * neighbour process) affects both sides of a pair alike and mostly cancels.
 *
 * @throws BENCH_FAILED when the series differ in length, are empty, or `a` holds a non-positive value
 */
export function pairRatios(a: readonly number[], b: readonly number[]): number[] {
  if (a.length !== b.length) {
    throw new QuantdError("BENCH_FAILED", `paired series differ in length (${a.length} vs ${b.length})`);
  }
  requireValues(a, "ratio");
  requireValues(b, "ratio");
  return a.map((x, i) => {
    if (!(x > 0)) throw new QuantdError("BENCH_FAILED", `ratio to a non-positive timing ${x}`);
    return b[i]! / x;
  });
}

/**
 * The median of per-pair ratios `b[i] / a[i]` (not the ratio of medians): robust
 * to a few disturbed pairs and to drift over the run.
 *
 * @throws BENCH_FAILED as {@link pairRatios}
 */
export function medianRatio(a: readonly number[], b: readonly number[]): number {
  return median(pairRatios(a, b));
}

/**
 * Sustained throughput in sequences per second: `batch` sequences per run over
 * the mean latency (the mean, not the median, because throughput is total work
 * over total time, slow runs included).
 *
 * @throws BENCH_FAILED when `meanMs` is not positive
 */
export function throughput(batch: number, meanMs: number): number {
  if (!(meanMs > 0)) throw new QuantdError("BENCH_FAILED", `throughput of a non-positive latency ${meanMs}`);
  return (batch * 1000) / meanMs;
}

/**
 * The order in which interleaved runs visit `count` models for `rounds` rounds:
 * model indices `0, 1, …, count-1` repeated (A B C A B C …). Every model's
 * i-th run falls in round i, which is what {@link pairRatios} pairs up.
 */
export function interleavedOrder(count: number, rounds: number): number[] {
  const order: number[] = [];
  for (let r = 0; r < rounds; r++) for (let m = 0; m < count; m++) order.push(m);
  return order;
}
