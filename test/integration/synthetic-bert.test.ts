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
import {
  buildSyntheticBert,
  SYNTHETIC_BERT_PRESETS,
  type SyntheticBertConfig,
  syntheticBertMatMulName,
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

describe("planted outlier", () => {
  test("scales one output channel of the chosen projection and leaves everything else as it was", async () => {
    const config: SyntheticBertConfig = { ...tiny, plantOutlier: { layer: 1, node: "ffn_out", scale: 60 } };
    const planted = buildSyntheticBert(config);
    const plain = buildSyntheticBert(tiny);
    const weight = "bert.encoder.layer.1.output.dense.weight";
    plain.graph.initializer.forEach((t, k) => {
      const u = planted.graph.initializer[k]!;
      const same = Buffer.from(u.rawData!).equals(Buffer.from(t.rawData!));
      const touched = t.name === weight || t.name === "bert.encoder.layer.1.output.dense.bias";
      expect(`${t.name}: ${same}`).toBe(`${t.name}: ${!touched}`);
    });
    const w0 = tensorToArray(plain.graph.initializer.find((t) => t.name === weight)!) as Float32Array;
    const w1 = tensorToArray(planted.graph.initializer.find((t) => t.name === weight)!) as Float32Array;
    const cols = new Set<number>();
    w0.forEach((v, i) => {
      if (w1[i] !== v) {
        expect(w1[i]! / v).toBeCloseTo(60, 3);
        cols.add(i % tiny.hidden);
      }
    });
    expect(cols.size).toBe(1);

    // The projection's output now has an outlier channel.
    const out = syntheticBertMatMulName(1, "ffn_out").replace(/MatMul$/, "Add_output_0");
    const peak = async (m: ModelProto): Promise<number> => {
      new GraphIndex(m.graph).addGraphOutput(out);
      const s = await createOrtSession(encodeModel(m));
      try {
        const r = await s.run(batch([[101, 5, 6, 7, 102]]));
        return Math.max(...Array.from(r[out]!.data as Float32Array, Math.abs));
      } finally {
        await s.release();
      }
    };
    expect(await peak(planted)).toBeGreaterThan(10 * (await peak(plain)));
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
