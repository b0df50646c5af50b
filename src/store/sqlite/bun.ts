/**
 * The bun:sqlite adapter — the only file that imports `bun:sqlite`. It loads
 * under Bun only; `open.ts` imports it dynamically so Node never sees it.
 */
import { Database, type Statement } from "bun:sqlite";
import type { SqlDatabase, SqlOpenOptions, SqlRow, SqlValue } from "../sql.ts";
import { AdaptedDatabase } from "./adapter.ts";
import { pragmaSql, toStoreError } from "./common.ts";

class BunDatabase extends AdaptedDatabase<Statement> {
  readonly driver = "bun:sqlite";
  // bun:sqlite only really closes (and checkpoints the WAL) once every statement
  // is finalized, so the connection keeps its statements and finalizes them on close.
  private readonly statements = new Set<Statement>();

  constructor(
    private readonly handle: Database,
    path: string,
  ) {
    super(handle, path);
  }

  protected override onPrepare(stmt: Statement): void {
    this.statements.add(stmt);
  }

  protected override beforeClose(): void {
    for (const stmt of this.statements) stmt.finalize();
    this.statements.clear();
  }

  pragma(name: string, value?: string | number): SqlValue | undefined {
    this.checkOpen();
    const sql = pragmaSql(name, value);
    try {
      const stmt = this.handle.prepare(sql);
      try {
        const row = stmt.get() as SqlRow | null;
        return row === null ? undefined : Object.values(row)[0];
      } finally {
        stmt.finalize();
      }
    } catch (err) {
      throw toStoreError(err, this.path, sql);
    }
  }
}

/**
 * Opens `path` with bun:sqlite, creating the file unless `readonly`.
 *
 * @throws STORE_FAILED when the file cannot be opened
 */
export function openBunSqlite(path: string, options: SqlOpenOptions = {}): SqlDatabase {
  try {
    const db = options.readonly
      ? new Database(path, { readonly: true, strict: true })
      : new Database(path, { create: true, readwrite: true, strict: true });
    return new BunDatabase(db, path);
  } catch (err) {
    throw toStoreError(err, path, "open");
  }
}
