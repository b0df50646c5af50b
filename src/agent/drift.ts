/**
 * Live inputs against what the serving model was calibrated on. Every
 * classified text's token length is counted (a histogram, exported on
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
  /** Token count of a text as the serving model's tokenizer sees it (special tokens included). */
  countTokens: (text: string) => number;
  /** Where the counters are exported (`/metrics`). */
  metrics?: MetricsRegistry;
  /** Share of out-of-coverage inputs that asks for a recalibration (`jobs.recalibrateOnDrift`). @defaultValue never */
  recalibrateShare?: number;
  /** Out-of-coverage texts, to be kept in the sample pool (called only when `recalibrateShare` is set). */
  onOutOfCoverage?: (texts: string[]) => void;
}

/** The agent's drift counters. */
export interface DriftMonitor {
  /**
   * Counts classified texts, with their token counts when the caller already has them (else
   * `countTokens`). Never throws (serving must not fail for a counter).
   */
  observe(texts: readonly string[], tokenCounts?: readonly number[]): void;
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
    new Histogram("quantd_input_tokens", "Token length of classified texts", [8, 16, 32, 64, 128, 256, 512]),
  );
  const outMetric = options.metrics?.add(
    new Counter(
      "quantd_inputs_out_of_coverage_total",
      "Classified texts longer than any sample the active model was calibrated on",
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
    observe(texts, tokenCounts) {
      try {
        const outside: string[] = [];
        for (const [i, text] of texts.entries()) {
          const n = tokenCounts?.[i] ?? options.countTokens(text);
          lengthsMetric?.observe(n);
          counts.counts[lengthBucket(n)]!++;
          counts.n++;
          if (n > counts.max) counts.max = n;
          if (coverage !== undefined && n > coverage.maxTokens) {
            outOfCoverage++;
            outMetric?.inc({ reason: "length" });
            outside.push(text);
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
