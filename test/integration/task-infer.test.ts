/**
 * Every task head end to end on its code-built fixture (test/fixtures/tasks):
 * detection from the model's outputs and files, the margins that make
 * agreement meaningful, inference results per task (entities with offsets,
 * pooled normalized vectors, sigmoid decisions, raw values, pairs through
 * token_type_ids), bad input, and `quantd infer` as a user runs it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { poolRow } from "../../src/runtime/pooling.ts";
import { loadTaskModel } from "../../src/runtime/task-model.ts";
import { corpusSentences } from "../fixtures/encoders/tokenizers.ts";
import { type LoadedTaskFixtures, loadTaskFixtures, TASK_FIXTURES } from "../fixtures/tasks/task-heads.ts";
import { codeOfAsync } from "../helpers/error-code.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { envWithoutQuantd, runQuantd } from "../helpers/run-cli.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-task-infer-"));
let dirs: LoadedTaskFixtures["dirs"];
let models: LoadedTaskFixtures["models"];
let fixtures: LoadedTaskFixtures;
/** Sentences the heads' gains were not fitted on. */
const held = corpusSentences().slice(400, 480);

beforeAll(async () => {
  fixtures = await loadTaskFixtures(root);
  ({ dirs, models } = fixtures);
});
afterAll(async () => {
  await fixtures.release();
  rmSync(root, { recursive: true, force: true });
});

/** The share of `xs` at or above `min`. */
const share = (xs: readonly number[], min: number) => xs.filter((x) => x >= min).length / xs.length;

/** Gap between the two largest of a row. */
function topGap(row: ArrayLike<number>): number {
  const s = Array.from(row).sort((a, b) => b - a);
  return s[0]! - s[1]!;
}

describe("detection", () => {
  test("each fixture is detected as its task, from its outputs and files", () => {
    for (const kind of TASK_FIXTURES) expect(models[kind].task.kind).toBe(kind);
    expect(models.embedding.task).toMatchObject({
      output: "last_hidden_state",
      pooling: "mean",
      normalize: true,
    });
    expect(models["token-classification"].task.labels).toEqual(["O", "POS", "NEG"]);
    expect(models["multi-label"].task.thresholds).toEqual([0.5, 0.5, 0.5, 0.5]);
  });
});

describe("margins: agreement on these fixtures means something", () => {
  test("most decisions are more than one logit from a tie, and every label occurs", async () => {
    const tokenOut = await models["token-classification"].outputs(held);
    const gaps: number[] = [];
    const seen = new Set<number>();
    for (const row of tokenOut.data) {
      for (let t = 0; t < row.length; t += 3) {
        const r = row.subarray(t, t + 3);
        gaps.push(topGap(r));
        seen.add(r.indexOf(Math.max(...r)));
      }
    }
    expect(seen.size).toBe(3);
    expect(share(gaps, 1)).toBeGreaterThan(0.7);

    const pairs = held.slice(0, 40).map((a, i) => [a, held[i + 40]!] as const);
    const pairOut = await models["pair-classification"].outputs(pairs);
    const pairGaps = pairOut.data.map((r) => Math.abs(r[1]! - r[0]!));
    expect(share(pairGaps, 1)).toBeGreaterThan(0.7);
    expect(new Set(pairOut.data.map((r) => (r[1]! > r[0]! ? 1 : 0))).size).toBe(2);

    const ml = await models["multi-label"].outputs(held);
    const logits = ml.data.flatMap((r) => Array.from(r));
    expect(share(logits.map(Math.abs), 1)).toBeGreaterThan(0.7);
    for (let k = 0; k < 4; k++) {
      const on = ml.data.filter((r) => r[k]! > 0).length / ml.rows;
      expect(on).toBeGreaterThan(0.1);
      expect(on).toBeLessThan(0.9);
    }

    const reg = await models.regression.outputs(held);
    const values = reg.data.map((r) => r[0]!);
    const sd = Math.sqrt(values.reduce((a, v) => a + (v - 2.5) ** 2, 0) / values.length);
    expect(sd).toBeGreaterThan(0.5);
  });
});

describe("results", () => {
  test("token classification: entities carry the text they cover, tokens their offsets", async () => {
    const text = "An UTTERLY charming, witty film — and a waste of Café time";
    const [r] = await models["token-classification"].infer([text], { aggregation: "simple" });
    if (r?.task !== "token-classification") throw new Error("not a token result");
    expect(r.entities.length).toBeGreaterThan(0);
    for (const e of r.entities) {
      expect(e.word).toBe(text.slice(e.start, e.end));
      expect(["POS", "NEG"]).toContain(e.entity);
    }
    let last = 0;
    for (const t of r.tokens) {
      expect(t.start).toBeGreaterThanOrEqual(last);
      expect(t.end).toBeGreaterThan(t.start);
      last = t.end;
    }
    expect(text.slice(r.tokens[1]!.start, r.tokens[1]!.end)).toBe("UTTERLY");
    // Grouping by word never splits a word between entities.
    const [w] = await models["token-classification"].infer([text], { aggregation: "first" });
    if (w?.task !== "token-classification") throw new Error("not a token result");
    for (const e of w.entities) expect(/^\S/.test(e.word) && /\S$/.test(e.word)).toBe(true);
  });

  test("embeddings: the mean over real tokens, normalized; padding never changes a vector", async () => {
    const texts = ["a great film", "a tedious, overlong film that never ends"];
    const [a, b] = await models.embedding.infer(texts);
    if (a?.task !== "embedding" || b?.task !== "embedding") throw new Error("not embeddings");
    expect(Math.hypot(...a.embedding)).toBeCloseTo(1, 5);
    const raw = await loadTaskModel(dirs.embedding, { task: { normalize: false } });
    try {
      const [r] = await raw.infer([texts[0]!]);
      if (r?.task !== "embedding") throw new Error("not an embedding");
      const norm = Math.hypot(...r.embedding);
      expect(norm).toBeGreaterThan(1.5);
      for (const [i, v] of r.embedding.entries()) expect(v / norm).toBeCloseTo(a.embedding[i]!, 5);
      // The same vector by hand from last_hidden_state of a padded batch.
      const enc = raw.tokenizer.encodeBatch(texts);
      const out = await raw.runEncoded(enc);
      const byHand = poolRow(out.data, 0, enc.seqLen, out.dims[2]!, enc.attentionMask, "mean");
      for (const [i, v] of byHand.entries()) expect(v).toBeCloseTo(r.embedding[i]!, 4);
    } finally {
      await raw.release();
    }
  });

  test("pairs: the order of the texts matters (segments are read through token_type_ids)", async () => {
    // The head compares segment B's mean polarity with segment A's: swapping the texts mostly swaps the label.
    const pairs = held.slice(0, 30).map((a, i) => [a, held[i + 30]!] as const);
    const swapped = pairs.map(([a, b]) => [b, a] as const);
    const ab = await models["pair-classification"].infer(pairs);
    const ba = await models["pair-classification"].infer(swapped);
    const label = (r: (typeof ab)[number]) => (r.task === "pair-classification" ? r.label : "");
    const flips = ab.filter((r, i) => label(r) !== label(ba[i]!)).length;
    expect(flips / pairs.length).toBeGreaterThan(0.5);
    // And a pair run as one text (segment A only) is another input altogether.
    const joined = await loadTaskModel(dirs["pair-classification"], { task: { kind: "classification" } });
    try {
      const one = await joined.infer(pairs.map(([a, b]) => `${a} ${b}`));
      const same = one.filter((r, i) => r.task === "classification" && r.label === label(ab[i]!)).length;
      expect(same).toBeLessThan(pairs.length);
    } finally {
      await joined.release();
    }
  });

  test("multi-label: sigmoid per label, thresholds decide", async () => {
    const [r] = await models["multi-label"].infer(["a wonderful film"]);
    if (r?.task !== "multi-label") throw new Error("not multi-label");
    expect(r.labels.map((l) => l.label)).toEqual(["positive", "very_positive", "negative", "topic"]);
    for (const [k, l] of r.labels.entries()) {
      expect(l.score).toBeCloseTo(1 / (1 + Math.exp(-r.logits[k]!)), 9);
      expect(l.on).toBe(l.score >= 0.5);
    }
    const strict = await loadTaskModel(dirs["multi-label"], { task: { thresholds: 0.999999 } });
    try {
      const [s] = await strict.infer(["a wonderful film"]);
      if (s?.task !== "multi-label") throw new Error("not multi-label");
      for (const l of s.labels) expect(l.on).toBe(l.score >= 0.999999);
      for (const a of s.active) expect(r.active).toContain(a);
    } finally {
      await strict.release();
    }
  });

  test("regression: the raw value", async () => {
    const [r] = await models.regression.infer(["a film"]);
    if (r?.task !== "regression") throw new Error("not regression");
    expect(r.values).toHaveLength(1);
    expect(r.value).toBe(r.values[0]!);
  });
});

describe("bad input", () => {
  test("a text where a pair is expected, a pair where a text is, a task the outputs contradict", async () => {
    expect(await codeOfAsync(models["pair-classification"].infer(["one text"]))).toBe("DATA_MISMATCH");
    expect(await codeOfAsync(models.embedding.infer([["a", "b"]]))).toBe("DATA_MISMATCH");
    expect(await codeOfAsync(models["token-classification"].infer([["a", "b"]]))).toBe("DATA_MISMATCH");
    expect(await codeOfAsync(loadTaskModel(dirs.embedding, { task: { kind: "classification" } }))).toBe(
      "MODEL_TASK_MISMATCH",
    );
    expect(
      await codeOfAsync(loadTaskModel(dirs.regression, { task: { kind: "token-classification" } })),
    ).toBe("MODEL_TASK_MISMATCH");
    expect(await codeOfAsync(models.regression.infer([""]))).toBe("TEXT_EMPTY");
  });
});

describe("quantd infer", () => {
  const env = envWithoutQuantd();
  test("pairs from a TSV with two text columns, and from --pair arguments", async () => {
    const tsv = join(root, "pairs.tsv");
    writeFileSync(
      tsv,
      "premise\thypothesis\tlabel\na dull mess\ta wonderful film\tentailment\na wonderful film\ta dull mess\tcontradiction\n",
    );
    const run = await runQuantd(["infer", "--model", dirs["pair-classification"], "--file", tsv, "--json"], {
      env,
    });
    expect(run.stderr).toBe("");
    const out = JSON.parse(run.stdout);
    expect(out.task.kind).toBe("pair-classification");
    expect(out.results.map((r: { label: string }) => r.label)).toHaveLength(2);
    expect(out.results[0].input).toEqual(["a dull mess", "a wonderful film"]);
    const args = await runQuantd(
      ["infer", "--model", dirs["pair-classification"], "--pair", "a dull mess", "a wonderful film"],
      { env },
    );
    expect(args.code).toBe(0);
    expect(args.stdout).toMatch(
      /^(entailment|contradiction) {2}\d\.\d{4} {2}a dull mess ⟂ a wonderful film\n$/,
    );
  });

  test("entities, vectors, and errors that name what was expected", async () => {
    const tok = await runQuantd(
      [
        "infer",
        "--model",
        dirs["token-classification"],
        "--aggregation",
        "average",
        "a wonderful, moving film",
      ],
      { env },
    );
    expect(tok.code).toBe(0);
    expect(tok.stdout).toMatch(
      /^a wonderful, moving film\n( {2}(POS|NEG) {2}\d\.\d{4} {2}\[\d+, \d+\) {2}.+\n)+$/,
    );
    const emb = await runQuantd(["infer", "--model", dirs.embedding, "a film"], { env });
    expect(emb.stdout).toMatch(/^dim \d+ {2}norm 1\.0000 {2}\[/);
    const single = await runQuantd(["infer", "--model", dirs["pair-classification"], "one text"], { env });
    expect([single.code, single.stderr]).toEqual([
      1,
      expect.stringMatching(
        /^error DATA_MISMATCH: input 0 is one text, but .* is a pair-classification model/,
      ),
    ]);
    // The reverse on the shipped SST-2 classifier, whose token_type_ids input does not make it a pair model.
    const pair = await runQuantd(
      ["infer", "--model", shippedModelPath, "--pair", "a fine film", "it is good"],
      { env },
    );
    expect([pair.code, pair.stderr]).toEqual([
      1,
      expect.stringMatching(
        /^error DATA_MISMATCH: --pair given, but .* is a classification model .*: each input is one text \(a model trained on pairs is run as one with --task pair-classification\)/,
      ),
    ]);
    const contra = await runQuantd(["infer", "--model", dirs.embedding, "--task", "multi-label", "x"], {
      env,
    });
    expect(contra.stderr).toMatch(
      /^error MODEL_TASK_MISMATCH: .* cannot run as multi-label .*needs logits \[batch, labels\].*last_hidden_state/,
    );
    const badTask = await runQuantd(["infer", "--model", dirs.embedding, "--task", "ner", "x"], { env });
    expect([badTask.code, badTask.stderr]).toEqual([
      2,
      expect.stringMatching(/--task must be one of classification/),
    ]);
  });

  test("classify, which gives one softmax label per text, refuses every other task instead of answering", async () => {
    // A softmax over multi-label logits, a one-logit regression's "LABEL_0 1.0000" or one text where a pair
    // classifier takes two would read as answers.
    for (const kind of TASK_FIXTURES) {
      const r = await runQuantd(["classify", "--model", dirs[kind], "a very good film"], { env });
      expect([kind, r.code, r.stdout]).toEqual([kind, 1, ""]);
      if (kind === "embedding") expect(r.stderr).toContain(" is an embedding model (");
      expect(r.stderr).toMatch(
        new RegExp(
          `^error MODEL_TASK_MISMATCH: .* is an? ${kind} model \\(.*\\), and classify .*: run it with quantd infer`,
        ),
      );
    }
  });
});
