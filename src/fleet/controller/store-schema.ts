/**
 * The controller database's schema, written once for both stores: the same
 * tables, columns and indexes on SQLite (`sqlite-store.ts`) and PostgreSQL
 * (`postgres-store.ts`), with only the column types each database spells
 * differently filled in per dialect. Two hand-kept copies would drift: a
 * column added to one store and not the other breaks a replica silently.
 */
import type { Migration } from "../../store/migrations.ts";

/** The databases the controller stores on. */
export type FleetSqlDialect = "sqlite" | "postgres";

/** The column types that differ between the dialects. */
interface DialectTypes {
  /** An auto-incrementing integer primary key. */
  serial: string;
  /** Milliseconds since the epoch, byte counts: 64-bit integers. */
  time: string;
  bool: string;
  real: string;
  /**
   * PostgreSQL has no rowid to break ties between reports received in the
   * same millisecond, so its reports carry an insertion sequence.
   */
  reportSeq: string;
}

const TYPES: Record<FleetSqlDialect, DialectTypes> = {
  sqlite: {
    serial: "INTEGER PRIMARY KEY AUTOINCREMENT",
    time: "INTEGER",
    bool: "INTEGER",
    real: "REAL",
    reportSeq: "",
  },
  postgres: {
    serial: "BIGSERIAL PRIMARY KEY",
    time: "BIGINT",
    bool: "BOOLEAN",
    real: "DOUBLE PRECISION",
    reportSeq: "seq BIGSERIAL,",
  },
};

/**
 * The controller database's schema for `dialect`, oldest first. Append, never
 * edit: a shipped step has already run on controllers' databases.
 */
export function fleetMigrations(dialect: FleetSqlDialect): readonly Migration[] {
  const t = TYPES[dialect];
  return [
    {
      version: 1,
      name: "fleet devices, status history, telemetry, jobs, reports",
      sql: `
      CREATE TABLE devices (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        online ${t.bool} NOT NULL,
        agent_version TEXT,
        model TEXT,
        outbox TEXT,
        last_seen ${t.time} NOT NULL,
        status_at ${t.time} NOT NULL,
        last_telemetry TEXT,
        last_report TEXT,
        last_report_at ${t.time},
        PRIMARY KEY (fleet, device)
      );
      CREATE TABLE status_history (
        id ${t.serial},
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        at ${t.time} NOT NULL
      );
      CREATE INDEX status_history_device ON status_history (fleet, device, id);
      CREATE TABLE telemetry (
        id ${t.serial},
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        at ${t.time} NOT NULL,
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
        progress ${t.real} NOT NULL,
        updated_at ${t.time} NOT NULL,
        result TEXT,
        error TEXT,
        PRIMARY KEY (fleet, device, id)
      );
      CREATE INDEX jobs_updated ON jobs (fleet, updated_at);
      CREATE TABLE reports (
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        id TEXT NOT NULL,
        received_at ${t.time} NOT NULL,
        ${t.reportSeq}
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
        at ${t.time} NOT NULL,
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
        bytes ${t.time} NOT NULL,
        created_at ${t.time} NOT NULL,
        manifest TEXT NOT NULL,
        signature TEXT NOT NULL
      );
      CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        fleet TEXT NOT NULL,
        release TEXT NOT NULL,
        state TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at ${t.time} NOT NULL,
        updated_at ${t.time} NOT NULL,
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
        id ${t.serial},
        fleet TEXT NOT NULL,
        device TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT,
        at ${t.time} NOT NULL
      );
      CREATE INDEX model_history_device ON model_history (fleet, device, at);
    `,
    },
  ];
}
