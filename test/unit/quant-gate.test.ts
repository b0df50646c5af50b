import { describe, expect, test } from "bun:test";
import {
  argmaxRows,
  checkGate,
  compareCandidates,
  compareLogits,
  DEFAULT_GATE_AGREEMENT,
  type LogitMatrix,
  parseGateThreshold,
} from "../../src/quant/gate.ts";

function matrix(rows: number[][]): LogitMatrix {
  const cols = rows[0]?.length ?? 0;
  return { data: Float32Array.from(rows.flat()), rows: rows.length, cols };
}

describe("argmaxRows", () => {
  test("picks the largest, lowest index on ties, -1 for an all-NaN row", () => {
    const m = matrix([
      [0.1, 0.9],
      [2, 2],
      [Number.NaN, Number.NaN],
      [Number.NaN, -1],
      [Number.NEGATIVE_INFINITY, Number.NEGATIVE_INFINITY],
    ]);
    expect([...argmaxRows(m)]).toEqual([1, 0, -1, 1, 0]);
  });
});

describe("compareLogits", () => {
  const fp32 = matrix([
    [1, 0],
    [0, 1],
    [0.2, 0.1],
    [-1, 1],
  ]);

  test("identical logits agree fully with zero error", () => {
    const m = compareLogits(fp32, fp32);
    expect(m).toEqual({
      n: 4,
      agreement: 1,
      disagreements: 0,
      maxAbsLogitDiff: 0,
      meanAbsLogitDiff: 0,
      labelled: 0,
    });
  });

  test("one flipped sample: agreement 3/4, max and mean error from the fixed differences", () => {
    const int8 = matrix([
      [1.5, 0], // +0.5
      [0, 1],
      [0.05, 0.1], // -0.15: flips the top-1 class
      [-1, 1.25], // +0.25
    ]);
    const m = compareLogits(fp32, int8);
    expect(m.n).toBe(4);
    expect(m.agreement).toBe(0.75);
    expect(m.disagreements).toBe(1);
    expect(m.maxAbsLogitDiff).toBeCloseTo(0.5, 6);
    expect(m.meanAbsLogitDiff).toBeCloseTo((0.5 + 0.15 + 0.25) / 8, 6);
    expect(m.accuracyDrop).toBeUndefined();
  });

  test("labels give accuracy of both models and the drop, unlabelled rows left out", () => {
    const int8 = matrix([
      [1, 0],
      [1, 0], // flipped to class 0; label 1 → int8 wrong
      [0.2, 0.1],
      [-1, 1],
    ]);
    const m = compareLogits(fp32, int8, [0, 1, 1, undefined]);
    expect(m.labelled).toBe(3);
    // fp32 top-1: 0, 1, 0 vs labels 0, 1, 1 → 2/3; int8: 0, 0, 0 → 1/3
    expect(m.accuracyReference).toBeCloseTo(2 / 3, 12);
    expect(m.accuracyCandidate).toBeCloseTo(1 / 3, 12);
    expect(m.accuracyDrop).toBeCloseTo(1 / 3, 12);
    expect(m.agreement).toBe(0.75);
  });

  test("NaN in the candidate counts as infinite error and as a disagreement", () => {
    const int8 = matrix([
      [Number.NaN, Number.NaN],
      [0, 1],
      [0.2, 0.1],
      [-1, 1],
    ]);
    const m = compareLogits(fp32, int8);
    expect(m.agreement).toBe(0.75);
    expect(m.maxAbsLogitDiff).toBe(Number.POSITIVE_INFINITY);
  });

  test("shape mismatch is DATA_MISMATCH", () => {
    expect(() => compareLogits(fp32, matrix([[1, 0]]))).toThrow(
      expect.objectContaining({ code: "DATA_MISMATCH" }),
    );
    expect(() => compareLogits(fp32, fp32, [0])).toThrow(expect.objectContaining({ code: "DATA_MISMATCH" }));
  });
});

describe("checkGate", () => {
  const base = {
    n: 1000,
    agreement: 0.995,
    disagreements: 5,
    maxAbsLogitDiff: 0.3,
    meanAbsLogitDiff: 0.02,
    labelled: 0,
  };

  test("the default gate is 99.5 % and is inclusive", () => {
    expect(DEFAULT_GATE_AGREEMENT).toBe(0.995);
    expect(checkGate(base, { minAgreement: DEFAULT_GATE_AGREEMENT })).toEqual({ passed: true, failures: [] });
    const below = { ...base, agreement: 0.994, disagreements: 6 };
    const v = checkGate(below, { minAgreement: DEFAULT_GATE_AGREEMENT });
    expect(v.passed).toBe(false);
    expect(v.failures[0]).toContain("99.40 %");
    expect(v.failures[0]).toContain("6 of 1000");
  });

  test("accuracy drop is checked only when labels exist", () => {
    const spec = { minAgreement: 0.99, maxAccuracyDrop: 0.001 };
    expect(checkGate(base, spec).passed).toBe(true);
    const labelled = {
      ...base,
      labelled: 1000,
      accuracyReference: 0.85,
      accuracyCandidate: 0.848,
      accuracyDrop: 0.002,
    };
    const v = checkGate(labelled, spec);
    expect(v.passed).toBe(false);
    expect(v.failures).toHaveLength(1);
    expect(v.failures[0]).toContain("accuracy drop");
  });

  test("no samples never passes", () => {
    const empty = { ...base, n: 0, agreement: 0, disagreements: 0 };
    expect(checkGate(empty, { minAgreement: 0 }).passed).toBe(false);
  });
});

test("compareCandidates ranks by agreement, then mean logit error", () => {
  const a = {
    n: 10,
    agreement: 0.9,
    disagreements: 1,
    maxAbsLogitDiff: 1,
    meanAbsLogitDiff: 0.5,
    labelled: 0,
  };
  const b = { ...a, agreement: 0.8, disagreements: 2, meanAbsLogitDiff: 0.1 };
  const c = { ...a, meanAbsLogitDiff: 0.2 };
  expect([b, a, c].sort(compareCandidates)).toEqual([c, a, b]);
});

test("parseGateThreshold reads percentages and fractions", () => {
  expect(parseGateThreshold(99.5)).toBeCloseTo(0.995, 12);
  expect(parseGateThreshold(0.98)).toBe(0.98);
  expect(parseGateThreshold(100)).toBe(1);
  expect(() => parseGateThreshold(101)).toThrow(expect.objectContaining({ code: "USAGE" }));
  expect(() => parseGateThreshold(-1)).toThrow(expect.objectContaining({ code: "USAGE" }));
});
