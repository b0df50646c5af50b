/**
 * `quantd eval` for every task on its fixture, with gold data derived from the
 * model's own answers so the expected figures are known exactly: perfect
 * scores on the model's own answers, then hand-counted ones after an edit.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseInputsTsv } from "../../src/runtime/input-tsv.ts";
import { evaluateTask } from "../../src/runtime/task-eval.ts";
import { corpusSentences } from "../fixtures/encoders/tokenizers.ts";
import { type LoadedTaskFixtures, loadTaskFixtures } from "../fixtures/tasks/task-heads.ts";
import { codeOfAsync } from "../helpers/error-code.ts";
import { envWithoutQuantd, runQuantd } from "../helpers/run-cli.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-task-eval-"));
let dirs: LoadedTaskFixtures["dirs"];
let models: LoadedTaskFixtures["models"];
let fixtures: LoadedTaskFixtures;
const texts = corpusSentences().slice(600, 640);

beforeAll(async () => {
  fixtures = await loadTaskFixtures(root);
  ({ dirs, models } = fixtures);
});
afterAll(async () => {
  await fixtures.release();
  rmSync(root, { recursive: true, force: true });
});

/** Rows of a TSV written from a header and cells. */
const tsv = (header: string[], rows: string[][]) =>
  parseInputsTsv(new TextEncoder().encode([header, ...rows].map((r) => r.join("\t")).join("\n")), "gold.tsv");

describe("scores per task", () => {
  test("token classification: seqeval-style entity F1 (type and both ends must match)", async () => {
    const results = await models["token-classification"].infer(texts);
    const gold = results.map((r) =>
      r.task === "token-classification" ? r.entities.map((e) => `${e.entity}@${e.start}:${e.end}`) : [],
    );
    const perfect = await evaluateTask(
      models["token-classification"],
      tsv(
        ["text", "entities"],
        texts.map((t, i) => [t, gold[i]!.join(" ")]),
      ),
    );
    expect([perfect.entityPrecision, perfect.entityRecall, perfect.entityF1]).toEqual([1, 1, 1]);
    // Drop one gold entity (a false positive) and move another's end by one (a miss and a false positive).
    const total = gold.flat().length;
    const i = gold.findIndex((g) => g.length >= 2);
    const edited = gold.map((g) => [...g]);
    edited[i]!.shift();
    const [type, span] = edited[i]![0]!.split("@") as [string, string];
    const [s, e] = span.split(":").map(Number) as [number, number];
    edited[i]![0] = `${type}@${s}:${e + 1}`;
    const r = await evaluateTask(
      models["token-classification"],
      tsv(
        ["text", "entities"],
        texts.map((t, k) => [t, edited[k]!.join(" ")]),
      ),
    );
    // Predicted: total, right: total − 2; gold: total − 1.
    expect(r.entityPrecision).toBeCloseTo((total - 2) / total, 12);
    expect(r.entityRecall).toBeCloseTo((total - 2) / (total - 1), 12);
    const bad = tsv(["text", "entities"], [[texts[0]!, "POS@5"]]);
    expect(await codeOfAsync(evaluateTask(models["token-classification"], bad))).toBe("DATA_MALFORMED");
  });

  test("regression: Spearman and mean |error|; multi-label: micro/macro F1 and exact match", async () => {
    const values = (await models.regression.infer(texts)).map((r) => (r.task === "regression" ? r.value : 0));
    const own = await evaluateTask(
      models.regression,
      tsv(
        ["sentence", "label"],
        texts.map((t, i) => [t, String(values[i])]),
      ),
    );
    expect(own.spearman).toBeCloseTo(1, 12);
    expect(own.meanAbsError).toBeLessThan(1e-6);
    const reversed = await evaluateTask(
      models.regression,
      tsv(
        ["sentence", "label"],
        texts.map((t, i) => [t, String(-values[i]!)]),
      ),
    );
    expect(reversed.spearman).toBeCloseTo(-1, 12);

    const ml = await models["multi-label"].infer(texts);
    const active = ml.map((r) => (r.task === "multi-label" ? r.active.join(",") : ""));
    const mlOwn = await evaluateTask(
      models["multi-label"],
      tsv(
        ["sentence", "label"],
        texts.map((t, i) => [t, active[i]!]),
      ),
    );
    expect([mlOwn.microF1, mlOwn.macroF1, mlOwn.exactMatch]).toEqual([1, 1, 1]);
    // Clear the gold of the first sample with labels: its labels become false positives.
    const k = active.findIndex((a) => a !== "");
    const on = active[k]!.split(",").length;
    const predicted = active.reduce((n, a) => n + (a === "" ? 0 : a.split(",").length), 0);
    const cleared = active.map((a, i) => (i === k ? "" : a));
    const mlEdit = await evaluateTask(
      models["multi-label"],
      tsv(
        ["sentence", "label"],
        texts.map((t, i) => [t, cleared[i]!]),
      ),
    );
    expect(mlEdit.exactMatch).toBeCloseTo((texts.length - 1) / texts.length, 12);
    const tp = predicted - on;
    expect(mlEdit.microF1).toBeCloseTo((2 * tp) / (2 * tp + on), 12);
  });

  test("pairs: accuracy over pairs; embeddings: recall@k against a reference, and a clear error without one", async () => {
    const pairs = texts.slice(0, 20).map((t, i) => [t, texts[i + 20]!] as const);
    const labels = (await models["pair-classification"].infer(pairs)).map((r) =>
      "label" in r ? r.label : "",
    );
    const acc = await evaluateTask(
      models["pair-classification"],
      tsv(
        ["premise", "hypothesis", "label"],
        pairs.map(([a, b], i) => [a, b, labels[i]!]),
      ),
    );
    expect([acc.accuracy, acc.macroF1]).toEqual([1, 1]);
    const rows = tsv(
      ["sentence"],
      texts.map((t) => [t]),
    );
    const self = await evaluateTask(models.embedding, rows, { compare: models.embedding, k: 5 });
    expect([self.recallAtK, self.k]).toEqual([1, 5]);
    expect(self.meanCosine).toBeCloseTo(1, 6);
    expect(await codeOfAsync(evaluateTask(models.embedding, rows))).toBe("USAGE");
  });
});

test("quantd eval prints each task's measures", async () => {
  const path = join(root, "reg.tsv");
  writeFileSync(path, "sentence\tlabel\na wonderful film\t4.5\na dull mess\t1\nit is a film\t2.5\n");
  const run = await runQuantd(["eval", "--model", dirs.regression, "--data", path, "--json"], {
    env: envWithoutQuantd(),
  });
  expect(run.stderr).toBe("");
  const out = JSON.parse(run.stdout);
  expect(out).toMatchObject({ task: "regression", n: 3 });
  expect(typeof out.spearman).toBe("number");
  const emb = await runQuantd(["eval", "--model", dirs.embedding, "--data", path], {
    env: envWithoutQuantd(),
  });
  expect([emb.code, emb.stderr]).toEqual([
    2,
    expect.stringMatching(/^error USAGE: an embedding model has no labels/),
  ]);
});

test("quantd eval --compare gives each task's agreement with the other model, as the gate counts it", async () => {
  const path = join(root, "reg-compare.tsv");
  writeFileSync(path, `sentence\tlabel\n${texts.map((t, i) => `${t}\t${i % 5}`).join("\n")}\n`);
  const env = envWithoutQuantd();
  const same = ["eval", "--model", dirs.regression, "--data", path, "--compare", dirs.regression];
  const human = await runQuantd(same, { env });
  expect(human.stderr).toBe("");
  // The model against itself: every sample agrees; 40 of 40 certify ≥ 92.7 %.
  expect(human.stdout).toMatch(/^compare +.*regression\/model\.onnx$/m);
  expect(human.stdout).toMatch(
    /^agreement +sample agreement 100\.0 % \(≥ 92\.7 % at 95 %, n = 40\); Pearson 1\.0000, max \|error\| 0\.0000/m,
  );
  const json = JSON.parse((await runQuantd([...same, "--json"], { env })).stdout);
  expect(json.versus).toMatchObject({ unit: "sample", n: 40, agreement: 1 });
  expect(json.versus.agreementLower).toBeCloseTo(0.05 ** (1 / 40), 6);
});

test("with --compare, unlabelled rows of every task are compared, and accuracy is skipped saying why", async () => {
  const env = envWithoutQuantd();
  const single = join(root, "unlabelled.tsv");
  writeFileSync(single, `sentence\n${texts.join("\n")}\n`);
  const pairs = join(root, "unlabelled-pairs.tsv");
  writeFileSync(
    pairs,
    `premise\thypothesis\n${texts.map((t, i) => `${t}\t${texts[(i + 1) % texts.length]}`).join("\n")}\n`,
  );
  for (const kind of ["pair-classification", "multi-label", "regression", "token-classification"] as const) {
    const data = kind === "pair-classification" ? pairs : single;
    const args = ["eval", "--model", dirs[kind], "--data", data, "--compare", dirs[kind]];
    const human = await runQuantd(args, { env });
    expect(human.stderr).toBe("");
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^accuracy +skipped: no labelled rows \(--compare needs none\)$/m);
    expect(human.stdout).toMatch(/^agreement +\w[\w ]* agreement 100\.0 %/m);
    const json = JSON.parse((await runQuantd([...args, "--json"], { env })).stdout);
    expect(json).toMatchObject({
      n: texts.length,
      labelled: 0,
      skipped: expect.stringContaining("no labelled rows"),
    });
    expect(json.versus.agreement).toBe(1);
  }
  // Without --compare there is nothing to report: the missing label is an error, naming the line.
  const err = await runQuantd(["eval", "--model", dirs.regression, "--data", single], { env });
  expect(err.stderr).toContain("DATA_MALFORMED");
  expect(err.stderr).toContain("line 2: no label");
}, 120_000);

test("a pair file on a single-text classifier is DATA_MISMATCH naming the model's task and the file's first pair, as quantize says it", async () => {
  // The pair fixture run as a single-text classifier (--task classification), as quantize's own check is tested.
  const pairs = join(root, "labelled-pairs.tsv");
  writeFileSync(
    pairs,
    `sentence1\tsentence2\tlabel\n${texts.map((t, i) => `${t}\t${texts[i + 1] ?? t}\t1`).join("\n")}\n`,
  );
  const run = await runQuantd(
    ["eval", "--model", dirs["pair-classification"], "--task", "classification", "--data", pairs],
    { env: envWithoutQuantd() },
  );
  expect(run.code).not.toBe(0);
  expect(run.stderr).toMatch(
    /^error DATA_MISMATCH: sample \S+labelled-pairs\.tsv:2 is a pair of texts, but \S+ is a classification model \(.*\): each input is one text/,
  );
  expect(run.stderr).not.toContain("header");
});
