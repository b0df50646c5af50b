import { describe, expect, test } from "bun:test";
import { isQuantdError } from "../../src/errors.ts";
import {
  interleavedOrder,
  mean,
  median,
  medianRatio,
  pairRatios,
  percentile,
  summarize,
  throughput,
} from "../../src/bench/stats.ts";
import { expectClose } from "../helpers/expect-close.ts";

describe("percentile (linear interpolation, numpy's default)", () => {
  // Expected values computed with numpy.percentile(..., method="linear").
  const xs = [50, 15, 40, 20, 35];
  test("matches numpy on an odd series given unsorted", () => {
    expectClose(
      [0, 25, 50, 90, 99, 100].map((p) => percentile(xs, p)),
      [15, 20, 35, 46, 49.6, 50],
      { atol: 1e-12 },
    );
  });
  test("interpolates between the middle values of an even series", () => {
    expect(percentile([1, 2, 3, 4], 50)).toBe(2.5);
    expectClose([percentile([1, 2, 3, 4], 90)], [3.7], { atol: 1e-12 });
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
  test("a single value is every percentile", () => {
    expect(percentile([7], 0)).toBe(7);
    expect(percentile([7], 99)).toBe(7);
  });
  test("does not reorder its input", () => {
    const input = [3, 1, 2];
    percentile(input, 50);
    expect(input).toEqual([3, 1, 2]);
  });
  test("rejects an empty series, NaN and p outside [0, 100]", () => {
    expect(() => percentile([], 50)).toThrow(/empty/);
    expect(() => percentile([1, Number.NaN], 50)).toThrow(/NaN/);
    let err: unknown;
    try {
      percentile([1], 101);
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "USAGE")).toBe(true);
  });
});

describe("summarize", () => {
  test("fixed timings", () => {
    const s = summarize([10, 12, 11, 13, 30, 11, 12, 10, 11, 12]);
    expect(s.n).toBe(10);
    expect(s.min).toBe(10);
    expect(s.max).toBe(30);
    expectClose([s.mean, s.p50, s.p90, s.p99], [13.2, 11.5, 14.7, 28.47], { atol: 1e-9 });
    // sample standard deviation, numpy.std(ddof=1)
    expectClose([s.stdev], [5.977736472389305], { atol: 1e-9 });
    expect(mean([1, 2, 3])).toBe(2);
  });
  test("one run has zero deviation", () => {
    expect(summarize([5]).stdev).toBe(0);
  });
});

describe("ratios", () => {
  test("per-pair ratios and their median, not the ratio of medians", () => {
    const a = [10, 10, 20, 20, 10];
    const b = [5, 6, 10, 30, 5];
    expectClose(pairRatios(a, b), [0.5, 0.6, 0.5, 1.5, 0.5], { atol: 1e-12 });
    expect(medianRatio(a, b)).toBe(0.5);
    // the ratio of medians would be 6 / 10 = 0.6: drift between rounds pollutes it
    expect(median(b) / median(a)).toBeCloseTo(0.6, 12);
  });
  test("drift that hits both models alike cancels in pair ratios", () => {
    const drift = [1, 1.5, 2, 3, 4];
    const a = drift.map((d) => 10 * d);
    const b = drift.map((d) => 4 * d);
    for (const r of pairRatios(a, b)) expect(r).toBeCloseTo(0.4, 12);
  });
  test("rejects series of different lengths and a zero baseline", () => {
    expect(() => pairRatios([1, 2], [1])).toThrow(/length/);
    expect(() => pairRatios([0], [1])).toThrow(/non-positive/);
  });
});

describe("interleaving and throughput", () => {
  test("round-robin order A B C A B C", () => {
    expect(interleavedOrder(3, 2)).toEqual([0, 1, 2, 0, 1, 2]);
    expect(interleavedOrder(1, 3)).toEqual([0, 0, 0]);
    expect(interleavedOrder(2, 0)).toEqual([]);
  });
  test("the i-th run of every model falls in round i", () => {
    const order = interleavedOrder(4, 5);
    const seen = [0, 0, 0, 0];
    order.forEach((m, pos) => {
      expect(Math.floor(pos / 4)).toBe(seen[m]!);
      seen[m]! += 1;
    });
    expect(seen).toEqual([5, 5, 5, 5]);
  });
  test("throughput is batch sequences per mean latency", () => {
    expect(throughput(8, 20)).toBe(400);
    expect(() => throughput(1, 0)).toThrow(/non-positive/);
  });
});
