/**
 * Output people read, as a user meets it from a real `quantd` process: the
 * agent's `models | promote | rollback` as tables against a real agent on its
 * socket (errors keep the file's path; a missing agent is named by its socket),
 * `collect FILE` as a positional, and `device --root` on a missing directory.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { repoRoot, shippedDevTsv } from "../helpers/paths.ts";
import { cliMain, envWithoutQuantd, runCommand, runQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";
import { call, makeInt8Model, tempDir } from "./agent-harness.ts";

const ENV = { ...envWithoutQuantd(), QUANTD_THREADS: "1" };
const quantd = (args: string[]) => runQuantd(args, { env: ENV });

let dir: string;
beforeAll(() => {
  dir = tempDir("quantd-operator-");
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("quantd agent models | promote | rollback", () => {
  test("a missing agent is named by its socket", async () => {
    const socket = join(dir, "nobody.sock");
    const r = await quantd(["agent", "models", "--state-dir", join(dir, "none"), "--socket", socket]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`error NOT_READY: no agent listens on ${socket}\n`);
    const j = await quantd([
      "agent",
      "models",
      "--state-dir",
      join(dir, "none"),
      "--socket",
      socket,
      "--json",
    ]);
    expect(JSON.parse(j.stdout)).toMatchObject({ code: "NOT_READY", details: { socket, errno: "ENOENT" } });
  });

  test("tables in human mode, full objects with --json; a broken model's error keeps its path", async () => {
    const stateDir = join(dir, "state");
    const socket = join(dir, "q.sock");
    const flags = ["--state-dir", stateDir, "--socket", socket];
    const agent = Bun.spawn(["bun", cliMain, "agent", ...flags], {
      env: ENV,
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      const int8 = await makeInt8Model(dir);
      await until(
        async () => (await call(socket, "/v2/health/ready").catch(() => undefined))?.status === 200,
        30_000,
        "the agent to be ready",
      );

      const models = await quantd(["agent", "models", ...flags]);
      expect(models.stderr).toBe("");
      expect(models.code).toBe(0);
      const lines = models.stdout.trimEnd().split("\n");
      expect(lines[0]).toMatch(/^\s+version\s+state\s+kind\s+agreement\s+p50\s+sha256/);
      expect(lines[1]).toMatch(/^\*\s+1\s+active\s+fp32\s+-\s+-\s+[0-9a-f]{12}$/);

      const truncated = join(dir, "truncated.onnx");
      writeFileSync(truncated, readFileSync(int8).subarray(0, 4000));
      const bad = await quantd(["agent", "promote", truncated, ...flags]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toStartWith("error MODEL_");
      expect(bad.stderr).toContain(truncated);

      const promoted = await quantd(["agent", "promote", int8, ...flags]);
      expect(promoted.stderr).toBe("");
      expect(promoted.code).toBe(0);
      // Version 2 is the truncated file, recorded as rejected.
      expect(promoted.stdout).toStartWith("promoted: now serving version 3\n");
      expect(promoted.stdout).toMatch(/version\s+3 \(int8-dynamic, active\)/);
      expect(promoted.stdout).toContain(`from     ${int8}\n`);

      const after = await quantd(["agent", "models", ...flags, "--json"]);
      const listed = JSON.parse(after.stdout) as {
        active: number;
        versions: { id: number; state: string }[];
      };
      expect(listed.active).toBe(3);
      expect(listed.versions.map((v) => [v.id, v.state]).sort()).toEqual([
        [1, "retired"],
        [2, "rejected"],
        [3, "active"],
      ]);
      const table = await quantd(["agent", "models", ...flags]);
      expect(table.stdout).toMatch(/^\*\s+3\s+active\s+int8-dynamic/m);
      // Its first 4000 bytes show no operator: the kind is not known, not fp32.
      expect(table.stdout).toMatch(/^\s+2\s+rejected\s+unknown\s.*MODEL_TRUNCATED/m);
      expect(table.stdout).toMatch(/^\s+1\s+retired\s+fp32/m);

      const back = await quantd(["agent", "rollback", ...flags]);
      expect(back.code).toBe(0);
      expect(back.stdout).toStartWith("rolled back: now serving version 1\n");

      // A model onnxruntime cannot load: the agent's answer carries onnxruntime's reason, and so does the CLI.
      const unloadable = join(dir, "unknown-op.onnx");
      const m = await loadModel(int8);
      m.graph.node.find((n) => n.opType === "Softmax")!.opType = "NoSuchOp";
      await saveModel(m, unloadable);
      const refused = await quantd(["agent", "promote", unloadable, ...flags]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toStartWith("error MODEL_LOAD_FAILED: ");
      expect(refused.stderr).toMatch(/\(cause: .*NoSuchOp/);

      const extra = await quantd(["agent", "models", "extra", ...flags]);
      expect(extra.code).toBe(2);
    } finally {
      agent.kill("SIGTERM");
      await agent.exited;
    }
  }, 90_000);
});

describe("quantd collect and device", () => {
  test("collect takes the file as its argument (or --file, not both)", async () => {
    const stateDir = join(dir, "collect");
    const r = await quantd(["collect", shippedDevTsv, "--state-dir", stateDir]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`read 872 samples from ${shippedDevTsv}: added 872`);
    const both = await quantd(["collect", shippedDevTsv, "--file", shippedDevTsv, "--state-dir", stateDir]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("give the sample file once");
    const none = await quantd(["collect", "--state-dir", stateDir]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("quantd collect FILE.tsv");
  }, 30_000);

  test("device --root on a missing directory is an error, on a recorded board it reads it", async () => {
    const missing = join(dir, "no-such-board");
    const r = await quantd(["device", "--root", missing]);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith(`error FILE_NOT_FOUND: --root: no directory ${missing}`);
    const board = join(dir, "board");
    mkdirSync(join(board, "proc"), { recursive: true });
    copyFileSync("/proc/cpuinfo", join(board, "proc/cpuinfo"));
    copyFileSync("/proc/meminfo", join(board, "proc/meminfo"));
    const ok = await quantd(["device", "--root", board]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^cores\s+\d+$/m);
    // bin/quantd, as the README says to run it from anywhere: relative paths from the caller's directory.
    const fromDir = await runCommand([join(repoRoot, "bin/quantd"), "device", "--root", "board"], {
      cwd: dir,
      env: ENV,
    });
    expect(fromDir.stderr).toBe("");
    expect(fromDir.stdout).toBe(ok.stdout);
  });
});
