/**
 * The {@link FleetStore} on SQLite: the controller's own database (not the
 * agent's), with its own migrations, opened through the store layer's
 * adapters so it runs under Bun and Node alike.
 */
import type { QuantdErrorJSON } from "../../errors.ts";
import type { JobState } from "../../store/jobs.ts";
import { type Migration, migrate } from "../../store/migrations.ts";
import { type OpenSqlOptions, openSqlDatabase } from "../../store/open.ts";
import { jsonOrNull, num, str, strOrNull } from "../../store/row.ts";
import type { SqlDatabase, SqlRow } from "../../store/sql.ts";
import type { ModelInfo, OutboxFigures, ReportMessage, StatusMessage, TelemetrySample } from "../protocol.ts";
import type {
  DeviceRecord,
  EnrolmentRecord,
  FleetStore,
  JobRecord,
  ModelChange,
  ReleaseRecord,
  RolloutRecord,
  StatusRecord,
  TelemetryRecord,
} from "./store.ts";

/** The controller database's schema, oldest first. Append, never edit. */
export const FLEET_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "fleet devices, status history, telemetry, jobs, reports",
    sql: `
      CREATE TABLE devices (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        online INTEGER NOT NULL,
        agent_version TEXT,
        model TEXT,
        outbox TEXT,
        last_seen INTEGER NOT NULL,
        status_at INTEGER NOT NULL,
        last_telemetry TEXT,
        last_report TEXT,
        last_report_at INTEGER,
        PRIMARY KEY (fleet, device)
      );
      CREATE TABLE status_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        at INTEGER NOT NULL
      );
      CREATE INDEX status_history_device ON status_history (fleet, device, id);
      CREATE TABLE telemetry (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        at INTEGER NOT NULL,
        sample TEXT NOT NULL
      );
      CREATE INDEX telemetry_device_at ON telemetry (fleet, device, at);
      CREATE INDEX telemetry_at ON telemetry (at);
      CREATE TABLE jobs (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        stage TEXT,
        progress REAL NOT NULL,
        updated_at INTEGER NOT NULL,
        result TEXT,
        error TEXT,
        PRIMARY KEY (fleet, device, id)
      );
      CREATE INDEX jobs_updated ON jobs (fleet, updated_at);
      CREATE TABLE reports (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (fleet, device, id)
      );
      CREATE INDEX reports_device ON reports (fleet, device, received_at);
    `,
  },
  {
    version: 2,
    name: "fleet device keys (enrolments)",
    sql: `
      CREATE TABLE enrolments (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        public_key TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('enrolled', 'pending')),
        at INTEGER NOT NULL,
        PRIMARY KEY (fleet, device)
      );
    `,
  },
  {
    version: 3,
    name: "fleet releases and rollouts",
    sql: `
      CREATE TABLE releases (
        id TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        task TEXT NOT NULL,
        notes TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        manifest TEXT NOT NULL,
        signature TEXT NOT NULL
      );
      CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        fleet TEXT NOT NULL,
        release TEXT NOT NULL,
        state TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        body TEXT NOT NULL
      );
      CREATE INDEX rollouts_state ON rollouts (state, created_at);
    `,
  },
  {
    version: 4,
    name: "fleet model history (per-device model changes)",
    sql: `
      CREATE TABLE model_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT,
        at INTEGER NOT NULL
      );
      CREATE INDEX model_history_device ON model_history (fleet, device, at);
    `,
  },
];

function toRelease(r: SqlRow): ReleaseRecord {
  return {
    id: str(r, "id"),
    version: str(r, "version"),
    task: str(r, "task"),
    notes: str(r, "notes"),
    bytes: num(r, "bytes"),
    createdAt: num(r, "created_at"),
    manifest: str(r, "manifest"),
    signature: jsonOrNull(r, "signature") as ReleaseRecord["signature"],
  };
}

function toRollout(r: SqlRow): RolloutRecord {
  return {
    id: str(r, "id"),
    fleet: str(r, "fleet"),
    release: str(r, "release"),
    state: str(r, "state"),
    revision: num(r, "revision"),
    createdAt: num(r, "created_at"),
    updatedAt: num(r, "updated_at"),
    body: jsonOrNull(r, "body"),
  };
}

function toEnrolment(r: SqlRow): EnrolmentRecord {
  return {
    fleet: str(r, "fleet"),
    device: str(r, "device"),
    publicKey: str(r, "public_key"),
    state: str(r, "state") === "enrolled" ? "enrolled" : "pending",
    at: num(r, "at"),
  };
}

const FINAL = "('SUCCEEDED','FAILED','REJECTED','TIMED_OUT')";

function toDevice(r: SqlRow): DeviceRecord {
  return {
    fleet: str(r, "fleet"),
    device: str(r, "device"),
    online: num(r, "online") === 1,
    agentVersion: strOrNull(r, "agent_version"),
    model: jsonOrNull(r, "model") as ModelInfo | null,
    outbox: jsonOrNull(r, "outbox") as OutboxFigures | null,
    lastSeen: num(r, "last_seen"),
    statusAt: num(r, "status_at"),
    lastTelemetry: jsonOrNull(r, "last_telemetry") as TelemetrySample | null,
    lastReport: jsonOrNull(r, "last_report") as ReportMessage | null,
  };
}

function toJob(r: SqlRow): JobRecord {
  return {
    fleet: str(r, "fleet"),
    device: str(r, "device"),
    id: str(r, "id"),
    type: str(r, "type"),
    state: str(r, "state") as JobState,
    stage: strOrNull(r, "stage"),
    progress: num(r, "progress"),
    updatedAt: num(r, "updated_at"),
    result: jsonOrNull(r, "result"),
    error: jsonOrNull(r, "error") as QuantdErrorJSON | null,
  };
}

const text = (v: unknown): string | null => (v === undefined || v === null ? null : JSON.stringify(v));

/** A {@link FleetStore} over an open connection; migrates it first. */
export function createSqliteFleetStore(db: SqlDatabase): FleetStore {
  migrate(db, FLEET_MIGRATIONS);
  const touch = db.prepare(
    `INSERT INTO devices (fleet, device, online, last_seen, status_at) VALUES (?, ?, 1, ?, 0)
     ON CONFLICT (fleet, device) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)`,
  );
  const lastStatus = db.prepare(
    "SELECT state, reason, at FROM status_history WHERE fleet = ? AND device = ? ORDER BY id DESC LIMIT 1",
  );
  const addStatus = db.prepare(
    "INSERT INTO status_history (fleet, device, state, reason, at) VALUES (?, ?, ?, ?, ?)",
  );
  const setStatus = db.prepare(
    `UPDATE devices SET online = ?, agent_version = coalesce(?, agent_version), model = CASE WHEN ? THEN ? ELSE model END,
       outbox = coalesce(?, outbox), status_at = ? WHERE fleet = ? AND device = ? AND status_at <= ?`,
  );
  // A change is recorded when the model differs from the latest one known at that time, so a
  // retained status delivered again (or an older one arriving late) adds no entry.
  const addModel = db.prepare(
    `INSERT INTO model_history (fleet, device, version, kind, at)
     SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (
       SELECT 1 FROM (SELECT version, kind FROM model_history WHERE fleet = ?1 AND device = ?2 AND at <= ?5
         ORDER BY at DESC, id DESC LIMIT 1) last WHERE last.version = ?3 AND last.kind IS ?4)`,
  );
  const modelsOf = db.prepare(
    "SELECT version, kind, at FROM model_history WHERE fleet = ? AND device = ? ORDER BY at DESC, id DESC LIMIT ?",
  );
  const addSample = db.prepare("INSERT INTO telemetry (fleet, device, at, sample) VALUES (?, ?, ?, ?)");
  const setTelemetry = db.prepare(
    "UPDATE devices SET last_telemetry = ?, outbox = coalesce(?, outbox) WHERE fleet = ? AND device = ?",
  );
  const upsertJob = db.prepare(
    `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, stage = excluded.stage,
       progress = excluded.progress, updated_at = excluded.updated_at
     WHERE jobs.state NOT IN ${FINAL} AND excluded.updated_at >= jobs.updated_at`,
  );
  const addReport = db.prepare(
    "INSERT OR IGNORE INTO reports (fleet, device, id, received_at, body) VALUES (?, ?, ?, ?, ?)",
  );
  const finishJob = db.prepare(
    `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at, result, error)
     VALUES (?, ?, ?, ?, ?, NULL, 1, ?, ?, ?)
     ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, result = excluded.result,
       error = excluded.error, updated_at = max(jobs.updated_at, excluded.updated_at),
       progress = CASE WHEN excluded.state = 'SUCCEEDED' THEN 1 ELSE jobs.progress END`,
  );
  const setReport = db.prepare(
    `UPDATE devices SET last_report = ?, last_report_at = ? WHERE fleet = ? AND device = ?
       AND (last_report_at IS NULL OR last_report_at <= ?)`,
  );
  const cols =
    "fleet, device, online, agent_version, model, outbox, last_seen, status_at, last_telemetry, last_report";
  const allDevices = db.prepare(`SELECT ${cols} FROM devices ORDER BY fleet, device`);
  const fleetDevices = db.prepare(`SELECT ${cols} FROM devices WHERE fleet = ? ORDER BY device`);
  const oneDevice = db.prepare(`SELECT ${cols} FROM devices WHERE fleet = ? AND device = ?`);
  const history = db.prepare(
    "SELECT state, reason, at FROM status_history WHERE fleet = ? AND device = ? ORDER BY id DESC LIMIT ?",
  );
  const enrollStmt = db.prepare(
    `INSERT INTO enrolments (fleet, device, public_key, state, at) VALUES (?, ?, ?, 'enrolled', ?)
     ON CONFLICT (fleet, device) DO UPDATE SET public_key = excluded.public_key, state = 'enrolled', at = excluded.at`,
  );
  const proposeStmt = db.prepare(
    "INSERT OR IGNORE INTO enrolments (fleet, device, public_key, state, at) VALUES (?, ?, ?, 'pending', ?)",
  );
  const removeEnrolmentStmt = db.prepare("DELETE FROM enrolments WHERE fleet = ? AND device = ?");
  const oneEnrolment = db.prepare("SELECT * FROM enrolments WHERE fleet = ? AND device = ?");
  const allEnrolments = db.prepare("SELECT * FROM enrolments ORDER BY fleet, device");
  const enrolmentsIn = db.prepare("SELECT * FROM enrolments WHERE state = ? ORDER BY fleet, device");
  const oneReport = db.prepare("SELECT body FROM reports WHERE fleet = ? AND device = ? AND id = ?");
  const reportsOf = db.prepare(
    "SELECT body FROM reports WHERE fleet = ? AND device = ? ORDER BY received_at DESC, rowid DESC LIMIT ?",
  );
  const jobCols = "fleet, device, id, type, state, stage, progress, updated_at, result, error";
  const oneJob = db.prepare(`SELECT ${jobCols} FROM jobs WHERE fleet = ? AND device = ? AND id = ?`);
  const fleetJobs = db.prepare(
    `SELECT ${jobCols} FROM jobs WHERE fleet = ? ORDER BY updated_at DESC LIMIT ?`,
  );
  const deviceJobs = db.prepare(
    `SELECT ${jobCols} FROM jobs WHERE fleet = ? AND device = ? ORDER BY updated_at DESC LIMIT ?`,
  );
  const samplesOf = db.prepare(
    "SELECT device, sample FROM telemetry WHERE fleet = ? AND device = ? AND at >= ? ORDER BY at, id LIMIT ?",
  );
  const prune = db.prepare("DELETE FROM telemetry WHERE at < ?");
  const addReleaseStmt = db.prepare(
    `INSERT OR IGNORE INTO releases (id, version, task, notes, bytes, created_at, manifest, signature)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  const oneRelease = db.prepare("SELECT * FROM releases WHERE id = ?");
  const allReleases = db.prepare("SELECT * FROM releases ORDER BY created_at DESC, id LIMIT ?");
  const insertRollout = db.prepare(
    `INSERT OR IGNORE INTO rollouts (id, fleet, release, state, revision, created_at, updated_at, body)
     VALUES (?, ?, ?, ?, 1, ?, ?, ?)`,
  );
  const updateRollout = db.prepare(
    "UPDATE rollouts SET state = ?, revision = revision + 1, updated_at = ?, body = ? WHERE id = ? AND revision = ?",
  );
  const oneRollout = db.prepare("SELECT * FROM rollouts WHERE id = ?");
  const allRollouts = db.prepare("SELECT * FROM rollouts ORDER BY created_at DESC, id LIMIT ?");

  return {
    async addRelease(r) {
      return (
        addReleaseStmt.run(
          r.id,
          r.version,
          r.task,
          r.notes,
          r.bytes,
          r.createdAt,
          r.manifest,
          JSON.stringify(r.signature),
        ).changes > 0
      );
    },
    async release(id) {
      const r = oneRelease.get(id);
      return r === undefined ? undefined : toRelease(r);
    },
    async releases(limit = 100) {
      return allReleases.all(limit).map(toRelease);
    },
    async saveRollout(r, expectedRevision) {
      const body = JSON.stringify(r.body);
      if (expectedRevision === 0) {
        return (
          insertRollout.run(r.id, r.fleet, r.release, r.state, r.createdAt, r.updatedAt, body).changes > 0
        );
      }
      return updateRollout.run(r.state, r.updatedAt, body, r.id, expectedRevision).changes > 0;
    },
    async rollout(id) {
      const r = oneRollout.get(id);
      return r === undefined ? undefined : toRollout(r);
    },
    async rollouts(states, limit = 100) {
      const rows = allRollouts.all(states === undefined ? limit : 10_000).map(toRollout);
      return (states === undefined ? rows : rows.filter((r) => states.includes(r.state))).slice(0, limit);
    },
    async recordStatus(fleet, device, status: StatusMessage, receivedAt) {
      // The Last Will is written at connect time and carries no time of its own.
      const at = status.at ?? receivedAt;
      db.transaction(() => {
        touch.run(fleet, device, receivedAt);
        const last = lastStatus.get(fleet, device);
        // Retained statuses are delivered again on every controller restart: record a change once.
        const repeat = last !== undefined && str(last, "state") === status.state && num(last, "at") === at;
        if (!repeat) addStatus.run(fleet, device, status.state, status.reason ?? null, at);
        if (status.model !== undefined && status.model !== null && typeof status.model.version === "string") {
          const kind = typeof status.model.kind === "string" ? status.model.kind : null;
          addModel.run(fleet, device, status.model.version, kind, at);
        }
        setStatus.run(
          status.state === "online" ? 1 : 0,
          status.agentVersion ?? null,
          status.model === undefined ? 0 : 1,
          text(status.model),
          text(status.outbox),
          at,
          fleet,
          device,
          at,
        );
      });
    },
    async recordTelemetry(items) {
      db.transaction(() => {
        for (const { fleet, device, msg, receivedAt } of items) {
          touch.run(fleet, device, receivedAt);
          for (const s of msg.samples) addSample.run(fleet, device, s.at, JSON.stringify(s));
          const last = msg.samples.at(-1);
          setTelemetry.run(text(last), text(msg.outbox), fleet, device);
        }
      });
    },
    async recordJob(fleet, device, msg, receivedAt) {
      db.transaction(() => {
        touch.run(fleet, device, receivedAt);
        upsertJob.run(fleet, device, msg.id, msg.type, msg.state, msg.stage, msg.progress, msg.at);
      });
    },
    async recordReport(fleet, device, report: ReportMessage, receivedAt) {
      return db.transaction(() => {
        touch.run(fleet, device, receivedAt);
        const fresh = addReport.run(fleet, device, report.id, receivedAt, JSON.stringify(report)).changes > 0;
        if (!fresh) return false;
        const at = report.finishedAt ?? receivedAt;
        finishJob.run(
          fleet,
          device,
          report.jobId,
          report.type,
          report.state,
          at,
          text(report.result),
          text(report.error),
        );
        setReport.run(JSON.stringify(report), at, fleet, device, at);
        return true;
      });
    },
    async devices(fleet) {
      return (fleet === undefined ? allDevices.all() : fleetDevices.all(fleet)).map(toDevice);
    },
    async device(fleet, device) {
      const r = oneDevice.get(fleet, device);
      return r === undefined ? undefined : toDevice(r);
    },
    async statusHistory(fleet, device, limit = 100): Promise<StatusRecord[]> {
      return history.all(fleet, device, limit).map((r) => ({
        state: str(r, "state") as StatusRecord["state"],
        reason: strOrNull(r, "reason") as StatusRecord["reason"],
        at: num(r, "at"),
      }));
    },
    async modelHistory(fleet, device, limit = 100): Promise<ModelChange[]> {
      return modelsOf.all(fleet, device, limit).map((r) => ({
        version: str(r, "version"),
        kind: strOrNull(r, "kind"),
        at: num(r, "at"),
      }));
    },
    async reports(fleet, device, limit = 100) {
      return reportsOf.all(fleet, device, limit).map((r) => jsonOrNull(r, "body") as ReportMessage);
    },
    async enroll(fleet, device, publicKey, at) {
      enrollStmt.run(fleet, device, publicKey, at);
    },
    async proposeEnrolment(fleet, device, publicKey, at) {
      return proposeStmt.run(fleet, device, publicKey, at).changes === 1;
    },
    async removeEnrolment(fleet, device) {
      return removeEnrolmentStmt.run(fleet, device).changes === 1;
    },
    async enrolment(fleet, device) {
      const r = oneEnrolment.get(fleet, device);
      return r === undefined ? undefined : toEnrolment(r);
    },
    async enrolments(state) {
      return (state === undefined ? allEnrolments.all() : enrolmentsIn.all(state)).map(toEnrolment);
    },
    async report(fleet, device, id) {
      const r = oneReport.get(fleet, device, id);
      return r === undefined ? undefined : (jsonOrNull(r, "body") as ReportMessage);
    },
    async job(fleet, device, id) {
      const r = oneJob.get(fleet, device, id);
      return r === undefined ? undefined : toJob(r);
    },
    async jobs(fleet, device, limit = 100) {
      return (device === undefined ? fleetJobs.all(fleet, limit) : deviceJobs.all(fleet, device, limit)).map(
        toJob,
      );
    },
    async telemetry(fleet, device, since, limit = 10_000): Promise<TelemetryRecord[]> {
      return samplesOf.all(fleet, device, since, limit).map((r) => ({
        ...(jsonOrNull(r, "sample") as TelemetrySample),
        device: str(r, "device"),
      }));
    },
    async pruneTelemetry(before) {
      return prune.run(before).changes;
    },
    async close() {
      db.close();
    },
  };
}

/**
 * Opens (creating) the controller database at `path`, or `:memory:`.
 *
 * @throws STORE_FAILED | STORE_BUSY | STORE_SCHEMA_TOO_NEW from the store layer
 */
export async function openSqliteFleetStore(path: string, options: OpenSqlOptions = {}): Promise<FleetStore> {
  const db = await openSqlDatabase(path, options);
  try {
    return createSqliteFleetStore(db);
  } catch (err) {
    db.close();
    throw err;
  }
}
