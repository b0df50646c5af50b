/**
 * `quantd bench` as a real process: flags, the table, the JSON and SVG files,
 * exit codes (0 all measured, 1 some row failed, 2 usage error).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot, shippedDevTsv, shippedModelPath } from "../helpers/paths.ts";
import { type CliRun, envWithoutQuantd, runCommand, runQuantd } from "../helpers/run-cli.ts";

function quantd(args: string[]): Promise<CliRun> {
  return runQuantd(args, { env: { ...process.env, QUANTD_DEBUG: "" } });
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "quantd-bench-cli-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

test("--runs 0 is a usage error before anything runs", async () => {
  const r = await quantd(["bench", "--model", shippedModelPath, "--runs", "0"]);
  expect(r.code).toBe(2);
  expect(r.stderr.trim()).toMatch(
    /^error USAGE: --runs must be an integer >= 1, got 0; see quantd bench --help$/,
  );
  expect(r.stdout).toBe("");
});

test("no --model is a usage error", async () => {
  const r = await quantd(["bench"]);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain("error USAGE: bench needs at least one --model");
});

test("--seq beyond the model's maximum length is a usage error before anything runs", async () => {
  const r = await quantd(["bench", "--model", shippedModelPath, "--seq", "32,1024", "--no-memory"]);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe("");
  // One line that says why, not onnxruntime's broadcast error (once logged by onnxruntime, once in the row).
  expect(r.stderr).toBe(
    `error USAGE: --seq 1024 is beyond the maximum length of model: 512 tokens (max_position_embeddings in ${join(shippedModelPath, "../config.json")}); use --seq up to 512; see quantd bench --help\n`,
  );
});

test("--json prints the results document on stdout; --json FILE (its old meaning) points to --out", async () => {
  const r = await quantd([
    "bench",
    "--model",
    shippedModelPath,
    "--seq",
    "8",
    "--threads",
    "1",
    "--runs",
    "2",
    "--warmup",
    "0",
    "--no-memory",
    "--json",
  ]);
  expect(r.code).toBe(0);
  const doc = JSON.parse(r.stdout) as { rows: { model: string; status: string; shape: { seq: number } }[] };
  expect(doc.rows.map((x) => [x.model, x.status, x.shape.seq])).toEqual([["model", "ok", 8]]);
  const old = await quantd(["bench", "--model", shippedModelPath, "--json", "results.json"]);
  expect(old.code).toBe(2);
  expect(JSON.parse(old.stdout).message).toContain("write them to a file with --out results.json");
});

test("a broken model fails its rows, the others are measured, files are written, exit 1", async () => {
  const broken = join(dir, "broken.onnx");
  writeFileSync(broken, "garbage");
  const json = join(dir, "out.json");
  const svg = join(dir, "out.svg");
  const r = await quantd([
    "bench",
    "--model",
    shippedModelPath,
    "--model",
    broken,
    "--seq",
    "16",
    "--batch",
    "1,2",
    "--threads",
    "1",
    "--runs",
    "3",
    "--warmup",
    "1",
    "--no-memory",
    "--out",
    json,
    "--plot",
    svg,
  ]);
  expect(r.code).toBe(1);
  const lines = r.stdout.trim().split("\n");
  expect(lines[0]).toMatch(/^model\s+shape\s+thr\s+p50 ms\s+p90 ms\s+p99 ms\s+seq\/s/);
  expect(lines.filter((l) => /^model\s+b[12]×s16\s+1\s+\d/.test(l))).toHaveLength(2);
  // onnxruntime says only "Protobuf parsing failed"; the file's framing says what it is.
  expect(lines.filter((l) => l.startsWith("broken") && l.includes("error MODEL_NOT_ONNX"))).toHaveLength(2);
  const doc = JSON.parse(readFileSync(json, "utf8"));
  expect(doc.rows.map((x: { model: string; status: string }) => `${x.model}:${x.status}`)).toEqual([
    "model:ok",
    "broken:error",
    "model:ok",
    "broken:error",
  ]);
  expect(existsSync(svg)).toBe(true);
  const chart = readFileSync(svg, "utf8");
  expect(chart.startsWith("<svg ")).toBe(true);
  expect(chart.match(/<rect class="bar" data-model="model"/g)).toHaveLength(2);
  // not a terminal: no carriage-return redraws, plain progress lines only
  expect(r.stderr).not.toContain("\r");
  expect(r.stderr).toContain(`wrote ${json}`);
});

test("--data adds accuracy and agreement columns; all rows measured gives exit 0", async () => {
  const tsv = join(dir, "few.tsv");
  const dev = readFileSync(shippedDevTsv, "utf8").split("\n");
  writeFileSync(tsv, `${dev.slice(0, 21).join("\n")}\n`);
  const r = await quantd([
    "bench",
    "--model",
    shippedModelPath,
    "--model",
    shippedModelPath,
    "--seq",
    "16",
    "--threads",
    "1",
    "--runs",
    "2",
    "--warmup",
    "0",
    "--no-memory",
    "--data",
    tsv,
  ]);
  expect(r.stderr).not.toContain("error");
  expect(r.code).toBe(0);
  const lines = r.stdout.trim().split("\n");
  expect(lines[0]).toMatch(/vs first\s+accuracy\s+agreement$/);
  // the same file twice: labelled apart by number, identical predictions
  expect(lines[1]).toMatch(/^sst2-bert-mini\/model#1\s+b1×s16\s+1\s.*\d+\.\d\d%\s+-$/);
  expect(lines[2]).toMatch(/^sst2-bert-mini\/model#2\s+b1×s16\s+1\s.*100\.00%$/);
  // The column with what it certifies, as the gate reads it: 20 of 20 agreeing is only ≥ 86.0 %.
  expect(r.stdout).toContain(
    "task sst2-bert-mini/model#2: classification (2 labels); vs sst2-bert-mini/model#1: sample agreement 100.0 % (≥ 86.0 % at 95 %, n = 20)\n",
  );
});

test("--threads defaults the one documented way: $QUANTD_THREADS, else the board profile's threads", async () => {
  const run = (env: Record<string, string>) =>
    runQuantd(
      [
        "bench",
        "--model",
        shippedModelPath,
        "--seq",
        "8",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-memory",
        "--json",
      ],
      { env: { ...envWithoutQuantd(), ...env } },
    );
  const threadsOf = (r: CliRun): number[] =>
    (JSON.parse(r.stdout) as { rows: { threads: number }[] }).rows.map((x) => x.threads);
  const device = await runQuantd(["device", "--json"], { env: envWithoutQuantd() });
  const profile = (JSON.parse(device.stdout) as { profile: { threads: number } }).profile.threads;
  expect(threadsOf(await run({}))).toEqual([profile]);
  expect(threadsOf(await run({ QUANTD_THREADS: "3" }))).toEqual([3]);
  const bad = await run({ QUANTD_THREADS: "lots" });
  expect(bad.code).toBe(1);
  expect(JSON.parse(bad.stdout)).toMatchObject({ code: "CONFIG_INVALID" });
}, 30_000);

test("an inference error is reported once, in quantd's words: onnxruntime logs nothing of its own", async () => {
  // A sequence beyond the position table, past the CLI's check: onnxruntime fails in the embeddings.
  const script = `
    import { createOrtSession } from ${JSON.stringify(join(repoRoot, "src/runtime/ort-session.ts"))};
    const s = await createOrtSession(${JSON.stringify(shippedModelPath)});
    const t = (v) => ({ type: "int64", dims: [1, 1024], data: new BigInt64Array(1024).fill(v) });
    try { await s.run({ input_ids: t(1n), attention_mask: t(1n), token_type_ids: t(0n) }); }
    catch (e) { console.log(e.toLine()); }`;
  const r = await runCommand(["bun", "-e", script]);
  expect(r.stderr).toBe("");
  expect(r.stdout).toStartWith("error INFERENCE_FAILED: onnxruntime failed to run the model (cause: ");
  expect(r.stdout.match(/Attempting to broadcast/g)).toHaveLength(1);
});
