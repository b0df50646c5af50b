/**
 * What the store contract suites need from a test runner, so one suite runs
 * under `bun test` (bun:sqlite) and under Node's `node --test`
 * (better-sqlite3). Assertions use `node:assert/strict`, which both provide.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isQuantdError, type QuantdErrorCode } from "../../src/errors.ts";
import type { SqlOpener } from "../../src/store/sql.ts";

/** The subset of `bun:test` and `node:test` the suites use. */
export interface TestApi {
  describe(name: string, fn: () => void): unknown;
  test(name: string, fn: () => void | Promise<void>): unknown;
}

/** The adapter under test. */
export interface StoreTarget {
  /** Shown in the suite names. */
  name: string;
  /** The adapter's open function. */
  opener: SqlOpener;
  /** The `driver` the runtime's own choice (open.ts, no opener given) must report. */
  runtimeDriver: string;
}

/** Runs `fn` with a fresh temporary directory, removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => T | Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "quantd-store-contract-"));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function describeError(err: unknown): string {
  if (isQuantdError(err)) return `${err.code}: ${err.message}`;
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** Asserts `fn` throws a QuantdError with `code`, and returns it. */
export function throwsCode(fn: () => unknown, code: QuantdErrorCode): Error {
  try {
    fn();
  } catch (err) {
    assert.ok(isQuantdError(err, code), `expected ${code}, got ${describeError(err)}`);
    return err;
  }
  assert.fail(`expected ${code}, nothing was thrown`);
}

/** Asserts `promise` rejects with a QuantdError with `code`, and returns it. */
export async function rejectsCode(promise: Promise<unknown>, code: QuantdErrorCode): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    assert.ok(isQuantdError(err, code), `expected ${code}, got ${describeError(err)}`);
    return err;
  }
  assert.fail(`expected ${code}, the promise resolved`);
}
