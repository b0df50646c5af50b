/**
 * Drift on a real agent: an int8 model promoted with the coverage its
 * recalibration recorded (inputs up to 8 tokens), live requests longer than
 * that counted on /metrics and in the counters, the out-of-coverage texts
 * kept in the sample pool, and past `jobs.recalibrateOnDrift` a recalibration
 * queued by the agent itself, saying why.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { RECALIBRATE_JOB } from "../../src/agent/recalibrate.ts";
import { until } from "../helpers/until.ts";
import {
  call,
  classifyOverSocket,
  makeInt8Model,
  metricValue,
  tempDir,
  testConfig,
} from "./agent-harness.ts";

let dir: string;
let agent: Agent;
let sock: string;

beforeAll(async () => {
  dir = tempDir("quantd-drift-");
  const int8 = await makeInt8Model(dir);
  const config = testConfig(dir, { QUANTD_JOBS_RECALIBRATE_ON_DRIFT: "0.05" });
  agent = await startAgent(config);
  sock = config.socketPath;
  const promoted = await call(sock, "/v1/models/promote", {
    body: JSON.stringify({ path: int8, metrics: { coverage: { maxTokens: 8, basis: "calibration" } } }),
  });
  expect(promoted.status).toBe(200);
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("inputs longer than the model's calibration are counted, kept for the pool, and queue a recalibration", async () => {
  const long = (i: number) =>
    `the film number ${i} is a long , slow and thoroughly tedious affair from start to end .`;
  for (let r = 0; r < 7; r++) {
    const texts = Array.from({ length: 30 }, (_, i) => (i % 2 === 0 ? long(r * 30 + i) : "great fun ."));
    expect((await classifyOverSocket(sock, texts)).status).toBe(200);
  }
  const metrics = (await call(sock, "/metrics")).body["text"] as string;
  expect(metricValue(metrics, 'quantd_inputs_out_of_coverage_total{reason="length"}')).toBe(105);
  expect(metricValue(metrics, "quantd_input_tokens_count")).toBe(210);
  // 105 of 210 inputs (50 %) are past 8 tokens, over the 5 % limit, after the 200 the share needs.
  await until(
    () => agent.store.jobs.list({ limit: 10 }).some((j) => j.type === RECALIBRATE_JOB),
    15_000,
    "a drift recalibration",
  );
  const job = agent.store.jobs.list({ limit: 10 }).find((j) => j.type === RECALIBRATE_JOB)!;
  expect(String(job.params["trigger"])).toMatch(
    /^drift: 50\.0 % of 210 live inputs are longer than the 8 tokens/,
  );
  // The long texts went to the pool though capture is off: the recalibration calibrates on them.
  await until(() => agent.store.samples.count() >= 100, 5000, "the out-of-coverage texts in the pool");
  expect(agent.store.samples.count()).toBe(105);
}, 60_000);
