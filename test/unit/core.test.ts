/**
 * The leaf helpers in `src/core/`: both percentile definitions against values
 * computed by hand and with numpy, and this process's memory figures.
 */
import { describe, expect, test } from "bun:test";
import { peakRssBytes, readProcessMemory } from "../../src/core/process-memory.ts";
import { nearestRankPercentile, percentile, percentileOfSorted } from "../../src/core/stats.ts";
import { expectClose } from "../helpers/expect-close.ts";

describe("percentiles", () => {
  test("linear interpolation matches numpy.percentile(method='linear') on unsorted input, which it leaves alone", () => {
    const xs = [50, 15, 40, 20, 35];
    expectClose(
      [0, 25, 50, 90, 99, 100].map((p) => percentile(xs, p)),
      [15, 20, 35, 46, 49.6, 50],
      { atol: 1e-12 },
    );
    expect(xs).toEqual([50, 15, 40, 20, 35]);
    expect(percentileOfSorted([1, 2, 3, 4], 50)).toBe(2.5);
  });

  test("nearest rank is always an observed value: the smallest with p % at or below it", () => {
    const xs = Array.from({ length: 20 }, (_, i) => 20 - i); // 20 … 1
    expect(nearestRankPercentile(xs, 95)).toBe(19);
    expect(nearestRankPercentile(xs, 100)).toBe(20);
    expect(nearestRankPercentile([7, 3], 50)).toBe(3);
    expect(nearestRankPercentile([1, 2, 3, 4], 90)).toBe(4);
    expect(percentile([1, 2, 3, 4], 90)).toBeCloseTo(3.7, 12);
  });

  test("no values is NaN under both definitions", () => {
    expect(percentile([], 50)).toBeNaN();
    expect(percentileOfSorted([], 50)).toBeNaN();
    expect(nearestRankPercentile([], 95)).toBeNaN();
  });
});

describe("process memory", () => {
  test("the peak is at least the current resident set, and grows with a large allocation", () => {
    const before = readProcessMemory();
    expect(before.peakRssBytes).toBeGreaterThanOrEqual(before.rssBytes * 0.9);
    expect(peakRssBytes()).toBeGreaterThanOrEqual(before.peakRssBytes);
    const big = new Uint8Array(before.peakRssBytes - before.rssBytes + 64 * 1024 * 1024).fill(1);
    expect(peakRssBytes()).toBeGreaterThan(before.peakRssBytes + 32 * 1024 * 1024);
    expect(big[big.length - 1]).toBe(1);
  });
});
