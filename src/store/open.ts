/**
 * Opens a SQLite database with the driver of the running runtime: bun:sqlite
 * under Bun, better-sqlite3 under Node. The one place the choice is made; each
 * adapter is imported dynamically so a runtime never loads the other's driver.
 */
import { chmodSync, mkdirSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { QuantdError } from "../errors.ts";
import type { SqlDatabase, SqlOpener } from "./sql.ts";

/** Default wait for a lock held by another connection before `STORE_BUSY`. */
export const DEFAULT_BUSY_TIMEOUT_MS = 5000;

/** Options for {@link openSqlDatabase}. */
export interface OpenSqlOptions {
  /** How long a statement waits on another connection's lock before `STORE_BUSY`, in ms. @defaultValue {@link DEFAULT_BUSY_TIMEOUT_MS} */
  busyTimeoutMs?: number;
  /** Open read-only (no WAL switch, no directory creation). @defaultValue false */
  readonly?: boolean;
  /** Use this adapter instead of the runtime's (tests run every adapter through this). */
  opener?: SqlOpener;
}

/** Which runtime is executing: decides the adapter. */
export function currentRuntime(): "bun" | "node" {
  return typeof Bun !== "undefined" ? "bun" : "node";
}

async function runtimeOpener(): Promise<SqlOpener> {
  const runtime = currentRuntime();
  try {
    if (runtime === "bun") return (await import("./sqlite/bun.ts")).openBunSqlite;
    return (await import("./sqlite/node.ts")).openNodeSqlite;
  } catch (err) {
    const hint =
      runtime === "node" ? " (is the better-sqlite3 addon built? run scripts/build-node-sqlite.sh)" : "";
    throw new QuantdError("STORE_FAILED", `cannot load the SQLite driver for ${runtime}${hint}`, {
      cause: err,
    });
  }
}

/**
 * Applies the connection settings every quantd connection uses: a busy
 * timeout, WAL (readers never block the writer, and a power cut loses at most
 * the last transactions, never the file), `synchronous=NORMAL` (safe with WAL;
 * the registry raises it to FULL around a promotion), and foreign keys.
 *
 * @throws STORE_BUSY when another connection holds the lock past the timeout
 * @throws STORE_FAILED when a setting is refused
 */
export function configureDatabase(db: SqlDatabase, busyTimeoutMs: number, readonly: boolean): void {
  db.pragma("busy_timeout", Math.max(0, Math.round(busyTimeoutMs)));
  db.pragma("foreign_keys", "ON");
  if (readonly || db.path === ":memory:") return;
  db.pragma("journal_mode", "WAL");
  db.pragma("synchronous", "NORMAL");
}

/**
 * Opens (creating if needed) the SQLite file at `path` and configures it with
 * {@link configureDatabase}. The parent directory is created when missing.
 *
 * @throws STORE_FAILED when the path is a directory, the file cannot be opened or is not a database
 * @throws STORE_BUSY when the database stays locked past the busy timeout
 */
export async function openSqlDatabase(path: string, options: OpenSqlOptions = {}): Promise<SqlDatabase> {
  const readonly = options.readonly ?? false;
  if (path !== ":memory:") {
    let isDir = false;
    try {
      isDir = statSync(path).isDirectory();
    } catch {
      // Missing: created below (or reported by the driver when read-only).
    }
    if (isDir) throw new QuantdError("STORE_FAILED", `${path} is a directory, not a database file`);
    if (!readonly) {
      try {
        mkdirSync(dirname(path), { recursive: true });
      } catch (err) {
        throw new QuantdError("STORE_FAILED", `cannot create the directory of ${path}`, { cause: err });
      }
    }
  }
  const open = options.opener ?? (await runtimeOpener());
  const db = open(path, { readonly });
  try {
    configureDatabase(db, options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS, readonly);
    if (!readonly && path !== ":memory:") restrictDatabaseMode(path);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

/** Permission bits a database file may never have: execute, group write, anything for others. */
const DATABASE_MODE_FORBIDDEN = 0o137;

/**
 * Takes group write and every permission of others off the database and its
 * WAL and shared-memory files (0640 at most), whoever created them: they hold
 * the collected inputs, which are the users' data. SQLite creates them with
 * the process umask, often 0644.
 *
 * @throws STORE_FAILED when a mode cannot be changed
 */
export function restrictDatabaseMode(path: string): void {
  for (const file of [path, `${path}-wal`, `${path}-shm`]) {
    let mode: number;
    try {
      mode = statSync(file).mode & 0o7777;
    } catch {
      continue; // no WAL yet
    }
    if ((mode & DATABASE_MODE_FORBIDDEN) === 0) continue;
    try {
      chmodSync(file, mode & ~DATABASE_MODE_FORBIDDEN);
    } catch (err) {
      throw new QuantdError("STORE_FAILED", `cannot restrict the permissions of ${file}`, { cause: err });
    }
  }
}
