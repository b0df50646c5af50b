/**
 * Defaults of a benchmark run, in one place so the CLI, `bun run bench` and the
 * agent's promotion step agree.
 */

/**
 * Intra-op threads of the library when none are asked for: 1, so that a
 * comparison (the agent's promotion step, `bun run bench`) does not compete
 * with serving for cores. `quantd bench` defaults to the board profile's
 * threads instead.
 */
export function defaultThreads(): number {
  return 1;
}

/** Sequence lengths when none are asked for: a short and a typical sentence-pair length. */
export const DEFAULT_SEQS: readonly number[] = [32, 128];

/** Batch sizes when none are asked for: the agent serves one request at a time. */
export const DEFAULT_BATCHES: readonly number[] = [1];

/** Timed runs per row. */
export const DEFAULT_RUNS = 50;

/** Untimed warm-up runs per model and shape. */
export const DEFAULT_WARMUP = 5;
