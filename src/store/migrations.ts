/**
 * Versioned schema migrations. The schema version is SQLite's `user_version`
 * header field; each migration runs in its own immediate transaction that
 * re-reads the version first, so two processes opening a fresh database at
 * once migrate it exactly once. A database written by a newer quantd is
 * refused rather than misread.
 *
 * Never edit a shipped migration: append a new one.
 */
import { QuantdError } from "../errors.ts";
import type { SqlDatabase } from "./sql.ts";

/** One step of the schema. */
export interface Migration {
  /** The `user_version` after this step; versions are 1, 2, 3… in order. */
  version: number;
  /** What the step does, for logs. */
  name: string;
  /** The DDL and seed statements. */
  sql: string;
  /**
   * Set for a step that rebuilds a table (SQLite changes no CHECK constraint
   * in place): foreign keys are off around its transaction, as SQLite's
   * procedure for such changes requires, so dropping the old table does not
   * fire the ON DELETE actions of the tables that refer to it; the references
   * are checked before it commits. @defaultValue false
   */
  rebuildsTables?: boolean;
}

/**
 * Length buckets of the sample pool, in tokens: [0,8), [8,16), … [256,∞).
 * Doubling widths keep short inputs (most live traffic) finely resolved.
 * Seeded into `sample_buckets` by migration 1; the store reads them from there.
 */
const V1_BUCKET_EDGES = [0, 8, 16, 32, 64, 128, 256];

const v1Buckets = V1_BUCKET_EDGES.map((min, i) => {
  const max = V1_BUCKET_EDGES[i + 1];
  return `(${i}, ${min}, ${max === undefined ? "NULL" : max}, 0, 0, 0)`;
}).join(", ");

/** Every migration, oldest first. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "samples, model versions, jobs, bench results, outbox, counters",
    sql: `
CREATE TABLE counters (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO counters (name, value) VALUES
  ('samples.duplicates', 0), ('samples.evicted', 0), ('samples.rejected', 0),
  ('outbox.bytes', 0), ('outbox.dropped', 0), ('outbox.dropped_bytes', 0);

-- Per length bucket: how many distinct samples the device has offered (seen)
-- and how many the pool holds (kept, bytes). 'seen' drives the stratified
-- reservoir and must survive restarts; kept/bytes are maintained by triggers.
CREATE TABLE sample_buckets (
  bucket     INTEGER PRIMARY KEY,
  min_tokens INTEGER NOT NULL,
  max_tokens INTEGER,
  seen       INTEGER NOT NULL DEFAULT 0,
  kept       INTEGER NOT NULL DEFAULT 0,
  bytes      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO sample_buckets (bucket, min_tokens, max_tokens, seen, kept, bytes) VALUES ${v1Buckets};

CREATE TABLE samples (
  id           INTEGER PRIMARY KEY,
  text         TEXT    NOT NULL,
  token_count  INTEGER NOT NULL CHECK (token_count >= 0),
  bytes        INTEGER NOT NULL CHECK (bytes > 0),
  bucket       INTEGER NOT NULL REFERENCES sample_buckets (bucket),
  source       TEXT    NOT NULL,
  label        INTEGER,
  content_hash BLOB    NOT NULL UNIQUE,
  created_at   INTEGER NOT NULL
);
CREATE INDEX samples_bucket ON samples (bucket);
CREATE TRIGGER samples_kept_insert AFTER INSERT ON samples BEGIN
  UPDATE sample_buckets SET kept = kept + 1, bytes = bytes + NEW.bytes WHERE bucket = NEW.bucket;
END;
CREATE TRIGGER samples_kept_delete AFTER DELETE ON samples BEGIN
  UPDATE sample_buckets SET kept = kept - 1, bytes = bytes - OLD.bytes WHERE bucket = OLD.bucket;
END;

CREATE TABLE model_versions (
  id           INTEGER PRIMARY KEY,
  sha256       TEXT    NOT NULL UNIQUE CHECK (length(sha256) = 64),
  path         TEXT    NOT NULL,
  kind         TEXT    NOT NULL CHECK (kind IN ('fp32', 'int8-static', 'int8-dynamic')),
  state        TEXT    NOT NULL CHECK (state IN ('candidate', 'active', 'retired', 'rejected')),
  metrics      TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metrics)),
  reason       TEXT,
  created_at   INTEGER NOT NULL,
  updated_at   INTEGER NOT NULL,
  activated_at INTEGER
);
-- At most one active version, whatever the code does.
CREATE UNIQUE INDEX model_versions_one_active ON model_versions (state) WHERE state = 'active';

CREATE TABLE jobs (
  id               TEXT    PRIMARY KEY,
  type             TEXT    NOT NULL,
  state            TEXT    NOT NULL CHECK (state IN
                     ('QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT')),
  stage            TEXT,
  progress         REAL    NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
  params           TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
  result           TEXT    CHECK (result IS NULL OR json_valid(result)),
  error            TEXT    CHECK (error IS NULL OR json_valid(error)),
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  attempts         INTEGER NOT NULL DEFAULT 0,
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL,
  started_at       INTEGER,
  finished_at      INTEGER
);
CREATE INDEX jobs_state_created ON jobs (state, created_at);

CREATE TABLE bench_results (
  id               INTEGER PRIMARY KEY,
  name             TEXT    NOT NULL,
  model_version_id INTEGER REFERENCES model_versions (id) ON DELETE SET NULL,
  job_id           TEXT    REFERENCES jobs (id) ON DELETE SET NULL,
  model_sha256     TEXT,
  config           TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(config)),
  metrics          TEXT    NOT NULL CHECK (json_valid(metrics)),
  created_at       INTEGER NOT NULL
);
CREATE INDEX bench_results_model ON bench_results (model_version_id, created_at);
CREATE INDEX bench_results_job ON bench_results (job_id);

-- AUTOINCREMENT: ids never reused, so an ack for a message already dropped
-- cannot delete a newer message that took its id.
CREATE TABLE outbox (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  topic      TEXT    NOT NULL,
  payload    BLOB    NOT NULL,
  qos        INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
  bytes      INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TRIGGER outbox_bytes_insert AFTER INSERT ON outbox BEGIN
  UPDATE counters SET value = value + NEW.bytes WHERE name = 'outbox.bytes';
END;
CREATE TRIGGER outbox_bytes_delete AFTER DELETE ON outbox BEGIN
  UPDATE counters SET value = value - OLD.bytes WHERE name = 'outbox.bytes';
END;
`,
  },
  {
    version: 2,
    name: "fp32 reference logits cached per model and sample",
    sql: `
-- The fp32 model's logits on a stored sample, so validation reuses them across
-- candidates and jobs. Keyed by the model file's SHA-256: a new base model
-- simply misses. Rows go when their sample goes (ids may be reused).
CREATE TABLE reference_logits (
  model_sha256 TEXT    NOT NULL CHECK (length(model_sha256) = 64),
  sample_id    INTEGER NOT NULL,
  logits       BLOB    NOT NULL,
  created_at   INTEGER NOT NULL,
  PRIMARY KEY (model_sha256, sample_id)
) WITHOUT ROWID;
CREATE INDEX reference_logits_sample ON reference_logits (sample_id);
CREATE TRIGGER samples_logits_delete AFTER DELETE ON samples BEGIN
  DELETE FROM reference_logits WHERE sample_id = OLD.id;
END;
`,
  },
  {
    version: 3,
    name: "samples keep the second text of a pair",
    sql: `
-- A pair classifier's inputs are two texts: stored as such, so calibration and
-- validation feed the model pairs. NULL for a single text.
ALTER TABLE samples ADD COLUMN pair TEXT;
`,
  },
  {
    version: 4,
    name: "model versions may be of unknown kind (a rejected file nothing showed the kind of)",
    rebuildsTables: true,
    sql: `
-- A file that never loaded and holds no int8 operator is not known to be fp32.
-- Only a rejected version may be of unknown kind: it can never serve. Versions
-- that an earlier quantd marked with the kindUnknown metric get the kind it stood for.
CREATE TABLE model_versions_v4 (
  id           INTEGER PRIMARY KEY,
  sha256       TEXT    NOT NULL UNIQUE CHECK (length(sha256) = 64),
  path         TEXT    NOT NULL,
  kind         TEXT    NOT NULL CHECK (kind IN ('fp32', 'int8-static', 'int8-dynamic', 'unknown')),
  state        TEXT    NOT NULL CHECK (state IN ('candidate', 'active', 'retired', 'rejected')),
  metrics      TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metrics)),
  reason       TEXT,
  created_at   INTEGER NOT NULL,
  updated_at   INTEGER NOT NULL,
  activated_at INTEGER,
  CHECK (kind <> 'unknown' OR state = 'rejected')
);
INSERT INTO model_versions_v4
  (id, sha256, path, kind, state, metrics, reason, created_at, updated_at, activated_at)
SELECT id, sha256, path,
       CASE WHEN state = 'rejected' AND json_extract(metrics, '$.kindUnknown') = 1 THEN 'unknown' ELSE kind END,
       state, json_remove(metrics, '$.kindUnknown'), reason, created_at, updated_at, activated_at
  FROM model_versions;
DROP TABLE model_versions;
ALTER TABLE model_versions_v4 RENAME TO model_versions;
CREATE UNIQUE INDEX model_versions_one_active ON model_versions (state) WHERE state = 'active';
`,
  },
];

/** The schema version this build of quantd writes. */
export const SCHEMA_VERSION: number = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

/** The database's schema version (0 for a new file). */
export function schemaVersion(db: SqlDatabase): number {
  return Number(db.pragma("user_version") ?? 0);
}

function refuseNewer(db: SqlDatabase, found: number, supported: number): never {
  throw new QuantdError(
    "STORE_SCHEMA_TOO_NEW",
    `database ${db.path} has schema version ${found}, newer than ${supported} that this quantd supports; upgrade quantd or use another state directory`,
    { details: { path: db.path, found, supported } },
  );
}

/**
 * Brings the database to {@link SCHEMA_VERSION}, one transaction per step.
 * Returns the versions applied (empty when already current).
 *
 * @throws STORE_SCHEMA_TOO_NEW when the database was written by a newer quantd
 * @throws STORE_BUSY when another connection holds the write lock past the busy timeout
 * @throws STORE_FAILED when a step fails (that step is rolled back; earlier ones stay)
 */
export function migrate(db: SqlDatabase, migrations: readonly Migration[] = MIGRATIONS): number[] {
  const latest = migrations[migrations.length - 1]?.version ?? 0;
  const start = schemaVersion(db);
  if (start > latest) refuseNewer(db, start, latest);
  const applied: number[] = [];
  for (const m of migrations) {
    if (m.version <= start) continue;
    const step = (): void => {
      // Another process may have migrated while we waited for the lock.
      const now = schemaVersion(db);
      if (now >= m.version) return;
      if (now !== m.version - 1) {
        throw new QuantdError(
          "STORE_FAILED",
          `migration ${m.version} expects schema version ${m.version - 1}, found ${now}`,
        );
      }
      db.exec(m.sql);
      if (m.rebuildsTables === true) checkForeignKeys(db, m);
      db.pragma("user_version", m.version);
      applied.push(m.version);
    };
    if (m.rebuildsTables === true) withoutForeignKeys(db, () => db.transaction(step));
    else db.transaction(step);
  }
  return applied;
}

/** Runs `fn` with foreign keys off (a no-op inside a transaction, so around one), then as they were. */
function withoutForeignKeys(db: SqlDatabase, fn: () => void): void {
  const before = db.pragma("foreign_keys");
  db.pragma("foreign_keys", "OFF");
  try {
    fn();
  } finally {
    db.pragma("foreign_keys", before === 1 ? "ON" : "OFF");
  }
}

/** @throws STORE_FAILED when a rebuilt table broke a reference (the step then rolls back). */
function checkForeignKeys(db: SqlDatabase, m: Migration): void {
  const broken = db.prepare("PRAGMA foreign_key_check").all();
  if (broken.length === 0) return;
  throw new QuantdError(
    "STORE_FAILED",
    `migration ${m.version} would break ${broken.length} foreign key reference(s)`,
    { details: { version: m.version, broken: broken.slice(0, 10) } },
  );
}
