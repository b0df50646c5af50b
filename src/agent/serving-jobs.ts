/**
 * The jobs that act on the model a running agent serves, run by its job
 * engine: `bench` (end-to-end latency of the serving model) and `rollback`
 * (back to the previously active version). Only a serving agent registers
 * them: `quantd job --wait` has no live model to measure or swap.
 */
import { percentile } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import { parseCommand } from "../fleet/protocol.ts";
import type { JobHandler } from "../jobs/handler.ts";
import { type ModelRegistry, PROBE_TEXTS, probeInputs } from "./registry.ts";

/** The job type of the fleet's `bench` command. */
export const BENCH_JOB = "bench";
/** The job type of the fleet's `rollback` command. */
export const ROLLBACK_JOB = "rollback";

/**
 * End-to-end latency of the serving model (tokenize + run) on the probe texts
 * (pairs for a pair classifier), one batch per run.
 */
function benchHandler(registry: ModelRegistry): JobHandler {
  return {
    async run(ctx) {
      const cmd = parseCommand(BENCH_JOB, ctx.job.params);
      const runs = (cmd.name === "bench" ? cmd.params.iterations : undefined) ?? 30;
      const served = registry.active();
      const texts = served === undefined ? [...PROBE_TEXTS] : probeInputs(served.task.kind, PROBE_TEXTS);
      await registry.classify(texts);
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        // Cancelled (quantd job cancel), timed out or the agent stopping: the reason says which.
        if (ctx.signal.aborted) throw QuantdError.from(ctx.signal.reason, "JOB_CANCELLED");
        const t0 = performance.now();
        await registry.classify(texts);
        times.push(performance.now() - t0);
        if (i % 10 === 9) ctx.stage("measuring", (i + 1) / runs);
      }
      const active = registry.active();
      return {
        state: "SUCCEEDED",
        result: {
          modelVersion: active === undefined ? null : String(active.version),
          kind: active?.kind ?? null,
          task: active?.task.kind ?? null,
          batch: texts.length,
          runs,
          // Reported figures: core/stats's interpolated percentiles, as every other bench.
          p50Ms: percentile(times, 50),
          p95Ms: percentile(times, 95),
        },
      };
    },
  };
}

/** Back to the previously active version. */
function rollbackHandler(registry: ModelRegistry): JobHandler {
  return {
    async run(ctx) {
      const cmd = parseCommand(ROLLBACK_JOB, ctx.job.params);
      if (cmd.name === "rollback" && cmd.params.version !== undefined) {
        throw new QuantdError(
          "COMMAND_INVALID",
          "this agent rolls back to the previously active version only; send rollback without a version",
          { details: { key: "version" } },
        );
      }
      const v = await registry.rollback("fleet rollback command");
      return { state: "SUCCEEDED", result: { modelVersion: String(v.id), kind: v.kind, sha256: v.sha256 } };
    },
  };
}

/** The serving agent's `bench` and `rollback` handlers. */
export function servingJobHandlers(registry: ModelRegistry): Readonly<Record<string, JobHandler>> {
  return { [BENCH_JOB]: benchHandler(registry), [ROLLBACK_JOB]: rollbackHandler(registry) };
}
