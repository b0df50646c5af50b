/**
 * The memory probe: a fresh process that loads one model, runs it a few times at
 * one shape, and prints its peak resident memory as one JSON line on stdout.
 * Spawned by `memory.ts` so that each model's figure starts from an empty
 * process and no model's allocations (or ORT arenas) count against another.
 *
 * Usage: `bun src/bench/child.ts '<MemoryProbeRequest as JSON>'`; a compiled
 * quantd executable runs {@link runMemoryProbe} itself when started with
 * {@link MEMORY_PROBE_ENV} set (it has no source tree to spawn this file from).
 */
import { readProcessMemory } from "../core/process-memory.ts";
import { QuantdError } from "../errors.ts";
import type { MemoryProbeReply, MemoryProbeRequest } from "./memory.ts";

function reply(r: MemoryProbeReply): void {
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

/** Set to `1` in the environment of a compiled quantd to make it the memory probe instead of the CLI. */
export const MEMORY_PROBE_ENV = "QUANTD_MEMORY_PROBE";

/**
 * Measures one model as the request `raw` (JSON) says and prints the answer as
 * one JSON line on stdout.
 *
 * @returns the exit code: 0 measured, 1 failed (the error is the answer), 2 a bad request
 */
export async function runMemoryProbe(raw: string | undefined): Promise<number> {
  // Taken before onnxruntime is even imported: the runtime's own cost is part of what a model costs.
  const baseline = readProcessMemory();
  let req: MemoryProbeRequest;
  try {
    req = JSON.parse(raw ?? "") as MemoryProbeRequest;
  } catch (err) {
    reply({
      ok: false,
      error: new QuantdError("USAGE", "memory probe needs a JSON request", { cause: err }).toJSON(),
    });
    return 2;
  }
  try {
    const { createOrtSession } = await import("../runtime/ort-session.ts");
    const { syntheticFeeds } = await import("./inputs.ts");
    const t0 = performance.now();
    const session = await createOrtSession(req.model, {
      intraOpThreads: req.threads,
      graphOptimizationLevel: req.graphOptimizationLevel,
    });
    const loadMs = performance.now() - t0;
    const feeds = syntheticFeeds(session.inputs, req.shape, { vocabSize: req.vocabSize, seed: req.seed });
    for (let i = 0; i < req.runs; i++) await session.run(feeds);
    const after = readProcessMemory();
    reply({
      ok: true,
      peakRssBytes: after.peakRssBytes,
      rssBytes: after.rssBytes,
      baselineRssBytes: baseline.peakRssBytes,
      loadMs,
      source: after.source,
    });
    return 0;
  } catch (err) {
    reply({ ok: false, error: QuantdError.from(err, "BENCH_FAILED").toJSON() });
    return 1;
  }
}

if (import.meta.main) process.exitCode = await runMemoryProbe(process.argv[2]);
