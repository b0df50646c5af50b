/**
 * The recalibration job on the shipped BERT-Mini with a real store, the real
 * quantizer, bench library and registry: a run that promotes an int8 model,
 * and every way it must refuse or fail without touching the serving model.
 *
 * Only two tests calibrate (the success and the gate); the others start from
 * the promoted candidate placed in a job's work directory with a checkpoint,
 * which is also how a job resumes after a crash — so they run the resume path
 * and take seconds each.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { RecalibrateJobParams } from "../../src/agent/recalibrate-params.ts";
import { RECALIBRATE_JOB, type RecalibrationResult } from "../../src/agent/recalibrate.ts";
import { jobsDir } from "../../src/agent/services.ts";
import { sha256Hex } from "../../src/core/hash.ts";
import { readBoardRecord } from "../../src/device/auto-choices.ts";
import type { Job } from "../../src/store/jobs.ts";
import { openSqlDatabase } from "../../src/store/open.ts";
import type { SqlDatabase } from "../../src/store/sql.ts";
import { databasePath } from "../../src/store/store.ts";
import { canMountTmpfs } from "../helpers/can-mount.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { FAST_PARAMS, type JobEnv, jobEnv, queueResumedJob } from "./jobs-harness.ts";

/**
 * Lines of the shipped training sample on which the fp32 model's two logits
 * are closest (|difference| below 0.05): int8 rounding flips several of them,
 * so no int8 model agrees with fp32 on 99 % of them.
 */
const AMBIGUOUS_LINES = [
  521, 3086, 2178, 1808, 1512, 2246, 2249, 3054, 1849, 8, 2666, 2746, 2615, 2105, 2794, 2795, 3814, 935, 1127,
  3694, 3695, 2313, 3014, 1632, 758, 2815, 3944, 644, 1519, 3972, 1478, 3207, 2613, 665, 737, 3162, 3857, 520,
  3892, 1339, 2917, 3625, 16, 2156, 1836, 2024, 1810, 2158, 445, 1361,
];

const SHA_FILE = /^[0-9a-f]{64}\.onnx$/;

const envs: JobEnv[] = [];
async function env(options: Parameters<typeof jobEnv>[0] = {}): Promise<JobEnv> {
  const e = await jobEnv(options);
  envs.push(e);
  return e;
}

let main: JobEnv;
let mainJob: Job;
/** The int8 model the first job promoted, and its quantizer report: the candidate of the resumed jobs. */
let candidate: Uint8Array;
let candidateReport: unknown;

beforeAll(async () => {
  main = await env();
  main.store.jobs.create({ id: "first", type: RECALIBRATE_JOB, params: { ...FAST_PARAMS } });
  mainJob = (await main.runner.runNext())!;
  const active = main.store.models.active();
  if (active !== undefined && active.kind !== "fp32") candidate = new Uint8Array(readFileSync(active.path));
  candidateReport = (mainJob.result as RecalibrationResult | null)?.report;
}, 120_000);

afterAll(async () => {
  for (const e of envs) await e.close();
});

function queueResumed(
  e: JobEnv,
  id: string,
  params: RecalibrateJobParams,
  bytes: Uint8Array = candidate,
): string {
  return queueResumedJob(e.store, e.stateDir, id, params, bytes, candidateReport);
}

/** The fp32 model is still version 1, active and serving. */
async function expectServingUnchanged(e: JobEnv): Promise<void> {
  const active = e.store.models.active();
  expect(active?.id).toBe(1);
  expect(active?.kind).toBe("fp32");
  expect(e.registry.activeVersion()?.id).toBe(1);
  const out = await e.registry.classify(["a warm , funny and moving film ."]);
  expect(out.model.version).toBe(1);
  expect(out.results[0]).toMatchObject({ task: "classification", label: expect.any(String) });
}

/** No temporary or partial files in the models dir; only whole `<sha256>.onnx` files. */
function expectModelsDirClean(e: JobEnv): string[] {
  const names = readdirSync(join(e.stateDir, "models"));
  expect(names.filter((n) => !SHA_FILE.test(n))).toEqual([]);
  for (const n of names) expect(sha256Hex(readFileSync(join(e.stateDir, "models", n)))).toBe(n.slice(0, 64));
  return names;
}

function outboxReports(e: JobEnv): Record<string, unknown>[] {
  return e.store.outbox
    .peek(100)
    .filter((m) => m.topic === "quantd/v1/test-fleet/test-device/report")
    .map((m) => JSON.parse(new TextDecoder().decode(m.payload)) as Record<string, unknown>);
}

describe("recalibration job", () => {
  test("runs to SUCCEEDED on the shipped model with 64 + 64 store samples and promotes an int8 model", async () => {
    expect(mainJob.error).toBeNull();
    expect(mainJob.state).toBe("SUCCEEDED");
    const r = mainJob.result as RecalibrationResult;
    expect(r.decision).toBe("promoted");
    expect(r.samples).toEqual({ calibration: 64, validation: 64, pool: main.store.samples.count() });
    expect(r.validation?.n).toBe(64);
    expect(r.validation?.agreement).toBeGreaterThanOrEqual(0.95);
    expect(r.validation?.agreementLower).toBeLessThan(r.validation!.agreement);
    expect(r.validation?.gate).toMatchObject({ decideOn: "point", confidence: 0.95 });
    // The fp32 logits of the held-out samples are in the store for the next candidate and the next job.
    expect(r.report?.validation?.reference).toMatchObject({ computed: 64, fromCache: 0 });
    expect(main.store.logits.count()).toBe(64);
    expect(r.validation?.gate.passed).toBe(true);
    expect(r.report?.outcome).toBe("written");
    expect(Object.keys(r.stageMs)).toEqual(["pick", "quantize", "benchmark", "promote", "report"]);
    // The int8 model is smaller and was compared with the fp32 one it replaces.
    expect(r.bench?.candidateBytes).toBeLessThan(0.35 * r.bench!.activeBytes);
    expect(r.active).toMatchObject({ version: 1, kind: "fp32" });

    const versions = main.store.models.list();
    expect(versions.map((v) => [v.id, v.kind, v.state])).toEqual([
      [2, "int8-static", "active"],
      [1, "fp32", "retired"],
    ]);
    const v2 = versions[0]!;
    expect(v2.sha256).toBe(r.candidate!.sha256);
    expect(v2.metrics["job"]).toBe("first");
    expect((v2.metrics["validation"] as { agreement: number }).agreement).toBe(r.validation!.agreement);
    expect(main.registry.activeVersion()?.id).toBe(2);
    const served = await main.registry.classify(["a gripping , beautifully acted film ."]);
    expect(served.model).toEqual({ version: 2, kind: "int8-static" });

    const bench = main.store.bench.list({ jobId: "first" });
    expect(bench.map((b) => [b.name, b.modelVersionId]).sort()).toEqual([
      ["recalibrate-active", 1],
      ["recalibrate-candidate", 2],
    ]);
    const reports = outboxReports(main);
    expect(reports).toHaveLength(1);
    expect(reports[0]).toMatchObject({
      id: "first",
      jobId: "first",
      state: "SUCCEEDED",
      type: "recalibrate",
    });
    expect((reports[0]!["result"] as { decision: string }).decision).toBe("promoted");

    expect(expectModelsDirClean(main).sort()).toEqual(versions.map((v) => `${v.sha256}.onnx`).sort());
    expect(existsSync(join(jobsDir(main.stateDir), "first"))).toBe(false);
  });

  test("gate not met: REJECTED with the quantizer's report, nothing written, the fp32 model keeps serving", async () => {
    const e = await env({ lines: AMBIGUOUS_LINES });
    e.store.jobs.create({
      id: "gate",
      type: RECALIBRATE_JOB,
      params: { ...FAST_PARAMS, samples: 16, validationSamples: 34, gate: 0.99, trialBudget: 0 },
    });
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("REJECTED");
    expect(done.error?.code).toBe("GATE_NOT_MET");
    const r = done.result as RecalibrationResult;
    expect(r.decision).toBe("rejected");
    expect(r.reasons[0]).toContain("no int8 candidate met the gate");
    expect(r.report?.outcome).toBe("gate-not-met");
    expect(r.validation?.agreement).toBeLessThan(0.99);
    expect(r.validation?.gate.passed).toBe(false);
    expect(r.bench).toBeUndefined();
    await expectServingUnchanged(e);
    expect(e.store.models.list()).toHaveLength(1);
    expect(expectModelsDirClean(e)).toHaveLength(1);
    const reports = outboxReports(e);
    expect(reports.map((m) => [m["state"], (m["error"] as { code: string }).code])).toEqual([
      ["REJECTED", "GATE_NOT_MET"],
    ]);
  }, 60_000);

  test("a validation set too small to certify the gate: REJECTED at once, saying how many samples it takes", async () => {
    const e = await env();
    e.store.jobs.create({
      id: "few",
      type: RECALIBRATE_JOB,
      params: { ...FAST_PARAMS, gate: 0.995, decideOn: "bound" },
    });
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("REJECTED");
    expect(done.error?.code).toBe("GATE_NOT_MET");
    expect(done.error?.message).toContain(
      "64 held-out samples cannot certify 99.50 % agreement at 95 % even with no flip: it takes 598; " +
        "the pool holds 400 sample(s) and this job held out 64: collect more samples (quantd collect",
    );
    // What the agent's operator can do: the job's parameters, not quantize's flags.
    expect(done.error?.message).toContain("quantd job recalibrate --validation-samples N");
    expect(JSON.stringify(done.error)).not.toContain("--validate file");
    expect((done.result as RecalibrationResult).reasons).toEqual([done.error!.message]);
    const r = done.result as RecalibrationResult;
    expect(r.samples.validation).toBe(64);
    expect(r.stageMs["quantize"]).toBeLessThan(5000);
    await expectServingUnchanged(e);
  }, 30_000);

  test("an empty sample pool: FAILED (CALIB_EMPTY) saying what to do, nothing else touched", async () => {
    const e = await env({ seed: false });
    e.store.jobs.create({ id: "empty", type: RECALIBRATE_JOB, params: { ...FAST_PARAMS } });
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("FAILED");
    expect(done.error?.code).toBe("CALIB_EMPTY");
    expect(done.error?.message).toContain("collect some first");
    await expectServingUnchanged(e);
    // A failure is reported too, once, by the runner (the handler never got to its report stage).
    expect(outboxReports(e).map((m) => [m["id"], m["state"], (m["error"] as { code: string }).code])).toEqual(
      [["empty", "FAILED", "CALIB_EMPTY"]],
    );
  }, 30_000);

  test("resumes from an intact candidate: no recalibration, benchmark → promote → report", async () => {
    const e = await env();
    const sha = queueResumed(e, "resumed", FAST_PARAMS);
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("SUCCEEDED");
    const r = done.result as RecalibrationResult;
    expect(Object.keys(r.stageMs)).toEqual(["pick", "benchmark", "promote", "report"]);
    expect(e.log.some((l) => l.includes("the candidate from the previous attempt is intact"))).toBe(true);
    expect(e.store.models.active()?.sha256).toBe(sha);
  }, 60_000);

  test("two queued recalibrations run one at a time, in order; the second finds its candidate already serving", async () => {
    let inProgress = 0;
    let maxInProgress = 0;
    const e = await env({
      // Every persisted change of either job: count what the store holds IN_PROGRESS at that moment.
      onUpdate: () => {
        inProgress = e.store.jobs.list({ state: "IN_PROGRESS" }).length;
        maxInProgress = Math.max(maxInProgress, inProgress);
      },
    });
    queueResumed(e, "one", FAST_PARAMS);
    queueResumed(e, "two", FAST_PARAMS);
    e.runner.start();
    const t0 = Date.now();
    const ended = (id: string): boolean =>
      !["QUEUED", "IN_PROGRESS"].includes(e.store.jobs.require(id).state);
    while (!(ended("one") && ended("two")) && Date.now() - t0 < 50_000) await Bun.sleep(50);
    const [one, two] = [e.store.jobs.require("one"), e.store.jobs.require("two")];
    expect([one.state, two.state]).toEqual(["SUCCEEDED", "SUCCEEDED"]);
    expect(maxInProgress).toBe(1);
    expect(two.startedAt!).toBeGreaterThanOrEqual(one.finishedAt!);
    expect((one.result as RecalibrationResult).candidate?.version).toBe(2);
    // Same candidate: benchmarked against itself (now active), not promoted twice.
    expect((two.result as RecalibrationResult).active.version).toBe(2);
    expect(e.log.some((l) => l.includes("job two: resuming: the candidate was already promoted"))).toBe(true);
    expect(e.store.models.list().map((v) => v.state)).toEqual(["active", "retired"]);
  }, 60_000);

  test("slower than fp32: REJECTED (BENCH_FAILED) saying fp32 keeps serving, with the figures; the candidate recorded as rejected", async () => {
    const e = await env();
    const sha = queueResumed(e, "slow", { ...FAST_PARAMS, maxLatencyRatio: 0.01 });
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("REJECTED");
    expect(done.error?.code).toBe("BENCH_FAILED");
    const r = done.result as RecalibrationResult;
    expect(r.reasons[0]).toContain(
      "the int8 candidate is slower than fp32 on this board: fp32 keeps serving",
    );
    expect(r.reasons[0]).toContain('quantize.prefer = "size"');
    expect(r.bench?.latencyRatio).toBeGreaterThan(0.01);
    const rejected = e.store.models.getBySha256(sha);
    expect(rejected?.state).toBe("rejected");
    expect(rejected?.reason).toContain("slower");
    await expectServingUnchanged(e);
    expect(e.store.bench.list({ jobId: "slow" })).toHaveLength(2);
  }, 60_000);

  test("--mode auto where no int8 form beats fp32: REJECTED, fp32 keeps serving, and the board record says so beside the winner", async () => {
    // As the agent does: the base is the registry's copy of the served fp32 model (`<state-dir>/models/<sha>.onnx`).
    const e = await env({ agentBase: true });
    // The candidate as an auto run reports it (its quantization is checkpointed, so only the benchmark runs).
    const auto = {
      why: "this board's int8 forms",
      decision: "static/percentile/fused: fastest that met the gate",
    };
    const report = { ...(candidateReport as Record<string, unknown>), auto };
    const params = { ...FAST_PARAMS, mode: "auto" as const, maxLatencyRatio: 0.01 };
    queueResumedJob(e.store, e.stateDir, "auto-slow", params, candidate, report);
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("REJECTED");
    expect((done.result as RecalibrationResult).reasons[0]).toContain(
      "int8 forms --mode auto built beats fp32 on this board: fp32 keeps serving",
    );
    const [choice] = readBoardRecord(e.stateDir).choices;
    expect(choice).toMatchObject({ decision: auto.decision });
    expect(choice?.vsFp32).toMatch(
      /^no int8 form beats fp32 on this board \(latency ratio [\d.]+ to fp32\): fp32 keeps serving$/,
    );
    // Keyed by the registry's copy; named by the file the user gave.
    const base = e.store.models.active()!;
    expect(choice?.model).toBe(base.path);
    expect(choice?.source).toBe(shippedModelPath);
    const device = await runQuantd(["device", "--state-dir", e.stateDir]);
    expect(device.code).toBe(0);
    expect(device.stdout).toContain(`auto winner (sst2-bert-mini, ${base.sha256.slice(0, 12)})`);
    expect(device.stdout).not.toContain(`auto winner (${base.sha256}`);
    await expectServingUnchanged(e);
  }, 60_000);

  test("slower than fp32 but smaller, with prefer = size: promoted, and the log says why", async () => {
    const e = await env();
    const sha = queueResumed(e, "size", { ...FAST_PARAMS, maxLatencyRatio: 0.01, prefer: "size" });
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("SUCCEEDED");
    const r = done.result as RecalibrationResult;
    expect(r.decision).toBe("promoted");
    expect(r.bench!.latencyRatio).toBeGreaterThan(0.01);
    expect(e.store.models.active()?.sha256).toBe(sha);
    expect(e.log.some((l) => l.includes("served, as quantize.prefer = size asks"))).toBe(true);
  }, 60_000);

  test("a corrupt candidate is never promoted: one that does not load is REJECTED, the fp32 model keeps serving", async () => {
    const e = await env();
    // Truncated, with a checkpoint that matches it: it fails to load in the benchmark.
    const sha = queueResumed(
      e,
      "truncated",
      FAST_PARAMS,
      candidate.slice(0, Math.floor(candidate.byteLength / 2)),
    );
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("REJECTED");
    expect(["MODEL_TRUNCATED", "MODEL_NOT_ONNX", "MODEL_LOAD_FAILED"]).toContain(done.error?.code ?? "");
    expect(done.error?.message).toContain("candidate");
    expect(e.store.models.getBySha256(sha)?.state).toBe("rejected");
    await expectServingUnchanged(e);
  }, 60_000);

  test("a candidate changed on disk after it was checked is REJECTED (MODEL_INVALID) before it is benchmarked or promoted", async () => {
    const tampered = new Uint8Array(candidate);
    tampered[tampered.length - 100] = tampered[tampered.length - 100]! ^ 0xff;
    let path = "";
    const e = await env({
      onUpdate: (j) => {
        // Between the resume check of the candidate and its use: a disk fault or another writer.
        if (j.stage === "benchmark" && j.state === "IN_PROGRESS") writeFileSync(path, tampered);
      },
    });
    path = join(jobsDir(e.stateDir), "changed", "candidate.onnx");
    queueResumed(e, "changed", FAST_PARAMS);
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("REJECTED");
    expect(done.error?.code).toBe("MODEL_INVALID");
    expect(done.error?.message).toContain("SHA-256 mismatch");
    expect(e.store.bench.list({ jobId: "changed" })).toHaveLength(0);
    await expectServingUnchanged(e);
  }, 60_000);

  test("the models dir cannot take the new file: FAILED (FILE_WRITE_FAILED), nothing recorded, the fp32 model keeps serving", async () => {
    const e = await env();
    const sha = queueResumed(e, "unwritable", FAST_PARAMS);
    // A directory where the registry renames the candidate's copy: the rename fails as on a broken disk.
    mkdirSync(join(e.stateDir, "models", `${sha}.onnx`, "blocker"), { recursive: true });
    const done = (await e.runner.runNext())!;
    expect(done.state).toBe("FAILED");
    expect(done.error?.code).toBe("FILE_WRITE_FAILED");
    expect(e.store.models.getBySha256(sha)).toBeUndefined();
    await expectServingUnchanged(e);
    const names = readdirSync(join(e.stateDir, "models"));
    expect(names.filter((n) => n.startsWith("."))).toEqual([]);
  }, 60_000);

  const mounted: string[] = [];
  afterAll(() => {
    for (const m of mounted) execFileSync("umount", ["-l", m], { stdio: "ignore" });
  });

  test.skipIf(!canMountTmpfs)(
    "disk full (a 32 MiB tmpfs holding the fp32 model): FAILED (DISK_FULL), no partial file, the fp32 model keeps serving",
    async () => {
      const e = await env({
        beforeStart: (stateDir) => {
          const models = join(stateDir, "models");
          mkdirSync(models, { recursive: true });
          execFileSync("mount", ["-t", "tmpfs", "-o", "size=32m", "tmpfs", models]);
          mounted.push(models);
        },
      });
      const sha = queueResumed(e, "full", FAST_PARAMS);
      const done = (await e.runner.runNext())!;
      expect(done.state).toBe("FAILED");
      expect(done.error?.code).toBe("DISK_FULL");
      expect(e.store.models.getBySha256(sha)).toBeUndefined();
      await expectServingUnchanged(e);
      expect(expectModelsDirClean(e)).toHaveLength(1);
    },
    60_000,
  );

  test("database locked while promoting: FAILED (STORE_BUSY) with the reason once the lock is gone; serving continues", async () => {
    let sha = "";
    let locked: Promise<void> | undefined;
    let other: SqlDatabase | undefined;
    const e = await env({
      busyTimeoutMs: 100,
      onUpdate: (j) => {
        if (j.stage !== "promote" || j.state !== "IN_PROGRESS" || locked !== undefined || other === undefined)
          return;
        // Another process takes the write lock (synchronously, here) just before the registry records the candidate.
        const db = other;
        db.exec("BEGIN IMMEDIATE");
        locked = (async () => {
          const copy = join(e.stateDir, "models", `${sha}.onnx`);
          const t0 = Date.now();
          while (!existsSync(copy) && Date.now() - t0 < 20_000) await Bun.sleep(10);
          // The registry records the version right after the copy: its busy timeout (100 ms) has passed by now.
          await Bun.sleep(400);
          db.exec("COMMIT");
        })();
      },
    });
    other = await openSqlDatabase(databasePath(e.stateDir));
    sha = queueResumed(e, "locked", FAST_PARAMS);
    const done = (await e.runner.runNext())!;
    await locked;
    other.close();
    expect(locked).toBeDefined();
    expect(done.state).toBe("FAILED");
    expect(done.error?.code).toBe("STORE_BUSY");
    expect(e.store.models.getBySha256(sha)).toBeUndefined();
    await expectServingUnchanged(e);
  }, 60_000);
});
