/**
 * The registry's streamed copy: same bytes and SHA-256 as the source, the
 * model's kind found from operator names even when one straddles two reads,
 * and nothing left behind when the source is missing.
 */
import { afterAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stageCopy } from "../../src/agent/model-files.ts";
import { detectModelKindFromBytes } from "../../src/agent/model-kind.ts";
import { QuantdError } from "../../src/errors.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { ONNX_FLOAT, tinyOnnxModel } from "../helpers/tiny-onnx.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-copy-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fileWith(name: string, marker: string, at: number, size: number): { path: string; bytes: Buffer } {
  const bytes = Buffer.alloc(size, 0x2a);
  bytes.write(marker, at, "latin1");
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes };
}

/** An operator name as a serialized NodeProto holds it: field 4 (tag 0x22), length, name. */
function opField(name: string): string {
  return `\x22${String.fromCharCode(name.length)}${name}`;
}

/** The bytes of a graph of nodes with these operators (hand-encoded, not by quantd's codec). */
function graphOf(...ops: string[]): Uint8Array {
  return tinyOnnxModel(
    ops.map((opType, i) => ({ opType, inputs: [i === 0 ? "x" : `t${i}`], outputs: [`t${i + 1}`] })),
    [{ name: "x", elemType: ONNX_FLOAT, dims: [1, 2] }],
    [{ name: `t${ops.length}`, elemType: ONNX_FLOAT, dims: [1, 2] }],
  );
}

test("a marker straddling the 1 MiB read boundary is found; bytes and hash are the source's", async () => {
  const { path, bytes } = fileWith(
    "dyn.onnx",
    opField("MatMulInteger"),
    1024 * 1024 - 5,
    3 * 1024 * 1024 + 17,
  );
  const staged = await stageCopy(path, join(dir, "models"));
  expect(staged.kind).toBe("int8-dynamic");
  expect(staged.sha256).toBe(createHash("sha256").update(bytes).digest("hex"));
  expect(readFileSync(staged.tmpPath).equals(bytes)).toBe(true);
});

test("kinds from the graph's operators, matched whole", async () => {
  expect(detectModelKindFromBytes(graphOf("DynamicQuantizeLinear", "MatMulIntegerToFloat"))).toBe(
    "int8-dynamic",
  );
  expect(detectModelKindFromBytes(graphOf("DynamicQuantizeLinear", "MatMulInteger"))).toBe("int8-dynamic");
  // quantd's default static format: fixed-scale QuantizeLinear feeding the fused MatMulIntegerToFloat.
  expect(detectModelKindFromBytes(graphOf("QuantizeLinear", "MatMulIntegerToFloat"))).toBe("int8-static");
  expect(detectModelKindFromBytes(graphOf("QuantizeLinear", "DequantizeLinear", "MatMul"))).toBe(
    "int8-static",
  );
  expect(detectModelKindFromBytes(graphOf("QLinearMatMul"))).toBe("int8-static");
  expect(detectModelKindFromBytes(graphOf("MatMul", "Gemm", "Softmax"))).toBe("fp32");
  // A name inside other text (a doc string, a tensor name) is not an operator.
  expect(detectModelKindFromBytes(Buffer.from("..DynamicQuantizeLinear..MatMulInteger.."))).toBe("fp32");
  const staticFile = fileWith("static.onnx", opField("QuantizeLinear"), 10, 100);
  expect((await stageCopy(staticFile.path, join(dir, "models"))).kind).toBe("int8-static");
});

test("a missing source is FILE_NOT_FOUND and leaves no temporary file", async () => {
  const models = join(dir, "models-empty");
  let err: unknown;
  try {
    await stageCopy(join(dir, "absent.onnx"), models);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(QuantdError);
  expect((err as QuantdError).code).toBe("FILE_NOT_FOUND");
  let left: string[] = [];
  try {
    left = readdirSync(models);
  } catch {
    // never created
  }
  expect(left).toEqual([]);
});

test("an external-data model is staged self-contained, as loaded and saved inline; a short or missing side file is MODEL_TRUNCATED or FILE_NOT_FOUND naming it, nothing left behind", async () => {
  const src = join(dir, "external");
  mkdirSync(src);
  const path = join(src, "model.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), path, {
    externalData: { location: "model.onnx_data" },
  });
  const models = join(dir, "models-external");
  const staged = await stageCopy(path, models);
  const copy = await loadModel(staged.tmpPath, { loadExternalData: false });
  expect(copy.graph.initializer.some((t) => (t.externalData ?? []).length > 0)).toBe(false);
  expect(staged.sha256).toBe(createHash("sha256").update(readFileSync(staged.tmpPath)).digest("hex"));
  expect(statSync(staged.tmpPath).mode & 0o777).toBe(0o640);

  // Its bytes are those of the model loaded whole and saved inline: the same version whichever quantd staged it.
  const whole = join(dir, "whole.onnx");
  await saveModel(await loadModel(path), whole, { externalData: false });
  expect(readFileSync(staged.tmpPath).equals(readFileSync(whole))).toBe(true);
  rmSync(staged.tmpPath);

  // A side file cut short: MODEL_TRUNCATED naming it, nothing left behind.
  truncateSync(join(src, "model.onnx_data"), statSync(join(src, "model.onnx_data")).size - 1);
  const short = await stageError(path, models);
  expect(short.code).toBe("MODEL_TRUNCATED");
  expect(short.message).toContain(join(src, "model.onnx_data"));
  expect(readdirSync(models)).toEqual([]);

  rmSync(join(src, "model.onnx_data"));
  let err: unknown;
  try {
    await stageCopy(path, models);
  } catch (e) {
    err = e;
  }
  expect((err as QuantdError).code).toBe("FILE_NOT_FOUND");
  expect((err as QuantdError).message).toContain("model.onnx_data");
  expect(readdirSync(models)).toEqual([]);
});

/** The error `stageCopy(path, models, maxBytes)` throws (fails the test when it throws none). */
async function stageError(path: string, models: string, maxBytes?: number): Promise<QuantdError> {
  try {
    await stageCopy(path, models, maxBytes);
  } catch (e) {
    return e as QuantdError;
  }
  throw new Error(`${path} was staged`);
}

/** A tiny synthetic BERT saved as `<name>/model.onnx` + `model.onnx_data`. */
async function externalDataModel(name: string): Promise<{ path: string; data: string }> {
  const src = join(dir, name);
  mkdirSync(src);
  const path = join(src, "model.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), path, {
    externalData: { location: "model.onnx_data" },
  });
  return { path, data: join(src, "model.onnx_data") };
}

test("an external data location outside the model's directory is MODEL_INVALID naming the user's file and the location (no byte copy staged)", async () => {
  const { path } = await externalDataModel("external-outside");
  // Same length, so the graph's bytes stay well formed: every tensor now points at ../odel.onnx_da.
  const bytes = readFileSync(path, "latin1").replaceAll("model.onnx_data", "../odel.onnx_da");
  writeFileSync(path, bytes, "latin1");
  const models = join(dir, "models-outside");
  const err = await stageError(path, models);
  expect(err.code).toBe("MODEL_INVALID");
  expect(err.message).toContain(path);
  expect(err.message).toContain('"../odel.onnx_da"');
  expect(readdirSync(models)).toEqual([]);
});

test("a side file that is a FIFO is refused as the model file would be (the read would wait forever), nothing left behind", async () => {
  const { path, data } = await externalDataModel("external-fifo");
  rmSync(data);
  expect(Bun.spawnSync(["mkfifo", data]).exitCode).toBe(0);
  const models = join(dir, "models-fifo");
  const err = await stageError(path, models);
  expect(err.code).toBe("FILE_UNREADABLE");
  expect(err.message).toBe(
    `external data file of ${path}: ${data} is a FIFO; only a regular file can be promoted`,
  );
  expect(readdirSync(models)).toEqual([]);
});

test("an external-data model over protobuf's 2 GiB once inlined is MODEL_TOO_LARGE up front, naming its size and the limit", async () => {
  const { path, data } = await externalDataModel("external-huge");
  // A sparse side file: 2 GiB on paper, no disk; nothing is read before the size is checked.
  truncateSync(data, 2 ** 31);
  const models = join(dir, "models-huge");
  const err = await stageError(path, models, 4 * 2 ** 30);
  expect(err.code).toBe("MODEL_TOO_LARGE");
  const bytes = 2 ** 31 + statSync(path).size;
  expect(err.message).toBe(
    `candidate model ${path} is ${bytes} bytes with its external data files; the registry keeps a version ` +
      "as one self-contained file, which protobuf limits to 2147483647 bytes",
  );
  expect(err.details).toEqual({ path, bytes, maxBytes: 2147483647 });
  expect(readdirSync(models)).toEqual([]);
});
