/**
 * The bun:sqlite adapter — the only file that imports `bun:sqlite`. It loads
 * under Bun only; `open.ts` imports it dynamically so Node never sees it.
 */
import { Database, type Statement } from "bun:sqlite";
import type {
  SqlDatabase,
  SqlOpenOptions,
  SqlRow,
  SqlRunResult,
  SqlStatement,
  SqlValue,
  TransactionMode,
} from "../sql.ts";
import { closedError, pragmaSql, toStoreError } from "./common.ts";

/** What a statement needs of its connection. */
interface Owner {
  readonly closed: boolean;
  readonly path: string;
}

class BunStatement implements SqlStatement {
  constructor(
    private readonly stmt: Statement,
    private readonly owner: Owner,
    private readonly sql: string,
  ) {}

  /** A closed connection's statements must fail, not keep working on a half-closed handle. */
  private checkOpen(): void {
    if (this.owner.closed) throw closedError(this.owner.path);
  }

  run(...params: SqlValue[]): SqlRunResult {
    this.checkOpen();
    try {
      const r = this.stmt.run(...params);
      return { changes: r.changes, lastInsertRowid: Number(r.lastInsertRowid) };
    } catch (err) {
      throw toStoreError(err, this.owner.path, `run ${this.sql}`);
    }
  }

  get(...params: SqlValue[]): SqlRow | undefined {
    this.checkOpen();
    try {
      // bun:sqlite returns null for no row; the interface says undefined.
      return (this.stmt.get(...params) as SqlRow | null) ?? undefined;
    } catch (err) {
      throw toStoreError(err, this.owner.path, `query ${this.sql}`);
    }
  }

  all(...params: SqlValue[]): SqlRow[] {
    this.checkOpen();
    try {
      return this.stmt.all(...params) as SqlRow[];
    } catch (err) {
      throw toStoreError(err, this.owner.path, `query ${this.sql}`);
    }
  }
}

class BunDatabase implements SqlDatabase {
  readonly driver = "bun:sqlite";
  private isClosed = false;
  // bun:sqlite only really closes (and checkpoints the WAL) once every statement
  // is finalized, so the connection keeps its statements and finalizes them on close.
  private readonly statements = new Set<Statement>();

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.isClosed;
  }

  constructor(
    private readonly db: Database,
    readonly path: string,
  ) {}

  get inTransaction(): boolean {
    return !this.closed && this.db.inTransaction;
  }

  exec(sql: string): void {
    if (this.closed) throw closedError(this.path);
    try {
      this.db.exec(sql);
    } catch (err) {
      throw toStoreError(err, this.path, "exec");
    }
  }

  prepare(sql: string): SqlStatement {
    if (this.closed) throw closedError(this.path);
    try {
      const stmt = this.db.prepare(sql);
      this.statements.add(stmt);
      return new BunStatement(stmt, this, sql);
    } catch (err) {
      throw toStoreError(err, this.path, `prepare ${sql}`);
    }
  }

  transaction<T>(fn: () => T, mode: TransactionMode = "immediate"): T {
    if (this.closed) throw closedError(this.path);
    try {
      const tx = this.db.transaction(fn);
      return mode === "immediate" ? tx.immediate() : tx.deferred();
    } catch (err) {
      throw toStoreError(err, this.path, "transaction");
    }
  }

  pragma(name: string, value?: string | number): SqlValue | undefined {
    if (this.closed) throw closedError(this.path);
    const sql = pragmaSql(name, value);
    try {
      const stmt = this.db.prepare(sql);
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

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      for (const stmt of this.statements) stmt.finalize();
      this.statements.clear();
      this.db.close();
    } catch (err) {
      throw toStoreError(err, this.path, "close");
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
