/**
 * Live inputs against what the serving model was calibrated on. Every
 * classified input's token length is counted (a pair's as the model encodes
 * the two texts together, as calibration measured it; a histogram, exported on
 * /metrics and in the fleet telemetry), and so are the inputs longer than any
 * sample the active int8 model's ranges were measured on (its `coverage`,
 * recorded at promotion). Past a configured share of such inputs
 * (`jobs.recalibrateOnDrift`), the agent queues a recalibration; the inputs
 * that fell outside go into the sample pool so that the next calibration
 * covers them.
 *
 * Only lengths are counted: activation ranges would need extra graph outputs
 * on the serving path, which costs every request a copy of each tensor.
 */
import { type LengthCoverage, type LengthHistogram, lengthBucket, lengthHistogram } from "../quant/drift.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import { Counter, Histogram, type MetricsRegistry } from "../server/metrics.ts";

/** Live inputs counted before a drift share is trusted. */
export const DRIFT_MIN_INPUTS = 200;

/** Counters since the active model started serving (or since the last drift recalibration). */
export interface DriftSnapshot {
  /** Inputs counted. */
  inputs: number;
  /** Inputs longer than the active model's coverage. */
  outOfCoverage: number;
  /** `outOfCoverage / inputs` (0 when nothing was counted). */
  share: number;
  /** The active model's coverage, when it has one (an int8 model promoted by a recalibration). */
  coverage?: LengthCoverage;
  /** Token lengths of the inputs counted. */
  lengths: LengthHistogram;
}

/** Options of {@link createDriftMonitor}. */
export interface DriftMonitorOptions {
  /** Token count of an input (a text, or a pair encoded together) as the serving model sees it, special tokens included. */
  countTokens: (input: TextInput) => number;
  /**
   * A pair's token count from its two texts' counts (each as a single text, special tokens included), so
   * that counts the caller already has serve for pairs too. Without it a pair is counted with `countTokens`.
   */
  pairTokens?: (first: number, second: number) => number;
  /** Where the counters are exported (`/metrics`). */
  metrics?: MetricsRegistry;
  /** Share of out-of-coverage inputs that asks for a recalibration (`jobs.recalibrateOnDrift`). @defaultValue never */
  recalibrateShare?: number;
  /** Out-of-coverage inputs (pairs as pairs), to be kept in the sample pool (called only when `recalibrateShare` is set). */
  onOutOfCoverage?: (inputs: TextInput[]) => void;
}

/** The agent's drift counters. */
export interface DriftMonitor {
  /**
   * Counts classified inputs, with the token count of every text when the caller already has them
   * (aligned with the texts, a pair giving two; else `countTokens`). Never throws (serving must not fail
   * for a counter).
   */
  observe(inputs: readonly TextInput[], tokenCounts?: readonly number[]): void;
  /** Sets the active model's coverage (on start and after every swap) and restarts the counts. */
  setCoverage(coverage: LengthCoverage | undefined): void;
  snapshot(): DriftSnapshot;
  /**
   * Why a recalibration is due (`12.5 % of 800 live inputs …`), or undefined.
   * A reason restarts the counts: the job it queues is the answer to them.
   */
  recalibrationDue(): string | undefined;
}

/** Reads a coverage recorded in a model version's metrics; undefined when absent or malformed. */
export function coverageOf(metrics: Record<string, unknown> | undefined): LengthCoverage | undefined {
  const c = metrics?.["coverage"];
  if (typeof c !== "object" || c === null) return undefined;
  const { maxTokens, basis } = c as Record<string, unknown>;
  if (typeof maxTokens !== "number" || !(maxTokens > 0)) return undefined;
  return { maxTokens, basis: basis === "validation" ? "validation" : "calibration" };
}

/** A drift monitor; its metrics are registered in `options.metrics`. */
export function createDriftMonitor(options: DriftMonitorOptions): DriftMonitor {
  const lengthsMetric = options.metrics?.add(
    new Histogram(
      "quantd_input_tokens",
      "Token length of classified inputs (a pair's two texts together)",
      [8, 16, 32, 64, 128, 256, 512],
    ),
  );
  const outMetric = options.metrics?.add(
    new Counter(
      "quantd_inputs_out_of_coverage_total",
      "Classified inputs longer than any sample the active model was calibrated on",
    ),
  );
  outMetric?.inc({ reason: "length" }, 0);
  let coverage: LengthCoverage | undefined;
  let counts = lengthHistogram([]);
  let outOfCoverage = 0;
  const restart = (): void => {
    counts = lengthHistogram([]);
    outOfCoverage = 0;
  };
  return {
    observe(inputs, tokenCounts) {
      try {
        const outside: TextInput[] = [];
        const lengths = inputLengths(inputs, tokenCounts, options);
        for (const [i, input] of inputs.entries()) {
          const n = lengths[i]!;
          lengthsMetric?.observe(n);
          counts.counts[lengthBucket(n)]!++;
          counts.n++;
          if (n > counts.max) counts.max = n;
          if (coverage !== undefined && n > coverage.maxTokens) {
            outOfCoverage++;
            outMetric?.inc({ reason: "length" });
            outside.push(input);
          }
        }
        if (outside.length > 0 && options.recalibrateShare !== undefined) options.onOutOfCoverage?.(outside);
      } catch {
        // A counter must never fail a request.
      }
    },
    setCoverage(c) {
      coverage = c;
      restart();
    },
    snapshot() {
      return {
        inputs: counts.n,
        outOfCoverage,
        share: counts.n === 0 ? 0 : outOfCoverage / counts.n,
        ...(coverage !== undefined ? { coverage } : {}),
        lengths: { counts: [...counts.counts], n: counts.n, max: counts.max },
      };
    },
    recalibrationDue() {
      const share = options.recalibrateShare;
      if (share === undefined || coverage === undefined || counts.n < DRIFT_MIN_INPUTS) return undefined;
      const now = outOfCoverage / counts.n;
      if (now <= share) return undefined;
      const why =
        `drift: ${(now * 100).toFixed(1)} % of ${counts.n} live inputs are longer than the ` +
        `${coverage.maxTokens} tokens the active model's ${coverage.basis} covered (limit ${(share * 100).toFixed(1)} %)`;
      restart();
      return why;
    },
  };
}

/**
 * Token count of each input: from the caller's per-text counts when they line up with the inputs'
 * texts (a pair's two joined by `pairTokens`), else counted afresh.
 */
function inputLengths(
  inputs: readonly TextInput[],
  tokenCounts: readonly number[] | undefined,
  options: Pick<DriftMonitorOptions, "countTokens" | "pairTokens">,
): number[] {
  const texts = inputs.reduce((n, x) => n + (typeof x === "string" ? 1 : 2), 0);
  const counts = tokenCounts?.length === texts ? tokenCounts : undefined;
  let at = 0;
  return inputs.map((input) => {
    if (typeof input === "string") return counts?.[at++] ?? options.countTokens(input);
    const [a, b] = [counts?.[at], counts?.[at + 1]];
    at += 2;
    return a !== undefined && b !== undefined && options.pairTokens !== undefined
      ? options.pairTokens(a, b)
      : options.countTokens(input);
  });
}
