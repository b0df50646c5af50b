/**
 * `quantd job` as a user runs it: queue, list, show and cancel without an
 * agent, bad input, and `recalibrate --wait` while an agent serves — the
 * agent's runner (in this test process) runs the job and hot-swaps the model
 * it serves on its socket; the CLI only waits.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { acquireRunnerLock } from "../../src/jobs/runner-lock.ts";
import { jobsDir } from "../../src/agent/services.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { quantizeModel } from "../../src/quant/quantize.ts";
import { databasePath, openStore } from "../../src/store/store.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { type CliRun, envWithoutQuantd, runQuantd } from "../helpers/run-cli.ts";
import { classifyOverSocket, testConfig } from "./agent-harness.ts";
import { FAST_PARAMS, queueResumedJob, seedSamples, tempDir } from "./jobs-harness.ts";

function quantd(args: string[]): Promise<CliRun> {
  return runQuantd(args, { env: envWithoutQuantd() });
}

let agent: Agent | undefined;
afterAll(async () => {
  await agent?.stop();
});

describe("quantd job", () => {
  test("without an agent: queue (says who will run it), list, show, cancel; bad input is a usage error", async () => {
    const stateDir = join(tempDir(), "state");
    const q = await quantd(["job", "recalibrate", "--state-dir", stateDir, "--samples", "32", "--id", "j1"]);
    expect(q.code).toBe(0);
    expect(q.stdout).toContain("queued job j1 (recalibrate)");
    expect(q.stdout).toContain("no agent runs jobs in this state directory");

    const again = await quantd(["job", "recalibrate", "--state-dir", stateDir, "--id", "j1", "--json"]);
    expect(JSON.parse(again.stdout).job).toMatchObject({
      id: "j1",
      state: "QUEUED",
      params: { samples: 32 },
    });

    const list = await quantd(["job", "list", "--state-dir", stateDir]);
    expect(list.stdout).toMatch(/^j1 {2}recalibrate {2}QUEUED {2}- {2}0 %$/m);

    const cancel = await quantd(["job", "cancel", "j1", "--state-dir", stateDir]);
    expect(cancel.code).toBe(0);
    expect(cancel.stdout).toBe("job j1 cancelled before it started\n");
    const show = await quantd(["job", "show", "j1", "--state-dir", stateDir, "--json"]);
    expect(JSON.parse(show.stdout).job).toMatchObject({ state: "FAILED", error: { code: "JOB_CANCELLED" } });
    // Cancelling it again is not a silent success: it already ended.
    const twice = await quantd(["job", "cancel", "j1", "--state-dir", stateDir]);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toBe(
      "error STATE_CONFLICT: job j1 already ended FAILED; there is nothing to cancel\n",
    );

    // Ids are taken by a unique prefix, as git takes commits; an ambiguous one lists the candidates.
    for (const id of ["batch-7f3a", "batch-7e01"])
      expect((await quantd(["job", "recalibrate", "--state-dir", stateDir, "--id", id])).code).toBe(0);
    const byPrefix = await quantd(["job", "show", "batch-7f", "--state-dir", stateDir]);
    expect(byPrefix.code).toBe(0);
    expect(byPrefix.stdout).toStartWith("batch-7f3a  recalibrate  QUEUED");
    const ambiguous = await quantd(["job", "cancel", "batch-7", "--state-dir", stateDir]);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toContain(
      "error USAGE: job id prefix batch-7 is ambiguous: batch-7e01, batch-7f3a",
    );
    const cancelPrefix = await quantd(["job", "cancel", "batch-7e", "--state-dir", stateDir]);
    expect(cancelPrefix.stdout).toBe("job batch-7e01 cancelled before it started\n");

    // The gate in % (or a fraction), as quantize --gate and the fleet's rollout gate take it.
    for (const [given, id] of [
      ["99", "gate-pct"],
      ["0.99", "gate-fraction"],
    ] as const) {
      const queued = await quantd([
        "job",
        "recalibrate",
        "--gate",
        given,
        "--id",
        id,
        "--state-dir",
        stateDir,
      ]);
      expect(queued.code).toBe(0);
      const shown = await quantd(["job", "show", id, "--json", "--state-dir", stateDir]);
      expect(JSON.parse(shown.stdout)).toMatchObject({ job: { params: { gate: 0.99 } } });
    }

    const missing = await quantd(["job", "show", "nope", "--state-dir", stateDir]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("JOB_NOT_FOUND");
    for (const bad of [
      ["job", "recalibrate", "--gate", "150"],
      ["job", "recalibrate", "--method", "median"],
      ["job", "recalibrate", "--samples", "0"],
      ["job", "frobnicate"],
      ["job"],
      ["job", "show"],
    ]) {
      const r = await quantd([...bad, "--state-dir", stateDir]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("USAGE");
    }
  }, 60_000);

  test("--mode and --prefer reach the job's parameters (an auto recalibration from the CLI); bad values are usage errors", async () => {
    const stateDir = join(tempDir(), "state");
    const q = await quantd([
      ...["job", "recalibrate", "--state-dir", stateDir, "--id", "auto-1"],
      ...["--mode", "auto", "--prefer", "size", "--json"],
    ]);
    expect(q.code).toBe(0);
    expect(JSON.parse(q.stdout).job).toMatchObject({
      id: "auto-1",
      params: { mode: "auto", prefer: "size" },
    });
    for (const bad of [
      ["--mode", "fast"],
      ["--prefer", "speed"],
    ]) {
      const r = await quantd(["job", "recalibrate", ...bad, "--state-dir", stateDir]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("USAGE");
    }
  }, 60_000);

  test("--wait run here reports on the configured fleet's topic, as the agent would, with the agent's device name", async () => {
    const dir = tempDir();
    const stateDir = join(dir, "state");
    const config = join(dir, "quantd.json");
    // No broker needs to answer: the report waits in the outbox for the agent's link.
    writeFileSync(
      config,
      JSON.stringify({ fleet: { broker: "mqtt://127.0.0.1:1", fleet: "lab", device: "pi-7" } }),
    );
    // An empty pool: the job fails at its first stage, which is enough to be reported.
    const r = await quantd([
      "job",
      "recalibrate",
      "--config",
      config,
      "--state-dir",
      stateDir,
      "--id",
      "here-1",
      "--wait",
    ]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("job here-1: FAILED (CALIB_EMPTY)");
    const store = await openStore(databasePath(stateDir));
    try {
      const reports = store.outbox.peek(10).filter((m) => m.topic.endsWith("/report"));
      expect(reports.map((m) => m.topic)).toEqual(["quantd/v1/lab/pi-7/report"]);
      const body = JSON.parse(new TextDecoder().decode(reports[0]!.payload)) as Record<string, unknown>;
      expect(body).toMatchObject({
        id: "here-1",
        device: "pi-7",
        state: "FAILED",
        error: { code: "CALIB_EMPTY" },
      });
    } finally {
      store.close();
    }
  }, 60_000);

  test("--wait while another runner holds the state dir: waits, and says so when that runner goes away first", async () => {
    const stateDir = join(tempDir(), "state");
    const release = acquireRunnerLock(jobsDir(stateDir));
    const p = quantd(["job", "recalibrate", "--state-dir", stateDir, "--id", "orphan", "--wait"]);
    await Bun.sleep(1500);
    release();
    const r = await p;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`the runner of pid ${process.pid} runs it`);
    expect(r.stderr).toContain("JOB_INTERRUPTED");
    expect(r.stderr).toContain("quantd job recalibrate --id orphan --wait");
  }, 30_000);

  test("with an agent serving: `recalibrate --wait` waits for the agent's runner, which promotes and hot-swaps", async () => {
    const dir = tempDir();
    const config = testConfig(dir);
    agent = await startAgent(config);
    expect(agent.jobs).toBeDefined();
    expect((await classifyOverSocket(config.socketPath, ["fine ."])).body["model"]).toEqual({
      version: 1,
      kind: "fp32",
    });
    await seedSamples(agent.store, 300);
    // An int8 candidate already built by an attempt that was interrupted (dynamic int8: no calibration, ~2 s),
    // so this test spends its time on the hand-off, not on calibrating.
    const q = await quantizeModel(await loadModel(shippedModelPath), { type: "dynamic" });
    const file = join(dir, "int8.onnx");
    await saveModel(q.model, file);
    queueResumedJob(
      agent.store,
      config.stateDir,
      "via-agent",
      FAST_PARAMS,
      new Uint8Array(readFileSync(file)),
      undefined,
      "int8-dynamic",
    );

    const r = await quantd([
      "job",
      "recalibrate",
      "--state-dir",
      config.stateDir,
      "--id",
      "via-agent",
      "--wait",
    ]);
    expect(r.stderr).toContain(`the runner of pid ${process.pid} runs it`);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("job via-agent: SUCCEEDED");
    expect(r.stdout).toMatch(/decision\s+promoted/);
    expect(r.stdout).toMatch(/model version\s+2 \(int8-dynamic\)/);
    const served = await classifyOverSocket(config.socketPath, ["a gripping , beautifully acted film ."]);
    expect(served.body["model"]).toEqual({ version: 2, kind: "int8-dynamic" });
  }, 90_000);
});
