/**
 * Rows of the controller database read back as records, once for both
 * stores. The tables are the same (`store-schema.ts`); only how a column
 * value is read differs (SQLite's strict typed reads; PostgreSQL's client
 * returns 64-bit integers as strings and booleans as booleans), so each store
 * passes its {@link ColumnReader} and the mapping itself is written once.
 * The few rules both stores apply before writing live here too.
 */
import type { QuantdErrorJSON } from "../../errors.ts";
import type { JobState } from "../../store/jobs.ts";
import type { ModelInfo, OutboxFigures, ReportMessage, StatusMessage, TelemetrySample } from "../protocol.ts";
import type {
  DeviceRecord,
  EnrolmentRecord,
  JobRecord,
  ModelChange,
  ReleaseRecord,
  RolloutRecord,
  StatusRecord,
  TelemetryRecord,
} from "./store.ts";

/** How one database's rows yield typed column values. Each read throws STORE_FAILED on a value it cannot read. */
export interface ColumnReader<Row> {
  str(row: Row, col: string): string;
  strOrNull(row: Row, col: string): string | null;
  num(row: Row, col: string): number;
  bool(row: Row, col: string): boolean;
  /** A JSON text column, parsed; `null` for SQL NULL. */
  json(row: Row, col: string): unknown;
}

/** The device columns a {@link DeviceRecord} is read from. */
export const DEVICE_COLUMNS =
  "fleet, device, online, agent_version, model, outbox, last_seen, status_at, last_telemetry, last_report";

/** The job columns a {@link JobRecord} is read from. */
export const JOB_COLUMNS = "fleet, device, id, type, state, stage, progress, updated_at, result, error";

/** The job states a progress message may no longer change, as an SQL list. */
export const FINAL_JOB_STATES_SQL = "('SUCCEEDED','FAILED','REJECTED','TIMED_OUT')";

/**
 * The model a status announces, for the model history; undefined when it
 * names none (a Last Will, an agent not serving yet).
 */
export function announcedModel(status: StatusMessage): { version: string; kind: string | null } | undefined {
  const model = status.model;
  if (model === undefined || model === null || typeof model.version !== "string") return undefined;
  return { version: model.version, kind: typeof model.kind === "string" ? model.kind : null };
}

/** A value for a nullable JSON column: `null` for absent or null. */
export function jsonTextOrNull(v: unknown): string | null {
  return v === undefined || v === null ? null : JSON.stringify(v);
}

/** Reads the controller's records from rows through one database's {@link ColumnReader}. */
export class FleetRowReader<Row> {
  constructor(private readonly c: ColumnReader<Row>) {}

  device(r: Row): DeviceRecord {
    const c = this.c;
    return {
      fleet: c.str(r, "fleet"),
      device: c.str(r, "device"),
      online: c.bool(r, "online"),
      agentVersion: c.strOrNull(r, "agent_version"),
      model: c.json(r, "model") as ModelInfo | null,
      outbox: c.json(r, "outbox") as OutboxFigures | null,
      lastSeen: c.num(r, "last_seen"),
      statusAt: c.num(r, "status_at"),
      lastTelemetry: c.json(r, "last_telemetry") as TelemetrySample | null,
      lastReport: c.json(r, "last_report") as ReportMessage | null,
    };
  }

  job(r: Row): JobRecord {
    const c = this.c;
    return {
      fleet: c.str(r, "fleet"),
      device: c.str(r, "device"),
      id: c.str(r, "id"),
      type: c.str(r, "type"),
      state: c.str(r, "state") as JobState,
      stage: c.strOrNull(r, "stage"),
      progress: c.num(r, "progress"),
      updatedAt: c.num(r, "updated_at"),
      result: c.json(r, "result"),
      error: c.json(r, "error") as QuantdErrorJSON | null,
    };
  }

  release(r: Row): ReleaseRecord {
    const c = this.c;
    return {
      id: c.str(r, "id"),
      version: c.str(r, "version"),
      task: c.str(r, "task"),
      notes: c.str(r, "notes"),
      bytes: c.num(r, "bytes"),
      createdAt: c.num(r, "created_at"),
      manifest: c.str(r, "manifest"),
      signature: c.json(r, "signature") as ReleaseRecord["signature"],
    };
  }

  rollout(r: Row): RolloutRecord {
    const c = this.c;
    return {
      id: c.str(r, "id"),
      fleet: c.str(r, "fleet"),
      release: c.str(r, "release"),
      state: c.str(r, "state"),
      revision: c.num(r, "revision"),
      createdAt: c.num(r, "created_at"),
      updatedAt: c.num(r, "updated_at"),
      body: c.json(r, "body"),
    };
  }

  enrolment(r: Row): EnrolmentRecord {
    const c = this.c;
    return {
      fleet: c.str(r, "fleet"),
      device: c.str(r, "device"),
      publicKey: c.str(r, "public_key"),
      state: c.str(r, "state") === "enrolled" ? "enrolled" : "pending",
      at: c.num(r, "at"),
    };
  }

  status(r: Row): StatusRecord {
    return {
      state: this.c.str(r, "state") as StatusRecord["state"],
      reason: this.c.strOrNull(r, "reason") as StatusRecord["reason"],
      at: this.c.num(r, "at"),
    };
  }

  modelChange(r: Row): ModelChange {
    return { version: this.c.str(r, "version"), kind: this.c.strOrNull(r, "kind"), at: this.c.num(r, "at") };
  }

  /** A report row's `body`. */
  report(r: Row): ReportMessage {
    return this.c.json(r, "body") as ReportMessage;
  }

  telemetry(r: Row): TelemetryRecord {
    return { ...(this.c.json(r, "sample") as TelemetrySample), device: this.c.str(r, "device") };
  }
}
