/**
 * RecentValues: every value of an interval up to its capacity, a uniform
 * sample beyond it (its quantiles stay close to the real ones), and nothing
 * carried over to the next interval.
 */
import { expect, test } from "bun:test";
import { percentile } from "../../src/bench/stats.ts";
import { RecentValues } from "../../src/server/recent-values.ts";

test("keeps the interval's values, then a uniform sample; drain starts a new interval", () => {
  const r = new RecentValues(100);
  for (const v of [3, 1, 2]) r.add(v);
  expect(r.drain()).toEqual({ values: [3, 1, 2], observed: 3 });
  expect(r.drain()).toEqual({ values: [], observed: 0 });
  // 100,000 values 0…99,999: a 100-value sample's median is near 50,000, never the first 100 values.
  for (let i = 0; i < 100_000; i++) r.add(i);
  const { values, observed } = r.drain();
  expect(observed).toBe(100_000);
  expect(values.length).toBe(100);
  const median = percentile(values, 50);
  expect(median).toBeGreaterThan(30_000);
  expect(median).toBeLessThan(70_000);
});
