/**
 * fp32 reference logits cached by model and sample: validating a candidate
 * needs the fp32 model's logits on every held-out sample, which cost as much
 * as a whole fp32 pass; a board's pool changes slowly, so the next job finds
 * most of them here. Stored as little-endian float32 blobs.
 */
import type { SqlDatabase, SqlStatement } from "./sql.ts";

/** The reference logits table. */
export interface ReferenceLogitsStore {
  /** The cached rows of `ids` for the model with this SHA-256 (ids without a row are left out). */
  get(modelSha256: string, ids: readonly number[]): Map<number, Float32Array>;
  /**
   * Stores rows (replacing existing ones) in one transaction; rows of samples
   * no longer held are skipped. A device validates against one base model, so
   * the rows of any other model are dropped here: the table never outgrows the pool.
   */
  put(modelSha256: string, rows: readonly { id: number; logits: Float32Array }[]): void;
  /** Rows held, for one model or all. */
  count(modelSha256?: string): number;
  /** Drops the rows of every model but `keep` (a new base model makes the old rows dead weight); returns how many. */
  prune(keep: readonly string[]): number;
}

function toBlob(logits: Float32Array): Uint8Array {
  const bytes = new Uint8Array(logits.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < logits.length; i++) view.setFloat32(i * 4, logits[i]!, true);
  return bytes;
}

function fromBlob(blob: Uint8Array): Float32Array {
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const out = new Float32Array(Math.floor(blob.byteLength / 4));
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** The repository over an open, migrated connection. */
export function createReferenceLogitsStore(db: SqlDatabase, now: () => number): ReferenceLogitsStore {
  // Prepared on first use: a store opened read-only on an older schema must still open.
  const statements = new Map<string, SqlStatement>();
  const stmt = (sql: string): SqlStatement => {
    let s = statements.get(sql);
    if (s === undefined) {
      s = db.prepare(sql);
      statements.set(sql, s);
    }
    return s;
  };
  const GET = "SELECT logits FROM reference_logits WHERE model_sha256 = ? AND sample_id = ?";
  const PUT =
    "INSERT OR REPLACE INTO reference_logits (model_sha256, sample_id, logits, created_at) " +
    "SELECT ?, id, ?, ? FROM samples WHERE id = ?";
  return {
    get(modelSha256, ids) {
      const out = new Map<number, Float32Array>();
      const getOne = stmt(GET);
      db.transaction(() => {
        for (const id of ids) {
          const row = getOne.get(modelSha256, id);
          const blob = row?.["logits"];
          if (blob instanceof Uint8Array) out.set(id, fromBlob(blob));
        }
      }, "deferred");
      return out;
    },
    put(modelSha256, rows) {
      const at = now();
      const putOne = stmt(PUT);
      const dropOthers = stmt("DELETE FROM reference_logits WHERE model_sha256 != ?");
      db.transaction(() => {
        dropOthers.run(modelSha256);
        for (const r of rows) putOne.run(modelSha256, toBlob(r.logits), at, r.id);
      });
    },
    count(modelSha256) {
      const row =
        modelSha256 === undefined
          ? stmt("SELECT count(*) AS n FROM reference_logits").get()
          : stmt("SELECT count(*) AS n FROM reference_logits WHERE model_sha256 = ?").get(modelSha256);
      return Number(row?.["n"] ?? 0);
    },
    prune(keep) {
      const marks = keep.map(() => "?").join(", ");
      const sql =
        keep.length === 0
          ? "DELETE FROM reference_logits"
          : `DELETE FROM reference_logits WHERE model_sha256 NOT IN (${marks})`;
      return db.prepare(sql).run(...keep).changes;
    },
  };
}
