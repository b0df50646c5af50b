/**
 * The better-sqlite3 adapter — the only file that imports `better-sqlite3`. It
 * loads under Node only (the addon is built by `scripts/bootstrap.sh`);
 * `open.ts` imports it dynamically so Bun never sees it.
 */
import Database from "better-sqlite3";
import type { SqlDatabase, SqlOpenOptions, SqlValue } from "../sql.ts";
import { AdaptedDatabase } from "./adapter.ts";
import { pragmaSql, toStoreError } from "./common.ts";

type NodeStatement = Database.Statement<unknown[]>;

class NodeDatabase extends AdaptedDatabase<NodeStatement> {
  readonly driver = "better-sqlite3";

  constructor(
    private readonly handle: Database.Database,
    path: string,
  ) {
    super(handle, path);
  }

  pragma(name: string, value?: string | number): SqlValue | undefined {
    this.checkOpen();
    const sql = pragmaSql(name, value);
    try {
      // better-sqlite3 refuses get() on a pragma that returns no row; pragma() handles both.
      return this.handle.pragma(sql.slice("PRAGMA ".length), { simple: true }) as SqlValue | undefined;
    } catch (err) {
      throw toStoreError(err, this.path, sql);
    }
  }
}

/**
 * Opens `path` with better-sqlite3, creating the file unless `readonly`.
 *
 * @throws STORE_FAILED when the file cannot be opened or the native addon is not built
 */
export function openNodeSqlite(path: string, options: SqlOpenOptions = {}): SqlDatabase {
  try {
    const db = new Database(path, {
      readonly: options.readonly ?? false,
      fileMustExist: options.readonly ?? false,
    });
    return new NodeDatabase(db, path);
  } catch (err) {
    throw toStoreError(err, path, "open");
  }
}
