/**
 * Every bad input to the CLI gives exactly one `error CODE: message` line on
 * stderr, a non-zero exit code and no stack trace. Runs `bun src/cli/main.ts`
 * as a real process on real files (the shipped model, corrupted copies of it,
 * a model built with other input names).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { shippedDevTsv, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { type CliRun, runQuantd } from "../helpers/run-cli.ts";
import { buildModelWithOtherInputs } from "./cli-fixtures.ts";

// Each test spawns quantd and loads a real model; 5 s is too short on a busy 2-core board.
setDefaultTimeout(60_000);

function quantd(args: string[], stdin?: string): Promise<CliRun> {
  return runQuantd(args, {
    env: { ...process.env, QUANTD_DEBUG: "" },
    ...(stdin === undefined ? {} : { stdin }),
  });
}

/** Asserts the one-line error contract and returns the line. */
function expectOneError(run: CliRun, code: string, exit = 1): string {
  const lines = run.stderr.split("\n").filter((l) => l !== "");
  expect(lines).toHaveLength(1);
  const line = lines[0]!;
  expect(line).toStartWith(`error ${code}: `);
  expect(run.stderr).not.toMatch(/^ {4}at /m);
  expect(run.stdout).not.toMatch(/^ {4}at /m);
  expect(run.code).toBe(exit);
  return line;
}

let dir = "";
const file = (name: string): string => join(dir, name);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "quantd-cli-errors-"));
  // A real tokenizer beside the broken models, so that the model itself is what fails.
  for (const f of ["tokenizer.json", "tokenizer_config.json", "config.json"]) {
    copyFileSync(join(shippedModelDir, f), file(f));
  }
  writeFileSync(file("truncated.onnx"), readFileSync(shippedModelPath).subarray(0, 1000));
  writeFileSync(file("notes.onnx"), "this is a text file, not a model\n");
  writeFileSync(file("other-inputs.onnx"), buildModelWithOtherInputs());
  writeFileSync(file("malformed.tsv"), "label\tsentence\n1\ta fine line\nno tab on this line\n");
  writeFileSync(file("bad-label.tsv"), "label\tsentence\n1\tgood\nseven\tbad label\n");
  const bad = Buffer.concat([
    Buffer.from("label\tsentence\n1\tok\n0\tbroken "),
    Buffer.from([0xc3, 0x28]),
    Buffer.from("\n"),
  ]);
  writeFileSync(file("bad-utf8.tsv"), bad);
});

afterAll(() => {
  if (dir !== "") rmSync(dir, { recursive: true, force: true });
});

describe("usage errors exit 2 with a hint", () => {
  test("unknown command", async () => {
    const line = expectOneError(await quantd(["frobnicate"]), "USAGE", 2);
    expect(line).toContain('unknown command "frobnicate"');
    expect(line).toContain("see quantd --help");
  });

  test("unknown flag", async () => {
    const line = expectOneError(await quantd(["eval", "--model", shippedModelPath, "--frob"]), "USAGE", 2);
    expect(line).toContain("unknown flag --frob");
    expect(line).toContain("see quantd eval --help");
  });

  test("missing flag value, missing required flag, bad number", async () => {
    expectOneError(await quantd(["eval", "--data", shippedDevTsv, "--model"]), "USAGE", 2);
    expect(expectOneError(await quantd(["eval", "--data", shippedDevTsv]), "USAGE", 2)).toContain("--model");
    const bad = await quantd([
      "eval",
      "--model",
      shippedModelPath,
      "--data",
      shippedDevTsv,
      "--batch",
      "zero",
    ]);
    expect(expectOneError(bad, "USAGE", 2)).toContain("--batch must be an integer");
  });

  test("--json prints a usage error as JSON on stdout", async () => {
    const run = await quantd([
      "eval",
      "--json",
      "--model",
      shippedModelPath,
      "--data",
      shippedDevTsv,
      "--batch=0",
    ]);
    expect(run.code).toBe(2);
    expect(run.stderr).toBe("");
    const obj = JSON.parse(run.stdout) as { code: string; message: string };
    expect(obj.code).toBe("USAGE");
    expect(obj.message).toContain("--batch");
  });
});

describe("model files", () => {
  test("missing model file", async () => {
    const line = expectOneError(
      await quantd(["classify", "--model", file("absent.onnx"), "fine"]),
      "FILE_NOT_FOUND",
    );
    expect(line).toContain("absent.onnx");
  });

  test("truncated model", async () => {
    const run = await quantd(["eval", "--model", file("truncated.onnx"), "--data", shippedDevTsv]);
    // onnxruntime alone says "Protobuf parsing failed"; the codec tells a cut-off file from a foreign one.
    const line = expectOneError(run, "MODEL_TRUNCATED");
    expect(line).toContain("truncated.onnx");
  });

  test("a model without a tokenizer beside it points at --tokenizer", async () => {
    const alone = mkdtempSync(join(tmpdir(), "quantd-cli-alone-"));
    try {
      copyFileSync(shippedModelPath, join(alone, "model.onnx"));
      const line = expectOneError(
        await quantd(["classify", "--model", join(alone, "model.onnx"), "fine"]),
        "TOKENIZER_NOT_FOUND",
      );
      expect(line).toContain("--tokenizer");
    } finally {
      rmSync(alone, { recursive: true, force: true });
    }
  });

  test("a text file is not a model", async () => {
    expectOneError(await quantd(["classify", "--model", file("notes.onnx"), "fine"]), "MODEL_NOT_ONNX");
  });

  test("a model with other input names", async () => {
    const line = expectOneError(
      await quantd(["classify", "--model", file("other-inputs.onnx"), "fine"]),
      "MODEL_INPUTS_MISMATCH",
    );
    expect(line).toContain("input_ids");
  });

  test("--compare with a broken model is reported too", async () => {
    const run = await quantd([
      "eval",
      "--model",
      shippedModelPath,
      "--data",
      shippedDevTsv,
      "--compare",
      file("notes.onnx"),
    ]);
    expectOneError(run, "MODEL_NOT_ONNX");
  });
});

describe("data and text", () => {
  test("malformed TSV names the line", async () => {
    const line = expectOneError(
      await quantd(["eval", "--model", shippedModelPath, "--data", file("malformed.tsv")]),
      "DATA_MALFORMED",
    );
    expect(line).toContain("malformed.tsv:3");
  });

  test("a TSV with a non-numeric label", async () => {
    const line = expectOneError(
      await quantd(["eval", "--model", shippedModelPath, "--data", file("bad-label.tsv")]),
      "DATA_MALFORMED",
    );
    expect(line).toContain("bad-label.tsv:3");
  });

  test("missing TSV", async () => {
    expectOneError(
      await quantd(["eval", "--model", shippedModelPath, "--data", file("absent.tsv")]),
      "FILE_NOT_FOUND",
    );
  });

  test("invalid UTF-8 in a TSV", async () => {
    expectOneError(
      await quantd(["eval", "--model", shippedModelPath, "--data", file("bad-utf8.tsv")]),
      "TEXT_INVALID_UTF8",
    );
  });

  test("empty text", async () => {
    expectOneError(await quantd(["classify", "a good film", ""]), "TEXT_EMPTY");
    expectOneError(await quantd(["classify"], "good\n   \nbad\n"), "TEXT_EMPTY");
  });

  test("a 1 MB text", async () => {
    // Through stdin: Linux refuses a single command-line argument over 128 KiB.
    expectOneError(await quantd(["classify"], `${"a ".repeat(512 * 1024)}\n`), "TEXT_TOO_LARGE");
  });

  test("--json prints a runtime error as JSON on stdout", async () => {
    const run = await quantd(["classify", "--json", "--model", file("absent.onnx"), "fine"]);
    expect(run.code).toBe(1);
    const obj = JSON.parse(run.stdout) as { code: string };
    expect(obj.code).toBe("FILE_NOT_FOUND");
  });
});
