import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeModel, encodeModel, loadModel, saveModel } from "../../src/onnx/codec.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import type { Tensor } from "../../src/runtime/types.ts";
import { hasShared, sharedDir, sharedSkipReason, shippedModelPath } from "../helpers/paths.ts";

const tmp = mkdtempSync(join(tmpdir(), "quantd-onnx-rt-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A few fixed id sequences (CLS … SEP, with padding in the second row). */
function feeds(): Record<string, Tensor> {
  const rows = [
    [101, 1037, 2307, 3185, 1012, 102],
    [101, 2919, 999, 102, 0, 0],
  ];
  const ids = BigInt64Array.from(rows.flat(), (v) => BigInt(v));
  const mask = BigInt64Array.from(rows.flat(), (v) => (v === 0 ? 0n : 1n));
  const dims = [rows.length, rows[0]!.length];
  return {
    input_ids: { type: "int64", data: ids, dims },
    attention_mask: { type: "int64", data: mask, dims },
    token_type_ids: { type: "int64", data: new BigInt64Array(ids.length), dims },
  };
}

async function logits(path: string): Promise<Float32Array> {
  const s = await createOrtSession(path);
  try {
    const out = await s.run(feeds());
    return out["logits"]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

function expectSameGraph(a: ModelProto, b: ModelProto): void {
  expect(b.graph.node).toEqual(a.graph.node);
  expect(b.graph.input).toEqual(a.graph.input);
  expect(b.graph.output).toEqual(a.graph.output);
  expect(b.graph.valueInfo).toEqual(a.graph.valueInfo);
  expect(b.opsetImport).toEqual(a.opsetImport);
  expect(b.graph.initializer.map((t) => [t.name, t.dataType, t.dims])).toEqual(
    a.graph.initializer.map((t) => [t.name, t.dataType, t.dims]),
  );
  a.graph.initializer.forEach((t, k) => {
    const u = b.graph.initializer[k]!;
    expect(Buffer.from(u.rawData!).equals(Buffer.from(t.rawData!))).toBe(true);
  });
}

describe("shipped BERT round trip", () => {
  let original: ModelProto;
  let reference: Float32Array;

  beforeAll(async () => {
    original = await loadModel(shippedModelPath);
    reference = await logits(shippedModelPath);
  });

  test("load → save → load keeps the graph and the payloads; the file is byte-identical; ORT agrees", async () => {
    const out = join(tmp, "model.onnx");
    await saveModel(original, out);
    expect(readFileSync(out).equals(readFileSync(shippedModelPath))).toBe(true);
    const again = await loadModel(out);
    expectSameGraph(original, again);
    expect(await logits(out)).toEqual(reference);
  });

  test("with external data: small model file, aligned side file, same graph, ORT runs it from the path", async () => {
    const out = join(tmp, "ext", "model.onnx");
    rmSync(join(tmp, "ext"), { recursive: true, force: true });
    await Bun.write(join(tmp, "ext", ".keep"), "");
    await saveModel(original, out, { externalData: true });
    const side = `${out}.data`;
    expect(statSync(out).size).toBeLessThan(200_000);
    expect(statSync(side).size).toBeGreaterThan(29_000_000);

    const lazy = await loadModel(out, { loadExternalData: false });
    const external = lazy.graph.initializer.filter((t) => t.dataLocation === 1);
    expect(external.length).toBeGreaterThan(40);
    for (const t of external) {
      const offset = Number(t.externalData!.find((e) => e.key === "offset")!.value);
      expect(offset % 4096).toBe(0);
      expect(t.externalData!.find((e) => e.key === "location")!.value).toBe("model.onnx.data");
    }

    const loaded = await loadModel(out);
    expectSameGraph(original, loaded);
    expect(await logits(out)).toEqual(reference);
    // The loaded model is self-contained again: saving it inline works.
    const inline = join(tmp, "inline.onnx");
    await saveModel(loaded, inline, { externalData: false });
    expect(readFileSync(inline).equals(readFileSync(shippedModelPath))).toBe(true);
  });

  test("the in-memory model is untouched by saving with external data", async () => {
    const before = original.graph.initializer.map((t) => [t.dataLocation, t.rawData?.byteLength]);
    await saveModel(original, join(tmp, "again.onnx"), {
      externalData: { threshold: 4096, location: "w.bin" },
    });
    expect(original.graph.initializer.map((t) => [t.dataLocation, t.rawData?.byteLength])).toEqual(before);
    const small = (await loadModel(join(tmp, "again.onnx"), { loadExternalData: false })).graph.initializer;
    // 1 KiB biases stay inline under a 4 KiB threshold.
    expect(small.find((t) => t.name === "classifier.bias")!.dataLocation).toBeUndefined();
    expect(small.find((t) => t.name === "bert.pooler.dense.weight")!.dataLocation).toBe(1);
  });
});

describe("models written by other tools", () => {
  if (!hasShared) console.warn(sharedSkipReason);
  // ORT's quantizer writes through onnx's Python helpers (explicit defaults, other field habits).
  for (const file of ["model.ort-static-minmax.onnx", "model.ort-dynamic.onnx"]) {
    test.skipIf(!hasShared)(`${file} re-encodes byte-identically`, () => {
      const bytes = readFileSync(join(sharedDir, "models/sst2-bert-mini/reference", file));
      const model = decodeModel(bytes);
      expect(model.graph.node.length).toBeGreaterThan(300);
      expect(Buffer.from(encodeModel(model)).equals(bytes)).toBe(true);
    });
  }
});
