/**
 * The graph's outline read by positioned reads: the same nodes (operator,
 * edges) and initializers (name, dims) as the decoded model, dims plain or
 * packed, for a self-contained model, an external-data one and the shipped
 * export; the same position and token-embedding tables; and no outline (not
 * an error) for a file whose framing is not a model's.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { positionTable, tokenEmbeddingTable } from "../../src/onnx/graph.ts";
import { readGraphOutline } from "../../src/onnx/graph-outline.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { shippedModelPath } from "../helpers/paths.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-outline-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function outlineOfDecoded(m: ModelProto) {
  return {
    graph: {
      node: m.graph.node.map((n) => ({ opType: n.opType, input: n.input, output: n.output })),
      initializer: m.graph.initializer.map((t) => ({ name: t.name, dims: t.dims })),
      input: m.graph.input.map((v) => ({ name: v.name, type: v.type })),
      output: m.graph.output.map((v) => ({ name: v.name, type: v.type })),
    },
  };
}

async function expectSameOutline(path: string): Promise<void> {
  const decoded = await loadModel(path, { loadExternalData: false });
  const outline = await readGraphOutline(path);
  expect(outline).toEqual(outlineOfDecoded(decoded));
  const ids = new Set(["input_ids"]);
  expect(positionTable(outline!)).toEqual(positionTable(decoded));
  expect(tokenEmbeddingTable(outline!, ids)).toEqual(tokenEmbeddingTable(decoded, ids));
  expect(positionTable(outline!)).toBeDefined();
}

test("a self-contained model written by the codec and the shipped export: the decoded model's outline", async () => {
  const path = join(dir, "synthetic.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), path);
  await expectSameOutline(path);
  await expectSameOutline(shippedModelPath);
});

test("an external-data model: its outline from model.onnx alone", async () => {
  const path = join(dir, "external.onnx");
  await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), path, {
    externalData: { location: "external.onnx_data" },
  });
  rmSync(join(dir, "external.onnx_data")); // never opened
  await expectSameOutline(path);
});

test("a truncated file, bytes that are no model, a missing file: no outline", async () => {
  const bytes = readFileSync(shippedModelPath);
  writeFileSync(join(dir, "cut.onnx"), bytes.subarray(0, Math.floor(bytes.length / 2)));
  writeFileSync(join(dir, "junk.onnx"), Buffer.alloc(4096, 0xff));
  expect(await readGraphOutline(join(dir, "cut.onnx"))).toBeUndefined();
  expect(await readGraphOutline(join(dir, "junk.onnx"))).toBeUndefined();
  expect(await readGraphOutline(join(dir, "missing.onnx"))).toBeUndefined();
});
