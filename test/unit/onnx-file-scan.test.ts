/**
 * The framing check the registry uses to diagnose a model onnxruntime refused:
 * it reads the top-level fields only, so a huge file costs no memory, and it
 * tells a truncated model from bytes that are not ONNX at all.
 */
import { afterAll, expect, test } from "bun:test";
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QuantdError } from "../../src/errors.ts";
import { scanModelFile } from "../../src/onnx/file-scan.ts";
import { ONNX_FLOAT, tinyOnnxModel } from "../helpers/tiny-onnx.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-scan-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function codeOf(path: string): Promise<string> {
  try {
    await scanModelFile(path);
    return "ok";
  } catch (err) {
    return err instanceof QuantdError ? err.code : String(err);
  }
}

const model = tinyOnnxModel(
  [{ opType: "Identity", inputs: ["x"], outputs: ["y"] }],
  [{ name: "x", elemType: ONNX_FLOAT, dims: [1, 2] }],
  [{ name: "y", elemType: ONNX_FLOAT, dims: [1, 2] }],
);

test("a whole model passes and reports its IR version, graph and opsets", async () => {
  const path = join(dir, "ok.onnx");
  writeFileSync(path, model);
  const scan = await scanModelFile(path);
  expect(scan.bytes).toBe(model.byteLength);
  expect(scan.hasGraph).toBe(true);
  expect(scan.hasOpsetImport).toBe(true);
  expect(scan.irVersion).toBeGreaterThan(0);
});

test("a model cut anywhere is MODEL_TRUNCATED, an empty file too", async () => {
  const path = join(dir, "cut.onnx");
  for (const keep of [0, 2, Math.floor(model.byteLength / 2), model.byteLength - 1]) {
    writeFileSync(path, model.subarray(0, keep));
    expect({ keep, code: await codeOf(path) }).toEqual({ keep, code: "MODEL_TRUNCATED" });
  }
});

test("text, zeros and random bytes are MODEL_NOT_ONNX", async () => {
  const path = join(dir, "junk.onnx");
  writeFileSync(path, "this is a README, not a model\n".repeat(100));
  expect(await codeOf(path)).toBe("MODEL_NOT_ONNX");
  writeFileSync(path, Buffer.alloc(4096));
  expect(await codeOf(path)).toBe("MODEL_NOT_ONNX");
  const random = Buffer.alloc(1 << 16);
  for (let i = 0; i < random.length; i++) random[i] = (i * 2654435761) >>> 24;
  writeFileSync(path, random);
  expect(["MODEL_NOT_ONNX", "MODEL_TRUNCATED"]).toContain(await codeOf(path));
});

test("an 800 MB file is diagnosed from a few reads: resident memory does not grow with it", async () => {
  const path = join(dir, "huge.onnx");
  // Starts like a model (ir_version 8), then a graph field that claims more bytes than the file holds.
  const fd = openSync(path, "w");
  writeSync(fd, Buffer.from([0x08, 0x08, 0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
  closeSync(fd);
  truncateSync(path, 800 * 1024 * 1024);
  const before = process.memoryUsage.rss();
  expect(await codeOf(path)).toBe("MODEL_TRUNCATED");
  // 800 MB of zeros: field 0 at byte 0 is not ONNX.
  writeFileSync(path, "");
  truncateSync(path, 800 * 1024 * 1024);
  expect(await codeOf(path)).toBe("MODEL_NOT_ONNX");
  expect(process.memoryUsage.rss() - before).toBeLessThan(16 * 1024 * 1024);
});
