/**
 * The sample pool's contract, run against every SQLite adapter: deduplication,
 * the row and byte bounds, stratification by length (across a restart), the
 * reservoir's uniformity within a bucket, and disjoint seeded picks.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { createRandom, shuffle } from "../../src/core/random.ts";
import type { SampleInput } from "../../src/store/samples.ts";
import { openStore, type StoreOptions } from "../../src/store/store.ts";
import { type StoreTarget, type TestApi, throwsCode, withTempDir } from "./harness.ts";

/** One "token" per space-separated word: lets a test place a text in a bucket exactly. */
const countWords = (text: string): number => text.trim().split(/\s+/u).length;

/** Length buckets of the v1 schema: [0,8) [8,16) [16,32) [32,64) … */
const BUCKET_WORDS = [4, 12, 24, 48];
/** The stream's mix: 40 % short, 30 %, 20 %, 10 % long. */
const BUCKET_SHARE = [0.4, 0.3, 0.2, 0.1];

/**
 * `n` distinct texts whose position in the stream is their first word and
 * whose bucket follows {@link BUCKET_SHARE}, in a seeded random order.
 */
function stream(n: number, seed: number): { samples: SampleInput[]; bucketOf: number[] } {
  const buckets: number[] = [];
  BUCKET_SHARE.forEach((share, b) => {
    for (let i = 0; i < Math.round(share * n); i++) buckets.push(b);
  });
  shuffle(buckets, createRandom(seed));
  const samples = buckets.map((b, pos) => {
    const words = [`s${pos}`];
    for (let w = 1; w < (BUCKET_WORDS[b] as number); w++) words.push(`w${(pos * 7 + w) % 97}`);
    return { text: words.join(" "), label: pos % 2 };
  });
  return { samples, bucketOf: buckets };
}

const positionOf = (text: string): number => Number(text.split(" ")[0]?.slice(1));

/** Registers the sample-store contract for `target`. */
export function runSampleStoreContract(t: TestApi, target: StoreTarget): void {
  const open = (dir: string, options: StoreOptions = {}) =>
    openStore(join(dir, "quantd.db"), { opener: target.opener, ...options });

  t.describe(`SampleStore contract (${target.name})`, () => {
    t.test("drops and counts duplicates, by normalized text, within and across batches", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir, { samples: { countTokens: countWords } });
        try {
          const r1 = store.samples.add(
            [{ text: "a fine film", label: 1 }, { text: "  a   fine film " }, { text: "dull" }],
            { source: "file" },
          );
          assert.deepEqual(r1, { added: 2, duplicates: 1, evicted: 0, rejected: 0 });
          const r2 = store.samples.add([{ text: "dull" }, { text: "new one" }], { source: "live" });
          assert.deepEqual(r2, { added: 1, duplicates: 1, evicted: 0, rejected: 0 });
          assert.equal(store.samples.count(), 3);
          const stats = store.samples.stats();
          assert.equal(stats.duplicates, 2);
          assert.equal(stats.seen, 3);
          const first = store.samples.pick({ n: 10, seed: 1 }).find((s) => s.text === "a fine film");
          assert.ok(first !== undefined);
          assert.equal(first.label, 1);
          assert.equal(first.tokenCount, 3);
          assert.equal(first.source, "file");
          assert.equal(first.bytes, 11);
          assert.deepEqual(store.samples.get(first.id), first);
        } finally {
          store.close();
        }
      });
    });

    t.test("refuses a bad batch whole: nothing is written", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir, { samples: { countTokens: countWords } });
        try {
          throwsCode(
            () => store.samples.add([{ text: "fine" }, { text: " \t " }], { source: "file" }),
            "TEXT_EMPTY",
          );
          const notString = [{ text: 42 }] as unknown as SampleInput[];
          throwsCode(() => store.samples.add(notString, { source: "file" }), "TEXT_NOT_STRING");
          throwsCode(
            () => store.samples.add([{ text: "x", label: -1 }], { source: "file" }),
            "DATA_MALFORMED",
          );
          throwsCode(
            () => store.samples.add([{ text: "x".repeat(70_000) }], { source: "file" }),
            "TEXT_TOO_LARGE",
          );
          throwsCode(() => store.samples.add([{ text: "fine" }], { source: "no spaces allowed" }), "USAGE");
          assert.equal(store.samples.count(), 0);
          assert.equal(store.samples.stats().seen, 0);
        } finally {
          store.close();
        }
        const noTokenizer = await open(dir);
        try {
          throwsCode(() => noTokenizer.samples.add([{ text: "fine" }], { source: "file" }), "INTERNAL");
          assert.equal(
            noTokenizer.samples.add([{ text: "fine", tokenCount: 3 }], { source: "file" }).added,
            1,
          );
        } finally {
          noTokenizer.close();
        }
      });
    });

    t.test(
      "10× the row bound: stays at the bound, stratified by length, uniform in time, across a restart",
      async () => {
        await withTempDir(async (dir) => {
          const maxRows = 200;
          const n = 10 * maxRows;
          const { samples, bucketOf } = stream(n, 11);
          const options: StoreOptions = {
            samples: { countTokens: countWords, maxRows, maxBytes: 1 << 20, random: createRandom(5) },
          };
          let store = await open(dir, options);
          let added = 0;
          let evicted = 0;
          try {
            const r = store.samples.add(samples.slice(0, n / 2), { source: "file" });
            added += r.added;
            evicted += r.evicted;
          } finally {
            store.close();
          }
          // The per-bucket "seen" counters must survive the restart for the second half to be weighed right.
          store = await open(dir, { samples: { ...options.samples, random: createRandom(6) } });
          try {
            const r = store.samples.add(samples.slice(n / 2), { source: "file" });
            added += r.added;
            evicted += r.evicted;
            const stats = store.samples.stats();
            assert.equal(stats.rows, maxRows);
            assert.equal(store.samples.count(), maxRows);
            assert.equal(added - evicted, maxRows);
            assert.equal(stats.seen, n);
            assert.equal(stats.rejected + added, n);
            assert.equal(stats.evicted, evicted);

            BUCKET_SHARE.forEach((share, b) => {
              const bucket = stats.buckets[b];
              assert.ok(bucket !== undefined);
              assert.equal(bucket.seen, bucketOf.filter((x) => x === b).length, `seen in bucket ${b}`);
              const kept = bucket.kept / maxRows;
              assert.ok(Math.abs(kept - share) <= 0.03, `bucket ${b} holds ${kept}, the stream ${share}`);
            });

            // A reservoir keeps a uniform sample of the stream: the kept positions
            // average about n/2. Keeping the first or the latest would put it near 0 or n.
            const kept = store.samples.pick({ n: maxRows, seed: 1 });
            const meanPosition = kept.reduce((s, x) => s + positionOf(x.text), 0) / kept.length;
            assert.ok(
              Math.abs(meanPosition - n / 2) < n * 0.1,
              `mean stream position ${meanPosition} of ${n}`,
            );
            for (const s of kept) assert.equal(s.bucket, bucketOf[positionOf(s.text)]);

            // The trigger-maintained per-bucket figures match the rows themselves.
            const actual = store.db
              .prepare("SELECT bucket, count(*) AS kept, sum(bytes) AS bytes FROM samples GROUP BY bucket")
              .all();
            for (const row of actual) {
              const b = stats.buckets[Number(row["bucket"])];
              assert.equal(b?.kept, row["kept"]);
              assert.equal(b?.bytes, row["bytes"]);
            }
          } finally {
            store.close();
          }
        });
      },
    );

    t.test("lowered bounds apply at the next add, keeping the length mix", async () => {
      await withTempDir(async (dir) => {
        const { samples } = stream(300, 17);
        const big = await open(dir, { samples: { countTokens: countWords, maxRows: 1000 } });
        try {
          assert.equal(big.samples.add(samples, { source: "file" }).added, 300);
        } finally {
          big.close();
        }
        const small = await open(dir, {
          samples: { countTokens: countWords, maxRows: 100, random: createRandom(2) },
        });
        try {
          assert.deepEqual(small.samples.add([], { source: "file" }), {
            added: 0,
            duplicates: 0,
            evicted: 200,
            rejected: 0,
          });
          const stats = small.samples.stats();
          assert.equal(stats.rows, 100);
          BUCKET_SHARE.forEach((share, b) => {
            assert.ok(Math.abs((stats.buckets[b]?.kept ?? 0) - share * 100) <= 1, `bucket ${b}`);
          });
        } finally {
          small.close();
        }
      });
    });

    t.test("the byte bound holds too", async () => {
      await withTempDir(async (dir) => {
        const maxBytes = 20_000;
        const { samples } = stream(2000, 3);
        const store = await open(dir, {
          samples: { countTokens: countWords, maxRows: 100_000, maxBytes, random: createRandom(9) },
        });
        try {
          const r = store.samples.add(samples, { source: "file" });
          const stats = store.samples.stats();
          assert.ok(stats.bytes <= maxBytes, `${stats.bytes} bytes > ${maxBytes}`);
          // Full, not emptied: within one long sample of the bound.
          assert.ok(stats.bytes > maxBytes - 400, `only ${stats.bytes} bytes kept`);
          assert.ok(r.evicted > 0);
          const big = store.samples.add([{ text: "y ".repeat(15_000) }], { source: "file" });
          assert.equal(big.rejected, 1);
          assert.ok(store.samples.stats().bytes <= maxBytes);
        } finally {
          store.close();
        }
      });
    });

    t.test("pickDisjoint: disjoint, sized, stratified, reproducible from the seed", async () => {
      await withTempDir(async (dir) => {
        const { samples, bucketOf } = stream(300, 21);
        const store = await open(dir, { samples: { countTokens: countWords, maxRows: 1000 } });
        try {
          assert.equal(store.samples.add(samples, { source: "file" }).added, 300);
          const a = store.samples.pickDisjoint(64, 128, 7);
          assert.equal(a.calibration.length, 64);
          assert.equal(a.validation.length, 128);
          const calib = new Set(a.calibration.map((s) => s.id));
          assert.equal(calib.size, 64);
          for (const s of a.validation) assert.ok(!calib.has(s.id), `sample ${s.id} in both sets`);

          const again = store.samples.pickDisjoint(64, 128, 7);
          assert.deepEqual(
            again.calibration.map((s) => s.id),
            a.calibration.map((s) => s.id),
          );
          const other = store.samples.pickDisjoint(64, 128, 8);
          assert.notDeepEqual(
            other.calibration.map((s) => s.id),
            a.calibration.map((s) => s.id),
          );

          BUCKET_SHARE.forEach((share, b) => {
            const got = a.calibration.filter((s) => bucketOf[positionOf(s.text)] === b).length;
            assert.ok(Math.abs(got - share * 64) <= 1, `bucket ${b}: ${got} of 64, share ${share}`);
          });

          const rest = store.samples.pick({ n: 500, seed: 3, exclude: calib });
          assert.equal(rest.length, 300 - 64);
          for (const s of rest) assert.ok(!calib.has(s.id));
          throwsCode(() => store.samples.pickDisjoint(200, 101, 1), "CALIB_EMPTY");
          throwsCode(() => store.samples.pick({ n: -1, seed: 1 }), "USAGE");
        } finally {
          store.close();
        }
      });
    });
  });
}
