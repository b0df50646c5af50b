/**
 * The registry's streamed copy: same bytes and SHA-256 as the source, the
 * model's kind found from operator names even when one straddles two reads,
 * and nothing left behind when the source is missing.
 */
import { afterAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { detectModelKindFromBytes, stageCopy } from "../../src/agent/registry.ts";
import { QuantdError } from "../../src/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-copy-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fileWith(name: string, marker: string, at: number, size: number): { path: string; bytes: Buffer } {
  const bytes = Buffer.alloc(size, 0x2a);
  bytes.write(marker, at, "latin1");
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes };
}

test("a marker straddling the 1 MiB read boundary is found; bytes and hash are the source's", async () => {
  const { path, bytes } = fileWith("dyn.onnx", "MatMulInteger", 1024 * 1024 - 5, 3 * 1024 * 1024 + 17);
  const staged = await stageCopy(path, join(dir, "models"));
  expect(staged.kind).toBe("int8-dynamic");
  expect(staged.sha256).toBe(createHash("sha256").update(bytes).digest("hex"));
  expect(readFileSync(staged.tmpPath).equals(bytes)).toBe(true);
});

test("kinds: dynamic wins over static (DynamicQuantizeLinear holds QuantizeLinear), none is fp32", async () => {
  expect(detectModelKindFromBytes(Buffer.from("xxDynamicQuantizeLinearxx"))).toBe("int8-dynamic");
  expect(detectModelKindFromBytes(Buffer.from("..QuantizeLinear..DequantizeLinear.."))).toBe("int8-static");
  expect(detectModelKindFromBytes(Buffer.from("MatMul Gemm Softmax"))).toBe("fp32");
  const staticFile = fileWith("static.onnx", "QuantizeLinear", 10, 100);
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
