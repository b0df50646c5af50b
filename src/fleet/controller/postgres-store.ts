/**
 * The {@link FleetStore} on PostgreSQL, for several controller replicas that
 * split one fleet through the shared subscription and must see the same
 * state. The only file that talks to PostgreSQL; it uses Bun's built-in
 * client (`SQL` from "bun"), so no driver package is needed. Every ordering
 * rule of the SQLite store is a condition inside one statement here, so two
 * replicas writing the same device at once still converge.
 */
import { SQL } from "bun";
import { QuantdError, type QuantdErrorJSON } from "../../errors.ts";
import type { JobState } from "../../store/jobs.ts";
import type { ModelInfo, OutboxFigures, ReportMessage, StatusMessage, TelemetrySample } from "../protocol.ts";
import type {
  DeviceRecord,
  EnrolmentRecord,
  ReleaseRecord,
  RolloutRecord,
  FleetStore,
  JobRecord,
  ModelChange,
  StatusRecord,
  TelemetryRecord,
} from "./store.ts";

/** Schema steps, oldest first; `quantd_fleet_schema` records the version. Append, never edit. */
export const POSTGRES_MIGRATIONS: readonly { version: number; sql: string }[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE devices (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        online BOOLEAN NOT NULL,
        agent_version TEXT,
        model TEXT,
        outbox TEXT,
        last_seen BIGINT NOT NULL,
        status_at BIGINT NOT NULL,
        last_telemetry TEXT,
        last_report TEXT,
        last_report_at BIGINT,
        PRIMARY KEY (fleet, device)
      );
      CREATE TABLE status_history (
        id BIGSERIAL PRIMARY KEY,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        at BIGINT NOT NULL
      );
      CREATE INDEX status_history_device ON status_history (fleet, device, id);
      CREATE TABLE telemetry (
        id BIGSERIAL PRIMARY KEY,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        at BIGINT NOT NULL,
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
        progress DOUBLE PRECISION NOT NULL,
        updated_at BIGINT NOT NULL,
        result TEXT,
        error TEXT,
        PRIMARY KEY (fleet, device, id)
      );
      CREATE INDEX jobs_updated ON jobs (fleet, updated_at);
      CREATE TABLE reports (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        id TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        seq BIGSERIAL,
        body TEXT NOT NULL,
        PRIMARY KEY (fleet, device, id)
      );
      CREATE INDEX reports_device ON reports (fleet, device, received_at);
    `,
  },
  {
    version: 2,
    sql: `
      CREATE TABLE enrolments (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        public_key TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('enrolled', 'pending')),
        at BIGINT NOT NULL,
        PRIMARY KEY (fleet, device)
      );
    `,
  },
  {
    version: 3,
    sql: `
      CREATE TABLE releases (
        id TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        task TEXT NOT NULL,
        notes TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        manifest TEXT NOT NULL,
        signature TEXT NOT NULL
      );
      CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        fleet TEXT NOT NULL,
        release TEXT NOT NULL,
        state TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        body TEXT NOT NULL
      );
      CREATE INDEX rollouts_state ON rollouts (state, created_at);
    `,
  },
  {
    version: 4,
    sql: `
      CREATE TABLE model_history (
        id BIGSERIAL PRIMARY KEY,
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT,
        at BIGINT NOT NULL
      );
      CREATE INDEX model_history_device ON model_history (fleet, device, at);
    `,
  },
];

const FINAL = "('SUCCEEDED','FAILED','REJECTED','TIMED_OUT')";

type Row = Record<string, unknown>;

function toRelease(r: Row): ReleaseRecord {
  return {
    id: String(r.id),
    version: String(r.version),
    task: String(r.task),
    notes: String(r.notes),
    bytes: Number(r.bytes),
    createdAt: Number(r.created_at),
    manifest: String(r.manifest),
    signature: parse(r.signature, "signature") as ReleaseRecord["signature"],
  };
}

function toRollout(r: Row): RolloutRecord {
  return {
    id: String(r.id),
    fleet: String(r.fleet),
    release: String(r.release),
    state: String(r.state),
    revision: Number(r.revision),
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
    body: parse(r.body, "body"),
  };
}

function toEnrolment(r: Row): EnrolmentRecord {
  return {
    fleet: String(r.fleet),
    device: String(r.device),
    publicKey: String(r.public_key),
    state: r.state === "enrolled" ? "enrolled" : "pending",
    at: Number(r.at),
  };
}

const text = (v: unknown): string | null => (v === undefined || v === null ? null : JSON.stringify(v));

function parse(v: unknown, col: string): unknown {
  if (v === null || v === undefined) return null;
  try {
    return JSON.parse(String(v));
  } catch (err) {
    throw new QuantdError("STORE_FAILED", `column ${col} does not hold valid JSON`, { cause: err });
  }
}

const n = (v: unknown): number => Number(v);
const s = (v: unknown): string => String(v);
const sOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

function toDevice(r: Row): DeviceRecord {
  return {
    fleet: s(r.fleet),
    device: s(r.device),
    online: r.online === true,
    agentVersion: sOrNull(r.agent_version),
    model: parse(r.model, "model") as ModelInfo | null,
    outbox: parse(r.outbox, "outbox") as OutboxFigures | null,
    lastSeen: n(r.last_seen),
    statusAt: n(r.status_at),
    lastTelemetry: parse(r.last_telemetry, "last_telemetry") as TelemetrySample | null,
    lastReport: parse(r.last_report, "last_report") as ReportMessage | null,
  };
}

function toJob(r: Row): JobRecord {
  return {
    fleet: s(r.fleet),
    device: s(r.device),
    id: s(r.id),
    type: s(r.type),
    state: s(r.state) as JobState,
    stage: sOrNull(r.stage),
    progress: n(r.progress),
    updatedAt: n(r.updated_at),
    result: parse(r.result, "result"),
    error: parse(r.error, "error") as QuantdErrorJSON | null,
  };
}

function storeError(err: unknown, what: string): QuantdError {
  return err instanceof QuantdError
    ? err
    : new QuantdError("STORE_FAILED", `PostgreSQL: ${what} failed`, { cause: err });
}

/** Where the server is and how many connections a controller may hold. */
export interface PostgresFleetStoreOptions {
  /** Connection pool size. @defaultValue 4 */
  maxConnections?: number;
}

/**
 * Connects to `url` (`postgres://user@host:port/db`), migrates the schema
 * (under an advisory lock, so replicas starting together migrate once) and
 * returns the store.
 *
 * @throws STORE_FAILED when the server cannot be reached or a step fails
 * @throws STORE_SCHEMA_TOO_NEW when the database was migrated by a newer quantd
 */
export async function openPostgresFleetStore(
  url: string,
  options: PostgresFleetStoreOptions = {},
): Promise<FleetStore> {
  const sql = new SQL(url, { max: options.maxConnections ?? 4 });
  const q = async (query: string, params: unknown[] = []): Promise<Row[]> => {
    try {
      return (await sql.unsafe(query, params)) as Row[];
    } catch (err) {
      throw storeError(err, query.trim().split(/\s+/).slice(0, 3).join(" "));
    }
  };
  try {
    await sql.begin(async (tx) => {
      // Serializes migrations across replicas; released at commit.
      await tx.unsafe("SELECT pg_advisory_xact_lock(74617111)");
      await tx.unsafe("CREATE TABLE IF NOT EXISTS quantd_fleet_schema (version INTEGER NOT NULL)");
      const rows = (await tx.unsafe("SELECT max(version) AS v FROM quantd_fleet_schema")) as Row[];
      const current = rows[0]?.v === null || rows[0]?.v === undefined ? 0 : n(rows[0].v);
      const latest = POSTGRES_MIGRATIONS.at(-1)?.version ?? 0;
      if (current > latest) {
        throw new QuantdError(
          "STORE_SCHEMA_TOO_NEW",
          `the fleet database is at schema ${current}, newer than this quantd's ${latest}`,
        );
      }
      for (const m of POSTGRES_MIGRATIONS) {
        if (m.version <= current) continue;
        await tx.unsafe(m.sql);
        await tx.unsafe("INSERT INTO quantd_fleet_schema (version) VALUES ($1)", [m.version]);
      }
    });
  } catch (err) {
    await sql.close();
    throw storeError(err, "connect and migrate");
  }

  const cols =
    "fleet, device, online, agent_version, model, outbox, last_seen, status_at, last_telemetry, last_report";
  const jobCols = "fleet, device, id, type, state, stage, progress, updated_at, result, error";
  const touch = `INSERT INTO devices (fleet, device, online, last_seen, status_at) VALUES ($1, $2, true, $3, 0)
     ON CONFLICT (fleet, device) DO UPDATE SET last_seen = greatest(devices.last_seen, excluded.last_seen)`;

  return {
    async addRelease(r) {
      const rows = await q(
        `INSERT INTO releases (id, version, task, notes, bytes, created_at, manifest, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING id`,
        [r.id, r.version, r.task, r.notes, r.bytes, r.createdAt, r.manifest, JSON.stringify(r.signature)],
      );
      return rows.length === 1;
    },
    async release(id) {
      const [r] = await q("SELECT * FROM releases WHERE id = $1", [id]);
      return r === undefined ? undefined : toRelease(r);
    },
    async releases(limit = 100) {
      return (await q("SELECT * FROM releases ORDER BY created_at DESC, id LIMIT $1", [limit])).map(
        toRelease,
      );
    },
    async saveRollout(r, expectedRevision) {
      const body = JSON.stringify(r.body);
      const rows =
        expectedRevision === 0
          ? await q(
              `INSERT INTO rollouts (id, fleet, release, state, revision, created_at, updated_at, body)
               VALUES ($1, $2, $3, $4, 1, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING id`,
              [r.id, r.fleet, r.release, r.state, r.createdAt, r.updatedAt, body],
            )
          : await q(
              `UPDATE rollouts SET state = $1, revision = revision + 1, updated_at = $2, body = $3
               WHERE id = $4 AND revision = $5 RETURNING id`,
              [r.state, r.updatedAt, body, r.id, expectedRevision],
            );
      return rows.length === 1;
    },
    async rollout(id) {
      const [r] = await q("SELECT * FROM rollouts WHERE id = $1", [id]);
      return r === undefined ? undefined : toRollout(r);
    },
    async rollouts(states, limit = 100) {
      const rows =
        states === undefined
          ? await q("SELECT * FROM rollouts ORDER BY created_at DESC, id LIMIT $1", [limit])
          : await q("SELECT * FROM rollouts WHERE state = ANY($1) ORDER BY created_at DESC, id LIMIT $2", [
              [...states],
              limit,
            ]);
      return rows.map(toRollout);
    },
    async recordStatus(fleet, device, status: StatusMessage, receivedAt) {
      const at = status.at ?? receivedAt;
      try {
        await sql.begin(async (tx) => {
          await tx.unsafe(touch, [fleet, device, receivedAt]);
          // Retained statuses come again after every controller restart: record a change once.
          await tx.unsafe(
            `INSERT INTO status_history (fleet, device, state, reason, at)
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (
               SELECT 1 FROM (SELECT state, at FROM status_history WHERE fleet = $1 AND device = $2 ORDER BY id DESC LIMIT 1) last
               WHERE last.state = $3 AND last.at = $5)`,
            [fleet, device, status.state, status.reason ?? null, at],
          );
          if (
            status.model !== undefined &&
            status.model !== null &&
            typeof status.model.version === "string"
          ) {
            // A change only: not when the latest model known at that time is the same one.
            await tx.unsafe(
              `INSERT INTO model_history (fleet, device, version, kind, at)
               SELECT $1, $2, $3, $4::text, $5 WHERE NOT EXISTS (
                 SELECT 1 FROM (SELECT version, kind FROM model_history WHERE fleet = $1 AND device = $2 AND at <= $5
                   ORDER BY at DESC, id DESC LIMIT 1) last
                 WHERE last.version = $3 AND last.kind IS NOT DISTINCT FROM $4::text)`,
              [
                fleet,
                device,
                status.model.version,
                typeof status.model.kind === "string" ? status.model.kind : null,
                at,
              ],
            );
          }
          await tx.unsafe(
            `UPDATE devices SET online = $1, agent_version = coalesce($2, agent_version),
               model = CASE WHEN $3 THEN $4 ELSE model END, outbox = coalesce($5, outbox), status_at = $6
             WHERE fleet = $7 AND device = $8 AND status_at <= $6`,
            [
              status.state === "online",
              status.agentVersion ?? null,
              status.model !== undefined,
              text(status.model),
              text(status.outbox),
              at,
              fleet,
              device,
            ],
          );
        });
      } catch (err) {
        throw storeError(err, "recordStatus");
      }
    },
    async recordTelemetry(items) {
      if (items.length === 0) return;
      // Three statements for the whole group (arrays unnested server-side), not three per message.
      const sf: string[] = [];
      const sd: string[] = [];
      const sa: number[] = [];
      const ss: string[] = [];
      const latest = new Map<string, (typeof items)[number]>();
      for (const item of items) {
        for (const sample of item.msg.samples) {
          sf.push(item.fleet);
          sd.push(item.device);
          sa.push(sample.at);
          ss.push(JSON.stringify(sample));
        }
        latest.set(`${item.fleet}/${item.device}`, item);
      }
      const last = [...latest.values()];
      try {
        await sql.begin(async (tx) => {
          // One row per device: ON CONFLICT may touch a row only once per statement.
          await tx.unsafe(
            `INSERT INTO devices AS d (fleet, device, online, last_seen, status_at, last_telemetry, outbox)
             SELECT f, dv, true, seen, 0, tel, ob FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
               AS t(f, dv, seen, tel, ob)
             ON CONFLICT (fleet, device) DO UPDATE SET last_seen = greatest(d.last_seen, excluded.last_seen),
               last_telemetry = coalesce(excluded.last_telemetry, d.last_telemetry), outbox = coalesce(excluded.outbox, d.outbox)`,
            [
              last.map((x) => x.fleet),
              last.map((x) => x.device),
              last.map((x) => x.receivedAt),
              last.map((x) => text(x.msg.samples.at(-1))),
              last.map((x) => text(x.msg.outbox)),
            ],
          );
          if (sf.length > 0) {
            await tx.unsafe(
              `INSERT INTO telemetry (fleet, device, at, sample)
               SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])`,
              [sf, sd, sa, ss],
            );
          }
        });
      } catch (err) {
        throw storeError(err, "recordTelemetry");
      }
    },
    async recordJob(fleet, device, msg, receivedAt) {
      try {
        await sql.begin(async (tx) => {
          await tx.unsafe(touch, [fleet, device, receivedAt]);
          await tx.unsafe(
            `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, stage = excluded.stage,
               progress = excluded.progress, updated_at = excluded.updated_at
             WHERE jobs.state NOT IN ${FINAL} AND excluded.updated_at >= jobs.updated_at`,
            [fleet, device, msg.id, msg.type, msg.state, msg.stage, msg.progress, msg.at],
          );
        });
      } catch (err) {
        throw storeError(err, "recordJob");
      }
    },
    async recordReport(fleet, device, report: ReportMessage, receivedAt) {
      try {
        return await sql.begin(async (tx) => {
          await tx.unsafe(touch, [fleet, device, receivedAt]);
          const inserted = (await tx.unsafe(
            `INSERT INTO reports (fleet, device, id, received_at, body) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (fleet, device, id) DO NOTHING RETURNING id`,
            [fleet, device, report.id, receivedAt, JSON.stringify(report)],
          )) as Row[];
          if (inserted.length === 0) return false;
          const at = report.finishedAt ?? receivedAt;
          await tx.unsafe(
            `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at, result, error)
             VALUES ($1, $2, $3, $4, $5, NULL, 1, $6, $7, $8)
             ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, result = excluded.result,
               error = excluded.error, updated_at = greatest(jobs.updated_at, excluded.updated_at),
               progress = CASE WHEN excluded.state = 'SUCCEEDED' THEN 1 ELSE jobs.progress END`,
            [
              fleet,
              device,
              report.jobId,
              report.type,
              report.state,
              at,
              text(report.result),
              text(report.error),
            ],
          );
          await tx.unsafe(
            `UPDATE devices SET last_report = $1, last_report_at = $2 WHERE fleet = $3 AND device = $4
               AND (last_report_at IS NULL OR last_report_at <= $2)`,
            [JSON.stringify(report), at, fleet, device],
          );
          return true;
        });
      } catch (err) {
        throw storeError(err, "recordReport");
      }
    },
    async devices(fleet) {
      const rows =
        fleet === undefined
          ? await q(`SELECT ${cols} FROM devices ORDER BY fleet, device`)
          : await q(`SELECT ${cols} FROM devices WHERE fleet = $1 ORDER BY device`, [fleet]);
      return rows.map(toDevice);
    },
    async device(fleet, device) {
      const [r] = await q(`SELECT ${cols} FROM devices WHERE fleet = $1 AND device = $2`, [fleet, device]);
      return r === undefined ? undefined : toDevice(r);
    },
    async statusHistory(fleet, device, limit = 100): Promise<StatusRecord[]> {
      const rows = await q(
        "SELECT state, reason, at FROM status_history WHERE fleet = $1 AND device = $2 ORDER BY id DESC LIMIT $3",
        [fleet, device, limit],
      );
      return rows.map((r) => ({
        state: s(r.state) as StatusRecord["state"],
        reason: sOrNull(r.reason) as StatusRecord["reason"],
        at: n(r.at),
      }));
    },
    async modelHistory(fleet, device, limit = 100): Promise<ModelChange[]> {
      const rows = await q(
        "SELECT version, kind, at FROM model_history WHERE fleet = $1 AND device = $2 ORDER BY at DESC, id DESC LIMIT $3",
        [fleet, device, limit],
      );
      return rows.map((r) => ({ version: s(r.version), kind: sOrNull(r.kind), at: n(r.at) }));
    },
    async reports(fleet, device, limit = 100) {
      const rows = await q(
        "SELECT body FROM reports WHERE fleet = $1 AND device = $2 ORDER BY received_at DESC, seq DESC LIMIT $3",
        [fleet, device, limit],
      );
      return rows.map((r) => parse(r.body, "body") as ReportMessage);
    },
    async enroll(fleet, device, publicKey, at) {
      await q(
        `INSERT INTO enrolments (fleet, device, public_key, state, at) VALUES ($1, $2, $3, 'enrolled', $4)
         ON CONFLICT (fleet, device) DO UPDATE SET public_key = excluded.public_key, state = 'enrolled', at = excluded.at`,
        [fleet, device, publicKey, at],
      );
    },
    async proposeEnrolment(fleet, device, publicKey, at) {
      const rows = await q(
        `INSERT INTO enrolments (fleet, device, public_key, state, at) VALUES ($1, $2, $3, 'pending', $4)
         ON CONFLICT (fleet, device) DO NOTHING RETURNING fleet`,
        [fleet, device, publicKey, at],
      );
      return rows.length === 1;
    },
    async removeEnrolment(fleet, device) {
      const rows = await q("DELETE FROM enrolments WHERE fleet = $1 AND device = $2 RETURNING fleet", [
        fleet,
        device,
      ]);
      return rows.length === 1;
    },
    async enrolment(fleet, device) {
      const [r] = await q("SELECT * FROM enrolments WHERE fleet = $1 AND device = $2", [fleet, device]);
      return r === undefined ? undefined : toEnrolment(r);
    },
    async enrolments(state) {
      const rows =
        state === undefined
          ? await q("SELECT * FROM enrolments ORDER BY fleet, device")
          : await q("SELECT * FROM enrolments WHERE state = $1 ORDER BY fleet, device", [state]);
      return rows.map(toEnrolment);
    },
    async report(fleet, device, id) {
      const [r] = await q("SELECT body FROM reports WHERE fleet = $1 AND device = $2 AND id = $3", [
        fleet,
        device,
        id,
      ]);
      return r === undefined ? undefined : (parse(r.body, "body") as ReportMessage);
    },
    async job(fleet, device, id) {
      const [r] = await q(`SELECT ${jobCols} FROM jobs WHERE fleet = $1 AND device = $2 AND id = $3`, [
        fleet,
        device,
        id,
      ]);
      return r === undefined ? undefined : toJob(r);
    },
    async jobs(fleet, device, limit = 100) {
      const rows =
        device === undefined
          ? await q(`SELECT ${jobCols} FROM jobs WHERE fleet = $1 ORDER BY updated_at DESC LIMIT $2`, [
              fleet,
              limit,
            ])
          : await q(
              `SELECT ${jobCols} FROM jobs WHERE fleet = $1 AND device = $2 ORDER BY updated_at DESC LIMIT $3`,
              [fleet, device, limit],
            );
      return rows.map(toJob);
    },
    async telemetry(fleet, device, since, limit = 10_000): Promise<TelemetryRecord[]> {
      const rows = await q(
        "SELECT device, sample FROM telemetry WHERE fleet = $1 AND device = $2 AND at >= $3 ORDER BY at, id LIMIT $4",
        [fleet, device, since, limit],
      );
      return rows.map((r) => ({ ...(parse(r.sample, "sample") as TelemetrySample), device: s(r.device) }));
    },
    async pruneTelemetry(before) {
      const rows = await q("DELETE FROM telemetry WHERE at < $1 RETURNING id", [before]);
      return rows.length;
    },
    async close() {
      await sql.close();
    },
  };
}
