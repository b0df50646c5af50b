/**
 * The job runner's rules on a real store, with a small handler of its own
 * (stages, a checkpoint, a wait between stages) so that queueing,
 * cancellation, timeouts, shutdown and recovery are checked in milliseconds;
 * the recalibration job itself is exercised in recalibrate-*.test.ts.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { JobEngine, type JobEngineOptions } from "../../src/jobs/engine.ts";
import type { JobHandler } from "../../src/jobs/handler.ts";
import {
  acquireRunnerLock,
  RUNNER_LOCK_FILE,
  removeStaleTempFiles,
  runnerLockHolder,
} from "../../src/jobs/runner-lock.ts";
import { isQuantdError } from "../../src/errors.ts";
import type { Job } from "../../src/store/jobs.ts";
import { openSqlDatabase } from "../../src/store/open.ts";
import { databasePath, openStore, type Store } from "../../src/store/store.ts";
import { canMountTmpfs } from "../helpers/can-mount.ts";
import { until } from "../helpers/until.ts";
import { tempDir } from "./jobs-harness.ts";

const STAGES = ["one", "two", "three"] as const;

/** Three stages, `stageMs` apart; records which stages ran, resumes after the last checkpointed one. */
function stagedHandler(ran: string[], stageMs = 30): JobHandler & { active: number; maxActive: number } {
  const h = {
    active: 0,
    maxActive: 0,
    async run(ctx: Parameters<JobHandler["run"]>[0]) {
      h.active++;
      h.maxActive = Math.max(h.maxActive, h.active);
      try {
        const done = (ctx.readCheckpoint()?.["done"] as string[] | undefined) ?? [];
        for (const [i, s] of STAGES.entries()) {
          if (done.includes(s)) continue;
          ctx.stage(s, i / STAGES.length);
          await Bun.sleep(stageMs);
          ran.push(`${ctx.job.id}:${s}`);
          done.push(s);
          ctx.writeCheckpoint({ done });
        }
        return { state: "SUCCEEDED" as const, result: { stages: done } };
      } finally {
        h.active--;
      }
    },
  };
  return h;
}

let stores: Store[] = [];
const runners: JobEngine[] = [];
afterEach(async () => {
  for (const r of runners.splice(0)) await r.stop();
  for (const s of stores) s.close();
  stores = [];
});

async function setup(
  handler: JobHandler,
  extra: Partial<JobEngineOptions> = {},
): Promise<{ store: Store; runner: JobEngine; workRoot: string; dir: string }> {
  const dir = tempDir();
  const store = await openStore(databasePath(dir));
  stores.push(store);
  const workRoot = join(dir, "jobs");
  const runner = new JobEngine({
    jobs: store.jobs,
    workRoot,
    handlers: { staged: handler },
    pollMs: 20,
    ...extra,
  });
  runners.push(runner);
  return { store, runner, workRoot, dir };
}

const finished = (store: Store, id: string): boolean =>
  ["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"].includes(store.jobs.require(id).state);

describe("job runner", () => {
  test("queued jobs run one at a time, oldest first, each stage persisted; work dirs removed", async () => {
    const ran: string[] = [];
    const handler = stagedHandler(ran);
    const seen: Job[] = [];
    const { store, runner, workRoot } = await setup(handler, { onUpdate: (j) => seen.push(j) });
    const a = store.jobs.create({ type: "staged", id: "a" });
    const b = store.jobs.create({ type: "staged", id: "b" });
    const c = store.jobs.create({ type: "staged", id: "c" });
    runner.start();
    await until(() => [a, b, c].every((j) => finished(store, j.id)), 10_000, "three jobs");
    expect(handler.maxActive).toBe(1);
    expect(ran).toEqual(["a", "b", "c"].flatMap((id) => STAGES.map((s) => `${id}:${s}`)));
    const [ja, jb, jc] = [a, b, c].map((j) => store.jobs.require(j.id));
    expect([ja!.state, jb!.state, jc!.state]).toEqual(["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]);
    expect(jb!.startedAt!).toBeGreaterThanOrEqual(ja!.finishedAt!);
    expect(jc!.startedAt!).toBeGreaterThanOrEqual(jb!.finishedAt!);
    expect(ja!.result).toEqual({ stages: [...STAGES] });
    // Every stage was recorded in the store as it started.
    expect(seen.filter((j) => j.id === "a" && j.state === "IN_PROGRESS").map((j) => j.stage)).toEqual([
      null,
      ...STAGES,
    ]);
    expect(readdirSync(workRoot).filter((n) => n !== RUNNER_LOCK_FILE)).toEqual([]);
  });

  test("cancel: a queued job fails at once and never runs; a running one stops at its next stage", async () => {
    const ran: string[] = [];
    const { store, runner } = await setup(stagedHandler(ran, 150));
    const running = store.jobs.create({ type: "staged", id: "running" });
    const queued = store.jobs.create({ type: "staged", id: "queued" });
    const p = runner.runNext();
    await until(() => store.jobs.require("running").stage === "one", 10_000, "the first stage");
    const q = runner.cancel(queued.id);
    expect(q.state).toBe("FAILED");
    expect(q.error?.code).toBe("JOB_CANCELLED");
    expect(runner.cancel(running.id).state).toBe("IN_PROGRESS");
    const done = await p;
    expect(done?.state).toBe("FAILED");
    expect(done?.error?.code).toBe("JOB_CANCELLED");
    expect(done?.stage).toBe("one");
    expect(ran).toEqual(["running:one"]);
    expect(await runner.runNext()).toBeUndefined();
    expect(ran).toEqual(["running:one"]);
  });

  test("a cancel recorded by another process (the CLI) is seen at the next stage boundary", async () => {
    const ran: string[] = [];
    const { store, runner, dir } = await setup(stagedHandler(ran, 100));
    store.jobs.create({ type: "staged", id: "x" });
    const p = runner.runNext();
    await until(() => store.jobs.require("x").stage === "one", 10_000, "the first stage");
    const other = await openStore(databasePath(dir));
    stores.push(other);
    other.jobs.cancel("x");
    const done = await p;
    expect(done?.state).toBe("FAILED");
    expect(done?.error?.code).toBe("JOB_CANCELLED");
    expect(ran).toEqual(["x:one"]);
  });

  test("a job past its timeout ends TIMED_OUT at its next stage boundary", async () => {
    const ran: string[] = [];
    const { store, runner } = await setup(stagedHandler(ran, 120), { timeoutMs: 180 });
    store.jobs.create({ type: "staged", id: "slow" });
    const done = await runner.runNext();
    expect(done?.state).toBe("TIMED_OUT");
    expect(done?.error?.code).toBe("JOB_TIMED_OUT");
    expect(ran.length).toBeLessThan(STAGES.length);
  });

  test("stop during a job requeues it; the next runner resumes after its last checkpointed stage", async () => {
    const ran: string[] = [];
    const { store, runner, workRoot } = await setup(stagedHandler(ran, 80));
    store.jobs.create({ type: "staged", id: "r" });
    runner.start();
    await until(() => store.jobs.require("r").stage === "two", 10_000, "the second stage");
    await runner.stop();
    const stopped = store.jobs.require("r");
    expect(stopped.state).toBe("QUEUED");
    expect(stopped.stage).toBe("two");
    const ran2: string[] = [];
    const next = new JobEngine({ jobs: store.jobs, workRoot, handlers: { staged: stagedHandler(ran2, 10) } });
    runners.push(next);
    const done = await next.runNext();
    expect(done?.state).toBe("SUCCEEDED");
    expect(done?.attempts).toBe(2);
    // "one" was checkpointed before the stop and is not run again.
    expect(ran).toContain("r:one");
    expect(ran2).not.toContain("r:one");
    expect(ran2).toContain("r:three");
  });

  test("stop does not wait past waitMs for a long stage: the job stays IN_PROGRESS, then is requeued at its boundary", async () => {
    const ran: string[] = [];
    const { store, runner } = await setup(stagedHandler(ran, 3000));
    store.jobs.create({ type: "staged", id: "long" });
    const p = runner.runNext();
    await until(() => store.jobs.require("long").stage === "one", 10_000, "the first stage");
    const t0 = performance.now();
    await runner.stop({ waitMs: 50 });
    // Well short of the 3 s stage, however loaded the machine.
    expect(performance.now() - t0).toBeLessThan(1500);
    expect(store.jobs.require("long").state).toBe("IN_PROGRESS");
    expect(await p).toBeUndefined();
    const j = store.jobs.require("long");
    // Stopped on entering stage two: the recorded stage is the last one begun, its checkpoint says it is done.
    expect([j.state, j.stage]).toEqual(["QUEUED", "one"]);
    expect(ran).toEqual(["long:one"]);
  });

  test("recover: a job left IN_PROGRESS by a dead process is requeued, or fails with JOB_INTERRUPTED after max attempts", async () => {
    const ran: string[] = [];
    const { store, runner, workRoot } = await setup(stagedHandler(ran, 1), { maxAttempts: 2 });
    store.jobs.create({ type: "staged", id: "crashed" });
    store.jobs.claimNext();
    store.jobs.update("crashed", { stage: "two", progress: 0.5 });
    mkdirSync(join(workRoot, "crashed"), { recursive: true });
    // A temporary file of an atomic write by a process that is gone (pid 2^22 + 1 is above Linux's pid_max default).
    const stale = ".candidate.onnx.4194305.deadbeef.tmp";
    writeFileSync(join(workRoot, "crashed", stale), "partial");
    const changed = runner.recover();
    expect(changed.map((j) => [j.id, j.state, j.stage])).toEqual([["crashed", "QUEUED", "two"]]);
    expect(existsSync(join(workRoot, "crashed", stale))).toBe(false);
    // Claimed again (attempt 2) and "crashed" again.
    expect(store.jobs.claimNext()?.attempts).toBe(2);
    const failed = runner.recover();
    expect(failed.map((j) => [j.id, j.state, j.error?.code])).toEqual([
      ["crashed", "FAILED", "JOB_INTERRUPTED"],
    ]);
    expect(existsSync(join(workRoot, "crashed"))).toBe(false);
  });

  test("jobs of a type without a handler are left in the queue for their owner, and block none of ours", async () => {
    const ran: string[] = [];
    const { store, runner } = await setup(stagedHandler(ran, 1));
    store.jobs.create({ type: "bench", id: "theirs" });
    store.jobs.create({ type: "staged", id: "ours" });
    // The engine claims only its own types (claimNext(types)): the older foreign job is skipped, not run.
    expect((await runner.runNext())?.id).toBe("ours");
    expect(ran).toEqual(["ours:one", "ours:two", "ours:three"]);
    expect(await runner.runNext()).toBeUndefined();
    expect(store.jobs.require("theirs").state).toBe("QUEUED");
    expect(store.jobs.require("ours").state).toBe("SUCCEEDED");
  });

  test("a cancel recorded by another process aborts the running job's signal without waiting for a stage", async () => {
    let sawAbort = false;
    const waiting: JobHandler = {
      async run(ctx) {
        ctx.stage("waiting", 0.1);
        // No stage boundary until the signal says stop: only the engine's watch can end it.
        await new Promise<void>((resolve) =>
          ctx.signal.addEventListener("abort", () => resolve(), { once: true }),
        );
        sawAbort = true;
        ctx.check();
        return { state: "SUCCEEDED", result: null };
      },
    };
    const { store, runner } = await setup(waiting);
    store.jobs.create({ type: "staged", id: "long" });
    const p = runner.runNext();
    await until(() => store.jobs.require("long").stage === "waiting", 10_000, "the job's stage");
    // As `quantd job cancel` in another process does: the store alone, not this engine.
    store.jobs.cancel("long");
    const done = await p;
    expect(sawAbort).toBe(true);
    expect(done?.state).toBe("FAILED");
    expect(done?.error?.code).toBe("JOB_CANCELLED");
  });

  test("report: each job this engine ends is reported once, with the handler's report form, before onUpdate", async () => {
    const order: string[] = [];
    const reported: Job[] = [];
    const handler: JobHandler = {
      reportResult: (r) => ({ slim: (r as { big: string; n: number }).n }),
      async run() {
        return { state: "SUCCEEDED", result: { big: "x".repeat(100), n: 7 } };
      },
    };
    const { store, runner } = await setup(handler, {
      report: (j) => {
        reported.push(j);
        order.push(`report ${j.id}`);
      },
      onUpdate: (j) => {
        if (j.state !== "IN_PROGRESS" && j.state !== "QUEUED") order.push(`update ${j.id} ${j.state}`);
      },
    });
    store.jobs.create({ type: "staged", id: "r1" });
    const queued = store.jobs.create({ type: "staged", id: "r2" });
    await runner.runNext();
    runner.cancel(queued.id);
    runner.cancel(queued.id);
    expect(reported.map((j) => [j.id, j.state, j.result])).toEqual([
      ["r1", "SUCCEEDED", { slim: 7 }],
      ["r2", "FAILED", null],
    ]);
    expect(order).toEqual([
      "report r1",
      "update r1 SUCCEEDED",
      "report r2",
      "update r2 FAILED",
      "update r2 FAILED",
    ]);
    // The store keeps the whole result; only the report is slimmed.
    expect(store.jobs.require("r1").result).toEqual({ big: "x".repeat(100), n: 7 });
  });

  test("queued jobs run back to back: the next is claimed when one ends, not a poll later", async () => {
    const ran: string[] = [];
    const { store, runner } = await setup(stagedHandler(ran, 1), { pollMs: 60_000 });
    for (const id of ["q1", "q2", "q3"]) store.jobs.create({ type: "staged", id });
    runner.start();
    // A minute between polls: only claiming on each job's end gets the three done in time.
    await until(() => ["q1", "q2", "q3"].every((id) => finished(store, id)), 10_000, "three jobs");
    expect(ran.filter((r) => r.endsWith(":three"))).toEqual(["q1:three", "q2:three", "q3:three"]);
  });

  test("a handler's own timeout overrides the engine's", async () => {
    const slow: JobHandler = {
      timeoutMs: 50,
      async run(ctx) {
        await Bun.sleep(200);
        ctx.check();
        return { state: "SUCCEEDED", result: null };
      },
    };
    const { store, runner } = await setup(slow, { timeoutMs: 60_000 });
    store.jobs.create({ type: "staged", id: "quick" });
    const done = await runner.runNext();
    expect(done?.state).toBe("TIMED_OUT");
    expect(done?.error?.code).toBe("JOB_TIMED_OUT");
  });

  test("runner lock: a live holder refuses a second runner; a dead holder's lock is taken over", async () => {
    const { workRoot } = await setup(stagedHandler([], 1));
    const release = acquireRunnerLock(workRoot);
    expect(runnerLockHolder(workRoot)).toBe(process.pid);
    let err: unknown;
    try {
      acquireRunnerLock(workRoot);
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "STATE_CONFLICT")).toBe(true);
    release();
    expect(runnerLockHolder(workRoot)).toBeUndefined();
    writeFileSync(join(workRoot, RUNNER_LOCK_FILE), "4194305\n");
    expect(runnerLockHolder(workRoot)).toBeUndefined();
    const again = acquireRunnerLock(workRoot);
    expect(runnerLockHolder(workRoot)).toBe(process.pid);
    again();
  });

  test("runner lock: a live pid that is not the process that took it (pid reuse) is a stale lock", async () => {
    const { workRoot } = await setup(stagedHandler([], 1));
    mkdirSync(workRoot, { recursive: true });
    // pid 1 is alive, but it is not the process that wrote this lock (another start time), nor a quantd.
    writeFileSync(join(workRoot, RUNNER_LOCK_FILE), `${JSON.stringify({ pid: 1, start: 1, boot: "x" })}\n`);
    expect(runnerLockHolder(workRoot)).toBeUndefined();
    writeFileSync(join(workRoot, RUNNER_LOCK_FILE), "1\n");
    expect(runnerLockHolder(workRoot)).toBeUndefined();
    const release = acquireRunnerLock(workRoot);
    expect(runnerLockHolder(workRoot)).toBe(process.pid);
    release();
    // Empty or torn: nobody holds it.
    writeFileSync(join(workRoot, RUNNER_LOCK_FILE), "");
    expect(runnerLockHolder(workRoot)).toBeUndefined();
    acquireRunnerLock(workRoot)();
    expect(readdirSync(workRoot)).toEqual([]);
  });

  test("runner lock: start({retryLock}) waits for a held lock with back-off and runs jobs once it is free", async () => {
    const ran: string[] = [];
    const logs: string[] = [];
    const { store, runner, workRoot } = await setup(stagedHandler(ran, 1), { log: (l) => logs.push(l) });
    const release = acquireRunnerLock(workRoot);
    store.jobs.create({ type: "staged", id: "later" });
    runner.start({ retryLock: true });
    expect(runner.running).toBe(false);
    expect(logs.join("\n")).toContain("cannot take the runner lock, retrying");
    await Bun.sleep(300);
    expect(store.jobs.require("later").state).toBe("QUEUED");
    release();
    await until(() => finished(store, "later"), 10_000);
    expect(runner.running).toBe(true);
    expect(store.jobs.require("later").state).toBe("SUCCEEDED");
    expect(logs.join("\n")).toContain("took the runner lock");
  });

  test.skipIf(!canMountTmpfs)("runner lock on a full disk: DISK_FULL and no lock file left behind", () => {
    const dir = tempDir();
    const workRoot = join(dir, "jobs");
    mkdirSync(workRoot, { recursive: true });
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4k", "tmpfs", workRoot]);
    try {
      // Fill the tmpfs so that not even a small file's first block fits.
      try {
        writeFileSync(join(workRoot, "filler"), Buffer.alloc(64 * 1024, 1));
      } catch {
        // ENOSPC: full, as wanted (the partial file stays)
      }
      let err: unknown;
      try {
        acquireRunnerLock(workRoot);
      } catch (e) {
        err = e;
      }
      expect(isQuantdError(err, "DISK_FULL")).toBe(true);
      expect(readdirSync(workRoot)).toEqual(["filler"]);
    } finally {
      execFileSync("umount", ["-l", workRoot], { stdio: "ignore" });
    }
  });

  test("a store locked by another process: stages go unrecorded, the job runs on and its end waits for the lock", async () => {
    const ran: string[] = [];
    const logs: string[] = [];
    const dir = tempDir();
    // The serving process's connection: it waits only briefly for a lock.
    const store = await openStore(databasePath(dir), { busyTimeoutMs: 20 });
    stores.push(store);
    const runner = new JobEngine({
      jobs: store.jobs,
      workRoot: join(dir, "jobs"),
      handlers: { staged: stagedHandler(ran, 30) },
      pollMs: 20,
      log: (l) => logs.push(l),
    });
    runners.push(runner);
    store.jobs.create({ type: "staged", id: "locked" });
    const other = await openSqlDatabase(databasePath(dir));
    const done = runner.runNext();
    await Bun.sleep(10);
    other.exec("BEGIN IMMEDIATE");
    await Bun.sleep(400);
    other.exec("COMMIT");
    other.close();
    const job = await done;
    expect(job?.state).toBe("SUCCEEDED");
    expect(ran).toEqual(["locked:one", "locked:two", "locked:three"]);
    expect(logs.join("\n")).toContain("not recorded: the store is locked");
  });

  test("stale temporary files of dead writers are removed, live ones and other files kept", () => {
    const dir = tempDir();
    const names = [
      ".m.onnx.4194305.0badcafe.tmp",
      `.m.onnx.${process.pid}.0badcafe.tmp`,
      ".abc.onnx.tmp-4194305-0badcafe",
      "abc.onnx",
    ];
    for (const n of names) writeFileSync(join(dir, n), "x");
    expect(removeStaleTempFiles(dir).sort()).toEqual([
      ".abc.onnx.tmp-4194305-0badcafe",
      ".m.onnx.4194305.0badcafe.tmp",
    ]);
    expect(readdirSync(dir).sort()).toEqual([`.m.onnx.${process.pid}.0badcafe.tmp`, "abc.onnx"].sort());
  });

  test("schedule: a job is queued after N new samples, once, and again after N more", async () => {
    const ran: string[] = [];
    let seen = 100;
    const { store, runner } = await setup(stagedHandler(ran, 1), {
      schedule: { job: { type: "staged" }, afterNewSamples: 50, samplesSeen: () => seen },
    });
    runner.start();
    await Bun.sleep(80);
    expect(store.jobs.list()).toHaveLength(0);
    seen = 160;
    await until(
      () => store.jobs.list().length === 1 && finished(store, store.jobs.list()[0]!.id),
      10_000,
      "a scheduled job",
    );
    const first = store.jobs.list()[0]!;
    expect(first.params["samplesSeen"]).toBe(160);
    await Bun.sleep(80);
    expect(store.jobs.list()).toHaveLength(1);
    seen = 215;
    await until(() => store.jobs.list().length === 2, 10_000, "a second scheduled job");
  });
});
