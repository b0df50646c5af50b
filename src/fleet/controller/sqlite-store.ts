/**
 * The {@link FleetStore} on SQLite: the controller's own database (not the
 * agent's), with its own migrations, opened through the store layer's
 * adapters so it runs under Bun and Node alike.
 */
import { type Migration, migrate } from "../../store/migrations.ts";
import { type OpenSqlOptions, openSqlDatabase } from "../../store/open.ts";
import { jsonOrNull, num, str, strOrNull } from "../../store/row.ts";
import type { SqlDatabase, SqlRow, SqlStatement } from "../../store/sql.ts";
import type { JobMessage, ReportMessage, StatusMessage } from "../protocol.ts";
import type {
  DeviceRecord,
  EnrolmentRecord,
  FleetStore,
  JobRecord,
  ModelChange,
  ReleaseRecord,
  RolloutRecord,
  StatusRecord,
  TelemetryItem,
  TelemetryRecord,
} from "./store.ts";
import {
  announcedModel,
  DEVICE_COLUMNS,
  FINAL_JOB_STATES_SQL,
  FleetRowReader,
  JOB_COLUMNS,
  jsonTextOrNull as text,
} from "./store-rows.ts";
import { fleetMigrations } from "./store-schema.ts";

/** The controller database's schema on SQLite, oldest first. Append, never edit (in `store-schema.ts`). */
export const FLEET_MIGRATIONS: readonly Migration[] = fleetMigrations("sqlite");

const rows = new FleetRowReader<SqlRow>({
  str,
  strOrNull,
  num,
  bool: (r, col) => num(r, col) === 1,
  json: jsonOrNull,
});

/**
 * Every statement of the store, prepared once. Only anonymous `?` parameters:
 * better-sqlite3 refuses numbered ones (`?1`) bound positionally.
 */
const QUERIES = {
  touch: `INSERT INTO devices (fleet, device, online, last_seen, status_at) VALUES (?, ?, 1, ?, 0)
     ON CONFLICT (fleet, device) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)`,
  lastStatus:
    "SELECT state, reason, at FROM status_history WHERE fleet = ? AND device = ? ORDER BY id DESC LIMIT 1",
  addStatus: "INSERT INTO status_history (fleet, device, state, reason, at) VALUES (?, ?, ?, ?, ?)",
  setStatus: `UPDATE devices SET online = ?, agent_version = coalesce(?, agent_version), model = CASE WHEN ? THEN ? ELSE model END,
       outbox = coalesce(?, outbox), status_at = ? WHERE fleet = ? AND device = ? AND status_at <= ?`,
  // A change is recorded when the model differs from the latest one known at that time, so a
  // retained status delivered again (or an older one arriving late) adds no entry.
  // Parameters: fleet, device, version, kind, at, then fleet, device, at, version, kind again.
  addModel: `INSERT INTO model_history (fleet, device, version, kind, at)
     SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (
       SELECT 1 FROM (SELECT version, kind FROM model_history WHERE fleet = ? AND device = ? AND at <= ?
         ORDER BY at DESC, id DESC LIMIT 1) last WHERE last.version = ? AND last.kind IS ?)`,
  modelsOf:
    "SELECT version, kind, at FROM model_history WHERE fleet = ? AND device = ? ORDER BY at DESC, id DESC LIMIT ?",
  addSample: "INSERT INTO telemetry (fleet, device, at, sample) VALUES (?, ?, ?, ?)",
  setTelemetry:
    "UPDATE devices SET last_telemetry = ?, outbox = coalesce(?, outbox) WHERE fleet = ? AND device = ?",
  upsertJob: `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, stage = excluded.stage,
       progress = excluded.progress, updated_at = excluded.updated_at
     WHERE jobs.state NOT IN ${FINAL_JOB_STATES_SQL} AND excluded.updated_at >= jobs.updated_at`,
  addReport: "INSERT OR IGNORE INTO reports (fleet, device, id, received_at, body) VALUES (?, ?, ?, ?, ?)",
  finishJob: `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at, result, error)
     VALUES (?, ?, ?, ?, ?, NULL, 1, ?, ?, ?)
     ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, result = excluded.result,
       error = excluded.error, updated_at = max(jobs.updated_at, excluded.updated_at),
       progress = CASE WHEN excluded.state = 'SUCCEEDED' THEN 1 ELSE jobs.progress END`,
  setReport: `UPDATE devices SET last_report = ?, last_report_at = ? WHERE fleet = ? AND device = ?
       AND (last_report_at IS NULL OR last_report_at <= ?)`,
  allDevices: `SELECT ${DEVICE_COLUMNS} FROM devices ORDER BY fleet, device`,
  fleetDevices: `SELECT ${DEVICE_COLUMNS} FROM devices WHERE fleet = ? ORDER BY device`,
  oneDevice: `SELECT ${DEVICE_COLUMNS} FROM devices WHERE fleet = ? AND device = ?`,
  history:
    "SELECT state, reason, at FROM status_history WHERE fleet = ? AND device = ? ORDER BY id DESC LIMIT ?",
  enroll: `INSERT INTO enrolments (fleet, device, public_key, state, at) VALUES (?, ?, ?, 'enrolled', ?)
     ON CONFLICT (fleet, device) DO UPDATE SET public_key = excluded.public_key, state = 'enrolled', at = excluded.at`,
  propose:
    "INSERT OR IGNORE INTO enrolments (fleet, device, public_key, state, at) VALUES (?, ?, ?, 'pending', ?)",
  removeEnrolment: "DELETE FROM enrolments WHERE fleet = ? AND device = ?",
  oneEnrolment: "SELECT * FROM enrolments WHERE fleet = ? AND device = ?",
  allEnrolments: "SELECT * FROM enrolments ORDER BY fleet, device",
  enrolmentsIn: "SELECT * FROM enrolments WHERE state = ? ORDER BY fleet, device",
  oneReport: "SELECT body FROM reports WHERE fleet = ? AND device = ? AND id = ?",
  reportsOf:
    "SELECT body FROM reports WHERE fleet = ? AND device = ? ORDER BY received_at DESC, rowid DESC LIMIT ?",
  oneJob: `SELECT ${JOB_COLUMNS} FROM jobs WHERE fleet = ? AND device = ? AND id = ?`,
  fleetJobs: `SELECT ${JOB_COLUMNS} FROM jobs WHERE fleet = ? ORDER BY updated_at DESC LIMIT ?`,
  deviceJobs: `SELECT ${JOB_COLUMNS} FROM jobs WHERE fleet = ? AND device = ? ORDER BY updated_at DESC LIMIT ?`,
  samplesOf:
    "SELECT device, sample FROM telemetry WHERE fleet = ? AND device = ? AND at >= ? ORDER BY at, id LIMIT ?",
  prune: "DELETE FROM telemetry WHERE at < ?",
  addRelease: `INSERT OR IGNORE INTO releases (id, version, task, notes, bytes, created_at, manifest, signature)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  oneRelease: "SELECT * FROM releases WHERE id = ?",
  allReleases: "SELECT * FROM releases ORDER BY created_at DESC, id LIMIT ?",
  insertRollout: `INSERT OR IGNORE INTO rollouts (id, fleet, release, state, revision, created_at, updated_at, body)
     VALUES (?, ?, ?, ?, 1, ?, ?, ?)`,
  updateRollout:
    "UPDATE rollouts SET state = ?, revision = revision + 1, updated_at = ?, body = ? WHERE id = ? AND revision = ?",
  oneRollout: "SELECT * FROM rollouts WHERE id = ?",
  allRollouts: "SELECT * FROM rollouts ORDER BY created_at DESC, id LIMIT ?",
} as const;

type Statements = { readonly [K in keyof typeof QUERIES]: SqlStatement };

function prepareAll(db: SqlDatabase): Statements {
  const out: Partial<Record<keyof typeof QUERIES, SqlStatement>> = {};
  for (const key of Object.keys(QUERIES) as (keyof typeof QUERIES)[]) out[key] = db.prepare(QUERIES[key]);
  return out as Statements;
}

const maybe = <T>(r: SqlRow | undefined, read: (r: SqlRow) => T): T | undefined =>
  r === undefined ? undefined : read(r);

/**
 * The {@link FleetStore} over one SQLite connection. SQLite serializes the
 * writers, so each ordering rule may be a read then a write inside one
 * transaction.
 */
class SqliteFleetStore implements FleetStore {
  private readonly q: Statements;

  constructor(private readonly db: SqlDatabase) {
    migrate(db, FLEET_MIGRATIONS);
    this.q = prepareAll(db);
  }

  // Releases and rollouts.

  async addRelease(r: ReleaseRecord): Promise<boolean> {
    const signature = JSON.stringify(r.signature);
    const args = [r.id, r.version, r.task, r.notes, r.bytes, r.createdAt, r.manifest, signature] as const;
    return this.q.addRelease.run(...args).changes > 0;
  }

  async release(id: string): Promise<ReleaseRecord | undefined> {
    return maybe(this.q.oneRelease.get(id), (r) => rows.release(r));
  }

  async releases(limit = 100): Promise<ReleaseRecord[]> {
    return this.q.allReleases.all(limit).map((r) => rows.release(r));
  }

  async saveRollout(r: Omit<RolloutRecord, "revision">, expectedRevision: number): Promise<boolean> {
    const body = JSON.stringify(r.body);
    if (expectedRevision === 0) {
      return (
        this.q.insertRollout.run(r.id, r.fleet, r.release, r.state, r.createdAt, r.updatedAt, body).changes >
        0
      );
    }
    return this.q.updateRollout.run(r.state, r.updatedAt, body, r.id, expectedRevision).changes > 0;
  }

  async rollout(id: string): Promise<RolloutRecord | undefined> {
    return maybe(this.q.oneRollout.get(id), (r) => rows.rollout(r));
  }

  async rollouts(states?: readonly string[], limit = 100): Promise<RolloutRecord[]> {
    const all = this.q.allRollouts.all(states === undefined ? limit : 10_000).map((r) => rows.rollout(r));
    return (states === undefined ? all : all.filter((r) => states.includes(r.state))).slice(0, limit);
  }

  // Device keys.

  async enroll(fleet: string, device: string, publicKey: string, at: number): Promise<void> {
    this.q.enroll.run(fleet, device, publicKey, at);
  }

  async proposeEnrolment(fleet: string, device: string, publicKey: string, at: number): Promise<boolean> {
    return this.q.propose.run(fleet, device, publicKey, at).changes === 1;
  }

  async removeEnrolment(fleet: string, device: string): Promise<boolean> {
    return this.q.removeEnrolment.run(fleet, device).changes === 1;
  }

  async enrolment(fleet: string, device: string): Promise<EnrolmentRecord | undefined> {
    return maybe(this.q.oneEnrolment.get(fleet, device), (r) => rows.enrolment(r));
  }

  async enrolments(state?: EnrolmentRecord["state"]): Promise<EnrolmentRecord[]> {
    const found = state === undefined ? this.q.allEnrolments.all() : this.q.enrolmentsIn.all(state);
    return found.map((r) => rows.enrolment(r));
  }

  // What devices send.

  async recordStatus(
    fleet: string,
    device: string,
    status: StatusMessage,
    receivedAt: number,
  ): Promise<void> {
    // The Last Will is written at connect time and carries no time of its own.
    const at = status.at ?? receivedAt;
    const q = this.q;
    this.db.transaction(() => {
      q.touch.run(fleet, device, receivedAt);
      const last = q.lastStatus.get(fleet, device);
      // Retained statuses are delivered again on every controller restart: record a change once.
      const repeat = last !== undefined && str(last, "state") === status.state && num(last, "at") === at;
      if (!repeat) q.addStatus.run(fleet, device, status.state, status.reason ?? null, at);
      const announced = announcedModel(status);
      if (announced !== undefined) {
        const { version, kind } = announced;
        q.addModel.run(fleet, device, version, kind, at, fleet, device, at, version, kind);
      }
      const online = status.state === "online" ? 1 : 0;
      const hasModel = status.model === undefined ? 0 : 1;
      const [model, outbox] = [text(status.model), text(status.outbox)];
      q.setStatus.run(online, status.agentVersion ?? null, hasModel, model, outbox, at, fleet, device, at);
    });
  }

  async recordTelemetry(items: readonly TelemetryItem[]): Promise<void> {
    const q = this.q;
    this.db.transaction(() => {
      for (const { fleet, device, msg, receivedAt } of items) {
        q.touch.run(fleet, device, receivedAt);
        for (const s of msg.samples) q.addSample.run(fleet, device, s.at, JSON.stringify(s));
        q.setTelemetry.run(text(msg.samples.at(-1)), text(msg.outbox), fleet, device);
      }
    });
  }

  async recordJob(fleet: string, device: string, msg: JobMessage, receivedAt: number): Promise<void> {
    const q = this.q;
    this.db.transaction(() => {
      q.touch.run(fleet, device, receivedAt);
      q.upsertJob.run(fleet, device, msg.id, msg.type, msg.state, msg.stage, msg.progress, msg.at);
    });
  }

  async recordReport(
    fleet: string,
    device: string,
    report: ReportMessage,
    receivedAt: number,
  ): Promise<boolean> {
    const q = this.q;
    return this.db.transaction(() => {
      q.touch.run(fleet, device, receivedAt);
      const body = JSON.stringify(report);
      if (q.addReport.run(fleet, device, report.id, receivedAt, body).changes === 0) return false;
      const at = report.finishedAt ?? receivedAt;
      const [result, error] = [text(report.result), text(report.error)];
      q.finishJob.run(fleet, device, report.jobId, report.type, report.state, at, result, error);
      q.setReport.run(body, at, fleet, device, at);
      return true;
    });
  }

  // Reads for the dashboard and the CLI.

  async devices(fleet?: string): Promise<DeviceRecord[]> {
    const found = fleet === undefined ? this.q.allDevices.all() : this.q.fleetDevices.all(fleet);
    return found.map((r) => rows.device(r));
  }

  async device(fleet: string, device: string): Promise<DeviceRecord | undefined> {
    return maybe(this.q.oneDevice.get(fleet, device), (r) => rows.device(r));
  }

  async statusHistory(fleet: string, device: string, limit = 100): Promise<StatusRecord[]> {
    return this.q.history.all(fleet, device, limit).map((r) => rows.status(r));
  }

  async modelHistory(fleet: string, device: string, limit = 100): Promise<ModelChange[]> {
    return this.q.modelsOf.all(fleet, device, limit).map((r) => rows.modelChange(r));
  }

  async reports(fleet: string, device: string, limit = 100): Promise<ReportMessage[]> {
    return this.q.reportsOf.all(fleet, device, limit).map((r) => rows.report(r));
  }

  async report(fleet: string, device: string, id: string): Promise<ReportMessage | undefined> {
    return maybe(this.q.oneReport.get(fleet, device, id), (r) => rows.report(r));
  }

  async job(fleet: string, device: string, id: string): Promise<JobRecord | undefined> {
    return maybe(this.q.oneJob.get(fleet, device, id), (r) => rows.job(r));
  }

  async jobs(fleet: string, device?: string, limit = 100): Promise<JobRecord[]> {
    const found =
      device === undefined ? this.q.fleetJobs.all(fleet, limit) : this.q.deviceJobs.all(fleet, device, limit);
    return found.map((r) => rows.job(r));
  }

  async telemetry(fleet: string, device: string, since: number, limit = 10_000): Promise<TelemetryRecord[]> {
    return this.q.samplesOf.all(fleet, device, since, limit).map((r) => rows.telemetry(r));
  }

  async pruneTelemetry(before: number): Promise<number> {
    return this.q.prune.run(before).changes;
  }

  async close(): Promise<void> {
    this.db.close();
  }
}

/** A {@link FleetStore} over an open connection; migrates it first. */
export function createSqliteFleetStore(db: SqlDatabase): FleetStore {
  return new SqliteFleetStore(db);
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
