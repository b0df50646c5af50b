/**
 * quantd's type and shape inference (`src/onnx/infer.ts`) against
 * onnxruntime's own: every node output of each graph shape quantd meets is
 * exposed as an untyped graph output, onnxruntime fills in its type and
 * shape, and inference must have found the same element type, the same rank
 * and the same fixed dims, for every tensor, with no op left unknown.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { inferTypes } from "../../src/onnx/infer.ts";
import { dataTypeName } from "../../src/onnx/tensor.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { architectureEncoderFixtures } from "../fixtures/exporters/index.ts";
import { saveOrtOptimized } from "../fixtures/exporters/ort-optimized.ts";
import { buildTransformerOptimizedBert } from "../fixtures/exporters/transformer-optimizer.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { shippedModelPath } from "../helpers/paths.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-infer-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ORT_TYPES: Record<string, string> = {
  float32: "FLOAT",
  float16: "FLOAT16",
  int64: "INT64",
  int32: "INT32",
  int8: "INT8",
  uint8: "UINT8",
  bool: "BOOL",
};

/** Compares inference with onnxruntime's view of every node output; returns the number of tensors checked. */
async function expectAgreesWithOrt(model: ModelProto): Promise<number> {
  const inferred = inferTypes(model.graph);
  expect(inferred.unknownOps).toEqual([]);
  const declared = new Set(model.graph.output.map((o) => o.name));
  const probe: ModelProto = {
    ...model,
    graph: {
      ...model.graph,
      valueInfo: [],
      output: [
        ...model.graph.output,
        ...model.graph.node.flatMap((n) =>
          n.output.filter((o) => o !== "" && !declared.has(o)).map((name) => ({ name })),
        ),
      ],
    },
  };
  const session = await createOrtSession(encodeModel(probe), { graphOptimizationLevel: "disabled" });
  const mismatches: string[] = [];
  try {
    for (const o of session.outputs) {
      const t = inferred.types.get(o.name);
      if (t === undefined) {
        mismatches.push(`${o.name}: not inferred`);
        continue;
      }
      if (ORT_TYPES[o.type] !== dataTypeName(t.elemType)) {
        mismatches.push(`${o.name}: ${dataTypeName(t.elemType)}, onnxruntime says ${o.type}`);
      }
      if (t.shape === undefined) continue;
      if (o.dims.length !== t.shape.length) {
        mismatches.push(`${o.name}: rank ${t.shape.length}, onnxruntime says ${o.dims.length}`);
        continue;
      }
      o.dims.forEach((d, k) => {
        const mine = t.shape?.[k];
        if (typeof d === "number" && typeof mine === "number" && d !== mine) {
          mismatches.push(`${o.name}: dim ${k} is ${mine}, onnxruntime says ${d}`);
        }
      });
    }
  } finally {
    await session.release();
  }
  expect(mismatches).toEqual([]);
  return session.outputs.length;
}

const tiny = buildSyntheticBert({ ...SYNTHETIC_BERT_PRESETS.tiny });

describe("inferred types agree with onnxruntime", () => {
  test("synthetic BERT as the exporter writes it", async () => {
    expect(await expectAgreesWithOrt(tiny)).toBeGreaterThan(100);
  });
  test("synthetic BERT saved by onnxruntime's optimizer (extended: FusedMatMul, BiasGelu, FusedGemm)", async () => {
    const m = await saveOrtOptimized(tiny, "extended", join(dir, "tiny-extended.onnx"));
    expect(m.graph.node.some((n) => n.opType === "FusedMatMul")).toBe(true);
    expect(m.graph.valueInfo).toEqual([]);
    expect(await expectAgreesWithOrt(m)).toBeGreaterThan(50);
  });
  test("the Python transformer optimizer's shapes (EmbedLayerNormalization, Attention / MultiHeadAttention, SkipLayerNormalization, BiasGelu / FastGelu / Gelu)", async () => {
    for (const style of ["attention", "mha"] as const) {
      expect(
        await expectAgreesWithOrt(buildTransformerOptimizedBert(SYNTHETIC_BERT_PRESETS.tiny, style)),
      ).toBeGreaterThan(20);
    }
  });
  test("every architecture fixture saved by onnxruntime's optimizer (SkipLayerNormalization, FastGelu, Gelu, …)", async () => {
    for (const f of architectureEncoderFixtures().filter((x) => x.name.endsWith("-ort-extended"))) {
      const path = await f.build(join(dir, f.name), "");
      expect(await expectAgreesWithOrt(await loadModel(path))).toBeGreaterThan(20);
    }
  });
  test("the shipped BERT-Mini and its optimized copy", async () => {
    expect(await expectAgreesWithOrt(await loadModel(shippedModelPath))).toBeGreaterThan(100);
    const m = await saveOrtOptimized(shippedModelPath, "all", join(dir, "mini-all.onnx"));
    expect(await expectAgreesWithOrt(m)).toBeGreaterThan(100);
  });
});
