/**
 * Benchmark results, kept so that a promotion decision (candidate vs active)
 * and the post-swap latency check can be explained later. The figures are the
 * bench library's, stored as JSON: this table does not constrain their shape.
 */
import { QuantdError } from "../errors.ts";
import { jsonObject, num, numOrNull, str, strOrNull, toJsonText } from "./row.ts";
import type { SqlDatabase, SqlRow } from "./sql.ts";

/** A stored benchmark run. */
export interface StoredBenchResult {
  id: number;
  /** What was measured, e.g. `latency-b1` or `throughput-16c`. */
  name: string;
  modelVersionId: number | null;
  jobId: string | null;
  modelSha256: string | null;
  /** How it was run (batch, sequence length, threads…). */
  config: Record<string, unknown>;
  /** The figures (p50, p95, p99, throughput, RSS…). */
  metrics: Record<string, unknown>;
  createdAt: number;
}

/** A result to record. */
export interface NewBenchResult {
  name: string;
  modelVersionId?: number | null;
  jobId?: string | null;
  modelSha256?: string | null;
  config?: Record<string, unknown>;
  metrics: Record<string, unknown>;
}

/** The bench results table. */
export interface BenchStore {
  /**
   * Records a result.
   *
   * @throws STORE_FAILED when `modelVersionId` or `jobId` names nothing (foreign key)
   */
  add(result: NewBenchResult): StoredBenchResult;
  /** Results, newest first, filtered by model version and/or job. @defaultValue limit 100 */
  list(filter?: {
    modelVersionId?: number;
    jobId?: string;
    name?: string;
    limit?: number;
  }): StoredBenchResult[];
  /** The newest result of `name` for a model version, or `undefined`. */
  latest(modelVersionId: number, name: string): StoredBenchResult | undefined;
}

const COLUMNS = "id, name, model_version_id, job_id, model_sha256, config, metrics, created_at";

function toResult(r: SqlRow): StoredBenchResult {
  return {
    id: num(r, "id"),
    name: str(r, "name"),
    modelVersionId: numOrNull(r, "model_version_id"),
    jobId: strOrNull(r, "job_id"),
    modelSha256: strOrNull(r, "model_sha256"),
    config: jsonObject(r, "config"),
    metrics: jsonObject(r, "metrics"),
    createdAt: num(r, "created_at"),
  };
}

/** The {@link BenchStore} over a migrated database. */
export function createBenchStore(db: SqlDatabase, now: () => number = Date.now): BenchStore {
  const insert = db.prepare(
    "INSERT INTO bench_results (name, model_version_id, job_id, model_sha256, config, metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
  );
  const byId = db.prepare(`SELECT ${COLUMNS} FROM bench_results WHERE id = ?`);
  // NULL filters match everything, so one statement serves every combination.
  const list = db.prepare(
    `SELECT ${COLUMNS} FROM bench_results WHERE (? IS NULL OR model_version_id = ?) AND (? IS NULL OR job_id = ?) AND (? IS NULL OR name = ?) ORDER BY created_at DESC, id DESC LIMIT ?`,
  );

  return {
    add(result: NewBenchResult): StoredBenchResult {
      if (typeof result.name !== "string" || result.name === "") {
        throw new QuantdError("INTERNAL", "bench result needs a name");
      }
      const id = insert.run(
        result.name,
        result.modelVersionId ?? null,
        result.jobId ?? null,
        result.modelSha256 ?? null,
        toJsonText(result.config ?? {}, "bench config"),
        toJsonText(result.metrics, "bench metrics"),
        now(),
      ).lastInsertRowid;
      const row = byId.get(id);
      if (row === undefined)
        throw new QuantdError("STORE_FAILED", `bench result ${id} vanished after insert`);
      return toResult(row);
    },
    list(filter = {}): StoredBenchResult[] {
      const limit = Math.max(1, Math.min(filter.limit ?? 100, 10_000));
      const m = filter.modelVersionId ?? null;
      const j = filter.jobId ?? null;
      const n = filter.name ?? null;
      return list.all(m, m, j, j, n, n, limit).map(toResult);
    },
    latest(modelVersionId: number, name: string): StoredBenchResult | undefined {
      const r = list.get(modelVersionId, modelVersionId, null, null, name, name, 1);
      return r === undefined ? undefined : toResult(r);
    },
  };
}
