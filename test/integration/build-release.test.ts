/**
 * The x64 release executable, built for real and moved away from the
 * repository (no node_modules within reach), classifies with the model shipped
 * beside it, gives the same probabilities as the CLI run from source, and runs
 * the agent (whose inference thread is a second bundled entry point).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { buildRelease } from "../../scripts/build.ts";
import { expectClose } from "../helpers/expect-close.ts";
import { hasMosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { until } from "../helpers/until.ts";
import { call, classifyOverSocket } from "./agent-harness.ts";

const REPO = resolve(import.meta.dir, "../..");
const canBuild = process.platform === "linux" && process.arch === "x64";
const work = mkdtempSync(join(tmpdir(), "quantd-build-"));
/** The release folder after the move. */
const release = join(work, "elsewhere", "quantd");
const exe = join(release, "quantd");

interface ClassifyJson {
  model: string;
  results: { label: string; probabilities: number[] }[];
}

function run(cmd: string[], cwd: string): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(cmd, {
    cwd,
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env["PATH"] ?? "" },
  });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

beforeAll(async () => {
  if (!canBuild) return;
  const built = await buildRelease({ target: "linux-x64", outDir: join(work, "out"), tarball: false });
  renameSync(join(work, "out"), join(work, "elsewhere"));
  renameSync(join(work, "elsewhere", "quantd-linux-x64"), release);
  expect(built.executable).toBe(join(work, "out", "quantd-linux-x64", "quantd"));
}, 120_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe.skipIf(!canBuild)("compiled x64 release", () => {
  test("no node_modules is reachable from the release folder", () => {
    for (let d = release; d !== dirname(d); d = dirname(d))
      expect(existsSync(join(d, "node_modules"))).toBe(false);
    expect(readdirSync(join(release, "lib")).sort()).toEqual([
      "libonnxruntime.so.1",
      "onnxruntime_binding.node",
    ]);
    expect(statSync(exe).mode & 0o111).not.toBe(0);
  }, 30_000);

  test("classify with the shipped model beside the executable matches the CLI from source", () => {
    const texts = ["a fine film", "a dull, lifeless and tedious mess"];
    const compiled = run([exe, "classify", "--json", ...texts], "/");
    expect(compiled.stderr).toBe("");
    expect(compiled.code).toBe(0);
    const got = JSON.parse(compiled.stdout) as ClassifyJson;
    expect(got.model).toBe(join(release, "calib/models/sst2-bert-mini/model.onnx"));
    expect(got.results.map((r) => r.label)).toEqual(["positive", "negative"]);

    const source = run(["bun", join(REPO, "src/cli/main.ts"), "classify", "--json", ...texts], REPO);
    expect(source.code).toBe(0);
    const want = JSON.parse(source.stdout) as ClassifyJson;
    for (let i = 0; i < texts.length; i++) {
      expectClose(got.results[i]!.probabilities, want.results[i]!.probabilities, {
        atol: 1e-6,
        what: texts[i],
      });
    }
  }, 30_000);

  test("an explicit --model path and the plain output work too", () => {
    const r = run(
      [exe, "classify", "--model", join(release, "calib/models/sst2-bert-mini"), "a fine film"],
      "/tmp",
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^positive\s+0\.\d{4}\s+a fine film\n$/);
  }, 30_000);

  test("the agent serves over its socket, inference in its worker thread, joined to a broker", async () => {
    const state = join(work, "agent-state");
    const socket = join(work, "agent.sock");
    // With a broker: the MQTT client (loaded only then) is bundled too, and the bundle prints no runtime
    // warnings (mqtt.js's own parsing of a URL string printed a url.parse() deprecation warning here).
    const broker = hasMosquitto ? await startMosquitto() : undefined;
    const fleetFlags =
      broker === undefined ? [] : ["--broker", broker.url, "--fleet", "lab", "--device", "rel"];
    const agent = Bun.spawn([exe, "agent", "--state-dir", state, "--socket", socket, ...fleetFlags], {
      cwd: "/",
      // An inference worker: its entry must have been bundled beside the CLI's.
      env: { PATH: process.env["PATH"] ?? "", QUANTD_THREADS: "1", QUANTD_INFERENCE_WORKERS: "1" },
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      await until(
        async () => {
          if (agent.exitCode !== null) throw new Error(await new Response(agent.stderr).text());
          return (await call(socket, "/v2/health/ready").catch(() => undefined))?.status === 200;
        },
        30_000,
        "the compiled agent to be ready",
      );
      const r = await classifyOverSocket(socket, ["a fine film", "a dull, lifeless and tedious mess"]);
      expect(r.status).toBe(200);
      expect((r.body["results"] as { label: string }[]).map((x) => x.label)).toEqual([
        "positive",
        "negative",
      ]);
    } finally {
      agent.kill("SIGTERM");
      expect(await agent.exited).toBe(0);
      await broker?.dispose();
    }
    const log = await new Response(agent.stderr).text();
    expect(log).toContain("stopped");
    expect(log).not.toContain("Warning");
    if (broker !== undefined) expect(log).toContain("fleet: device rel of fleet lab");
  }, 60_000);

  test("bench measures peak memory in a fresh process of the executable itself", () => {
    const out = join(work, "bench.json");
    const model = join(release, "calib/models/sst2-bert-mini/model.onnx");
    const r = run(
      [
        exe,
        "bench",
        "--model",
        model,
        "--seq",
        "16",
        "--batch",
        "1",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--out",
        out,
      ],
      "/",
    );
    expect(r.code).toBe(0);
    const rows = (
      JSON.parse(readFileSync(out, "utf8")) as {
        rows: { status: string; memory?: { peakRssBytes: number; baselineRssBytes: number } }[];
      }
    ).rows;
    expect(rows.map((x) => x.status)).toEqual(["ok"]);
    // The probe loaded the model: its peak is well above what the process held before onnxruntime.
    const m = rows[0]!.memory!;
    expect(m.peakRssBytes).toBeGreaterThan(m.baselineRssBytes + 10 * 1024 * 1024);
  }, 60_000);

  test("a recalibration runs its heavy work in a child process of the executable itself", () => {
    const state = join(work, "job-state");
    const collect = run(
      [exe, "collect", join(release, "calib/samples/sst2-dev.tsv"), "--state-dir", state],
      "/",
    );
    expect(collect.code).toBe(0);
    const r = run(
      [
        exe,
        "job",
        "recalibrate",
        "--state-dir",
        state,
        "--samples",
        "32",
        "--validation-samples",
        "200",
        "--gate",
        "0.9",
        "--gate-on",
        "point",
        "--wait",
      ],
      "/",
    );
    // Promoted: the quantize and benchmark children (QUANTD_JOB_CHILD) answered; a child that could
    // not start or died would fail the job with QUANT_FAILED / BENCH_FAILED naming its exit.
    expect(r.stderr).not.toContain("process exited");
    expect(r.stderr).not.toContain("could not start");
    expect(r.code).toBe(0);
  }, 120_000);

  test("device --json and --version run", () => {
    expect(run([exe, "--version"], "/").stdout).toMatch(/^quantd \d+\.\d+\.\d+\n$/);
    const d = run([exe, "device", "--json"], "/");
    expect(d.code).toBe(0);
    expect((JSON.parse(d.stdout) as { profile: { id: string } }).profile.id).toBe("generic-x64");
  }, 30_000);

  test("without lib/ beside it: one FILE_NOT_FOUND line naming the folder", () => {
    const lib = join(release, "lib");
    const aside = join(work, "lib-aside");
    renameSync(lib, aside);
    try {
      const r = run([exe, "classify", "a fine film"], "/");
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        `error FILE_NOT_FOUND: onnxruntime's native files are missing from ${lib} ` +
          "(onnxruntime_binding.node, libonnxruntime.so.1); the quantd executable needs the lib/ folder of its " +
          "release tarball beside it\n",
      );
    } finally {
      renameSync(aside, lib);
    }
  }, 30_000);
});
