/**
 * The store: one SQLite database in the state directory, migrated on open, with
 * a typed repository per table. This is what the agent, the job runner and the
 * CLI use; nothing above `store/` touches SQL.
 *
 * @example
 * const store = await openStore(databasePath(stateDir), { samples: { countTokens, maxRows: 20000 } });
 * try {
 *   store.samples.add(rows, { source: "file" });
 * } finally {
 *   store.close();
 * }
 */
import { join } from "node:path";
import { type BenchStore, createBenchStore } from "./bench-results.ts";
import { createJobStore, type JobStore } from "./jobs.ts";
import { createReferenceLogitsStore, type ReferenceLogitsStore } from "./logits.ts";
import { migrate, schemaVersion } from "./migrations.ts";
import { createModelRegistryStore, type ModelRegistryStore } from "./models.ts";
import { type OpenSqlOptions, openSqlDatabase } from "./open.ts";
import { createOutboxStore, type OutboxStore } from "./outbox.ts";
import { createSampleStore, type SampleStore, type SampleStoreOptions } from "./samples.ts";
import type { SqlDatabase } from "./sql.ts";

/** The database file's name inside the state directory. */
export const DATABASE_FILE_NAME = "quantd.db";

/** `<stateDir>/quantd.db`. */
export function databasePath(stateDir: string): string {
  return join(stateDir, DATABASE_FILE_NAME);
}

/** Options for {@link openStore} and {@link createStore}. */
export interface StoreOptions extends OpenSqlOptions {
  /** Sample pool bounds and the token counter. */
  samples?: SampleStoreOptions;
  /** Outbox bound in bytes. @defaultValue 4 MiB (`DEFAULT_OUTBOX_MAX_BYTES`) */
  outboxMaxBytes?: number;
  /** Clock for every timestamp, in ms since the epoch. @defaultValue Date.now */
  now?: () => number;
}

/** An open, migrated store. */
export interface Store {
  /** The connection, for what the repositories do not cover (tests, maintenance). */
  readonly db: SqlDatabase;
  /** The schema version after migration. */
  readonly schemaVersion: number;
  readonly samples: SampleStore;
  readonly models: ModelRegistryStore;
  readonly jobs: JobStore;
  readonly outbox: OutboxStore;
  readonly bench: BenchStore;
  /** fp32 reference logits cached per model and sample (validation reuses them). */
  readonly logits: ReferenceLogitsStore;
  /** Closes the connection (idempotent). */
  close(): void;
}

/**
 * Migrates an open connection and builds the repositories over it.
 *
 * @throws STORE_SCHEMA_TOO_NEW | STORE_BUSY | STORE_FAILED from the migration
 * @throws CONFIG_INVALID when a bound is not a positive integer
 */
export function createStore(db: SqlDatabase, options: StoreOptions = {}): Store {
  if (!(options.readonly ?? false)) migrate(db);
  const now = options.now ?? Date.now;
  const outboxOptions =
    options.outboxMaxBytes === undefined ? { now } : { now, maxBytes: options.outboxMaxBytes };
  return {
    db,
    schemaVersion: schemaVersion(db),
    samples: createSampleStore(db, { now, ...options.samples }),
    models: createModelRegistryStore(db, now),
    jobs: createJobStore(db, now),
    outbox: createOutboxStore(db, outboxOptions),
    bench: createBenchStore(db, now),
    logits: createReferenceLogitsStore(db, now),
    close: () => db.close(),
  };
}

/**
 * Opens the database at `path` (creating it and its directory), migrates it to
 * the current schema and returns the repositories.
 *
 * @throws STORE_SCHEMA_TOO_NEW when the file was written by a newer quantd
 * @throws STORE_BUSY when another process holds the write lock past the busy timeout
 * @throws DISK_FULL when the file cannot grow
 * @throws STORE_FAILED when the file is not a database, or cannot be opened
 */
export async function openStore(path: string, options: StoreOptions = {}): Promise<Store> {
  const db = await openSqlDatabase(path, options);
  try {
    return createStore(db, options);
  } catch (err) {
    db.close();
    throw err;
  }
}
