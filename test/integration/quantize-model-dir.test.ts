/**
 * `quantd quantize --out DIR` as a user runs it (real processes): a
 * self-contained model directory like Optimum's (int8 model.onnx, the
 * tokenizer and config files copied beside it, the report), which `classify
 * --model DIR` then runs with no other flag; a file in a new directory gets the
 * same companions; a failed run leaves no directory behind.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeEncoderFixture } from "../fixtures/encoders/write-fixture.ts";
import { repoRoot } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";

setDefaultTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-model-dir-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const fp32Dir = join(dir, "roberta");
const samples = join(dir, "samples.tsv");
const base = (out: string, extra: string[] = []) => [
  "quantize",
  "--model",
  fp32Dir,
  "--calib",
  samples,
  "--out",
  out,
  "--samples",
  "32",
  "--val-samples",
  "200",
  // About the output directory: the point estimate decides (200 samples cannot certify 99.5 %).
  "--gate-on",
  "point",
  "--threads",
  "1",
  ...extra,
];

beforeAll(async () => {
  // RoBERTa: a byte-level BPE tokenizer and a config whose model_type decides the position ids.
  await writeEncoderFixture("roberta", fp32Dir);
  const rows = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").trim().split("\n");
  writeFileSync(samples, `${rows.slice(0, 1 + 32 + 200).join("\n")}\n`);
});

describe("quantize --out DIR", () => {
  test("writes model.onnx, the tokenizer and config files and the report; classify takes the directory alone", async () => {
    const out = join(dir, "int8");
    const run = await runQuantd(base(out));
    expect(run.stderr).not.toContain("error");
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`wrote ${join(out, "model.onnx")}`);
    expect(run.stdout).toContain("beside it: config.json, tokenizer.json, tokenizer_config.json");
    expect(readdirSync(out).sort()).toEqual([
      "config.json",
      "model.onnx",
      "quantize-report.json",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
      expect(readFileSync(join(out, f), "utf8")).toBe(readFileSync(join(fp32Dir, f), "utf8"));
    }
    const report = JSON.parse(readFileSync(join(out, "quantize-report.json"), "utf8")) as { outcome: string };
    expect(report.outcome).toBe("written");

    const text = "a gorgeous , witty , seductive movie .";
    const int8 = await runQuantd(["classify", "--model", out, "--json", text]);
    const fp32 = await runQuantd(["classify", "--model", fp32Dir, "--json", text]);
    expect(int8.stderr).toBe("");
    expect(int8.code).toBe(0);
    const label = (s: string) => (JSON.parse(s) as { results: { label: string }[] }).results[0]?.label ?? "";
    expect(["negative", "positive"]).toContain(label(int8.stdout));
    expect(label(int8.stdout)).toBe(label(fp32.stdout));

    // bench and eval take the directory too.
    const bench = await runQuantd([
      "bench",
      "--model",
      out,
      "--seq",
      "16",
      "--batch",
      "1",
      "--runs",
      "2",
      "--warmup",
      "0",
      "--json",
    ]);
    expect(bench.code).toBe(0);
    expect(JSON.stringify(JSON.parse(bench.stdout))).not.toContain("error");
  });

  test("an existing empty directory works the same", async () => {
    const out = join(dir, "existing");
    mkdirSync(out);
    const run = await runQuantd(base(out, ["--mode", "dynamic"]));
    expect(run.code).toBe(0);
    expect(existsSync(join(out, "model.onnx"))).toBe(true);
    expect(existsSync(join(out, "tokenizer.json"))).toBe(true);
  });

  test("a file in a new directory gets its companions beside it, and no report unless asked", async () => {
    const out = join(dir, "new", "int8.onnx");
    const run = await runQuantd(base(out, ["--mode", "dynamic"]));
    expect(run.code).toBe(0);
    expect(readdirSync(join(dir, "new")).sort()).toEqual([
      "config.json",
      "int8.onnx",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
    const c = await runQuantd(["classify", "--model", out, "bad"]);
    expect(c.code).toBe(0);
  });

  test("a file in an existing directory is written alone, as before", async () => {
    const out = join(dir, "plain.onnx");
    const run = await runQuantd(base(out, ["--mode", "dynamic"]));
    expect(run.code).toBe(0);
    expect(run.stdout).not.toContain("beside it");
    expect(existsSync(join(dir, "tokenizer.json"))).toBe(false);
  });

  test("a failed run leaves no new directory behind", async () => {
    const out = join(dir, "failed");
    const run = await runQuantd(base(out, ["--exclude", "/no/such/node"]));
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain("USAGE");
    expect(existsSync(out)).toBe(false);
  });
});
