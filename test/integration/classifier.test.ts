import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { isQuantdError } from "../../src/errors.ts";
import { saveModel } from "../../src/onnx/codec.ts";
import {
  argmax,
  type Classifier,
  feedsForEncoding,
  loadClassifier,
  softmax,
} from "../../src/runtime/classifier.ts";
import { findModelFiles } from "../../src/runtime/model-files.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { codeOfAsync } from "../helpers/error-code.ts";
import { expectClose } from "../helpers/expect-close.ts";
import {
  hasShared,
  sharedDir,
  sharedSkipReason,
  shippedModelDir,
  shippedModelPath,
} from "../helpers/paths.ts";
import { ONNX_FLOAT, ONNX_INT64, tinyOnnxModel } from "../helpers/tiny-onnx.ts";

// Model runs share 2 cores with other suites; bun's 5 s default is too tight under load.
const SLOW_TEST_MS = 60_000;

// fp32 logits from ../shared/data/sst2/golden.dev.jsonl (Python ONNX Runtime), embedded so these run without it.
const KNOWN = [
  { text: "one long string of cliches .", label: 0, logits: [1.34468, -1.56355] },
  {
    text: "if you 've ever entertained the notion of doing what the title of this film implies , what sex with strangers actually shows may put you off the idea forever .",
    label: 0,
    logits: [-0.26477, 0.40688],
  },
  {
    text: "k-19 exploits our substantial collective fear of nuclear holocaust to generate cheap hollywood tension .",
    label: 0,
    logits: [0.49096, -0.67508],
  },
  {
    text: "it 's played in the most straight-faced fashion , with little humor to lighten things up .",
    label: 0,
    logits: [0.63136, -0.72938],
  },
];
// The golden file rounds logits to 5 decimals; ORT reproduces them to ~5e-6.
const LOGIT_ATOL = 1e-4;

interface GoldenRow {
  text: string;
  label: number;
  logits_fp32: [number, number];
}

let clf: Classifier;
let tmp: string;
beforeAll(async () => {
  clf = await loadClassifier(shippedModelPath);
  tmp = mkdtempSync(join(tmpdir(), "quantd-clf-"));
}, SLOW_TEST_MS);
afterAll(async () => {
  await clf.release();
  rmSync(tmp, { recursive: true, force: true });
});

describe("shipped fp32 BERT-Mini", () => {
  test("labels, output and inputs", () => {
    expect(clf.labels).toEqual(["negative", "positive"]);
    expect(clf.numLabels).toBe(2);
    expect(clf.outputName).toBe("logits");
    expect(clf.modelPath).toBe(resolve(shippedModelPath));
    expect(clf.tokenizer.maxLength).toBe(512);
  });

  test(
    "logits match Python for known sentences, alone and padded in a batch",
    async () => {
      const out = await clf.logits(KNOWN.map((k) => k.text));
      expect(out.batch).toBe(KNOWN.length);
      expect(out.numLabels).toBe(2);
      expect(out.encoding.seqLen).toBe(Math.max(...out.encoding.lengths));
      expectClose(
        out.data,
        KNOWN.flatMap((k) => k.logits),
        { atol: LOGIT_ATOL, what: "batched logits" },
      );
      for (const k of KNOWN) {
        const one = await clf.logits([k.text]);
        expectClose(one.data, k.logits, { atol: LOGIT_ATOL, what: `logits of ${JSON.stringify(k.text)}` });
      }
    },
    SLOW_TEST_MS,
  );

  test(
    "classify: labels, stable softmax, chunking gives the same results",
    async () => {
      const texts = [...KNOWN.map((k) => k.text), "a gorgeous , witty , seductive movie ."];
      const all = await clf.classify(texts);
      const chunked = await clf.classify(texts, { batchSize: 2, batching: "input-order" });
      expect(all.length).toBe(texts.length);
      for (const [i, c] of all.entries()) {
        expect(c.probabilities.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
        expect(c.score).toBe(Math.max(...c.probabilities));
        expect(c.label).toBe(clf.labels[c.labelId]!);
        expect(c.labelId).toBe(argmax(c.logits));
        expectClose(chunked[i]!.logits, c.logits, { atol: LOGIT_ATOL, what: `chunked logits ${i}` });
      }
      expect(all.slice(0, KNOWN.length).map((c) => c.labelId)).toEqual([0, 1, 0, 0]);
      expect(all[KNOWN.length]!.label).toBe("positive");
    },
    SLOW_TEST_MS,
  );

  test("pairs run with segment ids", async () => {
    const [c] = await clf.classify([["a gorgeous movie .", "i loved it ."]]);
    expect(c!.probabilities.length).toBe(2);
    const out = await clf.logits([["a gorgeous movie .", "i loved it ."]]);
    expect([...out.encoding.tokenTypeIds].map(Number)).toContain(1);
  });

  test(
    "bad inputs give text error codes naming the caller's index",
    async () => {
      expect(await codeOfAsync(clf.classify(["fine", ""]))).toBe("TEXT_EMPTY");
      expect(await codeOfAsync(clf.classify(["fine", 3 as unknown as string]))).toBe("TEXT_NOT_STRING");
      expect(await codeOfAsync(clf.classify(["x".repeat(70_000)]))).toBe("TEXT_TOO_LARGE");
      expect(await codeOfAsync(clf.classify(["bad \ud800"]))).toBe("TEXT_INVALID_UTF8");
      expect(await codeOfAsync(clf.classify([]))).toBe("USAGE");
      let err: unknown;
      try {
        await clf.classify(["a", "b", "c", "  "], { batchSize: 2 });
      } catch (e) {
        err = e;
      }
      expect(isQuantdError(err, "TEXT_EMPTY")).toBe(true);
      expect((err as Error).message).toContain("input 3");
    },
    SLOW_TEST_MS,
  );

  test("softmax is stable for huge logits", () => {
    const p = softmax([1000, 1001, -1e30]);
    expect(p.every(Number.isFinite)).toBe(true);
    expectClose(p, [1 / (1 + Math.E), Math.E / (1 + Math.E), 0], { atol: 1e-12 });
  });
});

describe("model files and model checks", () => {
  test("findModelFiles: directory or file, tokenizer beside it, config", () => {
    const byDir = findModelFiles(shippedModelDir);
    const byFile = findModelFiles(shippedModelPath);
    expect(byDir).toEqual(byFile);
    expect(byFile.tokenizerDir).toBe(resolve(shippedModelDir));
    expect(byFile.configPath).toBe(resolve(shippedModelDir, "config.json"));
  });

  test(
    "missing model, missing tokenizer with a --tokenizer hint, explicit tokenizer dir",
    async () => {
      expect(await codeOfAsync(loadClassifier(join(tmp, "absent.onnx")))).toBe("FILE_NOT_FOUND");
      const other = join(tmp, "other");
      mkdirSync(other, { recursive: true });
      writeFileSync(join(other, "model.int8.onnx"), "");
      let missing: unknown;
      try {
        findModelFiles(other);
      } catch (e) {
        missing = e;
      }
      expect(isQuantdError(missing, "FILE_NOT_FOUND")).toBe(true);
      expect((missing as Error).message).toContain("model.int8.onnx");
      const dir = join(tmp, "bare");
      mkdirSync(dir, { recursive: true });
      symlinkSync(resolve(shippedModelPath), join(dir, "model.onnx"));
      let err: unknown;
      try {
        findModelFiles(join(dir, "model.onnx"));
      } catch (e) {
        err = e;
      }
      expect(isQuantdError(err, "TOKENIZER_NOT_FOUND")).toBe(true);
      expect((err as Error).message).toContain("--tokenizer");
      expect(await codeOfAsync(loadClassifier(dir, { tokenizerDir: tmp }))).toBe("TOKENIZER_NOT_FOUND");
      const c = await loadClassifier(dir, { tokenizerDir: shippedModelDir, maxLength: 16 });
      try {
        // config.json found in the tokenizer directory when not beside the model
        expect(c.labels).toEqual(["negative", "positive"]);
        expect(c.tokenizer.maxLength).toBe(16);
        const out = await c.logits([KNOWN[1]!.text]);
        expect(out.encoding.seqLen).toBe(16);
        expect(out.encoding.truncated).toEqual([true]);
      } finally {
        await c.release();
      }
    },
    SLOW_TEST_MS,
  );

  test(
    "labels fall back to LABEL_i; a config with other label count is refused",
    async () => {
      const dir = join(tmp, "nolabels");
      mkdirSync(dir, { recursive: true });
      symlinkSync(resolve(shippedModelPath), join(dir, "model.onnx"));
      copyFileSync(join(shippedModelDir, "tokenizer.json"), join(dir, "tokenizer.json"));
      copyFileSync(join(shippedModelDir, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
      const c = await loadClassifier(dir);
      expect(c.labels).toEqual(["LABEL_0", "LABEL_1"]);
      await c.release();
      writeFileSync(join(dir, "config.json"), JSON.stringify({ id2label: { 0: "a", 1: "b", 2: "c" } }));
      expect(await codeOfAsync(loadClassifier(dir))).toBe("DATA_MISMATCH");
      writeFileSync(join(dir, "config.json"), "{oops");
      expect(await codeOfAsync(loadClassifier(dir))).toBe("CONFIG_INVALID");
      // a tokenizer with more tokens than the model's embedding table
      writeFileSync(join(dir, "config.json"), JSON.stringify({ vocab_size: 8000 }));
      expect(await codeOfAsync(loadClassifier(dir))).toBe("TOKENIZER_INVALID");
      writeFileSync(join(dir, "config.json"), JSON.stringify({ vocab_size: 16384 }));
      const ok = await loadClassifier(dir);
      expect(ok.tokenizer.vocabSize).toBe(16384);
      await ok.release();
    },
    SLOW_TEST_MS,
  );

  test(
    "without a config.json the graph's tables bound the tokenizer: its positions cut long texts, its vocabulary refuses another model's tokenizer",
    async () => {
      // The synthetic BERT has 128 positions; the shipped tokenizer allows 512 and has 16,384 tokens.
      const dir = join(tmp, "noconfig");
      mkdirSync(dir, { recursive: true });
      await saveModel(
        buildSyntheticBert({ ...SYNTHETIC_BERT_PRESETS.tiny, vocab: 16384 }),
        join(dir, "model.onnx"),
      );
      copyFileSync(join(shippedModelDir, "tokenizer.json"), join(dir, "tokenizer.json"));
      copyFileSync(join(shippedModelDir, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
      const c = await loadClassifier(dir);
      try {
        expect(c.tokenizer.maxLength).toBe(128);
        const out = await c.logits(["a fine film ".repeat(100)]);
        expect([out.encoding.seqLen, out.encoding.truncated[0]]).toEqual([128, true]);
      } finally {
        await c.release();
      }
      await saveModel(buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny), join(dir, "model.onnx"));
      const err = await loadClassifier(dir).catch((e: unknown) => e);
      expect(isQuantdError(err, "TOKENIZER_INVALID")).toBe(true);
      expect((err as Error).message).toMatch(
        /16384 tokens but the model's token-embedding table \S+ has 512 rows/,
      );
    },
    SLOW_TEST_MS,
  );

  test("a file that is not ONNX gives MODEL_LOAD_FAILED", async () => {
    const dir = join(tmp, "garbage");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "model.onnx"), "this is not a protobuf");
    expect(await codeOfAsync(loadClassifier(dir, { tokenizerDir: shippedModelDir }))).toBe(
      "MODEL_LOAD_FAILED",
    );
  });

  test("a model without BERT inputs is refused with MODEL_INPUTS_MISMATCH naming its inputs", async () => {
    const dir = join(tmp, "vision");
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      join(dir, "model.onnx"),
      tinyOnnxModel(
        [{ opType: "Identity", inputs: ["pixel_values"], outputs: ["logits"] }],
        [{ name: "pixel_values", elemType: ONNX_FLOAT, dims: ["batch", 3] }],
        [{ name: "logits", elemType: ONNX_FLOAT, dims: ["batch", 3] }],
      ),
    );
    let err: unknown;
    try {
      await loadClassifier(dir, { tokenizerDir: shippedModelDir });
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "MODEL_INPUTS_MISMATCH")).toBe(true);
    expect((err as Error).message).toContain("pixel_values");
    expect((err as Error).message).toContain("input_ids");
  });

  test(
    "feedsForEncoding feeds only the inputs a model declares; labels counted by a probe run",
    async () => {
      const dir = join(tmp, "idsonly");
      mkdirSync(dir, { recursive: true });
      // input_ids → Cast(float): "logits" [batch, sequence], so the label count is only known by running it
      const bytes = tinyOnnxModel(
        [{ opType: "Cast", inputs: ["input_ids"], outputs: ["logits"], intAttrs: { to: ONNX_FLOAT } }],
        [{ name: "input_ids", elemType: ONNX_INT64, dims: ["batch", "sequence"] }],
        [{ name: "logits", elemType: ONNX_FLOAT, dims: ["batch", "sequence"] }],
      );
      writeFileSync(join(dir, "model.onnx"), bytes);
      // the tokenizer beside it, without config.json (which would name 2 labels)
      copyFileSync(join(shippedModelDir, "tokenizer.json"), join(dir, "tokenizer.json"));
      const session = await createOrtSession(bytes);
      try {
        const enc = clf.tokenizer.encodeBatch(["good", "very bad ."]);
        const feeds = feedsForEncoding(session, enc);
        expect(Object.keys(feeds)).toEqual(["input_ids"]);
        const out = await session.run(feeds);
        expectClose(out["logits"]!.data as Float32Array, [...enc.inputIds].map(Number), { atol: 0 });
      } finally {
        await session.release();
      }
      const c = await loadClassifier(dir);
      try {
        // "a" encodes to [CLS] a [SEP]: three "labels"
        expect(c.labels).toEqual(["LABEL_0", "LABEL_1", "LABEL_2"]);
      } finally {
        await c.release();
      }
    },
    SLOW_TEST_MS,
  );
});

describe("golden dev set", () => {
  const rows: GoldenRow[] = hasShared
    ? readFileSync(resolve(sharedDir, "data/sst2/golden.dev.jsonl"), "utf8")
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as GoldenRow)
    : [];

  test.skipIf(!hasShared)(
    hasShared
      ? "fp32 logits of all 872 dev sentences within 1e-4 (batches of 32), accuracy 83.26 %"
      : sharedSkipReason,
    async () => {
      expect(rows.length).toBe(872);
      const got: number[] = [];
      let correct = 0;
      for (let s = 0; s < rows.length; s += 32) {
        const chunk = rows.slice(s, s + 32);
        const out = await clf.logits(chunk.map((g) => g.text));
        got.push(...out.data);
        for (let r = 0; r < out.batch; r++) if (argmax(out.data, r * 2, 2) === chunk[r]!.label) correct++;
      }
      expectClose(
        got,
        rows.flatMap((g) => g.logits_fp32),
        { atol: LOGIT_ATOL, what: "dev logits (batch 32)" },
      );
      expect(correct).toBe(726);
      expect(correct / rows.length).toBeCloseTo(0.8326, 4);
    },
    SLOW_TEST_MS,
  );

  test.skipIf(!hasShared)(
    hasShared ? "batch size 1 on every 8th sentence gives the same logits" : sharedSkipReason,
    async () => {
      const subset = rows.filter((_, i) => i % 8 === 0);
      const got: number[] = [];
      for (const g of subset) got.push(...(await clf.logits([g.text])).data);
      expectClose(
        got,
        subset.flatMap((g) => g.logits_fp32),
        { atol: LOGIT_ATOL, what: "dev logits (batch 1)" },
      );
    },
    SLOW_TEST_MS,
  );
});

test("a maxLength that is no positive integer is USAGE, whether or not the graph bounds the length", async () => {
  for (const maxLength of [Number.NaN, 0, 2.5]) {
    expect(await codeOfAsync(loadClassifier(shippedModelDir, { maxLength }))).toBe("USAGE");
  }
});
