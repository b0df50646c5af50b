/**
 * The memory probe: a fresh process that loads one model, runs it a few times at
 * one shape, and prints its peak resident memory as one JSON line on stdout.
 * Spawned by `memory.ts` so that each model's figure starts from an empty
 * process and no model's allocations (or ORT arenas) count against another.
 *
 * Usage: `bun src/bench/child.ts '<MemoryProbeRequest as JSON>'`
 */
import { QuantdError } from "../errors.ts";
import type { MemoryProbeReply, MemoryProbeRequest } from "./memory.ts";
import { readProcessMemory } from "./proc-memory.ts";

function reply(r: MemoryProbeReply): void {
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

async function main(): Promise<number> {
  // Taken before onnxruntime is even imported: the runtime's own cost is part of what a model costs.
  const baseline = readProcessMemory();
  const raw = process.argv[2];
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

process.exitCode = await main();
