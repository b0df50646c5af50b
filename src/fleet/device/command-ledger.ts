/**
 * The device's memory of command ids, so that a signed command is never run
 * twice: not on a retry after the reply cache was lost, not after a restart,
 * not when someone replays a captured message before it expires. An id is
 * kept until its command's expiry (at most `MAX_COMMAND_TTL_MS` ahead), after
 * which the command is refused as expired anyway.
 *
 * The table lives in the agent's database but belongs to the fleet link, so
 * it is created here (`IF NOT EXISTS`) rather than in the store's migrations.
 */
import type { SqlDatabase } from "../../store/sql.ts";

/** Ids of commands accepted by this device. */
export interface CommandLedger {
  /** Records `id` until `expiresAt`; false when it was already recorded (a replay). */
  claim(id: string, expiresAt: number): boolean;
  /** How many ids are remembered. */
  size(): number;
}

/** Expired ids are pruned at most this often. */
const PRUNE_EVERY_MS = 60_000;

/** The ledger in `db` (table `fleet_command_ids`). */
export function createCommandLedger(db: SqlDatabase, now: () => number = Date.now): CommandLedger {
  db.exec(
    "CREATE TABLE IF NOT EXISTS fleet_command_ids (id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID",
  );
  const insert = db.prepare("INSERT OR IGNORE INTO fleet_command_ids (id, expires_at) VALUES (?, ?)");
  const prune = db.prepare("DELETE FROM fleet_command_ids WHERE expires_at < ?");
  const count = db.prepare("SELECT count(*) AS n FROM fleet_command_ids");
  let prunedAt = 0;
  return {
    claim(id, expiresAt) {
      const t = now();
      if (t - prunedAt > PRUNE_EVERY_MS) {
        prunedAt = t;
        prune.run(t);
      }
      return insert.run(id, expiresAt).changes === 1;
    },
    size: () => Number(count.get()?.n ?? 0),
  };
}
