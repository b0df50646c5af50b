/**
 * Persistent jobs (recalibration and the like). Every state change is one
 * transaction, so after a crash or power cut the table says exactly where each
 * job stood; the job engine (`src/jobs/`, a later layer) decides whether an interrupted job
 * resumes from its recorded stage or fails.
 *
 * States: QUEUED → IN_PROGRESS (claimed) → SUCCEEDED | FAILED | REJECTED |
 * TIMED_OUT; IN_PROGRESS → QUEUED (requeued after a restart); QUEUED → FAILED
 * (cancelled before it started). Finished states are final.
 */
import { randomUUID } from "node:crypto";
import { QuantdError, type QuantdErrorJSON } from "../errors.ts";
import { jsonObject, jsonOrNull, num, numOrNull, str, strOrNull, toJsonText } from "./row.ts";
import type { SqlDatabase, SqlRow } from "./sql.ts";

/** Where a job is. */
export type JobState = "QUEUED" | "IN_PROGRESS" | "SUCCEEDED" | "FAILED" | "REJECTED" | "TIMED_OUT";
/** The states a job ends in. */
export type FinalJobState = Extract<JobState, "SUCCEEDED" | "FAILED" | "REJECTED" | "TIMED_OUT">;

/** The states a job ends in, as a list. */
export const FINAL_JOB_STATES: readonly JobState[] = ["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"];
const ID = /^[A-Za-z0-9][\w.:-]{0,127}$/;
const TYPE = /^[a-z][a-z0-9-]{0,63}$/;

/** A job as stored. */
export interface Job {
  id: string;
  /** What it does, e.g. `recalibrate`. */
  type: string;
  state: JobState;
  /** The step it is at (or was at when interrupted), named by the runner. */
  stage: string | null;
  /** 0…1. */
  progress: number;
  params: Record<string, unknown>;
  /** What it produced, once finished. */
  result: unknown;
  /** Why it failed, was rejected or timed out. */
  error: QuantdErrorJSON | null;
  /** A cancel was asked for while it ran; the runner stops at its next check. */
  cancelRequested: boolean;
  /** How many times it was claimed (more than 1 after a restart). */
  attempts: number;
  createdAt: number;
  updatedAt: number;
  startedAt: number | null;
  finishedAt: number | null;
}

/** A job to queue. */
export interface NewJob {
  type: string;
  params?: Record<string, unknown>;
  /** Caller-chosen id (a fleet command id, say) so a repeated command queues nothing new. @defaultValue a random UUID */
  id?: string;
}

/** How a job ended. */
export interface JobOutcome {
  result?: unknown;
  error?: QuantdErrorJSON;
}

/** The jobs table. Every method is synchronous and atomic. */
export interface JobStore {
  /**
   * Queues a job. With an `id` already stored for the same type, returns that
   * job unchanged (idempotent retries).
   *
   * @throws USAGE when the type or id is malformed
   * @throws STATE_CONFLICT when the id exists with another type
   */
  create(job: NewJob): Job;
  /** A job, or `undefined`. */
  get(id: string): Job | undefined;
  /** A job. @throws JOB_NOT_FOUND */
  require(id: string): Job;
  /**
   * The job whose id is `idOrPrefix`, or else the one job whose id starts with
   * it (as git takes a commit's unique prefix).
   *
   * @throws JOB_NOT_FOUND when no job matches
   * @throws USAGE when the prefix matches several jobs (they are listed)
   */
  resolve(idOrPrefix: string): Job;
  /** Jobs, newest first, optionally in one state. @defaultValue limit 100 */
  list(options?: { state?: JobState; limit?: number }): Job[];
  /**
   * Moves the oldest queued job of one of `types` (of any type when absent) to
   * IN_PROGRESS and returns it, unless a job of any type is already in progress
   * (one job at a time) or none of those types is queued. A queued job of
   * another type is left for whoever runs that type.
   */
  claimNext(types?: readonly string[]): Job | undefined;
  /** Records the stage and progress of a running job. @throws JOB_NOT_FOUND | STATE_CONFLICT */
  update(id: string, progress: { stage?: string; progress?: number }): Job;
  /** Ends a running job. @throws JOB_NOT_FOUND | STATE_CONFLICT */
  finish(id: string, state: FinalJobState, outcome?: JobOutcome): Job;
  /**
   * Cancels a job: a queued one fails at once with `JOB_CANCELLED`; a running
   * one gets `cancelRequested` for the runner to act on; a finished one is
   * returned unchanged.
   *
   * @throws JOB_NOT_FOUND
   */
  cancel(id: string): Job;
  /** Jobs left IN_PROGRESS by a previous process (call at start, before claiming). */
  interrupted(): Job[];
  /** Puts an interrupted job back in the queue, keeping its stage so it can resume. @throws JOB_NOT_FOUND | STATE_CONFLICT */
  requeue(id: string): Job;
}

const COLUMNS =
  "id, type, state, stage, progress, params, result, error, cancel_requested, attempts, created_at, updated_at, started_at, finished_at";

function toJob(r: SqlRow): Job {
  return {
    id: str(r, "id"),
    type: str(r, "type"),
    state: str(r, "state") as JobState,
    stage: strOrNull(r, "stage"),
    progress: num(r, "progress"),
    params: jsonObject(r, "params"),
    result: jsonOrNull(r, "result"),
    error: jsonOrNull(r, "error") as QuantdErrorJSON | null,
    cancelRequested: num(r, "cancel_requested") !== 0,
    attempts: num(r, "attempts"),
    createdAt: num(r, "created_at"),
    updatedAt: num(r, "updated_at"),
    startedAt: numOrNull(r, "started_at"),
    finishedAt: numOrNull(r, "finished_at"),
  };
}

/** The prepared statements of {@link SqlJobStore}. */
function prepareJobStatements(db: SqlDatabase) {
  return {
    byId: db.prepare(`SELECT ${COLUMNS} FROM jobs WHERE id = ?`),
    insert: db.prepare(
      "INSERT INTO jobs (id, type, state, params, created_at, updated_at) VALUES (?, ?, 'QUEUED', ?, ?, ?)",
    ),
    listAll: db.prepare(`SELECT ${COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?`),
    listState: db.prepare(
      `SELECT ${COLUMNS} FROM jobs WHERE state = ? ORDER BY created_at DESC, rowid DESC LIMIT ?`,
    ),
    running: db.prepare(`SELECT ${COLUMNS} FROM jobs WHERE state = 'IN_PROGRESS' ORDER BY created_at, rowid`),
    // The types come as one JSON array (NULL: any type), so one statement serves every caller's list.
    oldestQueued: db.prepare(
      "SELECT id FROM jobs WHERE state = 'QUEUED' AND (? IS NULL OR type IN (SELECT value FROM json_each(?))) ORDER BY created_at, rowid LIMIT 1",
    ),
    claim: db.prepare(
      "UPDATE jobs SET state = 'IN_PROGRESS', attempts = attempts + 1, started_at = coalesce(started_at, ?), updated_at = ? WHERE id = ? AND state = 'QUEUED'",
    ),
    progress: db.prepare(
      "UPDATE jobs SET stage = coalesce(?, stage), progress = coalesce(?, progress), updated_at = ? WHERE id = ? AND state = 'IN_PROGRESS'",
    ),
    finish: db.prepare(
      "UPDATE jobs SET state = ?, result = ?, error = ?, progress = CASE WHEN ? = 'SUCCEEDED' THEN 1 ELSE progress END, finished_at = ?, updated_at = ? WHERE id = ? AND state = 'IN_PROGRESS'",
    ),
    cancelQueued: db.prepare(
      "UPDATE jobs SET state = 'FAILED', error = ?, finished_at = ?, updated_at = ? WHERE id = ? AND state = 'QUEUED'",
    ),
    cancelRunning: db.prepare(
      "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND state = 'IN_PROGRESS'",
    ),
    requeue: db.prepare(
      "UPDATE jobs SET state = 'QUEUED', updated_at = ? WHERE id = ? AND state = 'IN_PROGRESS'",
    ),
    // substr, not LIKE: an id may hold `_`, which LIKE reads as a wildcard.
    byPrefix: db.prepare(
      "SELECT id FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC, rowid DESC LIMIT 6",
    ),
  };
}

/** The {@link JobStore} over a migrated database. */
class SqlJobStore implements JobStore {
  readonly #db: SqlDatabase;
  readonly #now: () => number;
  readonly #q: ReturnType<typeof prepareJobStatements>;

  constructor(db: SqlDatabase, now: () => number) {
    this.#db = db;
    this.#now = now;
    this.#q = prepareJobStatements(db);
  }

  get(id: string): Job | undefined {
    const r = this.#q.byId.get(id);
    return r === undefined ? undefined : toJob(r);
  }

  require(id: string): Job {
    const j = this.get(id);
    if (j === undefined) throw new QuantdError("JOB_NOT_FOUND", `no job ${id}`, { details: { id } });
    return j;
  }

  /** After an UPDATE that matched nothing: the job is missing or in the wrong state. */
  #conflict(id: string, action: string, allowed: string): never {
    const j = this.require(id);
    throw new QuantdError("STATE_CONFLICT", `job ${id} is ${j.state}; cannot ${action} (only ${allowed})`, {
      details: { id, state: j.state },
    });
  }

  create(job: NewJob): Job {
    if (typeof job.type !== "string" || !TYPE.test(job.type)) {
      throw new QuantdError("USAGE", `job type must be a lower-case name, got ${JSON.stringify(job.type)}`);
    }
    const id = job.id ?? randomUUID();
    if (typeof id !== "string" || !ID.test(id)) {
      throw new QuantdError(
        "USAGE",
        `job id must be 1–128 letters, digits or . _ : -, got ${JSON.stringify(id)}`,
      );
    }
    const params = toJsonText(job.params ?? {}, "job params");
    return this.#db.transaction(() => {
      const existing = this.get(id);
      if (existing !== undefined) {
        if (existing.type !== job.type) {
          throw new QuantdError("STATE_CONFLICT", `job ${id} exists with type ${existing.type}`, {
            details: { id, type: existing.type },
          });
        }
        return existing;
      }
      const t = this.#now();
      this.#q.insert.run(id, job.type, params, t, t);
      return this.require(id);
    });
  }

  resolve(idOrPrefix: string): Job {
    const exact = this.get(idOrPrefix);
    if (exact !== undefined || idOrPrefix === "") return exact ?? this.require(idOrPrefix);
    const ids = this.#q.byPrefix
      .all(idOrPrefix.length, idOrPrefix)
      .map((r) => str(r, "id"))
      .sort();
    if (ids.length === 1) return this.require(ids[0]!);
    if (ids.length === 0) return this.require(idOrPrefix);
    const shown = ids.length > 5 ? `${ids.slice(0, 5).join(", ")}, …` : ids.join(", ");
    throw new QuantdError("USAGE", `job id prefix ${idOrPrefix} is ambiguous: ${shown}`, {
      details: { prefix: idOrPrefix, candidates: ids.slice(0, 5) },
    });
  }

  list(options: { state?: JobState; limit?: number } = {}): Job[] {
    const limit = Math.max(1, Math.min(options.limit ?? 100, 10_000));
    const rows =
      options.state === undefined ? this.#q.listAll.all(limit) : this.#q.listState.all(options.state, limit);
    return rows.map(toJob);
  }

  claimNext(types?: readonly string[]): Job | undefined {
    const only = types === undefined ? null : JSON.stringify(types);
    return this.#db.transaction(() => {
      if (this.#q.running.get() !== undefined) return undefined;
      const next = this.#q.oldestQueued.get(only, only);
      if (next === undefined) return undefined;
      const id = str(next, "id");
      const t = this.#now();
      this.#q.claim.run(t, t, id);
      return this.require(id);
    });
  }

  update(id: string, p: { stage?: string; progress?: number }): Job {
    if (p.progress !== undefined && !(p.progress >= 0 && p.progress <= 1)) {
      throw new QuantdError("INTERNAL", `job progress must be within 0…1, got ${p.progress}`);
    }
    return this.#db.transaction(() => {
      if (this.#q.progress.run(p.stage ?? null, p.progress ?? null, this.#now(), id).changes === 0) {
        this.#conflict(id, "record progress", "IN_PROGRESS");
      }
      return this.require(id);
    });
  }

  finish(id: string, state: FinalJobState, outcome: JobOutcome = {}): Job {
    if (!FINAL_JOB_STATES.includes(state))
      throw new QuantdError("INTERNAL", `${state} is not a final job state`);
    const result = outcome.result === undefined ? null : toJsonText(outcome.result, "job result");
    const error = outcome.error === undefined ? null : toJsonText(outcome.error, "job error");
    return this.#db.transaction(() => {
      const t = this.#now();
      if (this.#q.finish.run(state, result, error, state, t, t, id).changes === 0) {
        this.#conflict(id, `mark it ${state}`, "IN_PROGRESS");
      }
      return this.require(id);
    });
  }

  cancel(id: string): Job {
    return this.#db.transaction(() => {
      const t = this.#now();
      const error = new QuantdError("JOB_CANCELLED", `job ${id} was cancelled before it started`).toJSON();
      if (this.#q.cancelQueued.run(toJsonText(error, "job error"), t, t, id).changes === 0) {
        this.#q.cancelRunning.run(t, id);
      }
      return this.require(id);
    });
  }

  interrupted(): Job[] {
    return this.#q.running.all().map(toJob);
  }

  requeue(id: string): Job {
    return this.#db.transaction(() => {
      if (this.#q.requeue.run(this.#now(), id).changes === 0) this.#conflict(id, "requeue it", "IN_PROGRESS");
      return this.require(id);
    });
  }
}

/** The {@link JobStore} over a migrated database. */
export function createJobStore(db: SqlDatabase, now: () => number = Date.now): JobStore {
  return new SqlJobStore(db, now);
}
