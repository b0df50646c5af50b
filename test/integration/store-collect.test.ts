/**
 * `quantd collect` on the shipped SST-2 training slice (4000 sentences), with
 * the real tokenizer and a real database: ingest, re-ingest (all duplicates),
 * a bounded pool that stays stratified, and the bad inputs.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { collectCommand } from "../../src/cli/commands/collect.ts";
import { runCli } from "../../src/cli/main.ts";
import { openStore } from "../../src/store/store.ts";
import { repoRoot } from "../helpers/paths.ts";

const trainTsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");
const tmp = mkdtempSync(join(tmpdir(), "quantd-collect-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function collect(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const io = {
    stdout: (t: string) => {
      out += t;
    },
    stderr: (t: string) => {
      err += t;
    },
  };
  const code = await runCli(["collect", ...argv], { io, commands: [collectCommand] });
  return { code, out, err };
}

test("ingests the 4k SST-2 slice, then finds every row a duplicate", async () => {
  const stateDir = join(tmp, "full");
  const first = await collect(["--file", trainTsv, "--state-dir", stateDir, "--json"]);
  expect(first.err).toBe("");
  expect(first.code).toBe(0);
  const r = JSON.parse(first.out);
  expect(r.read).toBe(4000);
  // The slice holds two sentences twice.
  expect(r.added + r.duplicates).toBe(4000);
  expect(r.duplicates).toBeLessThan(10);
  expect(r.evicted).toBe(0);
  const dbFile = join(stateDir, "quantd.db");
  console.log(
    `collect 4000 SST-2 sentences: ${r.seconds.toFixed(2)} s (${Math.round(4000 / r.seconds)} samples/s incl. tokenizer), ` +
      `database ${(statSync(dbFile).size / 1024).toFixed(0)} KiB for ${(r.pool.bytes / 1024).toFixed(0)} KiB of text`,
  );

  const again = await collect(["--file", trainTsv, "--state-dir", stateDir]);
  expect(again.code).toBe(0);
  expect(again.out).toContain("added 0, duplicates 4000");

  const store = await openStore(dbFile);
  try {
    expect(store.samples.count()).toBe(r.added);
    const picked = store.samples.pick({ n: 50, seed: 1 });
    for (const s of picked) {
      expect(s.source).toBe("file");
      expect(s.label === 0 || s.label === 1).toBe(true);
      // [CLS] + at least one token + [SEP]
      expect(s.tokenCount).toBeGreaterThanOrEqual(3);
    }
    const stats = store.samples.stats();
    expect(stats.buckets.reduce((n, b) => n + b.seen, 0)).toBe(r.added);
  } finally {
    store.close();
  }
}, 30_000);

test("a bounded pool keeps the file's length mix", async () => {
  const stateDir = join(tmp, "bounded");
  const res = await collect(["--file", trainTsv, "--state-dir", stateDir, "--max-rows", "400", "--json"]);
  expect(res.code).toBe(0);
  const r = JSON.parse(res.out);
  expect(r.pool.rows).toBe(400);
  expect(r.added - r.evicted).toBe(400);
  for (const b of r.buckets as { seen: number; kept: number }[]) {
    const share = b.seen / r.pool.seen;
    expect(Math.abs(b.kept / 400 - share)).toBeLessThanOrEqual(0.02);
  }
}, 30_000);

test("the state directory defaults to $QUANTD_STATE_DIR", async () => {
  const stateDir = join(tmp, "from-env");
  const tsv = join(tmp, "two.tsv");
  writeFileSync(tsv, "sentence\nfirst text\nsecond text\n");
  const saved = process.env["QUANTD_STATE_DIR"];
  process.env["QUANTD_STATE_DIR"] = stateDir;
  try {
    const res = await collect(["--file", tsv, "--source", "field-test"]);
    expect(res.code).toBe(0);
    expect(res.out).toContain("added 2");
    expect(res.out).toContain(join(stateDir, "quantd.db"));
  } finally {
    if (saved === undefined) delete process.env["QUANTD_STATE_DIR"];
    else process.env["QUANTD_STATE_DIR"] = saved;
  }
  const store = await openStore(join(stateDir, "quantd.db"));
  try {
    expect(store.samples.pick({ n: 5, seed: 0 }).map((s) => [s.source, s.label])).toEqual([
      ["field-test", null],
      ["field-test", null],
    ]);
  } finally {
    store.close();
  }
}, 30_000);

test("bad input: missing file, bad flags, malformed file, bad source — clear codes, nothing written", async () => {
  const stateDir = join(tmp, "bad");
  const missing = await collect(["--file", join(tmp, "nope.tsv"), "--state-dir", stateDir]);
  expect(missing.code).toBe(1);
  expect(missing.err).toStartWith("error FILE_NOT_FOUND");

  const noFile = await collect(["--state-dir", stateDir]);
  expect(noFile.code).toBe(2);
  expect(noFile.err).toContain("--file");

  const zero = await collect(["--file", trainTsv, "--state-dir", stateDir, "--max-rows", "0"]);
  expect(zero.code).toBe(2);
  expect(zero.err).toStartWith("error USAGE");

  const badTsv = join(tmp, "bad.tsv");
  writeFileSync(badTsv, "label\tsentence\n1\tfine\nnot-a-label\toops\n");
  const malformed = await collect(["--file", badTsv, "--state-dir", stateDir, "--json"]);
  expect(malformed.code).toBe(1);
  expect(JSON.parse(malformed.out).code).toBe("DATA_MALFORMED");

  const okTsv = join(tmp, "ok.tsv");
  writeFileSync(okTsv, "sentence\nfine\n");
  const badSource = await collect(["--file", okTsv, "--state-dir", stateDir, "--source", "two words"]);
  expect(badSource.code).toBe(2);
  expect(badSource.err).toStartWith("error USAGE");

  const store = await openStore(join(stateDir, "quantd.db"));
  try {
    expect(store.samples.count()).toBe(0);
  } finally {
    store.close();
  }
}, 30_000);

test("a state directory that is a file → STORE_FAILED", async () => {
  const notDir = join(tmp, "plain-file");
  writeFileSync(notDir, "x");
  const res = await collect(["--file", trainTsv, "--state-dir", notDir]);
  expect(res.code).toBe(1);
  expect(res.err).toStartWith("error STORE_FAILED");
}, 30_000);
