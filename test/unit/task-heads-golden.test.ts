/**
 * Hand-computed golden values for what turns model outputs into task results:
 * pooling and normalization, entity grouping under each aggregation strategy,
 * character offsets of tokens, and task detection from outputs and files.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { groupEntities, type TokenInfo } from "../../src/runtime/entities.ts";
import { cosine, l2Normalize, poolRow, sigmoid } from "../../src/runtime/pooling.ts";
import { detectTask } from "../../src/runtime/task.ts";
import { alignTokens } from "../../src/runtime/token-align.ts";
import type { TensorInfo } from "../../src/runtime/types.ts";

describe("pooling", () => {
  // Two rows of [seq 3, width 2]; row 0's third position and row 1's second and third are padding.
  const hidden = Float32Array.of(1, 2, 3, 6, 100, 100, -1, 5, 7, 7, 9, 9);
  const mask = [1n, 1n, 0n, 1n, 0n, 0n];
  test("mean, max, cls and mean-sqrt-len skip padding", () => {
    expect(Array.from(poolRow(hidden, 0, 3, 2, mask, "mean"))).toEqual([2, 4]);
    expect(Array.from(poolRow(hidden, 0, 3, 2, mask, "max"))).toEqual([3, 6]);
    expect(Array.from(poolRow(hidden, 0, 3, 2, mask, "cls"))).toEqual([1, 2]);
    const sqrt = Array.from(poolRow(hidden, 0, 3, 2, mask, "mean-sqrt-len"));
    expect(sqrt[0]).toBeCloseTo(4 / Math.SQRT2, 5);
    expect(sqrt[1]).toBeCloseTo(8 / Math.SQRT2, 5);
    expect(Array.from(poolRow(hidden, 1, 3, 2, mask, "mean"))).toEqual([-1, 5]);
    expect(Array.from(poolRow(hidden, 1, 3, 2, mask, "max"))).toEqual([-1, 5]);
  });
  test("normalize divides by the L2 norm; a zero vector stays zero", () => {
    const v = l2Normalize(Float32Array.of(2, 4));
    expect(v[0]).toBeCloseTo(2 / Math.sqrt(20), 6);
    expect(v[1]).toBeCloseTo(4 / Math.sqrt(20), 6);
    expect(Array.from(l2Normalize(Float32Array.of(0, 0)))).toEqual([0, 0]);
    expect(cosine([1, 0], [1, 1])).toBeCloseTo(Math.SQRT1_2, 12);
    expect(sigmoid(0)).toBe(0.5);
    expect(sigmoid(-800)).toBe(0);
  });
});

describe("entity grouping", () => {
  // "Ann Lee of Paris": [CLS] ann lee of pa ##ris [SEP]; logits = ln(p) so softmax gives p back exactly.
  const text = "Ann Lee of Paris";
  const labels = ["O", "B-PER", "I-PER", "B-LOC"];
  const tok = (start: number, end: number, p: number[], subword = false): TokenInfo => ({
    start,
    end,
    subword,
    special: false,
    logits: p.map(Math.log),
  });
  const special: TokenInfo = { special: true, subword: false, logits: [0, 0, 0, 0] };
  const tokens = [
    special,
    tok(0, 3, [0.1, 0.7, 0.1, 0.1]),
    tok(4, 7, [0.2, 0.1, 0.6, 0.1]),
    tok(8, 10, [0.9, 0.05, 0.025, 0.025]),
    tok(11, 13, [0.1, 0.1, 0.1, 0.7]),
    tok(13, 16, [0.05, 0.05, 0.85, 0.05], true),
    special,
  ];
  const round = (es: ReturnType<typeof groupEntities>) =>
    es.map((e) => ({ ...e, score: Math.round(e.score * 1e6) / 1e6 }));
  test("none: every labelled token but O, with its index", () => {
    expect(round(groupEntities(text, tokens, labels, "none"))).toEqual([
      { entity: "B-PER", score: 0.7, word: "Ann", start: 0, end: 3, index: 1 },
      { entity: "I-PER", score: 0.6, word: "Lee", start: 4, end: 7, index: 2 },
      { entity: "B-LOC", score: 0.7, word: "Pa", start: 11, end: 13, index: 4 },
      { entity: "I-PER", score: 0.85, word: "ris", start: 13, end: 16, index: 5 },
    ]);
  });
  test("simple: adjacent tokens of one type join, B- starts anew, mean score", () => {
    expect(round(groupEntities(text, tokens, labels, "simple"))).toEqual([
      { entity: "PER", score: 0.65, word: "Ann Lee", start: 0, end: 7 },
      { entity: "LOC", score: 0.7, word: "Pa", start: 11, end: 13 },
      { entity: "PER", score: 0.85, word: "ris", start: 13, end: 16 },
    ]);
  });
  test("first / average / max label whole words", () => {
    const annLee = { entity: "PER", score: 0.65, word: "Ann Lee", start: 0, end: 7 };
    expect(round(groupEntities(text, tokens, labels, "first"))).toEqual([
      annLee,
      { entity: "LOC", score: 0.7, word: "Paris", start: 11, end: 16 },
    ]);
    // Mean of pa and ##ris: [0.075, 0.075, 0.475, 0.375] → I-PER.
    expect(round(groupEntities(text, tokens, labels, "average"))).toEqual([
      annLee,
      { entity: "PER", score: 0.475, word: "Paris", start: 11, end: 16 },
    ]);
    // ##ris (0.85) is more confident than pa (0.7).
    expect(round(groupEntities(text, tokens, labels, "max"))).toEqual([
      annLee,
      { entity: "PER", score: 0.85, word: "Paris", start: 11, end: 16 },
    ]);
  });
});

describe("token offsets", () => {
  test("WordPiece, uncased: accents and case folded, ## pieces are subwords", () => {
    const style = { continuingPrefix: "##", byteLevel: false, metaspace: false, uncased: true };
    expect(alignTokens("Héllo, WORLD!", ["hello", ",", "world", "!"], style)).toEqual([
      { start: 0, end: 5, subword: false },
      { start: 5, end: 6, subword: false },
      { start: 7, end: 12, subword: false },
      { start: 12, end: 13, subword: false },
    ]);
    expect(alignTokens("  unaffable", ["un", "##aff", "##able"], style)).toEqual([
      { start: 2, end: 4, subword: false },
      { start: 4, end: 7, subword: true },
      { start: 7, end: 11, subword: true },
    ]);
    // [UNK] covers the text between the tokens found around it.
    expect(alignTokens("a ☃☃ b", ["a", "[UNK]", "b"], style)).toEqual([
      { start: 0, end: 1, subword: false },
      { start: 2, end: 4, subword: false },
      { start: 5, end: 6, subword: false },
    ]);
  });
  test("byte-level and metaspace pieces", () => {
    const byte = { byteLevel: true, metaspace: false, uncased: false };
    expect(alignTokens("Hi there", ["Hi", "Ġthere"], byte)).toEqual([
      { start: 0, end: 2, subword: false },
      { start: 3, end: 8, subword: false },
    ]);
    // "é" is two bytes: Ã© in the byte alphabet.
    expect(alignTokens("café", ["caf", "Ã©"], byte)).toEqual([
      { start: 0, end: 3, subword: false },
      { start: 3, end: 4, subword: true },
    ]);
    const meta = { byteLevel: false, metaspace: true, uncased: false };
    expect(alignTokens("Hi there", ["▁Hi", "▁the", "re"], meta)).toEqual([
      { start: 0, end: 2, subword: false },
      { start: 3, end: 6, subword: false },
      { start: 6, end: 8, subword: true },
    ]);
  });
});

describe("task detection", () => {
  const root = mkdtempSync(join(tmpdir(), "quantd-task-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  let n = 0;
  /** A model directory with the given files; returns the model path and config path. */
  const dir = (files: Record<string, unknown>): { model: string; configPath?: string } => {
    const d = join(root, String(n++));
    mkdirSync(d, { recursive: true });
    for (const [name, value] of Object.entries(files)) {
      mkdirSync(join(d, name, ".."), { recursive: true });
      writeFileSync(join(d, name), JSON.stringify(value));
    }
    const out: { model: string; configPath?: string } = { model: join(d, "model.onnx") };
    if ("config.json" in files) out.configPath = join(d, "config.json");
    return out;
  };
  const out = (name: string, dims: (number | string)[]): TensorInfo => ({ name, type: "float32", dims });
  const seq = [out("logits", ["batch", 3])];

  test("sequence heads by problem_type, label count and labels", () => {
    expect(detectTask(seq, dir({})).kind).toBe("classification");
    expect(detectTask(seq, dir({})).labels).toEqual(["LABEL_0", "LABEL_1", "LABEL_2"]);
    const ml = detectTask(seq, dir({ "config.json": { problem_type: "multi_label_classification" } }));
    expect([ml.kind, ml.thresholds]).toEqual(["multi-label", [0.5, 0.5, 0.5]]);
    expect(detectTask([out("logits", ["batch", 1])], dir({})).kind).toBe("regression");
    const nli = dir({ "config.json": { id2label: { 0: "entailment", 1: "neutral", 2: "contradiction" } } });
    expect(detectTask(seq, nli).kind).toBe("pair-classification");
    expect(detectTask(seq, nli).labels).toEqual(["entailment", "neutral", "contradiction"]);
  });
  test("token heads and embeddings by output rank and name, sentence-transformers pooling", () => {
    expect(detectTask([out("logits", ["batch", "sequence", 9])], dir({})).kind).toBe("token-classification");
    const st = dir({
      "modules.json": [
        { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
        { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
      ],
      "1_Pooling/config.json": { pooling_mode_cls_token: true, pooling_mode_mean_tokens: false },
    });
    const e = detectTask([out("last_hidden_state", ["batch", "sequence", 8])], st);
    expect([e.kind, e.pooling, e.normalize]).toEqual(["embedding", "cls", false]);
    const pooled = detectTask(
      [out("token_embeddings", ["b", "s", 8]), out("sentence_embedding", ["b", 8])],
      dir({}),
    );
    expect([pooled.kind, pooled.output, pooled.pooling]).toEqual([
      "embedding",
      "sentence_embedding",
      undefined,
    ]);
    // An unnamed per-token output of a ForTokenClassification model.
    const ner = dir({ "config.json": { architectures: ["BertForTokenClassification"] } });
    expect(detectTask([out("output_0", ["b", "s", 5])], ner).kind).toBe("token-classification");
  });
  test("overrides apply when the outputs allow them, and fail naming both sides when not", () => {
    expect(detectTask(seq, dir({}), { kind: "multi-label", thresholds: [0.2, 0.5, 0.9] }).thresholds).toEqual(
      [0.2, 0.5, 0.9],
    );
    expect(() => detectTask(seq, dir({}), { kind: "embedding" })).toThrow(
      /cannot run as embedding .*needs last_hidden_state.*has logits float32 \[batch, 3\]/,
    );
    expect(() => detectTask([out("scores", ["b"])], dir({}))).toThrow(/no output quantd can read as a task/);
    expect(() => detectTask([], dir({}))).toThrow(expect.objectContaining({ code: "MODEL_TASK_MISMATCH" }));
    // A float16 export's logits have the right name and shape: the error says what is wrong with them.
    const half: TensorInfo = { ...out("logits", ["batch", 2]), type: "float16" };
    expect(() => detectTask([half], dir({}))).toThrow(
      /logits float16 .*quantd runs float32 models.*fp32 export/,
    );
    expect(() => detectTask(seq, dir({}), { kind: "multi-label", thresholds: [0.5, 0.5] })).toThrow(
      expect.objectContaining({ code: "USAGE" }),
    );
    expect(() => detectTask(seq, dir({}), { pooling: "mean" })).toThrow(/apply to embedding models/);
    expect(() => detectTask(seq, dir({ "config.json": { id2label: { 0: "a", 1: "b" } } }))).toThrow(
      expect.objectContaining({ code: "DATA_MISMATCH" }),
    );
    expect(() =>
      detectTask(
        [out("last_hidden_state", ["b", "s", 8])],
        dir({ "1_Pooling/config.json": {}, "modules.json": 3 }),
      ),
    ).toThrow(expect.objectContaining({ code: "CONFIG_INVALID" }));
  });
});
