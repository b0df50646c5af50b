/**
 * Live capture into a real store (bun:sqlite): the sampling rate, batching,
 * bad texts, and a locked database that must not lose the buffer or throw.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isQuantdError } from "../../src/errors.ts";
import { createSampleCapture } from "../../src/store/capture.ts";
import { createRandom } from "../../src/store/random.ts";
import { openStore } from "../../src/store/store.ts";

const tmp = mkdtempSync(join(tmpdir(), "quantd-capture-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const countTokens = (t: string): number => t.split(" ").length;
const fresh = (busyTimeoutMs?: number) =>
  openStore(join(tmp, `s${n++}`, "quantd.db"), {
    samples: { countTokens },
    ...(busyTimeoutMs === undefined ? {} : { busyTimeoutMs }),
  });

describe("createSampleCapture", () => {
  test("keeps about `rate` of the traffic, written in batches, tagged live", async () => {
    const store = await fresh();
    try {
      const capture = createSampleCapture(store.samples, {
        rate: 0.25,
        flushEvery: 50,
        random: createRandom(1),
      });
      let kept = 0;
      for (let i = 0; i < 4000; i++) if (capture.offer(`request number ${i}`)) kept++;
      const s = capture.stats();
      expect(s.offered).toBe(4000);
      expect(s.sampled).toBe(kept);
      // Binomial(4000, 0.25): mean 1000, sigma 27.
      expect(Math.abs(kept - 1000)).toBeLessThan(150);
      expect(s.buffered).toBeLessThan(50);
      expect(store.samples.count()).toBe(kept - s.buffered);
      capture.flush();
      expect(store.samples.count()).toBe(kept);
      expect(capture.stats().added).toBe(kept);
      expect(store.samples.pick({ n: 3, seed: 1 }).every((x) => x.source === "live")).toBe(true);
    } finally {
      store.close();
    }
  });

  test("rate 0 keeps nothing; rate 1 everything; bad texts are counted, not thrown", async () => {
    const store = await fresh();
    try {
      const off = createSampleCapture(store.samples, { rate: 0 });
      expect(off.offer("anything")).toBe(false);
      const all = createSampleCapture(store.samples, { rate: 1, flushEvery: 1000 });
      expect(all.offer("one")).toBe(true);
      expect(all.offer("one")).toBe(true);
      expect(all.offer("   ")).toBe(false);
      expect(all.offer(42)).toBe(false);
      expect(all.offer("x".repeat(70_000))).toBe(false);
      expect(all.flush()).toEqual({ added: 1, duplicates: 1, evicted: 0, rejected: 0 });
      expect(all.flush()).toBeUndefined();
      expect(all.stats()).toMatchObject({ offered: 5, sampled: 2, invalid: 3, added: 1, duplicates: 1 });
      expect(() => createSampleCapture(store.samples, { rate: 1.5 })).toThrow(/rate/);
    } finally {
      store.close();
    }
  });

  test("a locked database: the flush fails quietly, the buffer is kept (bounded), the next flush writes it", async () => {
    const dir = join(tmp, "locked");
    const path = join(dir, "quantd.db");
    const holder = await openStore(path, { samples: { countTokens } });
    const server = await openStore(path, { busyTimeoutMs: 10, samples: { countTokens } });
    try {
      let clock = 0;
      const capture = createSampleCapture(server.samples, {
        rate: 1,
        flushEvery: 4,
        maxBuffer: 6,
        retryDelayMs: 1000,
        now: () => clock,
      });
      holder.db.exec("BEGIN IMMEDIATE");
      for (let i = 0; i < 10; i++) capture.offer(`text ${i}`);
      const s = capture.stats();
      expect(s.buffered).toBe(6);
      expect(s.dropped).toBe(4);
      // One failed attempt at the 4th text, then no retry within the delay.
      expect(s.failedFlushes).toBe(1);
      expect(s.lastError?.code).toBe("STORE_BUSY");
      clock = 1500;
      expect(capture.offer("text 10")).toBe(false);
      expect(capture.stats()).toMatchObject({ failedFlushes: 2, dropped: 5, buffered: 6 });
      holder.db.exec("COMMIT");
      expect(capture.flush()?.added).toBe(6);
      expect(server.samples.count()).toBe(6);
      expect(capture.stats().buffered).toBe(0);
    } finally {
      server.close();
      holder.close();
    }
  });
});

test("a batch that cannot be written for good is dropped, not retried forever", async () => {
  const store = await openStore(join(tmp, "poison", "quantd.db"), {
    samples: {
      countTokens: (t) => {
        if (t.includes("poison")) throw new Error("tokenizer failed");
        return 1;
      },
    },
  });
  try {
    const capture = createSampleCapture(store.samples, { rate: 1, flushEvery: 2, retryDelayMs: 0 });
    capture.offer("fine");
    capture.offer("poison pill");
    expect(capture.stats()).toMatchObject({ failedFlushes: 1, dropped: 2, buffered: 0 });
    capture.offer("fine again");
    capture.offer("also fine");
    expect(capture.stats()).toMatchObject({ added: 2, buffered: 0 });
  } finally {
    store.close();
  }
});

test("invalid options are CONFIG_INVALID", async () => {
  const store = await fresh();
  try {
    for (const bad of [
      { rate: -0.1 },
      { rate: Number.NaN },
      { rate: 0.5, flushEvery: 0 },
      { rate: 0.5, maxBuffer: 1.5 },
    ]) {
      let caught: unknown;
      try {
        createSampleCapture(store.samples, bad);
      } catch (err) {
        caught = err;
      }
      expect(isQuantdError(caught, "CONFIG_INVALID")).toBe(true);
    }
  } finally {
    store.close();
  }
});
