/**
 * The mapping from a driver's error to quantd's codes. The drivers' errors are
 * plain Errors with SQLite's result code as a string `code`; the contract
 * suites check real BUSY and FULL conditions on both drivers, this checks the
 * mapping table itself, extended codes included.
 */
import { describe, expect, test } from "bun:test";
import { QuantdError } from "../../src/errors.ts";
import { pragmaSql, toStoreError } from "../../src/store/sqlite/common.ts";

function driverError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe("toStoreError", () => {
  test.each([
    ["SQLITE_BUSY", "STORE_BUSY"],
    ["SQLITE_BUSY_SNAPSHOT", "STORE_BUSY"],
    ["SQLITE_LOCKED", "STORE_BUSY"],
    ["SQLITE_LOCKED_SHAREDCACHE", "STORE_BUSY"],
    ["SQLITE_FULL", "DISK_FULL"],
    ["SQLITE_NOTADB", "STORE_CORRUPT"],
    ["SQLITE_CORRUPT", "STORE_CORRUPT"],
    ["SQLITE_CONSTRAINT_UNIQUE", "STORE_FAILED"],
    ["SQLITE_IOERR_WRITE", "STORE_FAILED"],
  ])("%s → %s, keeping the cause", (sqliteCode, code) => {
    const cause = driverError(sqliteCode, "boom");
    const err = toStoreError(cause, "/var/lib/quantd/quantd.db", "run INSERT");
    expect(err.code).toBe(code as QuantdError["code"]);
    expect(err.cause).toBe(cause);
    expect(err.details).toEqual({ path: "/var/lib/quantd/quantd.db", sqliteCode });
    expect(err.message).toContain("/var/lib/quantd/quantd.db");
  });

  test("an error without an SQLite code is STORE_FAILED with its message", () => {
    const err = toStoreError(new TypeError("database is not open"), "x.db", "prepare");
    expect(err.code).toBe("STORE_FAILED");
    expect(err.message).toContain("database is not open");
    expect(toStoreError(driverError("ENOENT", "nope"), "x.db", "open").code).toBe("STORE_FAILED");
  });

  test("a QuantdError thrown inside a transaction passes through unchanged", () => {
    const inner = new QuantdError("STATE_CONFLICT", "job is SUCCEEDED");
    expect(toStoreError(inner, "x.db", "transaction")).toBe(inner);
  });
});

describe("pragmaSql", () => {
  test("reads and sets", () => {
    expect(pragmaSql("journal_mode")).toBe("PRAGMA journal_mode");
    expect(pragmaSql("busy_timeout", 5000)).toBe("PRAGMA busy_timeout = 5000");
    expect(pragmaSql("journal_mode", "WAL")).toBe("PRAGMA journal_mode = WAL");
  });

  test("refuses anything that is not a plain name or value", () => {
    expect(() => pragmaSql("user_version; DROP TABLE samples")).toThrow(QuantdError);
    expect(() => pragmaSql("user_version", "1; DROP TABLE samples")).toThrow(QuantdError);
    expect(() => pragmaSql("key", "'x'")).toThrow(QuantdError);
  });
});
