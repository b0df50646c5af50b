/**
 * Our quantization parameters against onnxruntime's own: the shared reference
 * model `model.ort-static-minmax.onnx` (ORT 1.30, QDQ per-channel U8S8, MinMax
 * on calibration-128.tsv) stores, for every MatMul weight, its int8 values and
 * per-channel scales, and for every activation its uint8 scale and zero point.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { loadModel } from "../../src/onnx/codec.ts";
import { GraphIndex } from "../../src/onnx/graph.ts";
import { tensorToArray, tensorToFloat32 } from "../../src/onnx/tensor.ts";
import type { ModelProto, NodeProto } from "../../src/onnx/types.ts";
import { calibrate } from "../../src/quant/calibrate.ts";
import { computeActivationQParams, computeWeightQParams, quantizeWeights } from "../../src/quant/qparams.ts";
import { loadTokenizer } from "../../src/runtime/tokenizer.ts";
import {
  hasShared,
  sharedDir,
  sharedSkipReason,
  shippedModelDir,
  shippedModelPath,
} from "../helpers/paths.ts";

const SLOW_TEST_MS = 120_000;
const REF = resolve(sharedDir, "models/sst2-bert-mini/reference/model.ort-static-minmax.onnx");

if (!hasShared) console.warn(sharedSkipReason);

let fp32: ModelProto;
let ref: ModelProto;
let fix: GraphIndex;
let rix: GraphIndex;
let matmuls: NodeProto[];

beforeAll(async () => {
  if (!hasShared) return;
  fp32 = await loadModel(shippedModelPath);
  ref = await loadModel(REF);
  fix = new GraphIndex(fp32.graph);
  rix = new GraphIndex(ref.graph);
  matmuls = fp32.graph.node.filter((n) => n.opType === "MatMul" || n.opType === "Gemm");
}, SLOW_TEST_MS);

describe("qparams match onnxruntime's quantizer", () => {
  test.skipIf(!hasShared)("int8 per-channel weights and scales are identical", () => {
    const dequant = new Map(
      ref.graph.node.filter((n) => n.opType === "DequantizeLinear").map((n) => [n.input[0]!, n]),
    );
    let compared = 0;
    for (const mm of matmuls) {
      const name = mm.input[1]!;
      const w = fix.constant(name);
      if (w === undefined) continue;
      const refQ = rix.initializer(`${name}_quantized`);
      const dq = dequant.get(`${name}_quantized`);
      expect(refQ === undefined || dq === undefined ? `${name} missing in the reference` : "ok").toBe("ok");
      const axis = dq!.attribute.find((a) => a.name === "axis")?.i;
      const values = tensorToFloat32(w);
      const qp = computeWeightQParams(values, w.dims, { axis });
      const refScales = tensorToFloat32(rix.initializer(dq!.input[1]!)!);
      expect(qp.scales.length).toBe(refScales.length);
      expect([...qp.scales]).toEqual([...refScales]);
      const q = quantizeWeights(values, w.dims, qp);
      const rq = tensorToArray(refQ!) as Int8Array;
      let diffs = 0;
      for (let i = 0; i < q.length; i++) if (q[i] !== rq[i]) diffs++;
      expect(`${name}: ${diffs} differing int8 values`).toBe(`${name}: 0 differing int8 values`);
      compared++;
    }
    expect(compared).toBeGreaterThanOrEqual(26);
  });

  test.skipIf(!hasShared)(
    "activation scales and zero points from minmax calibration agree",
    async () => {
      const lines = readFileSync(resolve(sharedDir, "data/sst2/calibration-128.tsv"), "utf8").split("\n");
      const sentences = lines
        .slice(1)
        .filter((l) => l.trim() !== "")
        .map((l) => l.slice(l.indexOf("\t") + 1));
      expect(sentences.length).toBe(128);
      const tokenizer = await loadTokenizer(shippedModelDir);
      const batches = [];
      for (let i = 0; i < sentences.length; i += 16)
        batches.push(tokenizer.encodeBatch(sentences.slice(i, i + 16)));
      // activation inputs of weight MatMuls: LayerNorm, GELU and Tanh outputs (ORT names their QDQ after them)
      const names = [
        ...new Set(
          matmuls
            .filter((n) => fix.constant(n.input[1]!) !== undefined)
            .map((n) => n.input[0]!)
            .filter((a) => rix.initializer(`${a}_scale`) !== undefined),
        ),
      ];
      expect(names.length).toBeGreaterThanOrEqual(10);
      const result = await calibrate(fp32, names, batches, { method: "minmax" });
      for (const name of names) {
        const r = result.ranges.get(name)!;
        const ours = computeActivationQParams(r.min, r.max);
        const scale = tensorToFloat32(rix.initializer(`${name}_scale`)!)[0]!;
        const zp = Number(tensorToArray(rix.initializer(`${name}_zero_point`)!)[0]);
        // equal up to float rounding: ORT ran other batch shapes through other kernels
        expect(Math.abs(ours.scale - scale)).toBeLessThanOrEqual(1e-5 * scale);
        expect([name, ours.zeroPoint]).toEqual([name, zp]);
      }
    },
    SLOW_TEST_MS,
  );
});
