/**
 * The store's contract, run against every SQLite adapter: opening and
 * migrating, connection settings, reopening, refusals (newer schema, not a
 * database, locked, full, closed), and the model registry, jobs, outbox and
 * bench repositories.
 */
import assert from "node:assert/strict";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { QuantdError } from "../../src/errors.ts";
import { MIGRATIONS, migrate, SCHEMA_VERSION } from "../../src/store/migrations.ts";
import { openSqlDatabase } from "../../src/store/open.ts";
import { openStore, type StoreOptions } from "../../src/store/store.ts";
import { rejectsCode, type StoreTarget, type TestApi, throwsCode, withTempDir } from "./harness.ts";
import { runSampleStoreContract } from "./sample-store.contract.ts";

const sha = (c: string): string => c.repeat(64);

/** Registers the store contract for `target`. */
export function runStoreContract(t: TestApi, target: StoreTarget): void {
  const dbPath = (dir: string): string => join(dir, "state", "quantd.db");
  const open = (dir: string, options: StoreOptions = {}) =>
    openStore(dbPath(dir), { opener: target.opener, ...options });

  t.describe(`Store contract (${target.name})`, () => {
    t.test("the runtime's own choice of adapter is this one", async () => {
      await withTempDir(async (dir) => {
        const db = await openSqlDatabase(join(dir, "x.db"));
        try {
          assert.equal(db.driver, target.runtimeDriver);
        } finally {
          db.close();
        }
      });
    });

    t.test(
      "migrates an empty file (creating its directory); reopening migrates nothing and keeps data",
      async () => {
        await withTempDir(async (dir) => {
          const store = await open(dir);
          try {
            assert.equal(store.schemaVersion, SCHEMA_VERSION);
            assert.equal(store.db.pragma("user_version"), SCHEMA_VERSION);
            const tables = store.db
              .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
              .all()
              .map((r) => r["name"]);
            for (const name of ["bench_results", "counters", "jobs", "model_versions", "outbox", "samples"]) {
              assert.ok(tables.includes(name), `table ${name} missing`);
            }
            store.jobs.create({ type: "recalibrate", id: "job-1" });
            store.models.add({ sha256: sha("a"), path: "/m/a.onnx", kind: "fp32" });
            store.outbox.enqueue("quantd/dev1/status", "hello");
          } finally {
            store.close();
          }
          // A real close checkpoints the WAL into the database file and removes it.
          assert.equal(existsSync(`${dbPath(dir)}-wal`), false, "WAL file left after close");
          const again = await open(dir);
          try {
            assert.deepEqual(migrate(again.db), []);
            assert.equal(again.jobs.require("job-1").state, "QUEUED");
            assert.equal(again.models.getBySha256(sha("a"))?.path, "/m/a.onnx");
            assert.equal(new TextDecoder().decode(again.outbox.peek(1)[0]?.payload), "hello");
          } finally {
            again.close();
          }
        });
      },
    );

    t.test("connections use WAL, NORMAL sync, foreign keys and the busy timeout", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir, { busyTimeoutMs: 1234 });
        try {
          assert.equal(String(store.db.pragma("journal_mode")).toLowerCase(), "wal");
          assert.equal(store.db.pragma("synchronous"), 1);
          assert.equal(store.db.pragma("foreign_keys"), 1);
          assert.equal(store.db.pragma("busy_timeout"), 1234);
        } finally {
          store.close();
        }
      });
    });

    t.test("refuses a database from a newer quantd, and a file that is not a database", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir);
        store.db.pragma("user_version", SCHEMA_VERSION + 1);
        store.close();
        const err = await rejectsCode(open(dir), "STORE_SCHEMA_TOO_NEW");
        assert.match(err.message, /newer/);
        assert.deepEqual((err as QuantdError).details?.["found"], SCHEMA_VERSION + 1);

        const junk = join(dir, "junk.db");
        writeFileSync(
          junk,
          "this is not a database, just some text that is long enough to be a header..........",
        );
        await rejectsCode(openStore(junk, { opener: target.opener }), "STORE_CORRUPT");
        await rejectsCode(openStore(dir, { opener: target.opener }), "STORE_FAILED");
      });
    });

    t.test(
      "a database locked by another connection's write transaction → STORE_BUSY, then works",
      async () => {
        await withTempDir(async (dir) => {
          const holder = await open(dir, { samples: { countTokens: () => 1 } });
          const waiter = await open(dir, { busyTimeoutMs: 20, samples: { countTokens: () => 1 } });
          try {
            holder.samples.add([{ text: "committed" }], { source: "file" });
            holder.db.exec("BEGIN IMMEDIATE");
            holder.samples.add([{ text: "held" }], { source: "file" });
            const err = throwsCode(
              () => waiter.samples.add([{ text: "blocked" }], { source: "file" }),
              "STORE_BUSY",
            );
            assert.ok(err.cause !== undefined, "the driver error is kept as the cause");
            throwsCode(() => waiter.jobs.create({ type: "recalibrate" }), "STORE_BUSY");
            // WAL: readers (picks included) are not blocked by the writer, and see the last commit.
            assert.equal(waiter.samples.count(), 1);
            assert.deepEqual(
              waiter.samples.pick({ n: 5, seed: 1 }).map((s) => s.text),
              ["committed"],
            );
            assert.equal(waiter.samples.pickDisjoint(1, 0, 1).calibration.length, 1);
            holder.db.exec("COMMIT");
            assert.equal(waiter.samples.add([{ text: "blocked" }], { source: "file" }).added, 1);
            assert.equal(holder.samples.count(), 3);
          } finally {
            waiter.close();
            holder.close();
          }
        });
      },
    );

    t.test("a full database → DISK_FULL, and the batch is rolled back", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir, { samples: { countTokens: () => 1 } });
        try {
          // Capping the page count makes SQLite report SQLITE_FULL exactly as a full disk does.
          const pages = Number(store.db.pragma("page_count"));
          store.db.pragma("max_page_count", pages + 2);
          const big = Array.from({ length: 50 }, (_, i) => ({ text: `${i} ${"z".repeat(4000)}` }));
          throwsCode(() => store.samples.add(big, { source: "file" }), "DISK_FULL");
          assert.equal(store.samples.count(), 0);
        } finally {
          store.close();
        }
      });
    });

    t.test("read-only: reads an existing store, refuses writes and missing files", async () => {
      await withTempDir(async (dir) => {
        const rw = await open(dir, { samples: { countTokens: () => 2 } });
        rw.samples.add([{ text: "kept text" }], { source: "file" });
        rw.close();
        const ro = await open(dir, { readonly: true, samples: { countTokens: () => 2 } });
        try {
          assert.equal(ro.samples.count(), 1);
          assert.equal(ro.schemaVersion, SCHEMA_VERSION);
          throwsCode(() => ro.samples.add([{ text: "more" }], { source: "file" }), "STORE_FAILED");
        } finally {
          ro.close();
        }
        await rejectsCode(
          openStore(join(dir, "missing.db"), { opener: target.opener, readonly: true }),
          "STORE_FAILED",
        );
      });
    });

    t.test("a closed store throws STORE_FAILED; closing twice is harmless", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir);
        store.close();
        store.close();
        throwsCode(() => store.jobs.list(), "STORE_FAILED");
      });
    });

    t.test("model registry: one active version, promote, retire, reject, rollback", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir);
        try {
          const m = store.models;
          const a = m.add({ sha256: sha("a"), path: "/m/a.onnx", kind: "fp32" });
          const b = m.add({
            sha256: sha("B"),
            path: "/m/b.onnx",
            kind: "int8-static",
            metrics: { agreement: 0.99 },
          });
          const c = m.add({ sha256: sha("c"), path: "/m/c.onnx", kind: "int8-dynamic" });
          assert.equal(b.sha256, sha("b"));
          assert.equal(a.state, "candidate");
          assert.equal(m.active(), undefined);
          assert.equal(m.add({ sha256: sha("a"), path: "/elsewhere", kind: "fp32" }).id, a.id);

          assert.equal(m.promote(a.id).state, "active");
          const promoted = m.promote(b.id);
          assert.equal(promoted.state, "active");
          assert.equal(m.get(a.id)?.state, "retired");
          assert.equal(m.list("active").length, 1);
          assert.equal(m.active()?.id, b.id);

          // The partial unique index holds even against a raw write.
          throwsCode(
            () => store.db.prepare("UPDATE model_versions SET state = 'active' WHERE id = ?").run(c.id),
            "STORE_FAILED",
          );
          assert.equal(m.list("active").length, 1);

          throwsCode(() => m.promote(b.id), "STATE_CONFLICT");
          throwsCode(() => m.reject(b.id, "no"), "STATE_CONFLICT");
          assert.equal(m.reject(c.id, "agreement 0.91 < 0.98").reason, "agreement 0.91 < 0.98");
          throwsCode(() => m.promote(c.id), "STATE_CONFLICT");
          throwsCode(() => m.promote(999), "NOT_FOUND");

          const back = m.rollback("p95 latency 1.4× the old model's");
          assert.equal(back.id, a.id);
          assert.equal(m.get(b.id)?.state, "retired");
          assert.match(m.get(b.id)?.reason ?? "", /rolled back/);
          assert.equal(m.updateMetrics(b.id, { p95Ms: 3.2 }).metrics["agreement"], 0.99);
          assert.equal(m.get(b.id)?.metrics["p95Ms"], 3.2);
          assert.deepEqual(
            m.list().map((v) => v.id),
            [c.id, b.id, a.id],
          );
          throwsCode(() => m.add({ sha256: "nothex", path: "/x", kind: "fp32" }), "MODEL_INVALID");
          throwsCode(() => m.add({ sha256: sha("d"), path: "/x", kind: "int4" as "fp32" }), "MODEL_INVALID");
        } finally {
          store.close();
        }
        const none = await open(join(dir, "other"));
        try {
          throwsCode(() => none.models.rollback("why"), "NOT_FOUND");
        } finally {
          none.close();
        }
      });
    });

    t.test(
      "model registry: a rejected file of unknown kind is stored as kind unknown, and only a rejected one",
      async () => {
        await withTempDir(async (dir) => {
          const store = await open(dir);
          try {
            const m = store.models;
            const a = m.add({ sha256: sha("a"), path: "/m/a.onnx", kind: "fp32" });
            const b = m.add({ sha256: sha("b"), path: "/m/b.onnx", kind: "fp32" });
            const rejected = m.reject(a.id, "MODEL_TRUNCATED: cut short", "unknown");
            assert.equal(rejected.kind, "unknown");
            assert.equal(m.get(a.id)?.kind, "unknown");
            assert.equal(m.reject(b.id, "gate not met").kind, "fp32");
            throwsCode(
              () => m.add({ sha256: sha("c"), path: "/x", kind: "unknown" as "fp32" }),
              "MODEL_INVALID",
            );
            const c = m.add({ sha256: sha("c"), path: "/m/c.onnx", kind: "fp32" });
            throwsCode(() => m.reject(c.id, "no", "int4" as "fp32"), "MODEL_INVALID");
            assert.equal(m.get(c.id)?.state, "candidate");
            // The schema holds it whatever the code does: a version that may serve has a known kind.
            throwsCode(
              () => store.db.prepare("UPDATE model_versions SET kind = 'unknown' WHERE id = ?").run(c.id),
              "STORE_FAILED",
            );
          } finally {
            store.close();
          }
        });
      },
    );

    t.test(
      "a schema-3 database: versions marked kindUnknown become kind unknown; bench results keep their version",
      async () => {
        await withTempDir(async (dir) => {
          const db = await openSqlDatabase(dbPath(dir), { opener: target.opener });
          try {
            migrate(db, MIGRATIONS.slice(0, 3));
            const insert = db.prepare(
              "INSERT INTO model_versions (sha256, path, kind, state, metrics, reason, created_at, updated_at, activated_at) VALUES (?, ?, 'fp32', ?, ?, ?, 1, 1, ?)",
            );
            insert.run(sha("a"), "/m/a.onnx", "active", '{"source":"/m/a"}', null, 1);
            insert.run(
              sha("b"),
              "/m/b.onnx",
              "rejected",
              '{"kindUnknown":true,"source":"/b"}',
              "truncated",
              null,
            );
            insert.run(sha("c"), "/m/c.onnx", "rejected", '{"source":"/c"}', "gate not met", null);
            db.prepare(
              "INSERT INTO bench_results (name, model_version_id, metrics, created_at) VALUES ('latency', 1, '{}', 1)",
            ).run();
          } finally {
            db.close();
          }
          const store = await open(dir);
          try {
            assert.equal(store.schemaVersion, SCHEMA_VERSION);
            const m = store.models;
            assert.deepEqual(
              m.list().map((v) => [v.id, v.kind, v.state]),
              [
                [3, "fp32", "rejected"],
                [2, "unknown", "rejected"],
                [1, "fp32", "active"],
              ],
            );
            assert.deepEqual(m.get(2)?.metrics, { source: "/b" });
            assert.equal(m.active()?.id, 1);
            // Dropping the old table must not have fired bench_results' ON DELETE SET NULL.
            assert.equal(store.bench.list()[0]?.modelVersionId, 1);
            assert.equal(store.db.pragma("foreign_keys"), 1);
            // The one-active index came back with the table.
            throwsCode(
              () => store.db.prepare("UPDATE model_versions SET state = 'active' WHERE id = 3").run(),
              "STORE_FAILED",
            );
          } finally {
            store.close();
          }
        });
      },
    );

    t.test(
      "jobs: queue order, one at a time, progress, final states, cancel, requeue after a crash",
      async () => {
        await withTempDir(async (dir) => {
          let clock = 1000;
          const store = await open(dir, { now: () => clock++ });
          try {
            const j = store.jobs;
            const first = j.create({ type: "recalibrate", params: { calib: 128 } });
            const second = j.create({ type: "recalibrate", id: "fleet-cmd-7" });
            assert.equal(j.create({ type: "recalibrate", id: "fleet-cmd-7" }).createdAt, second.createdAt);
            throwsCode(() => j.create({ type: "bench", id: "fleet-cmd-7" }), "STATE_CONFLICT");
            throwsCode(() => j.create({ type: "Bad Type" }), "USAGE");
            assert.equal(first.state, "QUEUED");
            assert.deepEqual(first.params, { calib: 128 });

            const claimed = j.claimNext();
            assert.equal(claimed?.id, first.id);
            assert.equal(claimed?.state, "IN_PROGRESS");
            assert.equal(claimed?.attempts, 1);
            assert.equal(j.claimNext(), undefined, "one job at a time");

            assert.equal(j.update(first.id, { stage: "calibrate", progress: 0.25 }).stage, "calibrate");
            assert.equal(j.update(first.id, { progress: 0.5 }).stage, "calibrate");
            throwsCode(() => j.update(second.id, { progress: 0.1 }), "STATE_CONFLICT");
            throwsCode(() => j.update("nope", { progress: 0.1 }), "JOB_NOT_FOUND");

            const done = j.finish(first.id, "SUCCEEDED", { result: { promoted: 3 } });
            assert.equal(done.state, "SUCCEEDED");
            assert.equal(done.progress, 1);
            assert.deepEqual(done.result, { promoted: 3 });
            assert.ok(done.finishedAt !== null);
            throwsCode(() => j.finish(first.id, "FAILED"), "STATE_CONFLICT");

            // The next one runs, then "crashes": a new process finds it interrupted and requeues it.
            assert.equal(j.claimNext()?.id, second.id);
            j.update(second.id, { stage: "quantize", progress: 0.6 });
            assert.deepEqual(
              j.interrupted().map((x) => x.id),
              [second.id],
            );
            assert.equal(j.requeue(second.id).state, "QUEUED");
            const resumed = j.claimNext();
            assert.equal(resumed?.stage, "quantize");
            assert.equal(resumed?.attempts, 2);
            assert.equal(j.cancel(second.id).cancelRequested, true);
            const failed = j.finish(second.id, "FAILED", {
              error: new QuantdError("JOB_CANCELLED", "cancelled at quantize").toJSON(),
            });
            assert.equal(failed.error?.code, "JOB_CANCELLED");

            const queued = j.create({ type: "recalibrate" });
            const cancelled = j.cancel(queued.id);
            assert.equal(cancelled.state, "FAILED");
            assert.equal(cancelled.error?.code, "JOB_CANCELLED");
            assert.equal(j.claimNext(), undefined);

            const timed = j.create({ type: "recalibrate" });
            j.claimNext();
            assert.equal(j.finish(timed.id, "TIMED_OUT").state, "TIMED_OUT");
            assert.equal(j.list({ state: "FAILED" }).length, 2);
            assert.equal(j.list().length, 4);
            assert.equal(j.list({ limit: 1 })[0]?.id, timed.id);
            throwsCode(() => j.require("missing"), "JOB_NOT_FOUND");
            throwsCode(() => j.cancel("missing"), "JOB_NOT_FOUND");
          } finally {
            store.close();
          }
        });
      },
    );

    t.test(
      "jobs: claimNext(types) takes the oldest queued job of those types, still one at a time",
      async () => {
        await withTempDir(async (dir) => {
          let clock = 1000;
          const store = await open(dir, { now: () => clock++ });
          try {
            const j = store.jobs;
            const foreign = j.create({ type: "calibrate-nightly", id: "a-foreign" });
            const bench = j.create({ type: "bench", id: "b-bench" });
            const recal = j.create({ type: "recalibrate", id: "c-recal" });
            // A queued job of a type the caller does not run never blocks the ones it does.
            assert.equal(j.claimNext(["recalibrate", "bench"])?.id, bench.id);
            assert.equal(j.claimNext(["recalibrate"]), undefined, "one job at a time, whatever its type");
            j.finish(bench.id, "SUCCEEDED");
            assert.equal(j.claimNext(["nothing-queued"]), undefined);
            assert.equal(j.claimNext([]), undefined);
            assert.equal(j.claimNext(["recalibrate"])?.id, recal.id);
            j.finish(recal.id, "SUCCEEDED");
            assert.equal(j.require(foreign.id).state, "QUEUED");
            // Without types, any type (the oldest).
            assert.equal(j.claimNext()?.id, foreign.id);
          } finally {
            store.close();
          }
        });
      },
    );

    t.test("outbox: in order, ack removes, bounded by bytes with counted drops", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir, { outboxMaxBytes: 100 });
        try {
          const o = store.outbox;
          const topic = "q/d"; // 3 bytes
          const ids = [0, 1, 2].map((i) => o.enqueue(topic, `m${i}${"x".repeat(15)}`, { qos: 1 }).id);
          assert.deepEqual(
            o.peek(10).map((m) => m.id),
            ids,
          );
          assert.deepEqual(o.stats(), { count: 3, bytes: 60, maxBytes: 100, dropped: 0, droppedBytes: 0 });
          assert.equal(o.ack(ids[0] as number), true);
          assert.equal(o.ack(ids[0] as number), false);

          // 40 held + 63 new > 100: the oldest (20 bytes) goes.
          const r = o.enqueue(topic, new Uint8Array(60).fill(7), { qos: 0 });
          assert.equal(r.dropped, 1);
          const left = o.peek(10);
          assert.deepEqual(
            left.map((m) => m.id),
            [ids[2], r.id],
          );
          assert.deepEqual([...(left[1]?.payload ?? [])], new Array(60).fill(7));
          assert.equal(left[1]?.qos, 0);
          const stats = o.stats();
          assert.ok(stats.bytes <= 100);
          assert.equal(stats.dropped, 1);
          assert.equal(stats.droppedBytes, 20);

          assert.deepEqual(o.enqueue(topic, "x".repeat(200)), { id: null, dropped: 1 });
          assert.equal(o.stats().dropped, 2);
          assert.equal(o.peek(1)[0]?.id, ids[2]);

          // Ids are never reused, even after the newest message is acked.
          for (const m of o.peek(10)) o.ack(m.id);
          const next = o.enqueue(topic, "after");
          assert.ok((next.id ?? 0) > (r.id ?? 0));
          throwsCode(() => o.enqueue("a/+/b", "x"), "REQUEST_INVALID");
          throwsCode(() => o.enqueue("", "x"), "REQUEST_INVALID");
          throwsCode(() => o.enqueue("a", "x", { qos: 3 as 1 }), "REQUEST_INVALID");
        } finally {
          store.close();
        }
      });
    });

    t.test(
      "reference logits: exact float32 round trip per model and sample, gone with their sample",
      async () => {
        await withTempDir(async (dir) => {
          const store = await open(dir, { samples: { countTokens: () => 1, maxRows: 2 } });
          try {
            store.samples.add([{ text: "one" }, { text: "two" }], { source: "file" });
            const [a, b] = store.samples.pick({ n: 10, seed: 1 }).map((x) => x.id);
            const row = Float32Array.from([0.1, -3.25, 1e-30, Number.NEGATIVE_INFINITY]);
            store.logits.put(sha("c"), [
              { id: a!, logits: row },
              { id: b!, logits: Float32Array.from([1, 2]) },
              // a sample the pool does not hold is not cached
              { id: 9999, logits: Float32Array.from([5, 6]) },
            ]);
            const got = store.logits.get(sha("c"), [a!, b!, 9999]);
            assert.deepEqual([...got.keys()].sort(), [a!, b!].sort());
            assert.deepEqual([...got.get(a!)!], [...row]);
            assert.equal(store.logits.get(sha("d"), [a!]).size, 0);
            assert.equal(store.logits.count(), 2);
            // A third sample evicts one of the two (maxRows 2): its logits go with it.
            store.samples.add([{ text: "three" }], { source: "file" });
            const held = new Set(store.samples.pick({ n: 10, seed: 1 }).map((x) => x.id));
            const left = [a!, b!].filter((id) => held.has(id));
            assert.equal(store.logits.get(sha("c"), [a!, b!]).size, left.length);
            // Another base model: its rows replace the old model's.
            store.logits.put(sha("d"), [{ id: left[0]!, logits: Float32Array.from([7, 8]) }]);
            assert.deepEqual([...store.logits.get(sha("d"), [left[0]!]).get(left[0]!)!], [7, 8]);
            assert.equal(store.logits.count(sha("c")), 0);
            assert.equal(store.logits.prune([]), 1);
            assert.equal(store.logits.count(), 0);
          } finally {
            store.close();
          }
        });
      },
    );

    t.test("bench results: stored with their model version and job, newest first", async () => {
      await withTempDir(async (dir) => {
        const store = await open(dir);
        try {
          const v = store.models.add({ sha256: sha("e"), path: "/m/e.onnx", kind: "int8-static" });
          const job = store.jobs.create({ type: "recalibrate" });
          const r1 = store.bench.add({
            name: "latency-b1",
            modelVersionId: v.id,
            jobId: job.id,
            config: { batch: 1, seq: 64 },
            metrics: { p50Ms: 2.1, p95Ms: 2.9 },
          });
          const r2 = store.bench.add({
            name: "latency-b1",
            modelVersionId: v.id,
            metrics: { p50Ms: 2.0, p95Ms: 2.7 },
          });
          store.bench.add({ name: "throughput", metrics: { rps: 400 } });
          assert.deepEqual(r1.config, { batch: 1, seq: 64 });
          assert.equal(store.bench.latest(v.id, "latency-b1")?.id, r2.id);
          assert.deepEqual(
            store.bench.list({ modelVersionId: v.id }).map((r) => r.id),
            [r2.id, r1.id],
          );
          assert.equal(store.bench.list({ jobId: job.id }).length, 1);
          assert.equal(store.bench.list().length, 3);
          throwsCode(() => store.bench.add({ name: "x", modelVersionId: 4242, metrics: {} }), "STORE_FAILED");
        } finally {
          store.close();
        }
      });
    });
  });
}

/** Every store suite for `target`: what the bun and the Node runners call. */
export function runAllStoreContracts(t: TestApi, target: StoreTarget): void {
  runStoreContract(t, target);
  runSampleStoreContract(t, target);
}
