/**
 * The gate's statistics: Clopper–Pearson bounds against known values, the
 * sample counts a gate needs, the split that favours validation, and — over
 * many seeded splits of a population with a known agreement — that the
 * reported bound covers the true agreement at least 95 % of the time and that
 * a candidate worse than the gate minus the bound's width never passes.
 */
import { describe, expect, test } from "bun:test";
import {
  binomialUpperTail,
  clopperPearsonLower,
  logGamma,
  samplesToCertify,
} from "../../src/quant/confidence.ts";
import { checkGate, compareLogits, type LogitMatrix } from "../../src/quant/gate.ts";
import { planSplit, splitRequestOf } from "../../src/quant/split.ts";
import { createRandom, shuffle } from "../../src/core/random.ts";

describe("Clopper–Pearson", () => {
  test("logGamma matches factorials", () => {
    expect(logGamma(1)).toBeCloseTo(0, 12);
    expect(logGamma(11)).toBeCloseTo(Math.log(3628800), 10);
    expect(logGamma(0.5)).toBeCloseTo(Math.log(Math.sqrt(Math.PI)), 12);
  });

  test("the binomial tail sums to known values on both sides", () => {
    // P(X ≥ 1) for n = 10, p = 0.1 is 1 − 0.9^10
    expect(binomialUpperTail(1, 10, 0.1)).toBeCloseTo(1 - 0.9 ** 10, 12);
    expect(binomialUpperTail(10, 10, 0.5)).toBeCloseTo(0.5 ** 10, 14);
    expect(binomialUpperTail(0, 10, 0.3)).toBe(1);
    expect(binomialUpperTail(11, 10, 0.3)).toBe(0);
  });

  test("lower bounds equal the beta quantiles scipy gives", () => {
    // scipy.stats.beta.ppf(0.05, k, n − k + 1)
    expect(clopperPearsonLower(50, 100)).toBeCloseTo(0.4136217, 6);
    expect(clopperPearsonLower(1022, 1024)).toBeCloseTo(0.9938646, 6);
    expect(clopperPearsonLower(99, 100)).toBeCloseTo(0.9534402, 6);
    // no flip: the closed form α^(1/n)
    expect(clopperPearsonLower(1024, 1024)).toBeCloseTo(0.05 ** (1 / 1024), 14);
    expect(clopperPearsonLower(0, 10)).toBe(0);
    expect(clopperPearsonLower(0, 0)).toBe(0);
  });

  test("a higher confidence gives a lower bound", () => {
    expect(clopperPearsonLower(990, 1000, 0.99)).toBeLessThan(clopperPearsonLower(990, 1000, 0.95));
  });

  test("samples to certify: 598 for 99.5 % at 95 % with no flip, 947 allowing one", () => {
    expect(samplesToCertify(0.995)).toBe(598);
    expect(samplesToCertify(0.995, 0.95, 1)).toBe(947);
    expect(clopperPearsonLower(946, 947)).toBeGreaterThanOrEqual(0.995);
    expect(clopperPearsonLower(945, 946)).toBeLessThan(0.995);
    expect(samplesToCertify(0.99)).toBe(299);
    expect(samplesToCertify(1)).toBe(Number.POSITIVE_INFINITY);
  });
});

describe("planSplit", () => {
  const gate = splitRequestOf({ minAgreement: 0.995, confidence: 0.95 });

  test("plenty of rows: 128 calibrate, every other row validates", () => {
    const p = planSplit(4000, gate);
    expect([p.calibration, p.validation]).toEqual([128, 3872]);
    expect(p.tooFew).toBeUndefined();
    expect(p.line).toBe(
      "4,000 rows: 128 calibrate, 3,872 validate (every remaining row; 99.5 % at 95 % needs ≥ 598)",
    );
  });

  test("scarce rows go to validation first, calibration keeps what is left", () => {
    const p = planSplit(700, gate);
    expect([p.calibration, p.validation]).toEqual([102, 598]);
    expect(p.line).toContain("calibration cut from 128");
    const q = planSplit(620, gate);
    expect([q.calibration, q.validation]).toEqual([32, 588]);
    expect(q.tooFew).toEqual({ have: 588, needed: 598 });
  });

  test("the usual 128-row file cannot certify 99.5 %, and the plan says so", () => {
    const p = planSplit(128, gate);
    expect([p.calibration, p.validation]).toEqual([32, 96]);
    expect(p.tooFew).toEqual({ have: 96, needed: 598 });
  });

  test("explicit counts are honoured as far as the rows allow", () => {
    expect(planSplit(4000, { ...gate, calibration: 300, validation: 1000 })).toMatchObject({
      calibration: 300,
      validation: 1000,
    });
    // --samples as large as the file holds out its last quarter
    expect(planSplit(128, { ...gate, calibration: 128 })).toMatchObject({ calibration: 96, validation: 32 });
  });

  test("a point-estimate gate needs one held-out sample", () => {
    const point = splitRequestOf({ minAgreement: 0.995, decideOn: "point" });
    expect(point.needed).toBe(1);
    expect(planSplit(128, point)).toMatchObject({ calibration: 96, validation: 32 });
  });
});

/**
 * A population whose every sample either agrees or flips: fp32 logits [1, 0],
 * the candidate's [1, 0] or [0, 1]. `flips` of `size` flip, at random places.
 */
function population(size: number, flips: number, seed: number): { ref: Float32Array; cand: Float32Array } {
  const flipped = shuffle(
    Array.from({ length: size }, (_, i) => i < flips),
    createRandom(seed),
  );
  const ref = new Float32Array(size * 2);
  const cand = new Float32Array(size * 2);
  for (let i = 0; i < size; i++) {
    ref[i * 2] = 1;
    cand[i * 2 + (flipped[i] ? 1 : 0)] = 1;
  }
  return { ref, cand };
}

function rows(data: Float32Array, idx: readonly number[]): LogitMatrix {
  const out = new Float32Array(idx.length * 2);
  for (const [i, r] of idx.entries()) out.set(data.subarray(r * 2, r * 2 + 2), i * 2);
  return { data: out, rows: idx.length, cols: 2 };
}

/** Bounds of `splits` seeded validation sets of `n` drawn from the population. */
function boundsOverSplits(
  pop: { ref: Float32Array; cand: Float32Array },
  size: number,
  n: number,
  splits: number,
): { lower: number; agreement: number; passed: boolean }[] {
  const all = Array.from({ length: size }, (_, i) => i);
  const out: { lower: number; agreement: number; passed: boolean }[] = [];
  for (let seed = 1; seed <= splits; seed++) {
    const idx = shuffle([...all], createRandom(seed)).slice(0, n);
    const m = compareLogits(rows(pop.ref, idx), rows(pop.cand, idx));
    out.push({
      lower: m.agreementLower,
      agreement: m.agreement,
      passed: checkGate(m, { minAgreement: 0.995 }).passed,
    });
  }
  return out;
}

describe("over many seeded splits", () => {
  const SIZE = 20_000;

  for (const [flipRate, n] of [
    [0.002, 1024],
    [0.005, 1024],
    [0.01, 600],
    [0.03, 256],
  ] as const) {
    test(`the 95 % bound covers the true agreement ≥ 95 % of the time (flips ${flipRate * 100} %, n = ${n})`, () => {
      const pop = population(SIZE, Math.round(SIZE * flipRate), 7);
      const truth = 1 - Math.round(SIZE * flipRate) / SIZE;
      const bounds = boundsOverSplits(pop, SIZE, n, 1000);
      const covered = bounds.filter((b) => b.lower <= truth).length / bounds.length;
      expect(covered).toBeGreaterThanOrEqual(0.95);
      // The point estimate alone is above the truth about half the time: a gate on it promises nothing.
      const pointAbove = bounds.filter((b) => b.agreement > truth).length / bounds.length;
      expect(pointAbove).toBeGreaterThan(0.2);
    });
  }

  test("a normal-approximation bound would not cover: the test can tell", () => {
    const pop = population(SIZE, 40, 7); // 99.8 %
    const truth = 1 - 40 / SIZE;
    const all = Array.from({ length: SIZE }, (_, i) => i);
    let covered = 0;
    const splits = 1000;
    for (let seed = 1; seed <= splits; seed++) {
      const idx = shuffle([...all], createRandom(seed)).slice(0, 600);
      const m = compareLogits(rows(pop.ref, idx), rows(pop.cand, idx));
      const wald = m.agreement - 1.645 * Math.sqrt((m.agreement * (1 - m.agreement)) / m.n);
      if (wald <= truth) covered++;
    }
    expect(covered / splits).toBeLessThan(0.95);
  });

  test("a candidate below the gate minus the bound's width never passes", () => {
    // 99.0 % true agreement against a 99.5 % gate: the width at n = 1,024 is ~0.4 point
    const pop = population(SIZE, 200, 11);
    const truth = 1 - 200 / SIZE;
    const bounds = boundsOverSplits(pop, SIZE, 1024, 500);
    const passed = bounds.filter((b) => b.passed);
    for (const b of passed) expect(truth).toBeGreaterThanOrEqual(0.995 - (b.agreement - b.lower));
    expect(passed).toHaveLength(0);
    // The point estimate would have passed some of them.
    expect(bounds.filter((b) => b.agreement >= 0.995).length).toBeGreaterThan(0);
  });
});
