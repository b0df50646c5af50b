/**
 * Which fp32 model a recalibration in a serving agent starts from: the model
 * the agent serves (a model promoted by hand included), never the configured
 * one behind the operator's back, and what an agent started on an int8 model
 * does. Real agent, socket, store and quantizer (dynamic int8: no
 * calibration, so each job takes seconds).
 */
import { afterEach, describe, expect, test } from "bun:test";
import { cpSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Agent } from "../../src/agent/agent.ts";
import { startAgent } from "../../src/agent/agent.ts";
import { RECALIBRATE_JOB, type RecalibrationResult } from "../../src/agent/recalibrate.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import type { Job } from "../../src/store/jobs.ts";
import { sha256Hex } from "../../src/core/hash.ts";
import { repoRoot, shippedModelPath } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { call, classifyOverSocket, tempDir, testConfig } from "./agent-harness.ts";
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

describe("an agent started on an int8 model (`quantize --out DIR`)", () => {
  /** `quantd quantize --out DIR` of the shipped model, as a user makes it (dynamic int8: seconds). */
  async function int8Dir(dir: string): Promise<string> {
    const samples = join(dir, "samples.tsv");
    const rows = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").trim().split("\n");
    writeFileSync(samples, `${rows.slice(0, 1 + 200).join("\n")}\n`);
    const out = join(dir, "int8");
    const run = await runQuantd([
      "quantize",
      ...["--model", shippedModelPath, "--calib", samples, "--out", out, "--mode", "dynamic"],
      ...["--val-samples", "200", "--gate-on", "point", "--gate", "0.95", "--threads", "1"],
    ]);
    expect(run.code).toBe(0);
    return out;
  }

  test("recalibrates from the fp32 model its quantize-report.json names; without the report, fails saying to start on the fp32 model", async () => {
    const dir = tempDir();
    const out = await int8Dir(dir);
    const config = testConfig(dir, {}, { model: out });
    agent = await startAgent(config);
    expect(agent.registry.active()?.kind).toBe("int8-dynamic");
    await seedSamples(agent.store, 300);
    const job = await recalibrate(agent, "from-report");
    expect(job.error).toBeNull();
    const fp32Sha = sha256Hex(new Uint8Array(readFileSync(shippedModelPath)));
    expect((job.result as RecalibrationResult).report?.model.fp32.sha256).toBe(fp32Sha);
    await agent.stop();

    // The same int8 model alone (its report gone): no fp32 model is known, and the job says what to do.
    const alone = join(dir, "alone");
    cpSync(out, alone, { recursive: true });
    rmSync(join(alone, "quantize-report.json"));
    const other = testConfig(join(dir, "b"), {}, { model: alone });
    agent = await startAgent(other);
    await seedSamples(agent.store, 300);
    const failed = await recalibrate(agent, "no-base");
    expect(failed.state).toBe("FAILED");
    expect(failed.error?.code).toBe("MODEL_ALREADY_QUANTIZED");
    expect(failed.error?.message).toContain(`${join(alone, "model.onnx")} is already int8`);
    expect(failed.error?.message).toContain(
      "start the agent on the fp32 model (quantd agent --model FP32.onnx",
    );
    expect(failed.error?.message).toContain("quantd agent promote FP32.onnx");
  }, 240_000);

  test("a report naming an fp32 file that changed since: the job fails naming that file, not 'no record'", async () => {
    const dir = tempDir();
    const out = await int8Dir(dir);
    // As if the fp32 model had been overwritten after quantizing: the report's size no longer matches it.
    const reportPath = join(out, "quantize-report.json");
    const report = JSON.parse(readFileSync(reportPath, "utf8"));
    report.model.fp32.bytes += 1;
    writeFileSync(reportPath, JSON.stringify(report));
    agent = await startAgent(testConfig(dir, {}, { model: out }));
    await seedSamples(agent.store, 300);
    const failed = await recalibrate(agent, "changed-base");
    expect(failed.state).toBe("FAILED");
    expect(failed.error?.code).toBe("MODEL_ALREADY_QUANTIZED");
    expect(failed.error?.message).toContain(
      `which its quantize-report.json names, ${shippedModelPath}, but that file is gone or changed since`,
    );
  }, 240_000);
});

test("a few live requests are not compared with the samples' lengths: no length warning from 4 inputs, the log says why", async () => {
  const dir = tempDir();
  const config = testConfig(dir);
  const log: string[] = [];
  agent = await startAgent(config, { log: (l) => log.push(l) });
  await seedSamples(agent.store, 300);
  // Four long inputs: unlike the short training phrases, but four say nothing about a distribution.
  const long = "a long , winding and ultimately rewarding film that takes its time . ".repeat(12);
  for (let i = 0; i < 4; i++) expect((await classifyOverSocket(config.socketPath, [long])).status).toBe(200);
  const job = await recalibrate(agent, "few-live");
  const report = (job.result as RecalibrationResult).report!;
  expect(report.warnings.filter((w) => w.includes("live traffic"))).toEqual([]);
  expect(log.join("\n")).toContain("live traffic: 4 input(s) counted, fewer than the 200");
}, 120_000);
