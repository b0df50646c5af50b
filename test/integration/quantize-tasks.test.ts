/**
 * `quantize` on every task head: static int8 with defaults on each code-built
 * fixture, validated with the task's own metric (tokens, label decisions,
 * cosine, regression error, pairs read from a two-column TSV), meets the
 * default gate; a candidate that breaks the task fails it; the report carries
 * the task's figures; the int8 model serves the task as fp32 did.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runQuantization } from "../../src/quant/pipeline.ts";
import type { TaskFigures } from "../../src/quant/task-metrics.ts";
import { loadTaskModel } from "../../src/runtime/task-model.ts";
import { corpusSentences } from "../fixtures/encoders/tokenizers.ts";
import { TASK_FIXTURES, type TaskFixtureKind, writeTaskFixture } from "../fixtures/tasks/task-heads.ts";
import { repoRoot } from "../helpers/paths.ts";
import { runQuantd, envWithoutQuantd } from "../helpers/run-cli.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-quantize-tasks-"));
const dirs = {} as Record<TaskFixtureKind, string>;
const calib = join(repoRoot, "calib/samples/sst2-train-4k.tsv");
const pairsTsv = join(root, "pairs.tsv");

beforeAll(async () => {
  for (const kind of TASK_FIXTURES) dirs[kind] = (await writeTaskFixture(kind, join(root, kind))).dir;
  // Pairs of SST-2 sentences, stored as pairs: premise / hypothesis columns.
  const s = corpusSentences();
  const lines = ["premise\thypothesis"];
  for (let i = 0; i + 1 < s.length; i += 2) lines.push(`${s[i]}\t${s[i + 1]}`);
  writeFileSync(pairsTsv, `${lines.join("\n")}\n`);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const quantize = (kind: TaskFixtureKind, extra: Partial<Parameters<typeof runQuantization>[0]> = {}) =>
  runQuantization({
    model: dirs[kind],
    calib: kind === "pair-classification" ? pairsTsv : calib,
    out: join(root, `${kind}-int8.onnx`),
    // A pair's label rests on a difference of two means, more often near its threshold than a sentence's
    // polarity: a flip or two in a thousand, so the set must be large enough for the bound to clear 99.5 %.
    validationSamples: kind === "pair-classification" ? 1800 : 700,
    threads: 1,
    ...extra,
  });

describe("static int8 with defaults meets each task's gate on its fixture", () => {
  for (const kind of TASK_FIXTURES) {
    // The pair classifier's first candidate flips a few of 1,800 pairs: the fallback's trials take a minute on 2 cores.
    const timeout = kind === "pair-classification" ? 240_000 : 120_000;
    test(
      kind,
      async () => {
        const { report } = await quantize(kind);
        const m = report.metrics;
        expect(report.gate).toMatchObject({ passed: true, failures: [] });
        expect(m.task?.kind).toBe(kind);
        expect(m.agreementLower).toBeGreaterThanOrEqual(0.995);
        const unit: Record<string, TaskFigures["unit"]> = {
          "token-classification": "token",
          "multi-label": "label decision",
        };
        expect(m.task?.unit).toBe(unit[kind] ?? "sample");
        if (kind === "token-classification") expect(m.n).toBeGreaterThan(700 * 3);
        if (kind === "multi-label") expect(m.n).toBe(700 * 4);
        if (kind === "embedding") {
          expect(m.task!.figures["meanCosine"]).toBeGreaterThan(0.99);
          expect(m.task!.figures["neighbourOverlap"]).toBeGreaterThan(0.9);
        }
        if (kind === "regression") expect(m.task!.figures["pearson"]).toBeGreaterThan(0.99);
        // The int8 model is the same task and answers as fp32 does on a clear input.
        const int8 = await loadTaskModel(join(root, `${kind}-int8.onnx`), { tokenizerDir: dirs[kind] });
        try {
          expect(int8.task.kind).toBe(kind);
        } finally {
          await int8.release();
        }
      },
      timeout,
    );
  }
});

test("a pair classifier with the CLI's defaults (every row validates) passes small, keeping no node whose trial did not help", async () => {
  // Calibrating on the file's first 128 rows (short pairs only) once left 19 nodes fp32 at 57 % of fp32's size.
  const { report } = await quantize("pair-classification", { validationSamples: undefined });
  expect(report.gate.passed).toBe(true);
  expect(report.samples.validation).toBe(2000 - report.samples.calibration);
  expect(report.model.sizeRatio).toBeLessThan(0.3);
  for (const t of report.fallback.trials) {
    if (t.passed !== true && t.reverted !== true) expect(t.bought!.agreement).toBeGreaterThan(0);
  }
  const reverted = new Set(
    report.fallback.trials.filter((t) => t.reverted === true).flatMap((t) => t.added ?? []),
  );
  expect(report.keptFp32.filter((k) => reverted.has(k.node))).toEqual([]);
}, 240_000);

describe("the gate fails what breaks a task", () => {
  test("a task check the candidate misses (mean cosine over a stricter threshold) fails it, and the error names the check", async () => {
    const err = await quantize("embedding", {
      perChannel: false,
      reduceRange: true,
      trialBudget: 0,
      taskThresholds: { meanCosine: 0.99999999 },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "GATE_NOT_MET" });
    expect(String((err as Error).message)).toMatch(/mean cosine 0\.\d+ is below 0\.99999999/);
  });

  test("whether a held-out set can certify the gate is counted in the bound's trials: tokens pass where samples would not", async () => {
    // 99 % at 95 % takes 299 trials with no flip: 120 sentences are too few, their ~1,800 tokens are not.
    const tokens = await quantize("token-classification", { validationSamples: 120, gate: 0.99 });
    expect(tokens.report.metrics.task?.unit).toBe("token");
    expect(tokens.report.metrics.n).toBeGreaterThan(299);
    const err = await quantize("regression", { validationSamples: 120, gate: 0.99 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "GATE_NOT_MET" });
    expect(String((err as Error).message)).toMatch(
      /^120 held-out samples cannot certify 99\.00 % agreement at 95 % even with no flip: it takes 299;/,
    );
  }, 120_000);

  test("a pair classifier refuses single-text samples, naming what it expected", async () => {
    const err = await quantize("pair-classification", { calib }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "DATA_MISMATCH" });
    expect(String((err as Error).message)).toMatch(/is one text, but .* is a pair-classification model/);
  });

  test("a single-text classifier refuses pairs before calibrating on them, naming the first one's line", async () => {
    // The pair fixture run as a single-text classifier (--task classification): serving refuses pairs, so
    // calibrating and validating on them would measure inputs the model never gets.
    const progress: string[] = [];
    const err = await quantize("pair-classification", {
      task: { kind: "classification" },
      onProgress: (line) => progress.push(line),
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "DATA_MISMATCH" });
    expect(String((err as Error).message)).toMatch(
      /^sample \S+pairs\.tsv:\d+ is a pair of texts, but .* is a classification model/,
    );
    expect(progress.some((l) => l.startsWith("quantizing"))).toBe(false);
  });

  test("quantd quantize prints the task line and takes --task", async () => {
    const run = await runQuantd(
      [
        "quantize",
        "--model",
        dirs.regression,
        "--calib",
        calib,
        "--val-samples",
        "700",
        "--out",
        join(root, "cli-reg.onnx"),
      ],
      { env: envWithoutQuantd() },
    );
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(
      /task regression: agreement counts samples; Pearson (0\.99|1\.0)\d+, max \|error\| /,
    );
    // A regression has no top-2 margin: the summary counts what differs instead of claiming no near-ties.
    expect(run.stdout).toMatch(/ {2}differ: \d+ of [\d,]+ samples; mean \|logit diff\| /);
    expect(run.stdout).not.toContain("near-ties");
    const bad = await runQuantd(
      [
        "quantize",
        "--model",
        dirs.regression,
        "--calib",
        calib,
        "--task",
        "embedding",
        "--out",
        join(root, "x.onnx"),
      ],
      { env: envWithoutQuantd() },
    );
    expect(bad.stderr).toMatch(/^error MODEL_TASK_MISMATCH: .* cannot run as embedding/m);
  });
});

test("quantize --out DIR keeps an embedding model's sentence-transformers layout, so the copy pools and normalizes alike", async () => {
  const out = join(root, "embedding-dir");
  const env = envWithoutQuantd();
  const run = await runQuantd(
    ["quantize", "--model", dirs.embedding, "--calib", calib, "--val-samples", "700", "--out", `${out}/`],
    { env },
  );
  expect(run.code).toBe(0);
  expect(run.stdout).toContain(
    "modules.json, sentence_bert_config.json, 1_Pooling/config.json, 2_Normalize/",
  );
  const int8 = await loadTaskModel(out);
  try {
    expect(int8.task).toMatchObject({ kind: "embedding", pooling: "mean", normalize: true });
  } finally {
    await int8.release();
  }
}, 120_000);
