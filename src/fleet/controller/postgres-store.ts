/**
 * The {@link FleetStore} on PostgreSQL, for several controller replicas that
 * split one fleet through the shared subscription and must see the same
 * state. The only file that talks to PostgreSQL; it uses Bun's built-in
 * client (`SQL` from "bun"), so no driver package is needed. Every ordering
 * rule of the SQLite store is a condition inside one statement here, so two
 * replicas writing the same device at once still converge.
 */
import { SQL } from "bun";
import { QuantdError } from "../../errors.ts";
import type { Migration } from "../../store/migrations.ts";
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

/** Schema steps, oldest first; `quantd_fleet_schema` records the version. Append, never edit (in `store-schema.ts`). */
export const POSTGRES_MIGRATIONS: readonly Migration[] = fleetMigrations("postgres");

type Row = Record<string, unknown>;
type Tx = Pick<SQL, "unsafe">;

function parseJson(v: unknown, col: string): unknown {
  if (v === null || v === undefined) return null;
  try {
    return JSON.parse(String(v));
  } catch (err) {
    throw new QuantdError("STORE_FAILED", `column ${col} does not hold valid JSON`, { cause: err });
  }
}

// The client returns BIGINT columns as strings and BOOLEAN as booleans.
const rows = new FleetRowReader<Row>({
  str: (r, col) => String(r[col]),
  strOrNull: (r, col) => (r[col] === null || r[col] === undefined ? null : String(r[col])),
  num: (r, col) => Number(r[col]),
  bool: (r, col) => r[col] === true,
  json: (r, col) => parseJson(r[col], col),
});

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

/** Brings the schema up to date, under an advisory lock so replicas starting together migrate once. */
async function migratePostgres(sql: SQL): Promise<void> {
  await sql.begin(async (tx) => {
    // Serializes migrations across replicas; released at commit.
    await tx.unsafe("SELECT pg_advisory_xact_lock(74617111)");
    await tx.unsafe("CREATE TABLE IF NOT EXISTS quantd_fleet_schema (version INTEGER NOT NULL)");
    const found = (await tx.unsafe("SELECT max(version) AS v FROM quantd_fleet_schema")) as Row[];
    const v = found[0]?.v;
    const current = v === null || v === undefined ? 0 : Number(v);
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
}

const TOUCH = `INSERT INTO devices (fleet, device, online, last_seen, status_at) VALUES ($1, $2, true, $3, 0)
     ON CONFLICT (fleet, device) DO UPDATE SET last_seen = greatest(devices.last_seen, excluded.last_seen)`;

/** The {@link FleetStore} over a connection pool to a migrated database. */
class PostgresFleetStore implements FleetStore {
  constructor(private readonly sql: SQL) {}

  /** One statement; the error names its first words. */
  private async q(query: string, params: unknown[] = []): Promise<Row[]> {
    try {
      return (await this.sql.unsafe(query, params)) as Row[];
    } catch (err) {
      throw storeError(err, query.trim().split(/\s+/).slice(0, 3).join(" "));
    }
  }

  /** Several statements in one transaction; the error names the operation. */
  private async tx<T>(what: string, fn: (tx: Tx) => Promise<T>): Promise<T> {
    try {
      return await this.sql.begin(fn);
    } catch (err) {
      throw storeError(err, what);
    }
  }

  // Releases and rollouts.

  async addRelease(r: ReleaseRecord): Promise<boolean> {
    const found = await this.q(
      `INSERT INTO releases (id, version, task, notes, bytes, created_at, manifest, signature)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING RETURNING id`,
      [r.id, r.version, r.task, r.notes, r.bytes, r.createdAt, r.manifest, JSON.stringify(r.signature)],
    );
    return found.length === 1;
  }

  async release(id: string): Promise<ReleaseRecord | undefined> {
    const [r] = await this.q("SELECT * FROM releases WHERE id = $1", [id]);
    return r === undefined ? undefined : rows.release(r);
  }

  async releases(limit = 100): Promise<ReleaseRecord[]> {
    const found = await this.q("SELECT * FROM releases ORDER BY created_at DESC, id LIMIT $1", [limit]);
    return found.map((r) => rows.release(r));
  }

  async saveRollout(r: Omit<RolloutRecord, "revision">, expectedRevision: number): Promise<boolean> {
    const body = JSON.stringify(r.body);
    const found =
      expectedRevision === 0
        ? await this.q(
            `INSERT INTO rollouts (id, fleet, release, state, revision, created_at, updated_at, body)
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING id`,
            [r.id, r.fleet, r.release, r.state, r.createdAt, r.updatedAt, body],
          )
        : await this.q(
            `UPDATE rollouts SET state = $1, revision = revision + 1, updated_at = $2, body = $3
             WHERE id = $4 AND revision = $5 RETURNING id`,
            [r.state, r.updatedAt, body, r.id, expectedRevision],
          );
    return found.length === 1;
  }

  async rollout(id: string): Promise<RolloutRecord | undefined> {
    const [r] = await this.q("SELECT * FROM rollouts WHERE id = $1", [id]);
    return r === undefined ? undefined : rows.rollout(r);
  }

  async rollouts(states?: readonly string[], limit = 100): Promise<RolloutRecord[]> {
    const found =
      states === undefined
        ? await this.q("SELECT * FROM rollouts ORDER BY created_at DESC, id LIMIT $1", [limit])
        : await this.q("SELECT * FROM rollouts WHERE state = ANY($1) ORDER BY created_at DESC, id LIMIT $2", [
            [...states],
            limit,
          ]);
    return found.map((r) => rows.rollout(r));
  }

  // Device keys.

  async enroll(fleet: string, device: string, publicKey: string, at: number): Promise<void> {
    await this.q(
      `INSERT INTO enrolments (fleet, device, public_key, state, at) VALUES ($1, $2, $3, 'enrolled', $4)
       ON CONFLICT (fleet, device) DO UPDATE SET public_key = excluded.public_key, state = 'enrolled', at = excluded.at`,
      [fleet, device, publicKey, at],
    );
  }

  async proposeEnrolment(fleet: string, device: string, publicKey: string, at: number): Promise<boolean> {
    const found = await this.q(
      `INSERT INTO enrolments (fleet, device, public_key, state, at) VALUES ($1, $2, $3, 'pending', $4)
       ON CONFLICT (fleet, device) DO NOTHING RETURNING fleet`,
      [fleet, device, publicKey, at],
    );
    return found.length === 1;
  }

  async removeEnrolment(fleet: string, device: string): Promise<boolean> {
    const found = await this.q("DELETE FROM enrolments WHERE fleet = $1 AND device = $2 RETURNING fleet", [
      fleet,
      device,
    ]);
    return found.length === 1;
  }

  async enrolment(fleet: string, device: string): Promise<EnrolmentRecord | undefined> {
    const [r] = await this.q("SELECT * FROM enrolments WHERE fleet = $1 AND device = $2", [fleet, device]);
    return r === undefined ? undefined : rows.enrolment(r);
  }

  async enrolments(state?: EnrolmentRecord["state"]): Promise<EnrolmentRecord[]> {
    const found =
      state === undefined
        ? await this.q("SELECT * FROM enrolments ORDER BY fleet, device")
        : await this.q("SELECT * FROM enrolments WHERE state = $1 ORDER BY fleet, device", [state]);
    return found.map((r) => rows.enrolment(r));
  }

  // What devices send.

  async recordStatus(
    fleet: string,
    device: string,
    status: StatusMessage,
    receivedAt: number,
  ): Promise<void> {
    const at = status.at ?? receivedAt;
    await this.tx("recordStatus", async (tx) => {
      await tx.unsafe(TOUCH, [fleet, device, receivedAt]);
      // Retained statuses come again after every controller restart: record a change once.
      await tx.unsafe(
        `INSERT INTO status_history (fleet, device, state, reason, at)
         SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (
           SELECT 1 FROM (SELECT state, at FROM status_history WHERE fleet = $1 AND device = $2 ORDER BY id DESC LIMIT 1) last
           WHERE last.state = $3 AND last.at = $5)`,
        [fleet, device, status.state, status.reason ?? null, at],
      );
      const model = announcedModel(status);
      if (model !== undefined) {
        // A change only: not when the latest model known at that time is the same one.
        await tx.unsafe(
          `INSERT INTO model_history (fleet, device, version, kind, at)
           SELECT $1, $2, $3, $4::text, $5 WHERE NOT EXISTS (
             SELECT 1 FROM (SELECT version, kind FROM model_history WHERE fleet = $1 AND device = $2 AND at <= $5
               ORDER BY at DESC, id DESC LIMIT 1) last
             WHERE last.version = $3 AND last.kind IS NOT DISTINCT FROM $4::text)`,
          [fleet, device, model.version, model.kind, at],
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
  }

  async recordTelemetry(items: readonly TelemetryItem[]): Promise<void> {
    if (items.length === 0) return;
    // Two statements for the whole group (arrays unnested server-side), not three per message.
    const { latest, samples } = telemetryColumns(items);
    await this.tx("recordTelemetry", async (tx) => {
      // One row per device: ON CONFLICT may touch a row only once per statement.
      await tx.unsafe(
        `INSERT INTO devices AS d (fleet, device, online, last_seen, status_at, last_telemetry, outbox)
         SELECT f, dv, true, seen, 0, tel, ob FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
           AS t(f, dv, seen, tel, ob)
         ON CONFLICT (fleet, device) DO UPDATE SET last_seen = greatest(d.last_seen, excluded.last_seen),
           last_telemetry = coalesce(excluded.last_telemetry, d.last_telemetry), outbox = coalesce(excluded.outbox, d.outbox)`,
        latest,
      );
      if (samples[0].length > 0) {
        await tx.unsafe(
          `INSERT INTO telemetry (fleet, device, at, sample)
           SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])`,
          samples,
        );
      }
    });
  }

  async recordJob(fleet: string, device: string, msg: JobMessage, receivedAt: number): Promise<void> {
    await this.tx("recordJob", async (tx) => {
      await tx.unsafe(TOUCH, [fleet, device, receivedAt]);
      await tx.unsafe(
        `INSERT INTO jobs (fleet, device, id, type, state, stage, progress, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (fleet, device, id) DO UPDATE SET state = excluded.state, stage = excluded.stage,
           progress = excluded.progress, updated_at = excluded.updated_at
         WHERE jobs.state NOT IN ${FINAL_JOB_STATES_SQL} AND excluded.updated_at >= jobs.updated_at`,
        [fleet, device, msg.id, msg.type, msg.state, msg.stage, msg.progress, msg.at],
      );
    });
  }

  async recordReport(
    fleet: string,
    device: string,
    report: ReportMessage,
    receivedAt: number,
  ): Promise<boolean> {
    return await this.tx("recordReport", async (tx) => {
      await tx.unsafe(TOUCH, [fleet, device, receivedAt]);
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
        [fleet, device, report.jobId, report.type, report.state, at, text(report.result), text(report.error)],
      );
      await tx.unsafe(
        `UPDATE devices SET last_report = $1, last_report_at = $2 WHERE fleet = $3 AND device = $4
           AND (last_report_at IS NULL OR last_report_at <= $2)`,
        [JSON.stringify(report), at, fleet, device],
      );
      return true;
    });
  }

  // Reads for the dashboard and the CLI.

  async devices(fleet?: string): Promise<DeviceRecord[]> {
    const found =
      fleet === undefined
        ? await this.q(`SELECT ${DEVICE_COLUMNS} FROM devices ORDER BY fleet, device`)
        : await this.q(`SELECT ${DEVICE_COLUMNS} FROM devices WHERE fleet = $1 ORDER BY device`, [fleet]);
    return found.map((r) => rows.device(r));
  }

  async device(fleet: string, device: string): Promise<DeviceRecord | undefined> {
    const [r] = await this.q(`SELECT ${DEVICE_COLUMNS} FROM devices WHERE fleet = $1 AND device = $2`, [
      fleet,
      device,
    ]);
    return r === undefined ? undefined : rows.device(r);
  }

  async statusHistory(fleet: string, device: string, limit = 100): Promise<StatusRecord[]> {
    const found = await this.q(
      "SELECT state, reason, at FROM status_history WHERE fleet = $1 AND device = $2 ORDER BY id DESC LIMIT $3",
      [fleet, device, limit],
    );
    return found.map((r) => rows.status(r));
  }

  async modelHistory(fleet: string, device: string, limit = 100): Promise<ModelChange[]> {
    const found = await this.q(
      "SELECT version, kind, at FROM model_history WHERE fleet = $1 AND device = $2 ORDER BY at DESC, id DESC LIMIT $3",
      [fleet, device, limit],
    );
    return found.map((r) => rows.modelChange(r));
  }

  async reports(fleet: string, device: string, limit = 100): Promise<ReportMessage[]> {
    const found = await this.q(
      "SELECT body FROM reports WHERE fleet = $1 AND device = $2 ORDER BY received_at DESC, seq DESC LIMIT $3",
      [fleet, device, limit],
    );
    return found.map((r) => rows.report(r));
  }

  async report(fleet: string, device: string, id: string): Promise<ReportMessage | undefined> {
    const [r] = await this.q("SELECT body FROM reports WHERE fleet = $1 AND device = $2 AND id = $3", [
      fleet,
      device,
      id,
    ]);
    return r === undefined ? undefined : rows.report(r);
  }

  async job(fleet: string, device: string, id: string): Promise<JobRecord | undefined> {
    const [r] = await this.q(`SELECT ${JOB_COLUMNS} FROM jobs WHERE fleet = $1 AND device = $2 AND id = $3`, [
      fleet,
      device,
      id,
    ]);
    return r === undefined ? undefined : rows.job(r);
  }

  async jobs(fleet: string, device?: string, limit = 100): Promise<JobRecord[]> {
    const found =
      device === undefined
        ? await this.q(`SELECT ${JOB_COLUMNS} FROM jobs WHERE fleet = $1 ORDER BY updated_at DESC LIMIT $2`, [
            fleet,
            limit,
          ])
        : await this.q(
            `SELECT ${JOB_COLUMNS} FROM jobs WHERE fleet = $1 AND device = $2 ORDER BY updated_at DESC LIMIT $3`,
            [fleet, device, limit],
          );
    return found.map((r) => rows.job(r));
  }

  async telemetry(fleet: string, device: string, since: number, limit = 10_000): Promise<TelemetryRecord[]> {
    const found = await this.q(
      "SELECT device, sample FROM telemetry WHERE fleet = $1 AND device = $2 AND at >= $3 ORDER BY at, id LIMIT $4",
      [fleet, device, since, limit],
    );
    return found.map((r) => rows.telemetry(r));
  }

  async pruneTelemetry(before: number): Promise<number> {
    return (await this.q("DELETE FROM telemetry WHERE at < $1 RETURNING id", [before])).length;
  }

  async close(): Promise<void> {
    await this.sql.close();
  }
}

/**
 * A telemetry group as column arrays for `unnest`: each device's latest
 * message (fleet, device, received at, last sample, outbox), and every
 * sample (fleet, device, at, sample).
 */
function telemetryColumns(items: readonly TelemetryItem[]): {
  latest: [string[], string[], number[], (string | null)[], (string | null)[]];
  samples: [string[], string[], number[], string[]];
} {
  const samples: [string[], string[], number[], string[]] = [[], [], [], []];
  const latest = new Map<string, TelemetryItem>();
  for (const item of items) {
    for (const sample of item.msg.samples) {
      samples[0].push(item.fleet);
      samples[1].push(item.device);
      samples[2].push(sample.at);
      samples[3].push(JSON.stringify(sample));
    }
    latest.set(`${item.fleet}/${item.device}`, item);
  }
  const last = [...latest.values()];
  return {
    latest: [
      last.map((x) => x.fleet),
      last.map((x) => x.device),
      last.map((x) => x.receivedAt),
      last.map((x) => text(x.msg.samples.at(-1))),
      last.map((x) => text(x.msg.outbox)),
    ],
    samples,
  };
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
  try {
    await migratePostgres(sql);
  } catch (err) {
    await sql.close();
    throw storeError(err, "connect and migrate");
  }
  return new PostgresFleetStore(sql);
}
