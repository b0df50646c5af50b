/**
 * What both SQLite adapters share: bun:sqlite and better-sqlite3 have the
 * same shape (prepared statements with `run`/`get`/`all`, transactions with
 * `immediate()`/`deferred()`), so one pair of classes turns either into the
 * store's {@link SqlDatabase}, mapping every driver error through
 * {@link toStoreError}. Neither driver is imported here; `bun.ts` and
 * `node.ts` hand in their connection and say what differs (pragmas, and
 * bun:sqlite's statements that must be finalized before a real close).
 */
import type { SqlDatabase, SqlRow, SqlRunResult, SqlStatement, SqlValue, TransactionMode } from "../sql.ts";
import { closedError, toStoreError } from "./common.ts";

/** A driver's prepared statement. */
export interface DriverStatement {
  run(...params: SqlValue[]): { changes: number; lastInsertRowid: number | bigint };
  /** The first row; bun:sqlite says `null` for none, better-sqlite3 `undefined`. */
  get(...params: SqlValue[]): unknown;
  all(...params: SqlValue[]): unknown[];
}

/** A driver's open connection. */
export interface DriverConnection<S extends DriverStatement> {
  readonly inTransaction: boolean;
  exec(sql: string): unknown;
  prepare(sql: string): S;
  transaction<T>(fn: () => T): { immediate(): T; deferred(): T };
  close(): unknown;
}

/** What a statement needs of its connection. */
interface Owner {
  readonly closed: boolean;
  readonly path: string;
}

class AdaptedStatement implements SqlStatement {
  constructor(
    private readonly stmt: DriverStatement,
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
      return (this.stmt.get(...params) as SqlRow | null | undefined) ?? undefined;
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

/**
 * A driver connection as a {@link SqlDatabase}. Subclasses name the driver,
 * read and set pragmas, and may track statements through {@link onPrepare}
 * and {@link beforeClose}.
 */
export abstract class AdaptedDatabase<S extends DriverStatement> implements SqlDatabase {
  abstract readonly driver: string;
  private isClosed = false;

  constructor(
    protected readonly db: DriverConnection<S>,
    readonly path: string,
  ) {}

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.isClosed;
  }

  get inTransaction(): boolean {
    return !this.closed && this.db.inTransaction;
  }

  abstract pragma(name: string, value?: string | number): SqlValue | undefined;

  /** Called with each statement prepared. */
  protected onPrepare(_stmt: S): void {}

  /** Called once before the driver connection is closed. */
  protected beforeClose(): void {}

  /** Throws the closed-connection error when {@link close} was called. */
  protected checkOpen(): void {
    if (this.closed) throw closedError(this.path);
  }

  exec(sql: string): void {
    this.checkOpen();
    try {
      this.db.exec(sql);
    } catch (err) {
      throw toStoreError(err, this.path, "exec");
    }
  }

  prepare(sql: string): SqlStatement {
    this.checkOpen();
    try {
      const stmt = this.db.prepare(sql);
      this.onPrepare(stmt);
      return new AdaptedStatement(stmt, this, sql);
    } catch (err) {
      throw toStoreError(err, this.path, `prepare ${sql}`);
    }
  }

  transaction<T>(fn: () => T, mode: TransactionMode = "immediate"): T {
    this.checkOpen();
    try {
      const tx = this.db.transaction(fn);
      return mode === "immediate" ? tx.immediate() : tx.deferred();
    } catch (err) {
      throw toStoreError(err, this.path, "transaction");
    }
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      this.beforeClose();
      this.db.close();
    } catch (err) {
      throw toStoreError(err, this.path, "close");
    }
  }
}
