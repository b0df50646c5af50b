/**
 * The per-task comparison the gate judges, on hand-made outputs: what a trial
 * is for each task, when it agrees, the point statistics and their checks.
 */
import { describe, expect, test } from "bun:test";
import { checkGate, describeRecordedAgreement } from "../../src/quant/gate.ts";
import {
  compareTaskOutputs,
  DEFAULT_TASK_THRESHOLDS,
  regressionTolerance,
  sampleTrials,
  type TrialRule,
  worseOfForms,
} from "../../src/quant/task-metrics.ts";
import { neighbourOverlap, pearson, spearman } from "../../src/runtime/stats.ts";
import type { TaskSpec } from "../../src/runtime/task.ts";

const rows = (...xs: number[][]) => ({ rows: xs.length, data: xs.map((x) => Float32Array.from(x)) });
const spec = (kind: TaskSpec["kind"], labels: string[], extra: Partial<TaskSpec> = {}): TaskSpec => ({
  kind,
  output: "logits",
  labels,
  source: "test",
  ...extra,
});

describe("trials and agreement per task", () => {
  test("token classification counts non-special tokens, and samples whose every token agrees", () => {
    // Sample 0: two tokens; sample 1: three tokens, the last one flips (label 0 → 1).
    const ref = rows([2, 0, 0, 3], [1, 0, 0, 1, 2, 0]);
    const cand = rows([1.9, 0.1, 0.2, 2.9], [1, 0, 0, 1, 0, 2]);
    const m = compareTaskOutputs(spec("token-classification", ["O", "X"]), ref, cand);
    expect([m.n, m.gateAgreements, m.disagreements]).toEqual([5, 4, 1]);
    expect(m.task).toMatchObject({ unit: "token", samples: 2, sampleAgreement: 0.5 });
    expect(m.maxAbsLogitDiff).toBeCloseTo(2, 6);
  });

  test("multi-label counts (sample, label) decisions on each label's own threshold", () => {
    // Threshold 0.8 ↔ logit ln 4 ≈ 1.386 for label 0; 0.5 ↔ 0 for label 1.
    const task = spec("multi-label", ["a", "b"], { thresholds: [0.8, 0.5] });
    const ref = rows([1.5, -0.1], [1.0, 0.2]);
    const cand = rows([1.3, -0.2], [1.2, 0.1]);
    const m = compareTaskOutputs(task, ref, cand);
    // Sample 0 label 0 flips (1.5 on, 1.3 off); the rest keep their side.
    expect([m.n, m.gateAgreements]).toEqual([4, 3]);
    expect(m.task).toMatchObject({ unit: "label decision", sampleAgreement: 0.5 });
  });

  test("embeddings: a sample agrees at cosine ≥ 0.98; mean cosine and neighbour overlap are checked", () => {
    const task = spec("embedding", [], { output: "last_hidden_state", pooling: "mean", normalize: true });
    const ref = rows([1, 0], [0, 1], [1, 1]);
    // Sample 2 turns by 45° (cosine 0.707).
    const cand = rows([1, 0.01], [0, 1], [1, 0]);
    const m = compareTaskOutputs(task, ref, cand);
    expect([m.n, m.gateAgreements]).toEqual([3, 2]);
    const f = m.task!.figures;
    expect(f["minCosine"]).toBeCloseTo(Math.SQRT1_2, 6);
    expect(f["meanCosine"]).toBeCloseTo((1 / Math.hypot(1, 0.01) + 1 + Math.SQRT1_2) / 3, 6);
    expect(m.task!.checks.map((c) => [c.name, c.passed])).toEqual([
      ["mean cosine", false],
      // Three samples: each one's neighbours are the two others, whatever int8 does.
      ["top-5 neighbour overlap", true],
    ]);
    const verdict = checkGate(m, { minAgreement: 0.5, decideOn: "point" });
    expect(verdict.passed).toBe(false);
    expect(verdict.failures.join("; ")).toMatch(/mean cosine 0\.9\d+ is below 0\.99/);
  });

  test("the top-2 margin is reported where a label is an argmax (tokens, pairs), and absent, not 0 near-ties, elsewhere", () => {
    const labelled = compareTaskOutputs(
      spec("pair-classification", ["a", "b"]),
      rows([2, 0]),
      rows([1.9, 0.1]),
    );
    expect(labelled.margin).toMatchObject({ nearTies: 0, confidentFlips: 0 });
    const ml = spec("multi-label", ["a", "b"], { thresholds: [0.5, 0.5] });
    const emb = spec("embedding", [], { output: "last_hidden_state", pooling: "mean", normalize: true });
    for (const [task, ref] of [
      [ml, rows([1, -1])],
      [emb, rows([1, 0])],
      [spec("regression", ["score"]), rows([0.5])],
    ] as const) {
      const m = compareTaskOutputs(task, ref, ref);
      expect(m.margin).toBeUndefined();
      expect(JSON.parse(JSON.stringify(m))).not.toHaveProperty("margin");
    }
  });

  test("neighbour overlap: the same nearest neighbours give 1, swapped ones less", () => {
    const a = [
      [1, 0],
      [0.9, 0.1],
      [0, 1],
      [0.1, 0.9],
    ].map((v) => Float32Array.from(v));
    expect(neighbourOverlap(a, a, 1)).toBe(1);
    const b = [
      [1, 0],
      [0.1, 0.9],
      [0, 1],
      [0.9, 0.1],
    ].map((v) => Float32Array.from(v));
    // Rows 1 and 3 trade places: every sample's nearest neighbour changes.
    expect(neighbourOverlap(a, b, 1)).toBe(0);
  });

  test("regression: |Δ| within 5 % of fp32's p95 − p5, Pearson checked", () => {
    const ref = rows(...Array.from({ length: 21 }, (_, i) => [i / 4]));
    const cand = rows(...Array.from({ length: 21 }, (_, i) => [i / 4 + (i === 10 ? 0.5 : 0.01)]));
    const m = compareTaskOutputs(spec("regression", ["score"]), ref, cand);
    // p95 − p5 over 0, 0.25, …, 5: s[floor(0.95·21)] − s[floor(0.05·21)] = 4.75 − 0.25 = 4.5; tolerance 0.225.
    expect(m.task!.figures["tolerance"]).toBeCloseTo(0.225, 6);
    expect([m.n, m.gateAgreements]).toEqual([21, 20]);
    expect(m.task!.figures["maxAbsError"]).toBeCloseTo(0.5, 6);
    expect(m.task!.checks[0]!.passed).toBe(true);
    expect(pearson([1, 2, 3], [2, 4, 6])).toBeCloseTo(1, 12);
    expect(pearson([1, 2, 3], [3, 2, 1])).toBeCloseTo(-1, 12);
    // Ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]: Pearson of the ranks = 4.5 / √(4.5·5) = 0.9487.
    expect(spearman([1, 5, 5, 9], [10, 20, 30, 40])).toBeCloseTo(4.5 / Math.sqrt(4.5 * 5), 12);
    expect(spearman([1, 2, 3], [1, 4, 9])).toBeCloseTo(1, 12);
  });

  test("one sample's trials, as validation counts them to stop early, add up to the comparison's", () => {
    const cases: [TaskSpec, ReturnType<typeof rows>, ReturnType<typeof rows>][] = [
      [
        spec("token-classification", ["O", "X"]),
        rows([2, 0, 0, 3], [1, 0, 0, 1, 2, 0]),
        rows([1.9, 0.1, 0.2, 2.9], [1, 0, 0, 1, 0, 2]),
      ],
      [
        spec("multi-label", ["a", "b"], { thresholds: [0.8, 0.5] }),
        rows([1.5, -0.1], [1.0, 0.2]),
        rows([1.3, -0.2], [1.2, 0.1]),
      ],
      [
        spec("embedding", [], { output: "last_hidden_state" }),
        rows([1, 0], [0, 1], [1, 1]),
        rows([1, 0.01], [0, 1], [1, 0]),
      ],
      [spec("regression", ["score"]), rows([0], [1], [2], [3]), rows([0.05], [1.5], [2], [3.01])],
    ];
    for (const [task, ref, cand] of cases) {
      const rule = {
        thresholds: DEFAULT_TASK_THRESHOLDS,
        tolerance: regressionTolerance(ref.data, DEFAULT_TASK_THRESHOLDS),
      };
      const trials = ref.data.map((r, i) => sampleTrials(task, r, cand.data[i]!, rule));
      const m = compareTaskOutputs(task, ref, cand);
      expect([trials.reduce((s, t) => s + t.n, 0), trials.reduce((s, t) => s + t.agree, 0)]).toEqual([
        m.gateN,
        m.gateAgreements,
      ]);
    }
    // Regression: 5 % of p95 − p5 of 0, 1, 2, 3 (2.85 − 0.15 = 2.7, interpolated): 0.135; |1.5 − 1| is outside.
    expect(regressionTolerance(rows([0], [1], [2], [3]).data, DEFAULT_TASK_THRESHOLDS)).toBeCloseTo(
      0.135,
      12,
    );
  });

  test("outputs of different samples are refused", () => {
    expect(() => compareTaskOutputs(spec("regression", ["s"]), rows([1]), rows([1], [2]))).toThrow(
      expect.objectContaining({ code: "DATA_MISMATCH" }),
    );
  });
});

test("a recorded validation of another task names its trials and figures", () => {
  const v = {
    n: 1000,
    agreement: 0.999,
    agreementLower: 0.995,
    confidence: 0.95,
    gateN: 1000,
    gateAgreements: 999,
    gate: { minAgreement: 0.995 },
  };
  expect(
    describeRecordedAgreement({
      ...v,
      task: { kind: "embedding", unit: "sample", figures: { meanCosine: 0.99991 } },
    }),
  ).toBe(
    "99.9 % (≥ 99.5 % at 95 %, n = 1,000) (embedding: samples, mean cosine 0.9999), gate 99.5 % on the bound",
  );
  expect(describeRecordedAgreement({ ...v, task: { kind: "token-classification", unit: "token" } })).toMatch(
    /\(token-classification: tokens\), gate/,
  );
  expect(describeRecordedAgreement({ ...v, task: { kind: "classification", unit: "sample" } })).toBe(
    "99.9 % (≥ 99.5 % at 95 %, n = 1,000), gate 99.5 % on the bound",
  );
});

describe("worseOfForms: the output the gate judges of dynamic int8's two serving forms", () => {
  const rows = (...xs: number[]) => Float32Array.from(xs);
  const classes = (kind: "classification" | "token-classification"): TaskSpec => ({
    kind,
    output: "logits",
    labels: ["a", "b"],
    source: "test",
  });
  const rule: TrialRule = { thresholds: DEFAULT_TASK_THRESHOLDS, tolerance: 0.1 };
  const agreeing = (task: TaskSpec, ref: Float32Array, row: Float32Array) =>
    sampleTrials(task, ref, row, rule);

  test("token by token, a token agrees only when it agrees in its batch and alone", () => {
    const task = classes("token-classification");
    // fp32: a, b, a. Batch flips token 0; alone flips token 1; both keep token 2.
    const ref = rows(1, 0, 0, 1, 1, 0);
    const batched = rows(0, 1, 0, 1, 2, 0);
    const alone = rows(1, 0, 1, 0, 3, 0);
    const worse = worseOfForms(task, ref, { batched, alone });
    expect(agreeing(task, ref, worse)).toEqual({ n: 3, agree: 1 });
    expect(agreeing(task, ref, batched).agree).toBe(2);
    expect(agreeing(task, ref, alone).agree).toBe(2);
    // The agreeing token keeps its batch logits.
    expect(Array.from(worse.subarray(4))).toEqual([2, 0]);
  });

  test("a multi-label decision, an embedding and a regression value take the form that fails", () => {
    const multi: TaskSpec = { kind: "multi-label", output: "logits", labels: ["x", "y"], source: "test" };
    const worse = worseOfForms(multi, rows(1, 1), { batched: rows(-1, 1), alone: rows(1, -1) });
    expect(agreeing(multi, rows(1, 1), worse)).toEqual({ n: 2, agree: 0 });
    const embedding: TaskSpec = {
      kind: "embedding",
      output: "last_hidden_state",
      labels: [],
      source: "test",
    };
    const closer = rows(1, 0.01);
    const farther = rows(0, 1);
    expect(worseOfForms(embedding, rows(1, 0), { batched: closer, alone: farther })).toBe(farther);
    const regression: TaskSpec = { kind: "regression", output: "logits", labels: ["score"], source: "test" };
    expect(worseOfForms(regression, rows(0.5), { batched: rows(0.9), alone: rows(0.55) })[0]).toBeCloseTo(
      0.9,
    );
  });
});
