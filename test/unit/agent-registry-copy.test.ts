/**
 * The registry's streamed copy: same bytes and SHA-256 as the source, the
 * model's kind found from operator names even when one straddles two reads,
 * and nothing left behind when the source is missing.
 */
import { afterAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
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

test("an external-data model is staged self-contained; a missing side file is FILE_NOT_FOUND naming it, nothing left behind", async () => {
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
  rmSync(staged.tmpPath);

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
