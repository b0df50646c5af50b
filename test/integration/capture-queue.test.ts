/**
 * Capture on a real store that another process has locked: offering texts
 * never waits on the lock more than once per retry period, the texts wait in
 * the bounded queue (overflow dropped and counted), and land once the lock is
 * gone.
 */
import { afterAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { CaptureQueue } from "../../src/agent/capture-queue.ts";
import { openSqlDatabase } from "../../src/store/open.ts";
import { databasePath, openStore } from "../../src/store/store.ts";
import { tempDir } from "./agent-harness.ts";

const dir = tempDir("quantd-capture-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("a locked store: offers stay fast, overflow is dropped and counted, the rest lands after the lock", async () => {
  const store = await openStore(databasePath(dir), {
    busyTimeoutMs: 20,
    samples: { countTokens: (t) => t.split(" ").length + 2 },
  });
  const other = await openSqlDatabase(databasePath(dir));
  const dropped: number[] = [];
  const capture = new CaptureQueue({
    samples: () => store.samples,
    rate: 1,
    random: () => 0,
    onDropped: (n) => dropped.push(n),
    flushMs: 200,
    flushTexts: 8,
    maxPending: 100,
  });
  try {
    other.exec("BEGIN IMMEDIATE");
    const t0 = performance.now();
    for (let i = 0; i < 300; i++) {
      capture.offer([`text number ${i}`]);
      // Let the flush timers fire, as a server between requests would.
      await Bun.sleep(1);
    }
    await Bun.sleep(50);
    // 300 offers over a locked store: a flush attempt waits 20 ms, and only one per retry period (200 ms)
    // runs, not one per offer (300 × 20 ms = 6 s).
    expect(performance.now() - t0).toBeLessThan(4000);
    expect(capture.dropped).toBe(200);
    expect(dropped.reduce((a, b) => a + b, 0)).toBe(200);
    other.exec("COMMIT");
    for (let i = 0; i < 50 && store.samples.count() < 100; i++) await Bun.sleep(20);
    expect(store.samples.count()).toBe(100);
  } finally {
    if (other.inTransaction) other.exec("ROLLBACK");
    other.close();
    capture.stop();
    store.close();
  }
});
