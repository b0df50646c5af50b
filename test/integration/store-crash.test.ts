/**
 * A process killed (SIGKILL) in the middle of a write transaction: on reopen
 * the store holds exactly what was committed, SQLite's integrity check passes,
 * the trigger-kept figures match the rows, and an interrupted job is found
 * where it stood.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openStore } from "../../src/store/store.ts";
import { repoRoot } from "../helpers/paths.ts";

const tmp = mkdtempSync(join(tmpdir(), "quantd-store-crash-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const child = `
import { openStore } from ${JSON.stringify(join(repoRoot, "src/store/store.ts"))};
const store = await openStore(process.argv[2], { samples: { countTokens: (t) => t.split(" ").length } });
store.samples.add([{ text: "committed one" }, { text: "committed two" }], { source: "file" });
store.jobs.create({ type: "recalibrate", id: "job-1" });
store.jobs.claimNext();
store.jobs.update("job-1", { stage: "quantize", progress: 0.5 });
store.db.exec("BEGIN IMMEDIATE");
store.samples.add(Array.from({ length: 500 }, (_, i) => ({ text: "uncommitted " + i })), { source: "file" });
store.jobs.finish("job-1", "SUCCEEDED");
process.stdout.write("ready\\n");
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
`;

test("SIGKILL inside a write transaction loses only that transaction", async () => {
  const script = join(tmp, "writer.ts");
  const dbPath = join(tmp, "state/quantd.db");
  writeFileSync(script, child);
  const proc = Bun.spawn(["bun", script, dbPath], { stdout: "pipe", stderr: "pipe" });
  const reader = proc.stdout.getReader();
  let seen = "";
  while (!seen.includes("ready")) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += new TextDecoder().decode(value);
  }
  // stderr is read only on failure: it closes when the child exits, which a ready child does not.
  if (!seen.includes("ready")) throw new Error(`writer failed: ${await new Response(proc.stderr).text()}`);
  proc.kill("SIGKILL");
  expect(await proc.exited).not.toBe(0);

  const store = await openStore(dbPath);
  try {
    expect(store.db.pragma("integrity_check")).toBe("ok");
    expect(store.samples.count()).toBe(2);
    const stats = store.samples.stats();
    expect(stats.rows).toBe(2);
    expect(stats.seen).toBe(2);
    const job = store.jobs.require("job-1");
    expect(job.state).toBe("IN_PROGRESS");
    expect(job.stage).toBe("quantize");
    expect(job.progress).toBe(0.5);
    expect(store.jobs.interrupted().map((j) => j.id)).toEqual(["job-1"]);
    // And the store takes writes again: the dead process's lock died with it.
    expect(store.samples.add([{ text: "after the crash", tokenCount: 3 }], { source: "file" }).added).toBe(1);
  } finally {
    store.close();
  }
}, 30_000);
