/**
 * The int8 models quantd writes, checked against the real onnxruntime:
 * - a one-MatMul QDQ model (4×8 by 8×3) computes exactly what the qnnpack
 *   integer reference computes (u8×s8 → int32 → float), through ORT's fused
 *   MatMulIntegerToFloat kernel;
 * - the shipped BERT-Mini, quantized static and dynamic, shrinks to ≤ 26 % of
 *   fp32, and ORT's graph optimizer turns every weight MatMul/Gemm into an
 *   int8 kernel (its optimized model, saved with `optimizedModelFilePath`,
 *   holds MatMulIntegerToFloat / DynamicQuantizeMatMul / QGemm and no fp32
 *   MatMul or Gemm with a constant weight).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeGraph, makeModel, makeValueInfo } from "../../src/onnx/builder.ts";
import { encodeModel, loadModel, saveModel } from "../../src/onnx/codec.ts";
import { makeTensor, tensorToArray } from "../../src/onnx/tensor.ts";
import type { ModelProto, NodeProto } from "../../src/onnx/types.ts";
import { DataType } from "../../src/onnx/types.ts";
import { matMulIntegerReference, matMulIntegerToFloatReference } from "../helpers/qnnpack-reference.ts";
import { quantizeValue } from "../../src/quant/qparams.ts";
import { quantizeModel } from "../../src/quant/quantize.ts";
import { feedsForEncoding } from "../../src/runtime/classifier.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { type BatchEncoding, loadTokenizer } from "../../src/runtime/tokenizer.ts";
import { readSamplesTsv } from "../../src/runtime/tsv.ts";
import { expectClose } from "../helpers/expect-close.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";

const work = mkdtempSync(join(tmpdir(), "quantd-quant-fusion-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Saves `model`, lets ORT optimize it at level "all" and returns the optimized graph. */
async function ortOptimized(model: ModelProto, name: string): Promise<ModelProto> {
  const path = join(work, `${name}.onnx`);
  const optimized = join(work, `${name}.optimized.onnx`);
  await saveModel(model, path);
  const s = await createOrtSession(path, {
    graphOptimizationLevel: "all",
    optimizedModelFilePath: optimized,
  });
  await s.release();
  return loadModel(optimized);
}

function opCounts(model: ModelProto): Map<string, number> {
  const m = new Map<string, number>();
  for (const n of model.graph.node) m.set(n.opType, (m.get(n.opType) ?? 0) + 1);
  return m;
}

/** fp32 MatMul/Gemm nodes whose B operand is a constant: what quantization must leave none of. */
function fp32WeightMatMuls(model: ModelProto): NodeProto[] {
  const inits = new Map(model.graph.initializer.map((t) => [t.name, t]));
  return model.graph.node.filter((n) => {
    if (
      n.opType !== "MatMul" &&
      n.opType !== "Gemm" &&
      n.opType !== "FusedMatMul" &&
      n.opType !== "FusedGemm"
    ) {
      return false;
    }
    const b = inits.get(n.input[1] ?? "");
    return b !== undefined && b.dataType === DataType.FLOAT;
  });
}

describe("one QDQ MatMul against the qnnpack integer reference", async () => {
  const M = 4;
  const K = 8;
  const N = 3;
  // Deterministic values spanning negative and positive, with a zero column in W.
  const x = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 1.7) * 2.5 - 0.4);
  const w = Float32Array.from({ length: K * N }, (_, i) => (i % N === 2 ? 0 : Math.cos(i * 0.9) * 0.8));
  const fp32 = makeModel({
    graph: makeGraph({
      name: "mm",
      nodes: [{ name: "mm", opType: "MatMul", domain: "", input: ["x", "w"], output: ["y"], attribute: [] }],
      inputs: [makeValueInfo("x", DataType.FLOAT, [M, K])],
      outputs: [makeValueInfo("y", DataType.FLOAT, [M, N])],
      initializers: [makeTensor("w", DataType.FLOAT, [K, N], w)],
    }),
  });
  const xmin = Math.min(...x);
  const xmax = Math.max(...x);
  const result = await quantizeModel(fp32, {
    type: "static",
    format: "qdq",
    ranges: new Map([["x", { min: xmin, max: xmax }]]),
  });
  const model = result.model;
  const qp = result.qparams.get("x")!;

  test("ORT fuses it into MatMulIntegerToFloat", async () => {
    const opt = await ortOptimized(model, "mm");
    expect(opCounts(opt).get("MatMulIntegerToFloat")).toBe(1);
    expect(fp32WeightMatMuls(opt)).toEqual([]);
  });

  test("ORT's int8 result equals the reference (u8×s8 → int32 → float)", async () => {
    const mm = model.graph.node.find((n) => n.name === "mm")!;
    const dq = model.graph.node.find((n) => n.output.includes(mm.input[1]!))!;
    expect(dq.opType).toBe("DequantizeLinear");
    const init = (name: string) => model.graph.initializer.find((t) => t.name === name)!;
    const wq = tensorToArray(init(dq.input[0]!)) as Int8Array;
    const ws = tensorToArray(init(dq.input[1]!)) as Float32Array;
    const wzp = tensorToArray(init(dq.input[2]!)) as Int8Array;
    expect(ws.length).toBe(N);
    const xq = Uint8Array.from(x, (v) => quantizeValue(v, qp));
    const acc = matMulIntegerReference(xq, qp.zeroPoint, wq, wzp, M, K, N);
    const want = matMulIntegerToFloatReference(acc, qp.scale, ws, N);

    const s = await createOrtSession(encodeModel(model), { graphOptimizationLevel: "all" });
    try {
      const got = (await s.run({ x: { type: "float32", data: x, dims: [M, K] } })).y!.data as Float32Array;
      // One accumulator step of the smallest nonzero column scale: "within 1 LSB".
      const lsb = qp.scale * Math.min(...[...ws].filter((v) => v !== 1));
      expectClose(got, want, { atol: lsb, what: "ORT MatMulIntegerToFloat vs reference" });
      // and the int8 path stays close to the fp32 product
      const exact = new Float32Array(M * N);
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) {
          let v = 0;
          for (let k = 0; k < K; k++) v += x[m * K + k]! * w[k * N + n]!;
          exact[m * N + n] = v;
        }
      }
      expectClose(got, exact, { atol: 0.05, what: "int8 vs fp32 product" });
    } finally {
      await s.release();
    }
  });
});

describe("shipped BERT-Mini", async () => {
  const fp32 = await loadModel(shippedModelPath);
  const fp32Bytes = encodeModel(fp32).byteLength;
  const tokenizer = await loadTokenizer(shippedModelDir);
  const samples = (await readSamplesTsv(join(repoRoot, "calib/samples/sst2-train-4k.tsv"))).slice(0, 32);
  const calibration: BatchEncoding[] = [];
  for (let i = 0; i < samples.length; i += 8) {
    calibration.push(tokenizer.encodeBatch(samples.slice(i, i + 8).map((s) => s.text)));
  }

  test("the exporter's run-time Reshape shapes become constants, logits bit-identical", async () => {
    const plain = await quantizeModel(fp32, { type: "dynamic", simplifyShapes: false });
    const simple = await quantizeModel(fp32, { type: "dynamic" });
    expect(simple.shapes.reverted).toBeUndefined();
    expect(simple.shapes.reshapes).toBe(16);
    expect(simple.model.graph.node.length).toBe(plain.model.graph.node.length - simple.shapes.removedNodes);
    const [a, b] = await Promise.all([
      createOrtSession(encodeModel(plain.model)),
      createOrtSession(encodeModel(simple.model)),
    ]);
    try {
      const enc = tokenizer.encodeBatch(samples.slice(0, 3).map((s) => s.text));
      const feeds = feedsForEncoding(a, enc);
      const want = (await a.run(feeds)).logits!.data as Float32Array;
      const got = (await b.run(feeds)).logits!.data as Float32Array;
      expectClose(got, want, { atol: 0, what: "logits with constant shapes" });
    } finally {
      await Promise.all([a.release(), b.release()]);
    }
  }, 60_000);

  const builds = [
    { label: "static QDQ", opts: { type: "static", format: "qdq" } },
    { label: "static fused", opts: { type: "static", format: "fused" } },
    { label: "dynamic", opts: { type: "dynamic" } },
  ] as const;
  for (const { label, opts } of builds) {
    const type = opts.type;
    test(`${label}: ≤ 26 % of the fp32 file, and ORT runs every weight MatMul in int8`, async () => {
      const result = await quantizeModel(fp32, { ...opts, calibration });
      const bytes = encodeModel(result.model).byteLength;
      expect(bytes / fp32Bytes).toBeLessThanOrEqual(0.26);

      const opt = await ortOptimized(result.model, `bert-${label.replace(" ", "-")}`);
      const ops = opCounts(opt);
      const int8Kernels =
        (ops.get("MatMulIntegerToFloat") ?? 0) +
        (ops.get("DynamicQuantizeMatMul") ?? 0) +
        (ops.get("QGemm") ?? 0);
      // 4 layers × 6 projections, plus pooler and classifier
      expect(int8Kernels).toBe(26);
      expect(fp32WeightMatMuls(opt).map((n) => n.name)).toEqual([]);
      if (label === "static QDQ") expect(ops.get("QGemm")).toBe(2);
      if (label === "static fused") expect(ops.get("MatMulIntegerToFloat")).toBe(26);
      if (type === "dynamic") expect(ops.get("DynamicQuantizeMatMul")).toBeGreaterThan(0);
      // every bias was folded into the int8 kernel, except in the QDQ form where ORT leaves the Add
      if (label !== "static QDQ") expect(ops.get("Add") ?? 0).toBeLessThan(20);
    }, 60_000);
  }
});
