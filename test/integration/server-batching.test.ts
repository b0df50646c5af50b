/**
 * The micro-batcher's flush rules on the real model: a batch leaves the queue
 * `maxDelayMs` after its first text (not before), or at once when it reaches
 * `maxBatch` texts; one request's texts may span batches and still come back
 * in order.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { classifyOverSocket, metricValue, TEXTS, tempDir, testConfig } from "./agent-harness.ts";

let dir: string;
let agent: Agent;

beforeAll(async () => {
  dir = tempDir();
  agent = await startAgent(
    testConfig(dir, { QUANTD_BATCHING_MAX_BATCH: "4", QUANTD_BATCHING_MAX_DELAY_MS: "300" }),
    { runJobs: false },
  );
});
afterAll(async () => {
  await agent?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function batchFigures(): Promise<{ count: number; sum: number; le: (n: number) => number }> {
  const text = await (await fetch("http://localhost/metrics", { unix: agent.config.socketPath })).text();
  return {
    count: metricValue(text, "quantd_batch_size_count") ?? 0,
    sum: metricValue(text, "quantd_batch_size_sum") ?? 0,
    le: (n) => metricValue(text, `quantd_batch_size_bucket{le="${n}"}`) ?? 0,
  };
}

test("requests below maxBatch wait maxDelayMs and leave together", async () => {
  const before = await batchFigures();
  const t0 = performance.now();
  const replies = await Promise.all(
    TEXTS.slice(0, 3).map((t) => classifyOverSocket(agent.config.socketPath, [t])),
  );
  const elapsed = performance.now() - t0;
  expect(replies.every((r) => r.status === 200)).toBe(true);
  const after = await batchFigures();
  // One batch of three, flushed by the delay (a lower bound: it cannot leave earlier).
  expect(after.count - before.count).toBe(1);
  expect(after.sum - before.sum).toBe(3);
  expect(elapsed).toBeGreaterThanOrEqual(290);
});

test("a full batch leaves at once; a request larger than maxBatch spans batches in order", async () => {
  const before = await batchFigures();
  const texts = TEXTS.slice(0, 6);
  const r = await classifyOverSocket(agent.config.socketPath, texts);
  expect(r.status).toBe(200);
  const after = await batchFigures();
  // 6 texts with maxBatch 4: a full batch of 4 at once, then the other 2 once the batch ran (their
  // deadline, 300 ms after they arrived, is not restarted by the first batch).
  expect(after.count - before.count).toBe(2);
  expect(after.sum - before.sum).toBe(6);
  expect(after.le(2) - before.le(2)).toBe(1);
  const results = r.body["results"] as { label: string; logits: number[] }[];
  const single = await Promise.all(texts.map((t) => classifyOverSocket(agent.config.socketPath, [t])));
  for (const [i, s] of single.entries()) {
    expect(results[i]!.label).toBe((s.body["results"] as { label: string }[])[0]!.label);
  }
});
