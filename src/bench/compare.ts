/**
 * The comparison the agent's promotion step needs: an active and a candidate
 * model under the same process conditions (same shape, threads and inputs,
 * interleaved runs, each peak memory in its own fresh process), reduced to the
 * figures a promotion rule reads.
 */
import { QuantdError } from "../errors.ts";
import { DEFAULT_RUNS, DEFAULT_WARMUP, defaultThreads } from "./defaults.ts";
import type { Shape } from "./inputs.ts";
import { type BenchRow, type BenchRowOk, runBench } from "./measure.ts";

/** Options for {@link compareCandidate}. */
export interface CompareOptions {
  /** @defaultValue batch 1, seq 128 */
  shape?: Shape;
  /** @defaultValue {@link defaultThreads} */
  threads?: number;
  /** @defaultValue {@link DEFAULT_RUNS} */
  runs?: number;
  /** @defaultValue {@link DEFAULT_WARMUP} */
  warmup?: number;
  /** Measure peak memory in child processes. @defaultValue true */
  memory?: boolean;
  /** Vocabulary size for synthetic ids. @defaultValue from the models' config.json or graph */
  vocabSize?: number;
}

/** Figures of candidate vs active. */
export interface CandidateComparison {
  active: BenchRowOk;
  candidate: BenchRowOk;
  /** Median of per-pair latency ratios candidate / active (below 1: the candidate is faster). */
  latencyRatio: number;
  /** Peak RSS candidate / active, when both were measured. */
  memoryRatio?: number;
}

/**
 * A comparison's latency ratio as it reads beside the two p50s: it is the
 * median of the interleaved runs' paired ratios, not one p50 over the other,
 * so without its name "p50 5.97 vs 6.66 ms (ratio 1.00)" reads as a
 * contradiction. One wording for the CLI, the fleet's reports and a job's reasons.
 */
export function describeLatencyRatio(ratio: number, digits = 2): string {
  return `median paired ratio ${ratio.toFixed(digits)}`;
}

function rowOk(row: BenchRow | undefined, which: string): BenchRowOk {
  if (row === undefined) throw new QuantdError("BENCH_FAILED", `no benchmark row for the ${which} model`);
  if (row.status === "error") {
    // Its causes too: onnxruntime's own reason is what says why a model did not load.
    const { cause } = QuantdError.fromJSON(row.error);
    throw new QuantdError(row.error.code, `${which} model: ${row.error.message}`, {
      details: { ...(row.error.details ?? {}), which },
      ...(cause === undefined ? {} : { cause }),
    });
  }
  return row;
}

/**
 * Benchmarks `candidatePath` against `activePath`.
 *
 * @throws the failing model's code (e.g. MODEL_LOAD_FAILED, MODEL_INPUTS_MISMATCH), naming which model
 * @throws USAGE for invalid runs, warm-up, shape or threads
 */
export async function compareCandidate(
  activePath: string,
  candidatePath: string,
  opts: CompareOptions = {},
): Promise<CandidateComparison> {
  const vocab = opts.vocabSize !== undefined ? { vocabSize: opts.vocabSize } : {};
  const result = await runBench({
    models: [
      { label: "active", path: activePath, ...vocab },
      { label: "candidate", path: candidatePath, ...vocab },
    ],
    shapes: [opts.shape ?? { batch: 1, seq: 128 }],
    threads: [opts.threads ?? defaultThreads()],
    runs: opts.runs ?? DEFAULT_RUNS,
    warmup: opts.warmup ?? DEFAULT_WARMUP,
    memory: opts.memory ?? true,
  });
  const active = rowOk(result.rows[0], "active");
  const candidate = rowOk(result.rows[1], "candidate");
  const out: CandidateComparison = { active, candidate, latencyRatio: candidate.ratio!.medianOfPairs };
  if (
    active.memory !== undefined &&
    candidate.memory !== undefined &&
    !("error" in active.memory) &&
    !("error" in candidate.memory)
  ) {
    out.memoryRatio = candidate.memory.peakRssBytes / active.memory.peakRssBytes;
  }
  return out;
}
