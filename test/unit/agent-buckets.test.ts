/**
 * Length buckets of a micro-batch: each bucket's padding stays within the
 * allowed waste, order is kept, and equal lengths stay in one bucket.
 */
import { expect, test } from "bun:test";
import { lengthBuckets, MAX_PADDING_WASTE } from "../../src/agent/run-planning.ts";

test("equal lengths make one bucket", () => {
  expect(lengthBuckets([12, 12, 12, 12])).toEqual([[0, 1, 2, 3]]);
});

test("every bucket's padding is within the waste bound, and buckets cover the input in order", () => {
  const lengths = [4, 5, 6, 9, 10, 11, 14, 30, 31, 33, 60, 61];
  const buckets = lengthBuckets(lengths);
  expect(buckets.flat()).toEqual(lengths.map((_, i) => i));
  expect(buckets.length).toBeGreaterThan(1);
  for (const b of buckets) {
    const real = b.reduce((s, i) => s + lengths[i]!, 0);
    const padded = b.length * lengths[b.at(-1)!]!;
    expect(padded).toBeLessThanOrEqual((1 + MAX_PADDING_WASTE) * real + 1e-9);
  }
});

test("a lone text and no texts", () => {
  expect(lengthBuckets([7])).toEqual([[0]]);
  expect(lengthBuckets([])).toEqual([]);
});

test("zero waste allowed splits at every change of length", () => {
  expect(lengthBuckets([3, 3, 4, 4, 4, 9], 0)).toEqual([[0, 1], [2, 3, 4], [5]]);
});
