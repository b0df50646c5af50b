/**
 * Structure of the int8 rewrites on a tiny synthetic BERT: what the plan picks
 * and skips, the QDQ pairs and int8 weights the static pass writes, the
 * MatMulInteger chains of the dynamic pass, the int8 embedding tables, and
 * that the rewritten model still runs in onnxruntime close to fp32.
 */
import { describe, expect, test } from "bun:test";
import { isQuantdError } from "../../src/errors.ts";
import { makeGraph, makeModel, makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { makeTensor, tensorToArray } from "../../src/onnx/tensor.ts";
import type { ModelProto, NodeProto, TensorProto } from "../../src/onnx/types.ts";
import { DataType } from "../../src/onnx/types.ts";
import {
  applyRanges,
  defaultQuantizeOptions,
  excludeNodes,
  planQuantization,
  type WeightMatMulTarget,
} from "../../src/quant/plan.ts";
import { quantizeModel, requantize } from "../../src/quant/quantize.ts";
import { feedsForEncoding } from "../../src/runtime/classifier.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import type { BatchEncoding } from "../../src/runtime/tokenizer.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { expectClose } from "../helpers/expect-close.ts";

const tiny = SYNTHETIC_BERT_PRESETS.tiny;
const fp32 = buildSyntheticBert(tiny);
const LAYERS = tiny.layers;
const POOLER = "/bert/pooler/dense/Gemm";
const CLASSIFIER = "/classifier/Gemm";

/** Deterministic right-padded batches of random token ids. */
function randomBatches(count: number, batchSize: number, seqLen: number, seed = 7): BatchEncoding[] {
  let s = seed;
  const next = (n: number): number => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s % n;
  };
  const out: BatchEncoding[] = [];
  for (let b = 0; b < count; b++) {
    const n = batchSize * seqLen;
    const inputIds = new BigInt64Array(n);
    const attentionMask = new BigInt64Array(n);
    const lengths: number[] = [];
    for (let r = 0; r < batchSize; r++) {
      const len = 4 + next(seqLen - 3);
      lengths.push(len);
      for (let i = 0; i < seqLen; i++) {
        inputIds[r * seqLen + i] = i < len ? BigInt(1 + next(tiny.vocab - 1)) : 0n;
        attentionMask[r * seqLen + i] = i < len ? 1n : 0n;
      }
    }
    out.push({
      batchSize,
      seqLen,
      inputIds,
      attentionMask,
      tokenTypeIds: new BigInt64Array(n),
      lengths,
      truncated: lengths.map(() => false),
    });
  }
  return out;
}

const calibration = randomBatches(4, 4, 16);

function byName(model: ModelProto): Map<string, NodeProto> {
  return new Map(model.graph.node.map((n) => [n.name, n]));
}

function producerOf(model: ModelProto, tensor: string): NodeProto | undefined {
  return model.graph.node.find((n) => n.output.includes(tensor));
}

function initializer(model: ModelProto, name: string): TensorProto | undefined {
  return model.graph.initializer.find((t) => t.name === name);
}

function count(model: ModelProto, opType: string): number {
  return model.graph.node.filter((n) => n.opType === opType).length;
}

describe("plan", () => {
  test("picks weight MatMuls, Gemms and embeddings; skips attention with a reason", () => {
    const plan = planQuantization(fp32, defaultQuantizeOptions("static"));
    const kinds = plan.quantized.map((t) => t.kind);
    expect(kinds.filter((k) => k === "weight-matmul")).toHaveLength(LAYERS * 6 + 2);
    expect(kinds.filter((k) => k === "embedding")).toHaveLength(3);
    expect(plan.skipped.filter((s) => s.reason === "attention-disabled")).toHaveLength(LAYERS * 2);
    const gemm = plan.quantized.find(
      (t): t is WeightMatMulTarget => t.node === POOLER && t.kind === "weight-matmul",
    );
    expect(gemm?.channelAxis).toBe(0); // transB=1: output channels are rows
    expect(gemm?.bias).toBe("bert.pooler.dense.bias");
    // Q, K and V share their input: one observed tensor for three MatMuls.
    expect(plan.observe.length).toBe(LAYERS * 4 + 2);
    expect(new Set(plan.observe).size).toBe(plan.observe.length);
  });

  test("dynamic plans observe nothing; attention MatMuls can be enabled in static mode", () => {
    expect(planQuantization(fp32, defaultQuantizeOptions("dynamic")).observe).toEqual([]);
    const plan = planQuantization(fp32, defaultQuantizeOptions("static", { quantizeAttentionMatMuls: true }));
    expect(plan.quantized.filter((t) => t.kind === "attention-matmul")).toHaveLength(LAYERS * 2);
    expect(plan.skipped).toEqual([]);
  });

  test("exclude and disabled embeddings are recorded; unknown exclude names are a usage error", () => {
    const q = "/bert/encoder/layer.0/attention/self/query/MatMul";
    const plan = planQuantization(
      fp32,
      defaultQuantizeOptions("static", { exclude: [q], quantizeEmbeddings: false }),
    );
    expect(plan.skipped.find((s) => s.node === q)?.reason).toBe("excluded");
    expect(plan.skipped.filter((s) => s.reason === "embeddings-disabled")).toHaveLength(3);
    expect(plan.quantized.some((t) => t.node === q)).toBe(false);
    let err: unknown;
    try {
      planQuantization(fp32, defaultQuantizeOptions("static", { exclude: ["no/such/node"] }));
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "USAGE")).toBe(true);
  });

  test("ranges holding a mask sentinel or nothing drop the target with a reason", () => {
    const plan = planQuantization(fp32, defaultQuantizeOptions("static"));
    const [first, second, third, ...rest] = plan.observe;
    const ranges = new Map<string, { min: number; max: number; sentinel?: number }>();
    ranges.set(first!, { min: -3.4028234663852886e38, max: 1 });
    // what an observer reports after leaving the sentinels out of the range
    ranges.set(third!, { min: -1, max: 1, sentinel: 12 });
    for (const name of rest) ranges.set(name, { min: -1, max: 1 });
    const applied = applyRanges(plan, ranges);
    const reasons = new Map(applied.skipped.map((s) => [s.node, s.reason]));
    const readers = (t: string) =>
      plan.quantized.filter((x): x is WeightMatMulTarget => x.kind === "weight-matmul" && x.activation === t);
    for (const t of readers(first!)) expect(reasons.get(t.node)).toBe("mask-sentinel");
    for (const t of readers(second!)) expect(reasons.get(t.node)).toBe("no-range");
    expect(readers(third!).length).toBeGreaterThan(0);
    for (const t of readers(third!)) expect(reasons.get(t.node)).toBe("mask-sentinel");
    for (const t of readers(rest[0]!)) expect(reasons.has(t.node)).toBe(false);
    expect(applied.observe).not.toContain(first);
    const fewer = excludeNodes(applied, [CLASSIFIER]);
    expect(fewer.skipped.find((s) => s.node === CLASSIFIER)?.reason).toBe("excluded");
  });
});

describe("static QDQ rewrite", async () => {
  const q = "/bert/encoder/layer.1/output/dense/MatMul";
  const result = await quantizeModel(fp32, { type: "static", format: "qdq", calibration, exclude: [q] });
  const model = result.model;
  const nodes = byName(model);

  test("every quantized MatMul reads DQ(Q(activation)) and DQ(int8 per-channel weight)", () => {
    const targets = result.plan.quantized.filter((t): t is WeightMatMulTarget => t.kind === "weight-matmul");
    expect(targets).toHaveLength(LAYERS * 6 + 1);
    for (const t of targets) {
      const n = nodes.get(t.node)!;
      const actDq = producerOf(model, n.input[0]!)!;
      expect(actDq.opType).toBe("DequantizeLinear");
      const actQ = producerOf(model, actDq.input[0]!)!;
      expect(actQ.opType).toBe("QuantizeLinear");
      expect(actQ.input[0]).toBe(t.activation);
      const zp = initializer(model, actQ.input[2]!)!;
      expect(zp.dataType).toBe(DataType.UINT8);
      const scale = tensorToArray(initializer(model, actQ.input[1]!)!)[0] as number;
      expect(scale).toBeGreaterThan(0);

      const wDq = producerOf(model, n.input[1]!)!;
      expect(wDq.opType).toBe("DequantizeLinear");
      const wq = initializer(model, wDq.input[0]!)!;
      expect(wq.dataType).toBe(DataType.INT8);
      const outChannels = wq.dims[t.channelAxis]!;
      const wScale = initializer(model, wDq.input[1]!)!;
      expect(wScale.dims).toEqual([outChannels]);
      const wZp = tensorToArray(initializer(model, wDq.input[2]!)!) as Int8Array;
      expect(wZp.length).toBe(outChannels);
      expect([...wZp].every((z) => z === 0)).toBe(true);
      const values = tensorToArray(wq) as Int8Array;
      expect(values.every((v) => v >= -127 && v <= 127)).toBe(true);
      expect(wDq.attribute.find((a) => a.name === "axis")?.i).toBe(t.channelAxis);
      // the fp32 weight is gone from the file
      expect(initializer(model, t.weight)).toBeUndefined();
    }
  });

  test("one QuantizeLinear per distinct activation; Gemm biases become int32", () => {
    expect(count(model, "QuantizeLinear")).toBe(result.plan.observe.length);
    const pooler = nodes.get(POOLER)!;
    const biasDq = producerOf(model, pooler.input[2]!)!;
    expect(biasDq.opType).toBe("DequantizeLinear");
    expect(initializer(model, biasDq.input[0]!)!.dataType).toBe(DataType.INT32);
  });

  test("excluded and attention nodes are untouched", () => {
    const orig = byName(fp32);
    expect(nodes.get(q)!.input).toEqual(orig.get(q)!.input);
    expect(initializer(model, orig.get(q)!.input[1]!)?.dataType).toBe(DataType.FLOAT);
    const att = "/bert/encoder/layer.0/attention/self/MatMul";
    expect(nodes.get(att)!.input).toEqual(orig.get(att)!.input);
    expect(result.plan.skipped.find((s) => s.node === q)?.reason).toBe("excluded");
  });

  test("embedding tables are int8 with one scale per row", () => {
    const gather = nodes.get("/bert/embeddings/word_embeddings/Gather")!;
    const table = initializer(model, gather.input[0]!)!;
    expect(table.dataType).toBe(DataType.INT8);
    expect(table.dims).toEqual([tiny.vocab, tiny.hidden]);
    const scaleGather = model.graph.node.find(
      (n) => n.opType === "Gather" && n.input[1] === gather.input[1] && n !== gather,
    );
    expect(initializer(model, scaleGather!.input[0]!)!.dims).toEqual([tiny.vocab, 1]);
    expect(initializer(model, "bert.embeddings.word_embeddings.weight")).toBeUndefined();
  });

  test("the input model is not modified", () => {
    expect(count(fp32, "QuantizeLinear")).toBe(0);
    expect(initializer(fp32, "bert.embeddings.word_embeddings.weight")?.dataType).toBe(DataType.FLOAT);
  });

  test("runs in onnxruntime with logits close to fp32", async () => {
    const [ref, int8] = await Promise.all([
      createOrtSession(encodeModel(fp32)),
      createOrtSession(encodeModel(model)),
    ]);
    try {
      for (const b of randomBatches(2, 2, 12, 99)) {
        const feeds = feedsForEncoding(ref, b);
        const want = (await ref.run(feeds)).logits!.data as Float32Array;
        const got = (await int8.run(feeds)).logits!.data as Float32Array;
        const span = Math.max(...want.map(Math.abs));
        expectClose(got, want, { atol: 0.05 * span + 1e-3, what: "int8 logits" });
      }
    } finally {
      await Promise.all([ref.release(), int8.release()]);
    }
  });

  test("a rebuild with more exclusions reuses the ranges and skips calibration", async () => {
    const again = await requantize(fp32, result, [POOLER]);
    expect(again.timings.calibrationMs).toBe(0);
    expect(again.plan.skipped.find((s) => s.node === POOLER)?.reason).toBe("excluded");
    expect(byName(again.model).get(POOLER)!.input).toEqual(byName(fp32).get(POOLER)!.input);
  });

  test("an already quantized model is refused", async () => {
    let err: unknown;
    try {
      await quantizeModel(model, { type: "dynamic" });
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "MODEL_ALREADY_QUANTIZED")).toBe(true);
  });

  test("static mode without calibration data is CALIB_EMPTY", async () => {
    let err: unknown;
    try {
      await quantizeModel(fp32, { type: "static", calibration: [] });
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "CALIB_EMPTY")).toBe(true);
  });
});

describe("static fused format", async () => {
  const result = await quantizeModel(fp32, { type: "static", format: "fused", calibration });
  const model = result.model;
  const qdq = await quantizeModel(fp32, {
    type: "static",
    format: "qdq",
    calibration,
    ranges: result.ranges,
  });

  test("MatMulIntegerToFloat nodes with the bias folded in, QuantizeLinear shared", () => {
    const mitf = model.graph.node.filter((n) => n.opType === "MatMulIntegerToFloat");
    expect(mitf).toHaveLength(LAYERS * 6 + 2);
    for (const n of mitf) {
      expect(n.domain).toBe("com.microsoft");
      expect(n.input).toHaveLength(7);
      expect(producerOf(model, n.input[0]!)?.opType).toBe("QuantizeLinear");
      const w = initializer(model, n.input[1]!)!;
      expect(w.dataType).toBe(DataType.INT8);
      expect(initializer(model, n.input[3]!)!.dims).toEqual([w.dims[1]!]);
      expect(initializer(model, n.input[6]!)!.dims).toEqual([w.dims[1]!]);
    }
    expect(count(model, "QuantizeLinear")).toBe(result.plan.observe.length);
    expect(count(model, "DequantizeLinear")).toBe(0);
    expect(model.graph.node.filter((n) => /(query|key|value|dense)\/Add$/.test(n.name))).toEqual([]);
    expect(model.opsetImport.some((o) => o.domain === "com.microsoft")).toBe(true);
  });

  test("computes what the QDQ form computes once ORT has fused it", async () => {
    const [a, b] = await Promise.all([
      createOrtSession(encodeModel(model)),
      createOrtSession(encodeModel(qdq.model)),
    ]);
    try {
      const batch = randomBatches(1, 2, 12, 3)[0]!;
      const feeds = feedsForEncoding(a, batch);
      const fused = (await a.run(feeds)).logits!.data as Float32Array;
      const pairs = (await b.run(feeds)).logits!.data as Float32Array;
      expectClose(fused, pairs, { atol: 1e-4, rtol: 1e-4, what: "fused vs QDQ logits" });
    } finally {
      await Promise.all([a.release(), b.release()]);
    }
  });
});

describe("dynamic rewrite", async () => {
  const result = await quantizeModel(fp32, { type: "dynamic", perChannel: false });
  const model = result.model;

  test("MatMulInteger chains with one DynamicQuantizeLinear per activation", () => {
    const targets = result.plan.quantized.filter((t) => t.kind === "weight-matmul");
    expect(count(model, "MatMulInteger")).toBe(targets.length);
    expect(count(model, "DynamicQuantizeLinear")).toBe(LAYERS * 4 + 2);
    expect(count(model, "QuantizeLinear")).toBe(0);
    for (const mmi of model.graph.node.filter((n) => n.opType === "MatMulInteger")) {
      const w = initializer(model, mmi.input[1]!)!;
      expect(w.dataType).toBe(DataType.INT8);
      // per-tensor requested: scalar zero point
      expect(initializer(model, mmi.input[3]!)!.dims).toEqual([]);
    }
    // Gemm transB=1 weights are stored transposed as [K, N].
    const pooler = model.graph.node.find((n) => n.opType === "MatMulInteger" && n.name.startsWith(POOLER))!;
    expect(initializer(model, pooler.input[1]!)!.dims).toEqual([tiny.hidden, tiny.hidden]);
    const classifier = model.graph.node.find(
      (n) => n.opType === "MatMulInteger" && n.name.startsWith(CLASSIFIER),
    )!;
    expect(initializer(model, classifier.input[1]!)!.dims).toEqual([tiny.hidden, tiny.numLabels]);
  });

  test("bias Adds read the scaled product first, so ORT can fuse the bias", () => {
    const biasAdds = model.graph.node.filter(
      (n) => n.opType === "Add" && /(query|key|value|dense)\/Add$/.test(n.name),
    );
    expect(biasAdds.length).toBe(LAYERS * 6);
    for (const add of biasAdds) {
      expect(producerOf(model, add.input[0]!)?.opType).toBe("Mul");
      expect(initializer(model, add.input[1]!)?.dims).toHaveLength(1);
    }
  });

  test("runs in onnxruntime with logits close to fp32", async () => {
    const [ref, int8] = await Promise.all([
      createOrtSession(encodeModel(fp32)),
      createOrtSession(encodeModel(model)),
    ]);
    try {
      const b = randomBatches(1, 3, 10, 5)[0]!;
      const feeds = feedsForEncoding(ref, b);
      const want = (await ref.run(feeds)).logits!.data as Float32Array;
      const got = (await int8.run(feeds)).logits!.data as Float32Array;
      const span = Math.max(...want.map(Math.abs));
      expectClose(got, want, { atol: 0.05 * span + 1e-3, what: "int8 logits" });
    } finally {
      await Promise.all([ref.release(), int8.release()]);
    }
  });
});

describe("shared weights and Gemm without transB", () => {
  // x → MatMul(W) → MatMul(W again) → Gemm(W2 [4, 3], bias, transB = 0) → y
  const W = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i + 1) * 0.5);
  const W2 = Float32Array.from({ length: 12 }, (_, i) => Math.cos(i * 0.7) * 0.6);
  const model = makeModel({
    graph: makeGraph({
      name: "shared",
      nodes: [
        makeNode("MatMul", ["x", "W"], ["h1"], {}, { name: "mm1" }),
        makeNode("MatMul", ["h1", "W"], ["h2"], {}, { name: "mm2" }),
        makeNode("Gemm", ["h2", "W2", "b2"], ["y"], { transB: 0 }, { name: "gemm" }),
      ],
      inputs: [makeValueInfo("x", DataType.FLOAT, ["n", 4])],
      outputs: [makeValueInfo("y", DataType.FLOAT, ["n", 3])],
      initializers: [
        makeTensor("W", DataType.FLOAT, [4, 4], W),
        makeTensor("W2", DataType.FLOAT, [4, 3], W2),
        makeTensor("b2", DataType.FLOAT, [3], Float32Array.of(0.1, -0.2, 0.3)),
      ],
    }),
  });
  const x = Float32Array.from({ length: 20 }, (_, i) => Math.sin(i * 0.37) * 1.5);
  const ranges = new Map([
    ["x", { min: -1.5, max: 1.5 }],
    ["h1", { min: -3, max: 3 }],
    ["h2", { min: -5, max: 5 }],
  ]);

  for (const opts of [
    { type: "static", format: "qdq", ranges },
    { type: "static", format: "fused", ranges },
    { type: "dynamic" },
  ] as const) {
    test(`${opts.type}${"format" in opts ? `/${opts.format}` : ""}: one int8 copy of W, close to fp32`, async () => {
      const r = await quantizeModel(model, opts);
      const q = r.model;
      expect(r.plan.quantized.map((t) => t.node)).toEqual(["mm1", "mm2", "gemm"]);
      const int8 = q.graph.initializer.filter((t) => t.dataType === DataType.INT8 && t.dims.length === 2);
      expect(int8.map((t) => t.dims)).toEqual([
        [4, 4],
        [4, 3],
      ]);
      expect(initializer(q, "W")).toBeUndefined();
      const gemmW = int8.find((t) => t.dims[1] === 3)!;
      const scales = q.graph.initializer.find(
        (t) => t.name === `${gemmW.name.replace("_quantized", "")}_scale`,
      );
      expect(scales?.dims).toEqual([3]); // transB = 0: output channels are columns
      const [a, b] = await Promise.all([
        createOrtSession(encodeModel(model)),
        createOrtSession(encodeModel(q)),
      ]);
      try {
        const feeds = { x: { type: "float32" as const, data: x, dims: [5, 4] } };
        const want = (await a.run(feeds)).y!.data as Float32Array;
        const got = (await b.run(feeds)).y!.data as Float32Array;
        expectClose(got, want, { atol: 0.05, rtol: 0.02, what: "y" });
      } finally {
        await Promise.all([a.release(), b.release()]);
      }
    });
  }

  for (const opts of [{ type: "static", format: "fused", ranges }, { type: "dynamic" }] as const) {
    test(`${opts.type}: one reader of W kept fp32 keeps the other fp32 too, so W is stored once`, async () => {
      const r = await quantizeModel(model, { ...opts, exclude: ["mm2"] });
      expect(r.plan.quantized.map((t) => t.node)).toEqual(["gemm"]);
      const mm1 = r.plan.skipped.find((s) => s.node === "mm1");
      expect(mm1?.reason).toBe("shared-weight");
      expect(mm1?.detail).toContain("W");
      expect(mm1?.detail).toContain("mm2");
      expect(initializer(r.model, "W")?.dataType).toBe(DataType.FLOAT);
      const int8 = r.model.graph.initializer.filter(
        (t) => t.dataType === DataType.INT8 && t.dims.length === 2,
      );
      expect(int8.map((t) => t.dims)).toEqual([[4, 3]]);
      // The fallback narrows a plan the same way.
      const plan = excludeNodes(planQuantization(model, defaultQuantizeOptions("dynamic")), ["mm1"]);
      expect(plan.quantized.map((t) => t.node)).toEqual(["gemm"]);
      expect(plan.skipped.map((s) => [s.node, s.reason])).toEqual([
        ["mm1", "excluded"],
        ["mm2", "shared-weight"],
      ]);
    });
  }
});

describe("weight-only: MatMuls reading a constant stack of matrices", () => {
  // x [n, 2, 5, 4] → MatMul(S [2, 4, 3]) → y, and MatMul(x, S) again → y2: what onnxruntime's constant
  // folding leaves of DeBERTa's relative-position projections ([heads, d, positions] per layer).
  const S = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i * 1.3 + 0.2) * (1 + (i % 3)));
  const model = makeModel({
    graph: makeGraph({
      name: "stack",
      nodes: [
        makeNode("MatMul", ["x", "S"], ["y"], {}, { name: "mm_stack" }),
        makeNode("MatMul", ["x", "S"], ["y2"], {}, { name: "mm_stack_again" }),
      ],
      inputs: [makeValueInfo("x", DataType.FLOAT, ["n", 2, 5, 4])],
      outputs: [makeValueInfo("y", DataType.FLOAT), makeValueInfo("y2", DataType.FLOAT)],
      initializers: [makeTensor("S", DataType.FLOAT, [2, 4, 3], S)],
    }),
  });
  const x = Float32Array.from({ length: 3 * 40 }, (_, i) => Math.cos(i * 0.41) * 2);

  async function outputs(m: ModelProto): Promise<[Float32Array, Float32Array]> {
    const s = await createOrtSession(encodeModel(m));
    try {
      const out = await s.run({ x: { type: "float32", data: x, dims: [3, 2, 5, 4] } });
      return [out.y!.data as Float32Array, out.y2!.data as Float32Array];
    } finally {
      await s.release();
    }
  }

  test("the plan takes both as weight-only targets, which observe no activation", () => {
    for (const opts of [defaultQuantizeOptions("static"), defaultQuantizeOptions("dynamic")]) {
      const plan = planQuantization(model, opts);
      expect(plan.quantized.map((t) => [t.node, t.kind])).toEqual([
        ["mm_stack", "weight-only"],
        ["mm_stack_again", "weight-only"],
      ]);
      expect(plan.skipped).toEqual([]);
      expect(plan.observe).toEqual([]);
    }
  });

  for (const opts of [
    { type: "static", format: "qdq" },
    { type: "static", format: "fused" },
    { type: "dynamic" },
  ] as const) {
    test(`${opts.type}${"format" in opts ? `/${opts.format}` : ""}: one int8 stack, one scale per matrix row, fp32 MatMuls close to fp32`, async () => {
      // Static needs no calibration here: nothing of a weight-only target is an activation.
      const r = await quantizeModel(model, opts);
      const q = r.model;
      expect(q.graph.initializer.filter((t) => t.dataType === DataType.FLOAT && t.dims.length >= 3)).toEqual(
        [],
      );
      // Stored as one [rows, N] matrix: the 2 × 4 rows of the stack, dequantized along axis 0 and reshaped back.
      const int8 = q.graph.initializer.filter((t) => t.dataType === DataType.INT8 && t.dims.length >= 2);
      expect(int8.map((t) => t.dims)).toEqual([[8, 3]]);
      expect(q.graph.node.map((n) => n.opType)).toEqual(["DequantizeLinear", "Reshape", "MatMul", "MatMul"]);
      const [dq, reshape] = q.graph.node as [NodeProto, NodeProto];
      expect(dq.input[0]).toBe(int8[0]!.name);
      expect(dq.attribute.find((a) => a.name === "axis")?.i).toBe(0);
      expect(reshape.input[0]).toBe(dq.output[0]);
      expect(Array.from(tensorToArray(initializer(q, reshape.input[1]!)!) as BigInt64Array, Number)).toEqual([
        2, 4, 3,
      ]);
      // Each row's scale is its largest |value| over 127: the int8 stack dequantizes to within half a step.
      const scales = tensorToArray(initializer(q, dq.input[1]!)!) as Float32Array;
      expect(scales.length).toBe(8);
      const ints = tensorToArray(int8[0]!) as Int8Array;
      for (let i = 0; i < S.length; i++) {
        const step = scales[Math.floor(i / 3)]!;
        expect(Math.abs(ints[i]! * step - S[i]!)).toBeLessThanOrEqual(step / 2 + 1e-7);
      }
      const mm = q.graph.node.filter((n) => n.opType === "MatMul");
      expect(mm.map((n) => [n.name, n.input[1]])).toEqual([
        ["mm_stack", reshape.output[0]],
        ["mm_stack_again", reshape.output[0]],
      ]);
      const [want, want2] = await outputs(model);
      const [got, got2] = await outputs(q);
      expectClose(got, want, { atol: 0.03, rtol: 0.01, what: "y" });
      expectClose(got2, want2, { atol: 0.03, rtol: 0.01, what: "y2" });
      expect(Math.max(...got.map((v, i) => Math.abs(v - want[i]!)))).toBeGreaterThan(0);
    });
  }

  test("--reduce-range leaves the stack its full int8 range: nothing of a weight-only MatMul is integer arithmetic", async () => {
    const r = await quantizeModel(model, { type: "dynamic", reduceRange: true });
    const stack = r.model.graph.initializer.find((t) => t.dataType === DataType.INT8 && t.dims.length === 2)!;
    // Each row's largest |value| maps to 127, not to the 63 of a 7-bit range.
    expect(Math.max(...Array.from(tensorToArray(stack) as Int8Array, Math.abs))).toBe(127);
  });

  test("without per-channel scales the stack has one scale", async () => {
    const r = await quantizeModel(model, { type: "dynamic", perChannel: false });
    expect(r.model.graph.node.map((n) => n.opType)).toEqual(["DequantizeLinear", "MatMul", "MatMul"]);
    const dq = r.model.graph.node[0]!;
    expect(initializer(r.model, dq.input[0]!)?.dims).toEqual([2, 4, 3]);
    expect(initializer(r.model, dq.input[1]!)?.dims).toEqual([]);
    expect(dq.attribute.find((a) => a.name === "axis")).toBeUndefined();
    const [want] = await outputs(model);
    expectClose((await outputs(r.model))[0], want, { atol: 0.05, rtol: 0.02, what: "y" });
  });

  test("a stack a non-MatMul also reads stays fp32 for its MatMul too: the file holds it once", async () => {
    // y = x·S, and S itself as an output: the Identity needs the float stack, so an int8 copy for the
    // MatMul would be a second copy.
    const shared = makeModel({
      graph: makeGraph({
        name: "stack-and-add",
        nodes: [
          makeNode("MatMul", ["x", "S"], ["y"], {}, { name: "mm_stack" }),
          makeNode("Identity", ["S"], ["s_out"], {}, { name: "stack_out" }),
        ],
        inputs: [makeValueInfo("x", DataType.FLOAT, ["n", 2, 5, 4])],
        outputs: [makeValueInfo("y", DataType.FLOAT), makeValueInfo("s_out", DataType.FLOAT)],
        initializers: [makeTensor("S", DataType.FLOAT, [2, 4, 3], S)],
      }),
    });
    const r = await quantizeModel(shared, { type: "dynamic" });
    expect(r.plan.quantized).toEqual([]);
    expect(r.plan.skipped.map((s) => [s.node, s.reason])).toEqual([["mm_stack", "shared-weight"]]);
    expect(r.model.graph.initializer.map((t) => [t.name, t.dataType])).toEqual([["S", DataType.FLOAT]]);
    expect(count(r.model, "DequantizeLinear")).toBe(0);
  });

  test("a fallback revert keeps the stack fp32 for both readers, so the file holds it once", async () => {
    const r = await quantizeModel(model, { type: "static", exclude: ["mm_stack"] });
    expect(r.plan.quantized).toEqual([]);
    expect(r.plan.skipped.map((s) => [s.node, s.reason])).toEqual([
      ["mm_stack", "excluded"],
      ["mm_stack_again", "shared-weight"],
    ]);
    expect(initializer(r.model, "S")?.dataType).toBe(DataType.FLOAT);
    expect(count(r.model, "DequantizeLinear")).toBe(0);
    const plan = excludeNodes(planQuantization(model, defaultQuantizeOptions("dynamic")), ["mm_stack_again"]);
    expect(plan.quantized).toEqual([]);
  });

  test("onnxruntime keeps the stack int8 in the session: it does not fold the DequantizeLinear back to fp32", async () => {
    const r = await quantizeModel(model, { type: "dynamic" });
    const dir = mkdtempSync(join(tmpdir(), "quantd-weight-only-"));
    try {
      const saved = join(dir, "optimized.onnx");
      const s = await createOrtSession(encodeModel(r.model), { optimizedModelFilePath: saved });
      await s.release();
      const optimized = await loadModel(saved);
      const stacks = optimized.graph.initializer.filter((t) => t.name.startsWith("S_quantized"));
      expect(stacks.map((t) => t.dataType)).toEqual([DataType.INT8]);
      expect(
        optimized.graph.initializer.filter((t) => t.dataType === DataType.FLOAT && t.dims.length >= 2),
      ).toEqual([]);
      // onnxruntime gives each reader its own DequantizeLinear (of the one int8 initializer).
      const dq = optimized.graph.node.filter((n) => n.opType === "DequantizeLinear");
      expect(dq.length).toBeGreaterThan(0);
      for (const n of dq) expect(n.input[0]).toBe(stacks[0]!.name);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("candidates that stay fp32", () => {
  const w = (name: string, dims: number[]) =>
    makeTensor(name, DataType.FLOAT, dims, new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(0.25));
  const model = (opset = 17) =>
    makeModel({
      opsets: [{ domain: "", version: opset }],
      graph: makeGraph({
        name: "odd",
        nodes: [
          makeNode("Gemm", ["x", "Wt"], ["g"], { transA: 1 }, { name: "gemm_transA" }),
          makeNode("MatMul", ["g", "W1"], ["m"], {}, { name: "matmul_vector_weight" }),
          makeNode("Conv", ["img", "K"], ["c"], {}, { name: "conv" }),
          makeNode("MatMul", ["x", "x2"], ["mm"], {}, { name: "activation_matmul" }),
        ],
        inputs: [
          makeValueInfo("x", DataType.FLOAT, [4, 4]),
          makeValueInfo("x2", DataType.FLOAT, [4, 4]),
          makeValueInfo("img", DataType.FLOAT, [1, 1, 4, 4]),
        ],
        outputs: [
          makeValueInfo("m", DataType.FLOAT),
          makeValueInfo("c", DataType.FLOAT),
          makeValueInfo("mm", DataType.FLOAT),
        ],
        initializers: [w("Wt", [4, 4]), w("W1", [4]), w("K", [1, 1, 3, 3])],
      }),
    });

  test("each gets a reason and nothing is rewritten", async () => {
    const r = await quantizeModel(model(), { type: "dynamic" });
    const reasons = Object.fromEntries(r.plan.skipped.map((s) => [s.node, s.reason]));
    expect(reasons).toEqual({
      gemm_transA: "unsupported-attributes",
      matmul_vector_weight: "unsupported-attributes",
      conv: "unsupported-op",
      activation_matmul: "non-constant-weight",
    });
    expect(r.plan.quantized).toEqual([]);
    expect(r.model.graph.node.map((n) => n.opType)).toEqual(["Gemm", "MatMul", "Conv", "MatMul"]);
  });

  test("an opset older than 11 (too old to upgrade to per-axis DequantizeLinear) is QUANT_UNSUPPORTED", async () => {
    let err: unknown;
    try {
      await quantizeModel(model(10), { type: "dynamic" });
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "QUANT_UNSUPPORTED")).toBe(true);
  });
});

describe("reduce-range", () => {
  test("weights stay within ±64 and activations within [0, 127]", async () => {
    const r = await quantizeModel(fp32, { type: "static", format: "qdq", calibration, reduceRange: true });
    const weights = r.model.graph.initializer.filter(
      (t) => t.dataType === DataType.INT8 && t.dims.length === 2,
    );
    expect(weights.length).toBeGreaterThan(0);
    for (const t of weights) {
      const v = tensorToArray(t) as Int8Array;
      expect(Math.max(...v)).toBeLessThanOrEqual(64);
      expect(Math.min(...v)).toBeGreaterThanOrEqual(-64);
    }
    for (const qp of r.qparams.values()) {
      expect(qp.zeroPoint).toBeGreaterThanOrEqual(0);
      expect(qp.zeroPoint).toBeLessThanOrEqual(127);
    }
    const full = await quantizeModel(fp32, { type: "static", format: "qdq", ranges: r.ranges });
    const [name, reduced] = [...r.qparams.entries()][0]!;
    // half the levels: about twice the step
    expect(reduced.scale / full.qparams.get(name)!.scale).toBeCloseTo(255 / 127, 2);
  });
});
