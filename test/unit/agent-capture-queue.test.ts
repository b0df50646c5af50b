/**
 * The agent's live capture (`CaptureQueue`) on a real store (bun:sqlite):
 * the sampling rate, writes grouped off the request path and tagged live,
 * pairs kept as one sample, and a group that cannot be written for good is
 * dropped, counted and logged instead of retried forever. (A locked store is
 * `test/integration/capture-queue.test.ts`.)
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CaptureQueue } from "../../src/agent/capture-queue.ts";
import { createRandom } from "../../src/core/random.ts";
import { openStore } from "../../src/store/store.ts";

const tmp = mkdtempSync(join(tmpdir(), "quantd-capture-queue-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const fresh = (countTokens: (t: string) => number = (t) => t.split(" ").length) =>
  openStore(join(tmp, `s${n++}`, "quantd.db"), { samples: { countTokens } });

test("keeps about `rate` of the traffic, written in groups on the timer, tagged live", async () => {
  const store = await fresh();
  const capture = new CaptureQueue({
    samples: () => store.samples,
    rate: 0.25,
    random: createRandom(1),
    flushMs: 10_000,
    flushTexts: 50,
    maxPending: 10_000,
  });
  try {
    for (let i = 0; i < 4000; i++) capture.offer([`request number ${i}`]);
    // Nothing is written while offering: the write waits for a timer.
    expect(store.samples.count()).toBe(0);
    await Bun.sleep(20);
    const written = store.samples.count();
    capture.flush();
    const kept = store.samples.count();
    // Binomial(4000, 0.25): mean 1000, sigma 27.
    expect(Math.abs(kept - 1000)).toBeLessThan(150);
    expect(written).toBeGreaterThan(0);
    expect(capture.dropped).toBe(0);
    expect(store.samples.pick({ n: 5, seed: 1 }).every((x) => x.source === "live")).toBe(true);
  } finally {
    capture.stop();
    store.close();
  }
});

test("rate 0 keeps nothing, a per-call rate overrides it, and a pair is one sample", async () => {
  const store = await fresh();
  const capture = new CaptureQueue({ samples: () => store.samples, rate: 0, random: () => 0.5 });
  try {
    capture.offer(["never kept"]);
    capture.flush();
    expect(store.samples.count()).toBe(0);
    capture.offer(["kept at rate 1", ["a premise", "a hypothesis"]], 1);
    capture.flush();
    const rows = store.samples.pick({ n: 10, seed: 1 });
    expect(rows.map((r) => [r.text, r.pair]).sort()).toEqual([
      ["a premise", "a hypothesis"],
      ["kept at rate 1", null],
    ]);
  } finally {
    capture.stop();
    store.close();
  }
});

test("a group that cannot be written for good is dropped, counted and logged, not retried; the next lands", async () => {
  const store = await fresh((t) => {
    if (t.includes("poison")) throw new Error("tokenizer failed");
    return 1;
  });
  const dropped: number[] = [];
  const lines: string[] = [];
  const capture = new CaptureQueue({
    samples: () => store.samples,
    rate: 1,
    random: () => 0,
    onDropped: (k) => dropped.push(k),
    log: (l) => lines.push(l),
    flushMs: 10_000,
  });
  try {
    capture.offer(["fine", "poison pill"]);
    capture.flush();
    expect(capture.dropped).toBe(2);
    expect(dropped).toEqual([2]);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toStartWith("capture: ");
    capture.flush();
    expect(capture.dropped).toBe(2);
    capture.offer(["fine again", "also fine"]);
    capture.flush();
    expect(store.samples.count()).toBe(2);
  } finally {
    capture.stop();
    store.close();
  }
});
