/**
 * Opening the agent's database when it may be damaged. A board loses power,
 * an SD card returns bad blocks: a database that does not open, does not pass
 * `PRAGMA quick_check`, or is zero bytes long must not keep the agent from
 * serving (under `Restart=on-failure` it would crash-loop and serve nothing),
 * and must not be silently replaced either. It is moved aside, kept for
 * inspection next to the new one, the move is reported, and a fresh database
 * is created; the caller re-registers what it can rebuild (the model files).
 */
import { existsSync, renameSync, rmSync, statSync } from "node:fs";
import { isQuantdError, QuantdError } from "../errors.ts";
import type { SqlDatabase } from "./sql.ts";
import { openStore, type Store, type StoreOptions } from "./store.ts";

/** Most problems `quick_check` reports before it stops. */
const QUICK_CHECK_MAX_ERRORS = 10;

/** Why a database was set aside, and where it went. */
export interface SetAside {
  reason: string;
  /** The moved database file (its `-wal` sits next to it with the same suffix, when there was one). */
  movedTo: string;
}

/** An open store, and the damaged database it replaced, if any. */
export interface RecoveredStore {
  store: Store;
  setAside: SetAside | undefined;
}

/**
 * `PRAGMA quick_check`: the problems found (at most a few), empty when the
 * database is intact. Checks every page's structure, not the indexes' contents,
 * in a time linear in the file's size.
 *
 * @throws STORE_CORRUPT | STORE_FAILED when the check itself cannot run
 */
export function quickCheck(db: SqlDatabase): string[] {
  const rows = db.prepare(`PRAGMA quick_check(${QUICK_CHECK_MAX_ERRORS})`).all();
  // One row per problem, but SQLite folds several lines into some of them: one line each, for logs.
  const problems = rows
    .flatMap((r) => String(Object.values(r)[0]).split("\n"))
    .filter((p) => p.trim() !== "");
  return problems.length === 1 && problems[0] === "ok" ? [] : problems;
}

/** Moves the database and its WAL aside (`<path>.corrupt-<time>`); the shared-memory index is rebuilt, so dropped. */
function moveAside(path: string, reason: string, now: () => number): SetAside {
  const stamp = new Date(now()).toISOString().replace(/[:.]/g, "-");
  const movedTo = `${path}.corrupt-${stamp}`;
  try {
    renameSync(path, movedTo);
    if (existsSync(`${path}-wal`)) renameSync(`${path}-wal`, `${movedTo}-wal`);
    rmSync(`${path}-shm`, { force: true });
  } catch (err) {
    throw new QuantdError("STORE_CORRUPT", `${path} is damaged (${reason}) and cannot be moved aside`, {
      cause: err,
      details: { path },
    });
  }
  return { reason, movedTo };
}

/**
 * Opens the store at `path`, first setting a damaged database aside: a
 * zero-length file, one SQLite refuses as not a database or corrupt, or one
 * that fails `PRAGMA quick_check`. Any other failure (locked, disk full, a newer
 * schema) is thrown as before: those are not damage, and the file is kept in place.
 *
 * @throws STORE_BUSY | DISK_FULL | STORE_SCHEMA_TOO_NEW | STORE_FAILED from {@link openStore}
 * @throws STORE_CORRUPT when a damaged database cannot be moved aside
 */
export async function openStoreRecovering(path: string, options: StoreOptions = {}): Promise<RecoveredStore> {
  const now = options.now ?? Date.now;
  let setAside: SetAside | undefined;
  try {
    if (statSync(path).size === 0) setAside = moveAside(path, "the file is empty (0 bytes)", now);
  } catch (err) {
    if (isQuantdError(err)) throw err;
    // Missing: a first start.
  }
  if (setAside === undefined) {
    let store: Store | undefined;
    let reason: string | undefined;
    try {
      store = await openStore(path, options);
      const problems = quickCheck(store.db);
      if (problems.length > 0) reason = `quick_check: ${problems.join("; ")}`;
    } catch (err) {
      if (!isQuantdError(err, "STORE_CORRUPT")) {
        store?.close();
        throw err;
      }
      reason = err.causeMessages().at(-1) ?? err.message;
    }
    if (reason === undefined) return { store: store!, setAside: undefined };
    store?.close();
    setAside = moveAside(path, reason, now);
  }
  return { store: await openStore(path, options), setAside };
}
