import { describe, expect, test } from "bun:test";
import { clopperPearsonLower } from "../../src/quant/confidence.ts";
import {
  argmaxRows,
  checkGate,
  compareCandidates,
  compareLogits,
  DEFAULT_GATE_AGREEMENT,
  describeAgreement,
  describeRecordedAgreement,
  type GateMetrics,
  type LogitMatrix,
  parseGateThreshold,
  topTwoMargins,
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
      gateN: 4,
      gateAgreements: 4,
      confidence: 0.95,
      // 4 of 4 only tells that agreement is ≥ 0.05^(1/4)
      agreementLower: expect.closeTo(0.05 ** (1 / 4), 12),
      margin: { threshold: 0.01, nearTies: 0, nearTieFlips: 0, confidentFlips: 0, ignored: false },
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

/** Metrics of `agree` agreeing samples out of `n`, as compareLogits would report them. */
function metricsOf(n: number, agree: number, extra: Partial<GateMetrics> = {}): GateMetrics {
  return {
    n,
    agreement: agree / n,
    disagreements: n - agree,
    maxAbsLogitDiff: 0.3,
    meanAbsLogitDiff: 0.02,
    labelled: 0,
    gateN: n,
    gateAgreements: agree,
    confidence: 0.95,
    agreementLower: clopperPearsonLower(agree, n, 0.95),
    margin: { threshold: 0.01, nearTies: 0, nearTieFlips: 0, confidentFlips: n - agree, ignored: false },
    ...extra,
  };
}

describe("checkGate", () => {
  test("the default gate is 99.5 % on the lower bound: 1,024 samples with 2 flips fail, none passes", () => {
    expect(DEFAULT_GATE_AGREEMENT).toBe(0.995);
    const gate = { minAgreement: DEFAULT_GATE_AGREEMENT };
    const twoFlips = checkGate(metricsOf(1024, 1022), gate);
    // 99.80 % measured, but only ≥ 99.38 % is certain at 95 %
    expect(twoFlips.passed).toBe(false);
    expect(twoFlips.failures[0]).toBe(
      "agreement 99.8 % (≥ 99.3 % at 95 %, n = 1,024): its lower bound is below the gate 99.50 % (2 of 1,024 samples differ)",
    );
    expect(checkGate(metricsOf(1024, 1024), gate)).toEqual({ passed: true, failures: [] });
    expect(checkGate(metricsOf(1024, 1023), gate).passed).toBe(true);
  });

  test("a set too small to certify the gate with no flip says how many samples it takes", () => {
    const v = checkGate(metricsOf(32, 32), { minAgreement: 0.995 });
    expect(v.passed).toBe(false);
    expect(v.failures[0]).toBe(
      "32 held-out samples cannot certify 99.50 % agreement at 95 % even with no flip: it takes 598",
    );
    // 598 with no flip is the first that can: 0.05^(1/598) ≥ 0.995 > 0.05^(1/597)
    expect(checkGate(metricsOf(597, 597), { minAgreement: 0.995 }).passed).toBe(false);
    expect(checkGate(metricsOf(598, 598), { minAgreement: 0.995 }).passed).toBe(true);
  });

  test("the point estimate decides only when asked, and is then inclusive", () => {
    const spec = { minAgreement: 0.995, decideOn: "point" as const };
    expect(checkGate(metricsOf(1000, 995), spec)).toEqual({ passed: true, failures: [] });
    expect(checkGate(metricsOf(32, 32), spec).passed).toBe(true);
    const v = checkGate(metricsOf(1000, 994), spec);
    expect(v.passed).toBe(false);
    expect(v.failures[0]).toContain("99.40 %");
    expect(v.failures[0]).toContain("below the gate");
    expect(v.failures[0]).toContain("6 of 1,000");
  });

  test("another confidence level recomputes the bound", () => {
    const m = metricsOf(1024, 1023);
    expect(checkGate(m, { minAgreement: 0.995, confidence: 0.95 }).passed).toBe(true);
    expect(checkGate(m, { minAgreement: 0.995, confidence: 0.99 }).passed).toBe(false);
  });

  test("accuracy drop is checked only when labels exist", () => {
    const spec = { minAgreement: 0.99, maxAccuracyDrop: 0.001 };
    const base = metricsOf(1000, 1000);
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
    const empty = { ...metricsOf(1, 1), n: 0, agreement: 0, gateN: 0, gateAgreements: 0, agreementLower: 0 };
    expect(checkGate(empty, { minAgreement: 0 }).passed).toBe(false);
    expect(checkGate(empty, { minAgreement: 0, decideOn: "point" }).passed).toBe(false);
  });
});

describe("near-ties", () => {
  // fp32 margins: row 0 confident, row 1 a near-tie (0.5025 vs 0.4975), row 2 confident
  const fp32 = matrix([
    [3, 0],
    [0.01, 0],
    [0, 2],
  ]);
  const int8 = matrix([
    [3, 0],
    [0, 0.01], // flips the near-tie
    [2, 0], // flips a confident input
  ]);

  test("flips are split by fp32's own margin, and counted by default", () => {
    const m = compareLogits(fp32, int8);
    expect(m.margin).toEqual({
      threshold: 0.01,
      nearTies: 1,
      nearTieFlips: 1,
      confidentFlips: 1,
      ignored: false,
    });
    expect(m.gateN).toBe(3);
    expect(m.gateAgreements).toBe(1);
  });

  test("--ignore-margin leaves near-ties out of the gate's count, and the line says so", () => {
    const m = compareLogits(fp32, int8, undefined, { ignoreMargin: 0.01 });
    expect(m.margin?.ignored).toBe(true);
    expect(m.n).toBe(3);
    expect(m.gateN).toBe(2);
    expect(m.gateAgreements).toBe(1);
    expect(m.agreementLower).toBeCloseTo(clopperPearsonLower(1, 2), 12);
    expect(describeAgreement(m)).toBe("50.0 % (≥ 2.5 % at 95 %, n = 2 without 1 near-ties)");
  });

  test("topTwoMargins is the softmax gap of the two best classes", () => {
    const margins = topTwoMargins(
      matrix([
        [0, 0],
        [Math.log(3), 0],
        [Number.NaN, 0],
      ]),
    );
    expect(margins[0]).toBe(0);
    expect(margins[1]).toBeCloseTo(0.5, 6); // log(3) as float32
    expect(margins[2]).toBe(0);
  });
});

test("describeAgreement rounds both figures down and separates thousands", () => {
  expect(describeAgreement(metricsOf(1024, 1022))).toBe("99.8 % (≥ 99.3 % at 95 %, n = 1,024)");
  expect(describeAgreement(metricsOf(1000, 998))).toBe("99.8 % (≥ 99.3 % at 95 %, n = 1,000)");
  expect(describeAgreement(metricsOf(32, 32))).toBe("100.0 % (≥ 91.0 % at 95 %, n = 32)");
  expect(describeAgreement(metricsOf(1024, 1022), 0.99)).toContain("at 99 %");
});

test("describeRecordedAgreement reads stored results, old and new", () => {
  const m = metricsOf(1024, 1022);
  expect(describeRecordedAgreement({ ...m, gate: { minAgreement: 0.995, decideOn: "bound" } })).toBe(
    "99.8 % (≥ 99.3 % at 95 %, n = 1,024), gate 99.5 % on the bound",
  );
  expect(describeRecordedAgreement({ agreement: 0.99609375, n: 256, gate: { minAgreement: 0.995 } })).toBe(
    "99.61 % of 256 held-out, gate 99.5 % on the bound",
  );
  expect(describeRecordedAgreement({ n: 3 })).toBeUndefined();
  expect(describeRecordedAgreement(null)).toBeUndefined();
});

test("compareCandidates ranks by lower bound, then agreement, then mean logit error", () => {
  const a = metricsOf(10, 9, { meanAbsLogitDiff: 0.5 });
  const b = metricsOf(10, 8, { meanAbsLogitDiff: 0.1 });
  const c = metricsOf(10, 9, { meanAbsLogitDiff: 0.2 });
  const big = metricsOf(1000, 900, { meanAbsLogitDiff: 0.9 });
  expect([b, a, c, big].sort(compareCandidates)).toEqual([big, c, a, b]);
});

test("parseGateThreshold reads percentages and fractions", () => {
  expect(parseGateThreshold(99.5)).toBeCloseTo(0.995, 12);
  expect(parseGateThreshold(0.98)).toBe(0.98);
  expect(parseGateThreshold(100)).toBe(1);
  expect(() => parseGateThreshold(101)).toThrow(expect.objectContaining({ code: "USAGE" }));
  expect(() => parseGateThreshold(-1)).toThrow(expect.objectContaining({ code: "USAGE" }));
});
