/**
 * Drift on a real agent: an int8 model promoted with the coverage its
 * recalibration recorded (inputs up to 8 tokens), live requests longer than
 * that counted on /metrics and in the counters, the out-of-coverage texts
 * kept in the sample pool, and past `jobs.recalibrateOnDrift` a recalibration
 * queued by the agent itself, saying why; a pair classifier's pairs counted
 * at their joint length and kept as pairs.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { RECALIBRATE_JOB } from "../../src/agent/recalibrate.ts";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { writeTaskFixture } from "../fixtures/tasks/task-heads.ts";
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

test("a pair classifier's inputs count at the length of the two texts together; out-of-coverage pairs are kept as pairs", async () => {
  const pairDir = tempDir("quantd-drift-pairs-");
  const model = join(
    (await writeTaskFixture("pair-classification", join(pairDir, "model"))).dir,
    "model.onnx",
  );
  const config = testConfig(pairDir, { QUANTD_JOBS_RECALIBRATE_ON_DRIFT: "0.05" }, { model });
  const pairs = await startAgent(config);
  try {
    // The same weights as another version (a promotion of the serving file is a no-op), with the coverage a
    // recalibration would record: each text alone (up to 6 tokens with [CLS] and [SEP]) is within 8 tokens,
    // a pair of them is not.
    const proto = await loadModel(model);
    proto.docString = "the same pair classifier, promoted with its coverage";
    const again = join(pairDir, "again.onnx");
    await Bun.write(again, encodeModel(proto));
    const promoted = await call(config.socketPath, "/v1/models/promote", {
      body: JSON.stringify({ path: again, metrics: { coverage: { maxTokens: 8, basis: "calibration" } } }),
    });
    expect(promoted.status).toBe(200);
    const long = (i: number): [string, string] => [`a film ${i} here`, `a film ${i} there`];
    const short = (): [string, string] => ["fun", "ok"];
    for (let i = 0; i < 210; i += 2) {
      expect(Math.max(...long(i).map((t) => pairs.registry.countTokens(t)))).toBeLessThanOrEqual(8);
      expect(pairs.registry.countTokens(...long(i))).toBeGreaterThan(8);
    }
    expect(pairs.registry.countTokens(...short())).toBeLessThanOrEqual(8);
    for (let r = 0; r < 7; r++) {
      const batch = Array.from({ length: 30 }, (_, i) => (i % 2 === 0 ? long(r * 30 + i) : short()));
      const reply = await call(config.socketPath, "/v1/classify", { body: JSON.stringify({ pairs: batch }) });
      expect(reply.status).toBe(200);
    }
    const metrics = (await call(config.socketPath, "/metrics")).body["text"] as string;
    expect(metricValue(metrics, "quantd_input_tokens_count")).toBe(210);
    expect(metricValue(metrics, 'quantd_inputs_out_of_coverage_total{reason="length"}')).toBe(105);
    await until(
      () => pairs.store.jobs.list({ limit: 10 }).some((j) => j.type === RECALIBRATE_JOB),
      15_000,
      "a drift recalibration",
    );
    await until(() => pairs.store.samples.count() >= 105, 5000, "the out-of-coverage pairs in the pool");
    const kept = pairs.store.samples.pick({ n: 200, seed: 1 });
    expect(kept).toHaveLength(105);
    for (const s of kept) expect([s.text, s.pair]).toEqual(long(Number(/\d+/.exec(s.text)![0])));
  } finally {
    await pairs.stop();
    rmSync(pairDir, { recursive: true, force: true });
  }
}, 60_000);
