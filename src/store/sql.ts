/**
 * The small SQL interface the store is written against. Two adapters implement
 * it: `sqlite/bun.ts` (bun:sqlite, under Bun) and `sqlite/node.ts`
 * (better-sqlite3, under Node); `open.ts` picks one. No driver type appears
 * here, so the repositories and their tests run unchanged on either driver.
 *
 * Every method of an adapter throws {@link QuantdError}: `STORE_BUSY` when the
 * database is locked past the busy timeout, `DISK_FULL` when SQLite cannot
 * grow the file, `STORE_FAILED` otherwise (the driver's error is the cause).
 */

/** A value SQLite can bind or return. Booleans are not accepted: bind 0 or 1. */
export type SqlValue = string | number | bigint | Uint8Array | null;

/** One result row, keyed by column name (use `AS` to name expressions). */
export type SqlRow = Record<string, SqlValue>;

/** What {@link SqlStatement.run} reports. */
export interface SqlRunResult {
  /** Rows inserted, updated or deleted by the statement. */
  changes: number;
  /** The rowid of the last inserted row on this connection. */
  lastInsertRowid: number;
}

/** A prepared statement with positional (`?`) parameters. */
export interface SqlStatement {
  /** Executes the statement. @throws STORE_BUSY | DISK_FULL | STORE_FAILED */
  run(...params: SqlValue[]): SqlRunResult;
  /** The first row, or `undefined` when there is none. @throws STORE_BUSY | STORE_FAILED */
  get(...params: SqlValue[]): SqlRow | undefined;
  /** Every row. @throws STORE_BUSY | STORE_FAILED */
  all(...params: SqlValue[]): SqlRow[];
}

/** How a transaction takes its locks; see {@link SqlDatabase.transaction}. */
export type TransactionMode = "immediate" | "deferred";

/** An open SQLite connection. */
export interface SqlDatabase {
  /** Which driver backs this connection (`bun:sqlite` or `better-sqlite3`), for logs and tests. */
  readonly driver: string;
  /** The file path, or `:memory:`. */
  readonly path: string;
  /** Runs one or more statements without parameters (DDL, `BEGIN`, …). */
  exec(sql: string): void;
  /**
   * Compiles a statement. Prepare once and reuse: a statement lives until
   * {@link SqlDatabase.close}, which finalizes it.
   */
  prepare(sql: string): SqlStatement;
  /**
   * Runs `fn` inside `BEGIN … COMMIT`, rolling back when it throws (the error
   * is rethrown). Inside another transaction it becomes a savepoint. `fn` must
   * be synchronous: SQLite transactions cannot span an `await`.
   *
   * `immediate` (for anything that writes) takes the write lock up front, so two
   * writers wait then fail with `STORE_BUSY` instead of deadlocking on a lock
   * upgrade; `deferred` suits consistent multi-statement reads, which WAL never
   * blocks.
   *
   * @defaultValue mode "immediate"
   */
  transaction<T>(fn: () => T, mode?: TransactionMode): T;
  /**
   * Reads (`pragma("journal_mode")`) or sets (`pragma("busy_timeout", 5000)`) a
   * pragma and returns the first column of its first row, if any.
   */
  pragma(name: string, value?: string | number): SqlValue | undefined;
  /** Whether a transaction is open on this connection. */
  readonly inTransaction: boolean;
  /** Closes the connection; later calls throw `STORE_FAILED`. Closing twice is harmless. */
  close(): void;
}

/** How an adapter opens a file. */
export interface SqlOpenOptions {
  /** Open read-only; the file must exist. @defaultValue false */
  readonly?: boolean;
}

/** An adapter's entry point: opens `path` (a file, or `:memory:`). @throws STORE_FAILED */
export type SqlOpener = (path: string, options?: SqlOpenOptions) => SqlDatabase;
