/**
 * `quantd quantize` on bad input, as a user meets it (a real process): each
 * case ends with one `error CODE: …` line (or a report entry), exit code 1,
 * and nothing at --out — not even a temporary file.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { quantizeModel } from "../../src/quant/quantize.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { type CliRun, runQuantd } from "../helpers/run-cli.ts";

// Each case spawns quantd, and some load a 30 MB model; a busy 2-core machine needs the margin.
setDefaultTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-bad-input-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function quantize(args: string[]): Promise<CliRun> {
  return runQuantd(["quantize", ...args]);
}

/** The one error line quantd prints (progress lines come before it). */
function errorLine(r: CliRun): string {
  return r.stderr.trim().split("\n").at(-1) ?? "";
}

function expectNothingWritten(outDir: string, out: string): void {
  expect(existsSync(out)).toBe(false);
  expect(readdirSync(outDir).filter((f) => f.includes(".tmp") || f.startsWith("."))).toEqual([]);
}

const calibTsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");

describe("calibration samples", () => {
  test("a missing samples file is FILE_NOT_FOUND", async () => {
    const outDir = mkdtempSync(join(dir, "missing-"));
    const out = join(outDir, "int8.onnx");
    const r = await quantize(["--model", shippedModelPath, "--calib", join(dir, "nope.tsv"), "--out", out]);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/^error FILE_NOT_FOUND: .*nope\.tsv/);
    expect(r.stderr).not.toContain("    at ");
    expectNothingWritten(outDir, out);
  });

  test("an empty file and a header-only file are CALIB_EMPTY", async () => {
    for (const [name, content] of [
      ["empty.tsv", ""],
      ["header.tsv", "label\tsentence\n"],
    ] as const) {
      const path = join(dir, name);
      writeFileSync(path, content);
      const outDir = mkdtempSync(join(dir, "empty-"));
      const out = join(outDir, "int8.onnx");
      const r = await quantize(["--model", shippedModelPath, "--calib", path, "--out", out]);
      expect(r.code).toBe(1);
      expect(errorLine(r)).toMatch(/^error CALIB_EMPTY: /);
      expectNothingWritten(outDir, out);
    }
  });

  test("a single sample cannot be both calibrated on and held out: CALIB_EMPTY", async () => {
    const path = join(dir, "one.tsv");
    writeFileSync(path, "label\tsentence\n1\ta fine film\n");
    const outDir = mkdtempSync(join(dir, "one-"));
    const out = join(outDir, "int8.onnx");
    const r = await quantize(["--model", shippedModelPath, "--calib", path, "--out", out]);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/^error CALIB_EMPTY: .*at least 2/);
    expectNothingWritten(outDir, out);
  });
});

describe("output", () => {
  test("an output directory that is not a directory is FILE_WRITE_FAILED, before any work", async () => {
    const notADir = join(dir, "plain-file");
    writeFileSync(notADir, "x");
    const out = join(notADir, "int8.onnx");
    const r = await quantize(["--model", shippedModelPath, "--calib", calibTsv, "--out", out]);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/^error FILE_WRITE_FAILED: /);
    // Checked before the model is even read: no "loading" progress line.
    expect(r.stderr).not.toContain("loading");
    expect(readFileSync(notADir, "utf8")).toBe("x");
  });

  // A file in a missing directory makes that directory (quantize-model-dir.test.ts); one whose
  // ancestor is a file cannot be made, and is refused before any work.
  test("an output directory that cannot be created is FILE_WRITE_FAILED, before any work", async () => {
    const blocker = join(dir, "blocker");
    writeFileSync(blocker, "x");
    const out = join(blocker, "sub", "int8.onnx");
    const r = await quantize(["--model", shippedModelPath, "--calib", calibTsv, "--out", out]);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/^error FILE_WRITE_FAILED: /);
    expect(r.stderr).not.toContain("loading");
    expect(readFileSync(blocker, "utf8")).toBe("x");
  });

  test("--out equal to --model is refused as a usage error, the model untouched", async () => {
    const r = await quantize(["--model", shippedModelPath, "--calib", calibTsv, "--out", shippedModelPath]);
    expect(r.code).toBe(2);
    expect(errorLine(r)).toMatch(/^error USAGE: .*never overwrites/);
  });

  test("--out or --report naming a file the run reads is refused, every input untouched", async () => {
    // An external-data copy of the shipped model beside its tokenizer and config, and a samples file.
    const modelDir = mkdtempSync(join(dir, "inputs-"));
    for (const f of ["tokenizer.json", "tokenizer_config.json", "config.json"]) {
      copyFileSync(join(shippedModelDir, f), join(modelDir, f));
    }
    const model = join(modelDir, "model.onnx");
    await saveModel(await loadModel(shippedModelPath), model, {
      externalData: { location: "model.onnx_data" },
    });
    const samples = join(modelDir, "samples.tsv");
    copyFileSync(calibTsv, samples);
    const before = new Map(readdirSync(modelDir).map((f) => [f, readFileSync(join(modelDir, f))]));
    const elsewhere = join(mkdtempSync(join(dir, "elsewhere-")), "int8.onnx");
    for (const [flag, target] of [
      ["--out", "model.onnx_data"],
      ["--out", "tokenizer.json"],
      ["--out", "config.json"],
      ["--out", "samples.tsv"],
      ["--report", "model.onnx_data"],
      ["--report", "tokenizer_config.json"],
    ] as const) {
      const outArgs =
        flag === "--out"
          ? ["--out", join(modelDir, target)]
          : ["--out", elsewhere, "--report", join(modelDir, target)];
      const r = await quantize(["--model", model, "--calib", samples, "--mode", "dynamic", ...outArgs]);
      expect(r.code).toBe(2);
      expect(errorLine(r)).toMatch(
        new RegExp(`^error USAGE: ${flag} \\S*${target} is one of the files this run reads`),
      );
    }
    expect(existsSync(elsewhere)).toBe(false);
    expect(readdirSync(modelDir).sort()).toEqual([...before.keys()].sort());
    for (const [f, bytes] of before) expect(readFileSync(join(modelDir, f)).equals(bytes)).toBe(true);
  });
});

describe("models", () => {
  let int8Path = "";
  beforeAll(async () => {
    // A real int8 model, made by quantd's own quantizer (dynamic: no calibration needed).
    const fp32 = await loadModel(shippedModelPath);
    const { model } = await quantizeModel(fp32, { type: "dynamic" });
    int8Path = join(dir, "already-int8.onnx");
    await saveModel(model, int8Path);
  });

  test("an already quantized model is MODEL_ALREADY_QUANTIZED, nothing written", async () => {
    const outDir = mkdtempSync(join(dir, "already-"));
    const out = join(outDir, "int8.onnx");
    const r = await quantize([
      "--model",
      int8Path,
      "--tokenizer",
      shippedModelDir,
      "--calib",
      calibTsv,
      "--out",
      out,
    ]);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(
      /^error MODEL_ALREADY_QUANTIZED: .*(DynamicQuantizeLinear|MatMulInteger|DequantizeLinear)/,
    );
    expectNothingWritten(outDir, out);
  });

  test("a tokenizer with more tokens than the model's embedding table is TOKENIZER_INVALID, before calibration", async () => {
    // The tiny synthetic BERT has 512 rows; the shipped tokenizer 16,384 tokens. With config.json
    // (vocab_size) and without (the table's rows, read from the graph).
    const modelDir = mkdtempSync(join(dir, "vocab-"));
    const model = join(modelDir, "model.onnx");
    await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), model);
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
      copyFileSync(join(shippedModelDir, f), join(modelDir, f));
    }
    for (const [config, names] of [
      [false, /token-embedding table bert\.embeddings\.word_embeddings\.weight has 512 rows/],
      [true, /config\.json has vocab_size 512/],
    ] as const) {
      if (config) writeFileSync(join(modelDir, "config.json"), JSON.stringify({ vocab_size: 512 }));
      const outDir = mkdtempSync(join(dir, "vocab-out-"));
      const out = join(outDir, "int8.onnx");
      const r = await quantize(["--model", model, "--calib", calibTsv, "--out", out]);
      expect(r.code).toBe(1);
      expect(errorLine(r)).toMatch(
        /^error TOKENIZER_INVALID: the tokenizer in \S+ has 16384 tokens but the model's /,
      );
      expect(errorLine(r)).toMatch(names);
      expect(r.stderr).not.toContain("quantizing");
      expectNothingWritten(outDir, out);
    }
  });

  test("a file that is not ONNX is MODEL_NOT_ONNX", async () => {
    const bogus = join(dir, "bogus.onnx");
    writeFileSync(bogus, "this is not a protobuf model at all, just text");
    const outDir = mkdtempSync(join(dir, "bogus-"));
    const out = join(outDir, "int8.onnx");
    const r = await quantize([
      "--model",
      bogus,
      "--tokenizer",
      shippedModelDir,
      "--calib",
      calibTsv,
      "--out",
      out,
    ]);
    expect(r.code).toBe(1);
    expect(errorLine(r)).toMatch(/^error (MODEL_NOT_ONNX|MODEL_TRUNCATED): /);
    expectNothingWritten(outDir, out);
  });
});
