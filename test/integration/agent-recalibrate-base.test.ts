/**
 * Which fp32 model a recalibration in a serving agent starts from: the model
 * the agent serves (a model promoted by hand included), never the configured
 * one behind the operator's back, and what an agent started on an int8 model
 * does. Real agent, socket, store and quantizer (dynamic int8: no
 * calibration, so each job takes seconds).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Agent } from "../../src/agent/agent.ts";
import { startAgent } from "../../src/agent/agent.ts";
import { RECALIBRATE_JOB, type RecalibrationResult } from "../../src/agent/recalibrate.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import type { Job } from "../../src/store/jobs.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { call, tempDir, testConfig } from "./agent-harness.ts";
import { FAST_PARAMS, seedSamples } from "./jobs-harness.ts";

let agent: Agent | undefined;
afterEach(async () => {
  await agent?.stop();
  agent = undefined;
});

/** Another fp32 classifier of the same task: the shipped one with its first label's bias moved. */
async function otherFp32(dir: string): Promise<string> {
  const model = await loadModel(shippedModelPath);
  const bias = model.graph.initializer.find((t) => t.name === "classifier.bias")!;
  const raw = new Uint8Array(bias.rawData!);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  view.setFloat32(0, view.getFloat32(0, true) + 0.25, true);
  bias.rawData = raw;
  const out = join(dir, "other-fp32.onnx");
  await saveModel(model, out);
  return out;
}

/** Queues a dynamic recalibration in the agent and waits for it to end. */
async function recalibrate(a: Agent, id: string): Promise<Job> {
  a.store.jobs.create({
    id,
    type: RECALIBRATE_JOB,
    params: { ...FAST_PARAMS, mode: "dynamic", maxLatencyRatio: 99 },
  });
  for (;;) {
    const job = a.store.jobs.get(id);
    if (job !== undefined && ["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"].includes(job.state)) return job;
    await Bun.sleep(100);
  }
}

describe("a recalibration in the agent starts from the model it serves", () => {
  test("after a manual promote of another fp32 model: that model is quantized, and the next job starts from it again", async () => {
    const dir = tempDir();
    const config = testConfig(dir);
    agent = await startAgent(config);
    await seedSamples(agent.store, 300);
    const promoted = await call(config.socketPath, "/v1/models/promote", {
      body: JSON.stringify({ path: await otherFp32(dir) }),
    });
    expect(promoted.status).toBe(200);
    const other = agent.store.models.get(2)!;
    expect(other.state).toBe("active");

    const job = await recalibrate(agent, "after-promote");
    const result = job.result as RecalibrationResult;
    // The quantizer read the active fp32 version, not the shipped model the agent was configured with.
    expect(result.report?.model.fp32.sha256).toBe(other.sha256);
    expect(result.active.version).toBe(2);
    // (A latency bound the shared test machine cannot fail: the test is about the base, not the speed.)
    expect(job.state).toBe("SUCCEEDED");
    // The int8 version records its fp32 base: a recalibration while it serves starts from that base.
    const int8 = agent.store.models.active()!;
    expect(int8.kind).toBe("int8-dynamic");
    expect(int8.metrics["base"]).toBe(other.path);
    const again = await recalibrate(agent, "from-int8");
    expect((again.result as RecalibrationResult).report?.model.fp32.sha256).toBe(other.sha256);
  }, 240_000);
});
