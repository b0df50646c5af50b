/**
 * What bounds one request's cost in the agent: runs split so no onnxruntime
 * run exceeds a padded-token budget, a request's token count capped per text
 * at the model's limit without tokenizing all of a huge text, and the heap
 * trimmed once serving goes quiet after memory grew.
 */
import { expect, test } from "bun:test";
import { TrimAfterPeaks } from "../../src/agent/heap-trim.ts";
import { capRuns, cappedTokenCount, planRuns } from "../../src/agent/run-planning.ts";

test("capRuns splits a run whose rows × longest exceed the budget, keeping order and every row", () => {
  const lengths = [10, 10, 12, 500, 510, 512, 512, 512, 512, 512];
  const runs = planRuns(lengths);
  const capped = capRuns(runs, (k) => lengths[k]!, 1024);
  expect(capped.flat()).toEqual(runs.flat());
  for (const run of capped) {
    const longest = Math.max(...run.map((k) => lengths[k]!));
    expect(run.length === 1 || run.length * longest <= 1024).toBe(true);
  }
  // A run within the budget is left whole.
  expect(capRuns([[0, 1, 2]], (k) => lengths[k]!, 1024)).toEqual([[0, 1, 2]]);
  // A single row longer than the budget still runs, alone.
  expect(capRuns([[5, 6]], (k) => lengths[k]!, 100)).toEqual([[5], [6]]);
});

test("cappedTokenCount: min(limit, tokens + specials), tokenizing only a prefix of a huge text", () => {
  const seen: number[] = [];
  const words = (t: string): number => {
    seen.push(t.length);
    return t.split(" ").filter((w) => w !== "").length;
  };
  expect(cappedTokenCount("three short words", 512, 2, words)).toBe(5);
  const huge = "word ".repeat(200_000);
  seen.length = 0;
  expect(cappedTokenCount(huge, 512, 2, words)).toBe(512);
  expect(Math.max(...seen)).toBeLessThanOrEqual(512 * 8);
  // Long "words" (no token limit reached in the prefix): the whole text is counted.
  const long = `${"x".repeat(5000)} ${"y".repeat(5000)}`;
  expect(cappedTokenCount(long, 512, 2, words)).toBe(4);
});

test("TrimAfterPeaks trims once after memory grew and serving went quiet, not after steady batches", async () => {
  let rss = 100;
  const trims: number[] = [];
  const heap = new TrimAfterPeaks({
    trim: () => {
      trims.push(rss);
      rss = 101;
      return true;
    },
    rss: () => rss,
    growthBytes: 8,
    quietMs: 20,
  });
  heap.afterBatch();
  rss = 104;
  heap.afterBatch();
  await Bun.sleep(50);
  expect(trims).toEqual([]);
  rss = 150;
  heap.afterBatch();
  heap.afterBatch(); // still busy: the timer restarts
  await Bun.sleep(5);
  expect(trims).toEqual([]);
  await Bun.sleep(50);
  expect(trims).toEqual([150]);
  expect(heap.trims).toBe(1);
  // Back at the new baseline: nothing more to do.
  heap.afterBatch();
  await Bun.sleep(50);
  expect(trims).toEqual([150]);
  heap.stop();
});
