/**
 * The better-sqlite3 adapter — the only file that imports `better-sqlite3`. It
 * loads under Node only (the addon is built by `scripts/bootstrap.sh`);
 * `open.ts` imports it dynamically so Bun never sees it.
 */
import Database from "better-sqlite3";
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

class NodeStatement implements SqlStatement {
  constructor(
    private readonly stmt: Database.Statement<SqlValue[]>,
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
      return this.stmt.get(...params) as SqlRow | undefined;
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

class NodeDatabase implements SqlDatabase {
  readonly driver = "better-sqlite3";
  private isClosed = false;

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.isClosed;
  }

  constructor(
    private readonly db: Database.Database,
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
      return new NodeStatement(this.db.prepare<SqlValue[]>(sql), this, sql);
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
      // better-sqlite3 refuses get() on a pragma that returns no row; pragma() handles both.
      return this.db.pragma(sql.slice("PRAGMA ".length), { simple: true }) as SqlValue | undefined;
    } catch (err) {
      throw toStoreError(err, this.path, sql);
    }
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      this.db.close();
    } catch (err) {
      throw toStoreError(err, this.path, "close");
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
