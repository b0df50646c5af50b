/**
 * The model registry's records: every model version the agent has built or
 * been given, and which one serves. The files themselves live in the state
 * directory; this table only names them by path and SHA-256.
 *
 * States: `candidate` → `active` (promote) or `rejected`; `active` → `retired`
 * when another is promoted; `retired` → `active` again on rollback. At most one
 * version is active: a partial unique index enforces it, and promotion retires
 * the old one in the same transaction.
 */
import { QuantdError } from "../errors.ts";
import { jsonObject, num, numOrNull, str, strOrNull, toJsonText } from "./row.ts";
import type { SqlDatabase, SqlRow } from "./sql.ts";

/** How a model version's weights and activations are represented. */
export type ModelKind = "fp32" | "int8-static" | "int8-dynamic";
/**
 * A version's kind as recorded: a {@link ModelKind}, or `unknown` for a
 * rejected file that never loaded and whose bytes hold no int8 operator (a
 * truncated, float16 or non-ONNX file is not known to be fp32). Only a
 * rejected version is of unknown kind; the schema enforces it.
 */
export type RecordedKind = ModelKind | "unknown";
/** Where a model version is in its life. */
export type ModelState = "candidate" | "active" | "retired" | "rejected";

const KINDS: readonly ModelKind[] = ["fp32", "int8-static", "int8-dynamic"];
const RECORDED_KINDS: readonly RecordedKind[] = [...KINDS, "unknown"];
const SHA256 = /^[0-9a-f]{64}$/;

/** A registered model version. */
export interface ModelVersion {
  id: number;
  /** Lower-case hex SHA-256 of the model file. */
  sha256: string;
  path: string;
  kind: RecordedKind;
  state: ModelState;
  /** Validation and benchmark figures (agreement, latency…), as recorded. */
  metrics: Record<string, unknown>;
  /** Why it was rejected or retired, when it was. */
  reason: string | null;
  createdAt: number;
  updatedAt: number;
  /** When it last became active. */
  activatedAt: number | null;
}

/** A new version to record. */
export interface NewModelVersion {
  sha256: string;
  path: string;
  kind: ModelKind;
  metrics?: Record<string, unknown>;
}

/** The model registry's table. Every method is synchronous and atomic. */
export interface ModelRegistryStore {
  /**
   * Records a new candidate; a version with the same SHA-256 is returned as is.
   *
   * @throws MODEL_INVALID when the sha256 or kind is malformed
   */
  add(version: NewModelVersion): ModelVersion;
  /** A version by id, or `undefined`. */
  get(id: number): ModelVersion | undefined;
  /** A version by file SHA-256, or `undefined`. */
  getBySha256(sha256: string): ModelVersion | undefined;
  /** The serving version, or `undefined` before the first promotion. */
  active(): ModelVersion | undefined;
  /** Versions, newest first, optionally in one state. */
  list(state?: ModelState): ModelVersion[];
  /**
   * Makes a candidate (or, for a rollback, a retired version) active and
   * retires the previous active one, in one transaction written with
   * `synchronous=FULL` so the switch survives a power cut.
   *
   * @throws NOT_FOUND when there is no such version
   * @throws STATE_CONFLICT when it is rejected or already active
   */
  promote(id: number): ModelVersion;
  /**
   * Marks a candidate rejected, with the reason (gate not met, corrupt file…),
   * and with `kind` when the rejection showed its recorded kind was wrong
   * (`unknown`: the file never loaded and nothing in it shows a kind).
   *
   * @throws NOT_FOUND | STATE_CONFLICT (only candidates can be rejected)
   * @throws MODEL_INVALID when `kind` is not a {@link RecordedKind}
   */
  reject(id: number, reason: string, kind?: RecordedKind): ModelVersion;
  /**
   * Re-activates the version that was active before the current one.
   *
   * @throws NOT_FOUND when no earlier version was ever active
   */
  rollback(reason: string): ModelVersion;
  /** Merges figures into a version's metrics. @throws NOT_FOUND */
  updateMetrics(id: number, metrics: Record<string, unknown>): ModelVersion;
}

const COLUMNS = "id, sha256, path, kind, state, metrics, reason, created_at, updated_at, activated_at";

function toVersion(r: SqlRow): ModelVersion {
  return {
    id: num(r, "id"),
    sha256: str(r, "sha256"),
    path: str(r, "path"),
    kind: str(r, "kind") as RecordedKind,
    state: str(r, "state") as ModelState,
    metrics: jsonObject(r, "metrics"),
    reason: strOrNull(r, "reason"),
    createdAt: num(r, "created_at"),
    updatedAt: num(r, "updated_at"),
    activatedAt: numOrNull(r, "activated_at"),
  };
}

/** @throws MODEL_INVALID when `kind` is not one of `kinds` */
function checkKind(kind: string, kinds: readonly string[]): void {
  if (!kinds.includes(kind)) {
    throw new QuantdError("MODEL_INVALID", `unknown model kind ${JSON.stringify(kind)}`, {
      details: { kinds },
    });
  }
}

/** Runs `fn` in a transaction with `synchronous=FULL`: the commit is on disk before it returns. */
function durably<T>(db: SqlDatabase, fn: () => T): T {
  if (db.path === ":memory:" || db.inTransaction) return db.transaction(fn);
  const before = db.pragma("synchronous");
  db.pragma("synchronous", "FULL");
  try {
    return db.transaction(fn);
  } finally {
    db.pragma("synchronous", typeof before === "number" ? before : "NORMAL");
  }
}

/** The {@link ModelRegistryStore} over a migrated database. */
export function createModelRegistryStore(db: SqlDatabase, now: () => number = Date.now): ModelRegistryStore {
  const byId = db.prepare(`SELECT ${COLUMNS} FROM model_versions WHERE id = ?`);
  const bySha = db.prepare(`SELECT ${COLUMNS} FROM model_versions WHERE sha256 = ?`);
  const activeRow = db.prepare(`SELECT ${COLUMNS} FROM model_versions WHERE state = 'active'`);
  const listAll = db.prepare(`SELECT ${COLUMNS} FROM model_versions ORDER BY id DESC`);
  const listState = db.prepare(`SELECT ${COLUMNS} FROM model_versions WHERE state = ? ORDER BY id DESC`);
  const insert = db.prepare(
    "INSERT INTO model_versions (sha256, path, kind, state, metrics, created_at, updated_at) VALUES (?, ?, ?, 'candidate', ?, ?, ?)",
  );
  const setState = db.prepare("UPDATE model_versions SET state = ?, reason = ?, updated_at = ? WHERE id = ?");
  const setKind = db.prepare("UPDATE model_versions SET kind = ? WHERE id = ?");
  const activate = db.prepare(
    "UPDATE model_versions SET state = 'active', reason = NULL, updated_at = ?, activated_at = ? WHERE id = ?",
  );
  const setMetrics = db.prepare("UPDATE model_versions SET metrics = ?, updated_at = ? WHERE id = ?");
  // The version active before the current one: the retired one most recently activated.
  const previous = db.prepare(
    `SELECT ${COLUMNS} FROM model_versions WHERE state = 'retired' AND activated_at IS NOT NULL ORDER BY activated_at DESC, id DESC LIMIT 1`,
  );

  const find = (id: number): ModelVersion | undefined => {
    const r = byId.get(id);
    return r === undefined ? undefined : toVersion(r);
  };
  const mustFind = (id: number): ModelVersion => {
    const v = find(id);
    if (v === undefined) {
      throw new QuantdError("NOT_FOUND", `model version ${id} is not registered`, { details: { id } });
    }
    return v;
  };

  function promoteInTransaction(id: number, retireReason: string): ModelVersion {
    const v = mustFind(id);
    if (v.state !== "candidate" && v.state !== "retired") {
      throw new QuantdError("STATE_CONFLICT", `model version ${id} is ${v.state} and cannot be promoted`, {
        details: { id, state: v.state },
      });
    }
    const t = now();
    const current = activeRow.get();
    if (current !== undefined) setState.run("retired", retireReason, t, num(current, "id"));
    activate.run(t, t, id);
    return mustFind(id);
  }

  return {
    add(version: NewModelVersion): ModelVersion {
      const sha256 = String(version.sha256).toLowerCase();
      if (!SHA256.test(sha256)) {
        throw new QuantdError(
          "MODEL_INVALID",
          `sha256 must be 64 hex digits, got ${JSON.stringify(version.sha256)}`,
        );
      }
      checkKind(version.kind, KINDS);
      if (typeof version.path !== "string" || version.path === "") {
        throw new QuantdError("MODEL_INVALID", "model version path must be a non-empty string");
      }
      const metrics = toJsonText(version.metrics ?? {}, "model metrics");
      return db.transaction(() => {
        const existing = bySha.get(sha256);
        if (existing !== undefined) return toVersion(existing);
        const t = now();
        const id = insert.run(sha256, version.path, version.kind, metrics, t, t).lastInsertRowid;
        return mustFind(id);
      });
    },
    get: find,
    getBySha256(sha256: string): ModelVersion | undefined {
      const r = bySha.get(String(sha256).toLowerCase());
      return r === undefined ? undefined : toVersion(r);
    },
    active(): ModelVersion | undefined {
      const r = activeRow.get();
      return r === undefined ? undefined : toVersion(r);
    },
    list(state?: ModelState): ModelVersion[] {
      return (state === undefined ? listAll.all() : listState.all(state)).map(toVersion);
    },
    promote(id: number): ModelVersion {
      return durably(db, () => promoteInTransaction(id, `replaced by version ${id}`));
    },
    reject(id: number, reason: string, kind?: RecordedKind): ModelVersion {
      if (kind !== undefined) checkKind(kind, RECORDED_KINDS);
      return db.transaction(() => {
        const v = mustFind(id);
        if (v.state !== "candidate") {
          throw new QuantdError(
            "STATE_CONFLICT",
            `model version ${id} is ${v.state}; only candidates can be rejected`,
            {
              details: { id, state: v.state },
            },
          );
        }
        setState.run("rejected", reason, now(), id);
        if (kind !== undefined) setKind.run(kind, id);
        return mustFind(id);
      });
    },
    rollback(reason: string): ModelVersion {
      return durably(db, () => {
        const prev = previous.get();
        if (prev === undefined) {
          throw new QuantdError("NOT_FOUND", "no earlier active model version to roll back to");
        }
        return promoteInTransaction(num(prev, "id"), `rolled back: ${reason}`);
      });
    },
    updateMetrics(id: number, metrics: Record<string, unknown>): ModelVersion {
      return db.transaction(() => {
        const v = mustFind(id);
        setMetrics.run(toJsonText({ ...v.metrics, ...metrics }, "model metrics"), now(), id);
        return mustFind(id);
      });
    },
  };
}
