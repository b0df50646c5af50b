/**
 * planRuns: the split of a length-sorted micro-batch into onnxruntime runs
 * that minimises `Σ (runCost + rows × longest)`.
 */
import { expect, test } from "bun:test";
import { planRuns, RUN_COST_TOKENS } from "../../src/agent/run-planning.ts";

/** Estimated cost of a plan, as planRuns counts it. */
function cost(lengths: readonly number[], runs: number[][], runCost: number): number {
  return runs.reduce((a, r) => a + runCost + r.length * lengths[r[r.length - 1]!]!, 0);
}

/** Every split of 0..n-1 into consecutive runs. */
function* splits(n: number): Generator<number[][]> {
  if (n === 0) {
    yield [];
    return;
  }
  for (let first = 1; first <= n; first++) {
    for (const rest of splits(n - first)) {
      yield [Array.from({ length: first }, (_, k) => k), ...rest.map((r) => r.map((i) => i + first))];
    }
  }
}

test("covers every index once, in order, in consecutive runs", () => {
  const lengths = [3, 5, 6, 6, 9, 14, 15, 40, 41, 120];
  const runs = planRuns(lengths);
  expect(runs.flat()).toEqual(lengths.map((_, i) => i));
  for (const r of runs) expect(r.length).toBeGreaterThan(0);
});

test("is the cheapest of all splits (exhaustive on small batches)", () => {
  const cases = [
    [3, 5, 6, 6, 9, 14, 15, 40],
    [10, 11, 12, 30, 31, 90, 91, 92],
    [7, 7, 7, 7, 7, 7],
    [5, 60],
  ];
  for (const lengths of cases) {
    for (const runCost of [0, 5, RUN_COST_TOKENS, 100]) {
      let least = Number.POSITIVE_INFINITY;
      for (const s of splits(lengths.length)) least = Math.min(least, cost(lengths, s, runCost));
      expect(cost(lengths, planRuns(lengths, runCost), runCost)).toBe(least);
    }
  }
});

test("pads similar lengths into one run and keeps a much longer text apart", () => {
  expect(planRuns([20, 22, 23, 25])).toEqual([[0, 1, 2, 3]]);
  // Padding three 10-token texts to 128 would cost 354 tokens; a second run costs 20.
  expect(planRuns([10, 10, 10, 128])).toEqual([[0, 1, 2], [3]]);
  // With no run cost, equal lengths still share a run only when merging costs nothing.
  expect(planRuns([4, 8], 0)).toEqual([[0], [1]]);
});

test("empty and single batches", () => {
  expect(planRuns([])).toEqual([]);
  expect(planRuns([7])).toEqual([[0]]);
});
