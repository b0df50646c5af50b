import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isQuantdError } from "../../src/errors.ts";
import {
  MIGRATIONS,
  type Migration,
  migrate,
  SCHEMA_VERSION,
  schemaVersion,
} from "../../src/store/migrations.ts";
import { openSqlDatabase } from "../../src/store/open.ts";

const tmp = mkdtempSync(join(tmpdir(), "quantd-migrations-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let n = 0;
const fresh = () => openSqlDatabase(join(tmp, `db-${n++}.db`));

function tables(db: Awaited<ReturnType<typeof fresh>>): string[] {
  return db
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    .all()
    .map((r) => String(r["name"]));
}

describe("migrations", () => {
  test("the shipped list is 1, 2, 3… and SCHEMA_VERSION is its last", () => {
    MIGRATIONS.forEach((m, i) => {
      expect(m.version).toBe(i + 1);
    });
    expect(SCHEMA_VERSION).toBe(MIGRATIONS.length);
  });

  test("applies each step once, in order", async () => {
    const db = await fresh();
    try {
      const steps: Migration[] = [
        { version: 1, name: "a", sql: "CREATE TABLE a (x)" },
        { version: 2, name: "b", sql: "CREATE TABLE b (y)" },
      ];
      expect(migrate(db, steps.slice(0, 1))).toEqual([1]);
      expect(migrate(db, steps)).toEqual([2]);
      expect(migrate(db, steps)).toEqual([]);
      expect(schemaVersion(db)).toBe(2);
      expect(tables(db)).toEqual(["a", "b"]);
    } finally {
      db.close();
    }
  });

  test("a failing step is rolled back whole; the steps before it stay", async () => {
    const db = await fresh();
    try {
      const steps: Migration[] = [
        { version: 1, name: "a", sql: "CREATE TABLE a (x)" },
        { version: 2, name: "broken", sql: "CREATE TABLE b (y); INSERT INTO nowhere VALUES (1)" },
      ];
      let caught: unknown;
      try {
        migrate(db, steps);
      } catch (err) {
        caught = err;
      }
      expect(isQuantdError(caught, "STORE_FAILED")).toBe(true);
      expect(schemaVersion(db)).toBe(1);
      expect(tables(db)).toEqual(["a"]);
    } finally {
      db.close();
    }
  });

  test("a database newer than the code is refused, untouched", async () => {
    const db = await fresh();
    try {
      db.pragma("user_version", 7);
      expect(() => migrate(db, [{ version: 1, name: "a", sql: "CREATE TABLE a (x)" }])).toThrow(
        /schema version 7, newer than 1/,
      );
      expect(tables(db)).toEqual([]);
    } finally {
      db.close();
    }
  });

  test("a gap in the list is an error, not a silent skip", async () => {
    const db = await fresh();
    try {
      let caught: unknown;
      try {
        migrate(db, [{ version: 2, name: "b", sql: "CREATE TABLE b (y)" }]);
      } catch (err) {
        caught = err;
      }
      expect(isQuantdError(caught, "STORE_FAILED")).toBe(true);
      expect(schemaVersion(db)).toBe(0);
    } finally {
      db.close();
    }
  });

  test("a table rebuild fires no ON DELETE action; one that breaks a reference is rolled back", async () => {
    const db = await fresh();
    try {
      const base: Migration[] = [
        {
          version: 1,
          name: "parent and child",
          sql: `CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT CHECK (v IN ('a')));
                CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p (id) ON DELETE SET NULL);
                INSERT INTO p VALUES (1, 'a'); INSERT INTO c VALUES (1, 1);`,
        },
      ];
      const rebuild = (version: number, keep: string): Migration => ({
        version,
        name: "widen p.v",
        rebuildsTables: true,
        sql: `CREATE TABLE p_new (id INTEGER PRIMARY KEY, v TEXT CHECK (v IN ('a', 'b')));
              INSERT INTO p_new SELECT * FROM p WHERE ${keep};
              DROP TABLE p; ALTER TABLE p_new RENAME TO p;`,
      });
      migrate(db, base);
      // Dropping every parent row breaks the child's reference: refused, and nothing changes.
      expect(() => migrate(db, [...base, rebuild(2, "0")])).toThrow(/foreign key/);
      expect(schemaVersion(db)).toBe(1);
      expect(db.pragma("foreign_keys")).toBe(1);
      expect(migrate(db, [...base, rebuild(2, "1")])).toEqual([2]);
      expect(db.prepare("SELECT p FROM c").get()).toEqual({ p: 1 });
      expect(db.pragma("foreign_keys")).toBe(1);
      db.prepare("INSERT INTO p VALUES (2, 'b')").run();
    } finally {
      db.close();
    }
  });

  test("the shipped schema migrates a fresh file and enforces its constraints", async () => {
    const db = await fresh();
    try {
      expect(migrate(db)).toEqual(MIGRATIONS.map((m) => m.version));
      const bad = [
        "INSERT INTO jobs (id, type, state, created_at, updated_at) VALUES ('j', 'x', 'PAUSED', 0, 0)",
        "INSERT INTO jobs (id, type, state, progress, created_at, updated_at) VALUES ('j', 'x', 'QUEUED', 1.5, 0, 0)",
        "INSERT INTO model_versions (sha256, path, kind, state, created_at, updated_at) VALUES ('ab', '/m', 'fp32', 'candidate', 0, 0)",
        `INSERT INTO model_versions (sha256, path, kind, state, created_at, updated_at) VALUES ('${"a".repeat(64)}', '/m', 'unknown', 'candidate', 0, 0)`,
        "INSERT INTO outbox (topic, payload, qos, bytes, created_at) VALUES ('t', x'00', 3, 1, 0)",
        "INSERT INTO bench_results (name, metrics, created_at) VALUES ('b', 'not json', 0)",
      ];
      for (const sql of bad) expect(() => db.prepare(sql).run()).toThrow(/constraint/i);
    } finally {
      db.close();
    }
  });
});
