/**
 * A recalibration killed with SIGKILL (as by a power cut) in a child process
 * running `quantd job recalibrate --wait`, twice — during calibration, then
 * during the benchmark — and finished by a runner restarted in the test: it
 * resumes from its last intact stage, the store stays consistent and no
 * partial model file is left behind.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { RUNNER_LOCK_FILE } from "../../src/jobs/runner-lock.ts";
import { CHECKPOINT_FILE } from "../../src/jobs/running-job.ts";
import { RECALIBRATE_JOB, type RecalibrationResult } from "../../src/agent/recalibrate.ts";
import { jobsDir } from "../../src/agent/services.ts";
import { sha256Hex } from "../../src/core/hash.ts";
import type { Store } from "../../src/store/store.ts";
import { cliMain, envWithoutQuantd } from "../helpers/run-cli.ts";
import { FAST_PARAMS, type JobEnv, jobEnv, openTestStore, seedSamples, tempDir } from "./jobs-harness.ts";

/** Starts `quantd job recalibrate --wait` on the queued job `id`. */
function startChild(stateDir: string, id: string): { child: ChildProcess; output: () => string } {
  const child = spawn("bun", [cliMain, "job", "recalibrate", "--state-dir", stateDir, "--id", id, "--wait"], {
    env: envWithoutQuantd(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  return { child, output: () => out };
}

async function killAtStage(
  store: Store,
  id: string,
  stages: readonly string[],
  child: ChildProcess,
  output: () => string,
): Promise<string> {
  const t0 = Date.now();
  for (;;) {
    const j = store.jobs.get(id);
    if (j?.state === "IN_PROGRESS" && j.stage !== null && stages.includes(j.stage)) break;
    if (child.exitCode !== null || Date.now() - t0 > 90_000) {
      throw new Error(`child ended or stalled before ${stages.join("/")}: ${output()}`);
    }
    await Bun.sleep(20);
  }
  // A little into the stage, so the kill lands mid-work rather than on the boundary.
  await Bun.sleep(300);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGKILL");
  await exited;
  return store.jobs.require(id).stage ?? "";
}

let env: JobEnv | undefined;
afterAll(async () => {
  await env?.close();
});

describe("recalibration killed mid-way", () => {
  test("SIGKILL during calibration, then during the benchmark: the restarted runner resumes and promotes; store consistent, no partial files", async () => {
    const stateDir = join(tempDir(), "state");
    const store = await openTestStore(stateDir);
    let checkpointSha = "";
    try {
      await seedSamples(store, 400);
      store.jobs.create({ id: "crash", type: RECALIBRATE_JOB, params: { ...FAST_PARAMS } });

      // 1. Killed while calibrating: only the pick is checkpointed.
      const first = startChild(stateDir, "crash");
      const stage1 = await killAtStage(store, "crash", ["calibrate"], first.child, first.output);
      expect(["calibrate", "validate"]).toContain(stage1);
      let job = store.jobs.require("crash");
      expect(job.state).toBe("IN_PROGRESS");
      expect(job.attempts).toBe(1);
      const checkpoint1 = JSON.parse(readFileSync(join(jobsDir(stateDir), "crash", CHECKPOINT_FILE), "utf8"));
      expect(Object.keys(checkpoint1)).toEqual(["pick"]);
      // The dead child's lock is still there; the next runner takes it over.
      expect(existsSync(join(jobsDir(stateDir), RUNNER_LOCK_FILE))).toBe(true);

      // 2. A new child recovers the job, recalibrates, and is killed during the benchmark.
      const second = startChild(stateDir, "crash");
      await killAtStage(store, "crash", ["benchmark"], second.child, second.output);
      job = store.jobs.require("crash");
      expect(job.state).toBe("IN_PROGRESS");
      expect(job.attempts).toBe(2);
      expect(second.output()).toContain("interrupted at stage");
      const checkpoint2 = JSON.parse(readFileSync(join(jobsDir(stateDir), "crash", CHECKPOINT_FILE), "utf8"));
      expect(Object.keys(checkpoint2).sort()).toEqual(["pick", "quantize"]);
      checkpointSha = checkpoint2.quantize.sha256;
      expect(store.models.active()?.kind).toBe("fp32");
    } finally {
      store.close();
    }

    // 3. Restarted in this process: resumes from the intact candidate, no recalibration.
    env = await jobEnv({ stateDir, seed: false });
    const recovered = env.runner.recover();
    expect(recovered.map((j) => [j.id, j.state, j.stage])).toEqual([["crash", "QUEUED", "benchmark"]]);
    const done = (await env.runner.runNext())!;
    expect(done.error).toBeNull();
    expect(done.state).toBe("SUCCEEDED");
    expect(done.attempts).toBe(3);
    const r = done.result as RecalibrationResult;
    expect(Object.keys(r.stageMs)).toEqual(["pick", "benchmark", "promote", "report"]);
    // The candidate promoted is the one the killed attempt wrote and checkpointed.
    expect(r.candidate?.sha256).toBe(checkpointSha);

    // The store is consistent: one active version, the int8 one; the database passes its integrity check.
    const s = env.store;
    expect(s.db.prepare("PRAGMA integrity_check").get()).toEqual({ integrity_check: "ok" });
    const versions = s.models.list();
    expect(versions.map((v) => [v.kind, v.state])).toEqual([
      ["int8-static", "active"],
      ["fp32", "retired"],
    ]);
    expect(s.jobs.list({ state: "IN_PROGRESS" })).toEqual([]);
    expect(s.outbox.peek(10).filter((m) => m.topic.endsWith("/report"))).toHaveLength(1);
    // Only whole, registered model files; no temporary files; the job's work directory is gone.
    const models = readdirSync(join(stateDir, "models")).sort();
    expect(models).toEqual(versions.map((v) => `${v.sha256}.onnx`).sort());
    for (const n of models) expect(sha256Hex(readFileSync(join(stateDir, "models", n)))).toBe(n.slice(0, 64));
    expect(readdirSync(jobsDir(stateDir)).filter((n) => n !== RUNNER_LOCK_FILE)).toEqual([]);
    expect(env.registry.activeVersion()?.kind).toBe("int8-static");
  }, 180_000);
});
