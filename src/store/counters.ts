/**
 * The `counters` table: named running totals (outbox bytes and drops, sample
 * duplicates and evictions) kept in the database itself, so they survive a
 * restart and change in the same transaction as the rows they count.
 */
import { num } from "./row.ts";
import type { SqlDatabase } from "./sql.ts";

/** Reads and bumps rows of the `counters` table; each name is created by a migration. */
export interface Counters {
  /** The counter's value; 0 for a name no migration created. */
  get(name: string): number;
  /** Adds `by` to the counter (a name no migration created is left alone). */
  add(name: string, by: number): void;
}

/** {@link Counters} over a migrated database. */
export function createCounters(db: SqlDatabase): Counters {
  const read = db.prepare("SELECT value FROM counters WHERE name = ?");
  const bump = db.prepare("UPDATE counters SET value = value + ? WHERE name = ?");
  return {
    get: (name) => num(read.get(name) ?? { value: 0 }, "value"),
    add: (name, by) => {
      bump.run(by, name);
    },
  };
}
