/**
 * The post-swap checks: after a swap the new version is watched for
 * `swap.window` batches; an error rate above `swap.errorRate`, or a p95 batch
 * latency above `swap.p95Ratio` times the old version's, fails it (the
 * registry then rolls back automatically). Failures count early: waiting a
 * whole window of errors would fail far more requests than the rule allows.
 */
import { nearestRankPercentile } from "../core/stats.ts";
import type { SwapChecksConfig } from "./config.ts";
import type { Loaded } from "./loaded-version.ts";

/** What the post-swap checks measured. */
export interface PostSwapFigures {
  batches: number;
  failed: number;
  errorRate: number;
  p95Ms: number;
  /** The previous version's p95 batch latency, when it had enough batches to tell. */
  baselineP95Ms: number | undefined;
}

/** A version under watch: where it came from and what it must not be much slower than. */
export interface SwapWatch {
  from: number;
  baselineP95Ms: number | undefined;
}

/** The watch of a version swapped in after `prev` (its p95 the baseline when it ran enough batches). */
export function watchAfter(prev: Loaded, swap: SwapChecksConfig): SwapWatch {
  return {
    from: prev.version.id,
    baselineP95Ms:
      prev.latencies.length >= Math.min(20, swap.window)
        ? nearestRankPercentile(prev.latencies, 95)
        : undefined,
  };
}

/** The checks' verdict: undefined while they cannot tell yet, else the figures and why it failed (undefined: passed). */
export function judgeSwap(
  loaded: Loaded,
  watch: SwapWatch,
  swap: SwapChecksConfig,
): { figures: PostSwapFigures; failure: string | undefined } | undefined {
  const { errorRate, p95Ratio, window } = swap;
  const failedLimit = Math.floor(errorRate * window);
  if (loaded.batches < window && loaded.failed <= failedLimit) return undefined;
  const figures: PostSwapFigures = {
    batches: loaded.batches,
    failed: loaded.failed,
    errorRate: loaded.failed / Math.max(1, loaded.batches),
    p95Ms: nearestRankPercentile(loaded.latencies, 95),
    baselineP95Ms: watch.baselineP95Ms,
  };
  let failure: string | undefined;
  if (loaded.failed > failedLimit) {
    failure = `error rate ${(figures.errorRate * 100).toFixed(1)} % over ${loaded.batches} batches exceeds ${(errorRate * 100).toFixed(1)} %`;
  } else if (watch.baselineP95Ms !== undefined && figures.p95Ms > p95Ratio * watch.baselineP95Ms) {
    failure = `p95 batch latency ${figures.p95Ms.toFixed(2)} ms exceeds ${p95Ratio} × the previous version's ${watch.baselineP95Ms.toFixed(2)} ms`;
  }
  return { figures, failure };
}
