import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeModel, loadModel, saveModel } from "../../src/onnx/codec.ts";
import { GraphIndex } from "../../src/onnx/graph.ts";
import { tensorElementCount, tensorToArray } from "../../src/onnx/tensor.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import type { InferenceSession, Tensor } from "../../src/runtime/types.ts";
import { expectClose } from "../helpers/expect-close.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { collectLogits } from "../../src/quant/pipeline.ts";
import {
  buildSyntheticBert,
  type MarginStats,
  marginStats,
  SYNTHETIC_BERT_PRESETS,
  type SyntheticBertConfig,
  syntheticBertInputs,
  syntheticBertParamCount,
} from "../fixtures/synthetic-bert.ts";

const tiny = SYNTHETIC_BERT_PRESETS.tiny;
const tmp = mkdtempSync(join(tmpdir(), "quantd-synthetic-bert-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Rows of token ids, right-padded with 0 to the longest; the mask marks the real tokens. */
function batch(rows: number[][], padTo?: number): Record<string, Tensor> {
  const len = padTo ?? Math.max(...rows.map((r) => r.length));
  const ids = new BigInt64Array(rows.length * len);
  const mask = new BigInt64Array(rows.length * len);
  const types = new BigInt64Array(rows.length * len);
  rows.forEach((r, b) => {
    r.forEach((id, k) => {
      ids[b * len + k] = BigInt(id);
      mask[b * len + k] = 1n;
      // Second segment after the first 102 ([SEP]), as for sentence pairs.
      types[b * len + k] = r.indexOf(102) >= 0 && k > r.indexOf(102) ? 1n : 0n;
    });
  });
  const dims = [rows.length, len];
  return {
    input_ids: { type: "int64", data: ids, dims },
    attention_mask: { type: "int64", data: mask, dims },
    token_type_ids: { type: "int64", data: types, dims },
  };
}

async function logits(s: InferenceSession, feeds: Record<string, Tensor>): Promise<Tensor> {
  return (await s.run(feeds))["logits"]!;
}

function row(t: Tensor, b: number, width: number): number[] {
  return Array.from(t.data as Float32Array).slice(b * width, (b + 1) * width);
}

describe("synthetic BERT (tiny)", () => {
  let session: InferenceSession;
  let model: ModelProto;

  beforeAll(async () => {
    model = buildSyntheticBert(tiny);
    const path = join(tmp, "tiny.onnx");
    await saveModel(model, path);
    session = await createOrtSession(path);
  });
  afterAll(() => session.release());

  test("has the exporter's interface", () => {
    expect(session.inputNames).toEqual(["input_ids", "attention_mask", "token_type_ids"]);
    expect(session.outputNames).toEqual(["logits"]);
    expect(session.inputs[0]!.dims).toEqual(["batch", "sequence"]);
    expect(model.opsetImport).toEqual([{ domain: "", version: 17 }]);
    expect(model.graph.initializer.reduce((n, t) => n + tensorElementCount(t), 0)).toBe(
      syntheticBertParamCount(tiny),
    );
  });

  test("finite logits of shape [batch, numLabels] for different lengths; inputs change them", async () => {
    const a = await logits(
      session,
      batch([
        [101, 7, 8, 9, 102],
        [101, 40, 41, 42, 102],
      ]),
    );
    const b = await logits(
      session,
      batch([
        [101, 300, 301, 302, 303, 304, 305, 306, 102],
        [101, 7, 8, 102, 50, 51, 52, 53, 102],
      ]),
    );
    for (const t of [a, b]) {
      expect(t.dims).toEqual([2, tiny.numLabels]);
      for (const v of t.data as Float32Array) expect(Number.isFinite(v)).toBe(true);
    }
    const all = [row(a, 0, 2), row(a, 1, 2), row(b, 0, 2), row(b, 1, 2)];
    for (let i = 0; i < all.length; i++) {
      for (let j = i + 1; j < all.length; j++) {
        const diff = Math.max(...all[i]!.map((v, k) => Math.abs(v - all[j]![k]!)));
        expect(diff).toBeGreaterThan(1e-3);
      }
    }
  });

  test("masked padding does not change the unpadded result", async () => {
    const short = [101, 11, 12, 13, 102];
    const long = [101, 20, 21, 22, 23, 24, 25, 26, 27, 28, 102];
    const alone = await logits(session, batch([short]));
    const padded = await logits(session, batch([short, long]));
    const padMore = await logits(session, batch([short], 40));
    expectClose(row(padded, 0, 2), row(alone, 0, 2), { atol: 1e-5, what: "padded row" });
    expectClose(row(padMore, 0, 2), row(alone, 0, 2), { atol: 1e-5, what: "heavily padded row" });
    // The mask matters: the same padding left unmasked changes the result.
    const unmasked = batch([short], 40);
    (unmasked["attention_mask"]!.data as BigInt64Array).fill(1n);
    const wrong = await logits(session, unmasked);
    expect(Math.abs(row(wrong, 0, 2)[0]! - row(alone, 0, 2)[0]!)).toBeGreaterThan(1e-4);
  });

  test("attention is not degenerate: softmax rows are far from uniform", async () => {
    const m = buildSyntheticBert(tiny);
    const probs = "/bert/encoder/layer.1/attention/self/Softmax_output_0";
    new GraphIndex(m.graph).addGraphOutput(probs);
    const s = await createOrtSession(encodeModel(m));
    try {
      const out = await s.run(batch([[101, 5, 6, 7, 8, 9, 10, 102]]));
      const p = out[probs]!.data as Float32Array;
      expect(Math.max(...p)).toBeGreaterThan(2 / 8);
    } finally {
      await s.release();
    }
  });

  test("same seed → same bytes; another seed → other weights", () => {
    const a = encodeModel(buildSyntheticBert(tiny));
    expect(Buffer.from(encodeModel(buildSyntheticBert(tiny))).equals(Buffer.from(a))).toBe(true);
    expect(Buffer.from(encodeModel(buildSyntheticBert({ ...tiny, seed: 2 }))).equals(Buffer.from(a))).toBe(
      false,
    );
  });
});

describe("sentiment path", () => {
  /** Logit margins of a config over 200 random [CLS] … [SEP] inputs. */
  async function margins(config: SyntheticBertConfig): Promise<MarginStats> {
    const s = await createOrtSession(encodeModel(buildSyntheticBert(config)));
    try {
      const l = await collectLogits(s, syntheticBertInputs(200, 50, config.vocab, 64, 12));
      return marginStats(l.data, l.rows);
    } finally {
      await s.release();
    }
  }

  test("logits follow the words with a trained classifier's margins, both classes common", async () => {
    const m = await margins(tiny);
    expect(m.p50).toBeGreaterThan(1);
    expect(m.p95).toBeGreaterThan(3);
    expect(m.class1).toBeGreaterThan(0.3);
    expect(m.class1).toBeLessThan(0.7);
  });

  test("without it (sentiment 0) the random BERT's logits are near ties on one class", async () => {
    const m = await margins({ ...tiny, sentiment: 0 });
    expect(m.p50).toBeLessThan(0.5);
    expect(Math.min(m.class1, 1 - m.class1)).toBeLessThan(0.1);
  });

  test("[CLS] learns the sentence: the same words in another order keep the class mostly, other words flip it often", async () => {
    const s = await createOrtSession(encodeModel(buildSyntheticBert(tiny)));
    try {
      const inputs = syntheticBertInputs(100, 100, tiny.vocab, 48, 3);
      const base = await collectLogits(s, inputs);
      // Reverse the words between [CLS] and [SEP].
      const b = inputs[0]!;
      const reversed = BigInt64Array.from(b.inputIds);
      for (let r = 0; r < b.batchSize; r++) {
        const len = b.lengths[r]!;
        for (let j = 1; j < len - 1; j++)
          reversed[r * b.seqLen + j] = b.inputIds[r * b.seqLen + len - 1 - j]!;
      }
      const other = syntheticBertInputs(100, 100, tiny.vocab, 48, 4);
      const rev = await collectLogits(s, [{ ...b, inputIds: reversed }]);
      const oth = await collectLogits(s, other);
      const sign = (l: Float32Array, r: number) => l[2 * r + 1]! > l[2 * r]!;
      let sameRev = 0;
      let sameOther = 0;
      for (let r = 0; r < 100; r++) {
        if (sign(rev.data, r) === sign(base.data, r)) sameRev++;
        if (sign(oth.data, r) === sign(base.data, r)) sameOther++;
      }
      expect(sameRev).toBeGreaterThan(sameOther + 10);
      expect(sameOther).toBeLessThan(75);
    } finally {
      await s.release();
    }
  });
});

describe("planted outlier", () => {
  const valueCol = (w: Float32Array, ch: number) =>
    Array.from({ length: tiny.hidden }, (_, i) => w[i * tiny.hidden + ch]!);
  const initializer = (m: ModelProto, name: string) =>
    tensorToArray(m.graph.initializer.find((t) => t.name === name)!) as Float32Array;
  /** Largest |x| of the outlier channel and of the others, at a tensor, over a few inputs. */
  async function peaks(m: ModelProto, tensor: string): Promise<{ outlier: number; rest: number }> {
    new GraphIndex(m.graph).addGraphOutput(tensor);
    const s = await createOrtSession(encodeModel(m));
    try {
      const r = await s.run(batch([[101, 5, 6, 7, 8, 9, 102]]));
      const t = r[tensor]!;
      const width = t.dims.at(-1)!;
      const perChannel = new Float32Array(width);
      (t.data as Float32Array).forEach((v, i) => {
        perChannel[i % width] = Math.max(perChannel[i % width]!, Math.abs(v));
      });
      const sorted = Array.from(perChannel).sort((a, b) => b - a);
      return { outlier: sorted[0]!, rest: sorted[1]! };
    } finally {
      await s.release();
    }
  }

  test("attn_out: one value channel ×1000, the attention-output row ÷1000; fp32 logits unchanged", async () => {
    const config: SyntheticBertConfig = {
      ...tiny,
      plantOutlier: { layer: 1, node: "attn_out", scale: 1000 },
    };
    const planted = buildSyntheticBert(config);
    const plain = buildSyntheticBert(tiny);
    const P = "bert.encoder.layer.1.attention";
    const touched = [`${P}.self.value.weight`, `${P}.self.value.bias`, `${P}.output.dense.weight`];
    plain.graph.initializer.forEach((t, k) => {
      const same = Buffer.from(planted.graph.initializer[k]!.rawData!).equals(Buffer.from(t.rawData!));
      expect(`${t.name}: ${same}`).toBe(`${t.name}: ${!touched.includes(t.name)}`);
    });
    const v0 = initializer(plain, touched[0]!);
    const v1 = initializer(planted, touched[0]!);
    const cols = new Set<number>();
    v0.forEach((x, i) => {
      if (v1[i] !== x) cols.add(i % tiny.hidden);
    });
    expect(cols.size).toBe(1);
    const ch = [...cols][0]!;
    expectClose(
      valueCol(v1, ch),
      valueCol(v0, ch).map((x) => x * 1000),
      { atol: 0, rtol: 1e-6, what: "value column" },
    );

    // The attention-output projection's input now has one channel ~1000× the others…
    const input = "/bert/encoder/layer.1/attention/self/Reshape_3_output_0";
    const p = await peaks(structuredClone(planted), input);
    expect(p.outlier).toBeGreaterThan(100 * p.rest);
    // …while fp32 computes the same function.
    const run = async (m: ModelProto) => {
      const s = await createOrtSession(encodeModel(m));
      try {
        return row(await logits(s, batch([[101, 40, 41, 42, 43, 102]])), 0, 2);
      } finally {
        await s.release();
      }
    };
    expectClose(await run(planted), await run(plain), { atol: 1e-3, what: "logits" });
  });

  test("ffn_out: one FFN channel ×60 in, ÷60 out; fp32 logits nearly unchanged", async () => {
    const planted = buildSyntheticBert({ ...tiny, plantOutlier: { layer: 0, node: "ffn_out", scale: 60 } });
    const plain = buildSyntheticBert(tiny);
    const input = "/bert/encoder/layer.0/intermediate/intermediate_act_fn/Mul_1_output_0";
    const p = await peaks(structuredClone(planted), input);
    expect(p.outlier).toBeGreaterThan(10 * p.rest);
    const q = await peaks(structuredClone(plain), input);
    expect(q.outlier).toBeLessThan(10 * q.rest);
    const s0 = await createOrtSession(encodeModel(plain));
    const s1 = await createOrtSession(encodeModel(planted));
    try {
      const feeds = batch([[101, 40, 41, 42, 43, 102]]);
      expectClose(row(await logits(s1, feeds), 0, 2), row(await logits(s0, feeds), 0, 2), {
        atol: 0.1,
        what: "logits",
      });
    } finally {
      await s0.release();
      await s1.release();
    }
  });

  test("only attn_out and ffn_out take an outlier", () => {
    expect(() =>
      buildSyntheticBert({ ...tiny, plantOutlier: { layer: 0, node: "query" as "attn_out", scale: 10 } }),
    ).toThrow(/attn_out or ffn_out/);
  });
});

describe("op pattern and sizes", () => {
  test("mini's compute nodes carry the shipped export's names and op types", async () => {
    const shipped = await loadModel(shippedModelPath, { loadExternalData: true });
    const synthetic = buildSyntheticBert(SYNTHETIC_BERT_PRESETS.mini);
    const compute = new Set([
      "MatMul",
      "Gemm",
      "Softmax",
      "LayerNormalization",
      "Erf",
      "Tanh",
      "Transpose",
      "Div",
    ]);
    const names = (m: ModelProto) =>
      m.graph.node
        .filter((n) => compute.has(n.opType))
        .map((n) => `${n.opType} ${n.name}`)
        .sort();
    expect(names(synthetic)).toEqual(names(shipped));
    const shippedOps = new Set(shipped.graph.node.map((n) => n.opType));
    for (const n of synthetic.graph.node) expect(shippedOps.has(n.opType)).toBe(true);
    // Same weights by shape, for the weights both name alike.
    const shapes = new Map(shipped.graph.initializer.map((t) => [t.name, t.dims]));
    for (const t of synthetic.graph.initializer) {
      if (shapes.has(t.name)) expect(`${t.name} ${t.dims}`).toBe(`${t.name} ${shapes.get(t.name)}`);
    }
  });

  test("base is BERT-base sized", () => {
    const base = SYNTHETIC_BERT_PRESETS.base;
    const params = syntheticBertParamCount(base);
    expect(params).toBeGreaterThan(108e6);
    expect(params).toBeLessThan(111e6);
    // Building base takes seconds; build a 1-layer copy and check the count formula against it.
    const one = buildSyntheticBert({ ...base, layers: 1 });
    expect(one.graph.initializer.reduce((n, t) => n + tensorElementCount(t), 0)).toBe(
      syntheticBertParamCount({ ...base, layers: 1 }),
    );
    const perLayer = one.graph.node.filter((n) => n.name.startsWith("/bert/encoder/layer.0/")).length;
    expect(perLayer).toBeGreaterThan(30);
  });
});
