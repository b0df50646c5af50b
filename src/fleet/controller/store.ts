/**
 * What the fleet controller remembers, behind one interface: devices and
 * their status history, telemetry samples, job progress and reports. SQLite
 * (`sqlite-store.ts`) is the implementation for one controller; the methods
 * are asynchronous so a networked database can implement the same contract
 * for several replicas.
 */
import type { QuantdErrorJSON } from "../../errors.ts";
import type { JobState } from "../../store/jobs.ts";
import type {
  JobMessage,
  ModelInfo,
  OutboxFigures,
  ReportMessage,
  StatusMessage,
  TelemetryMessage,
  TelemetrySample,
} from "../protocol.ts";

/** A device as the controller knows it. */
export interface DeviceRecord {
  fleet: string;
  device: string;
  online: boolean;
  agentVersion: string | null;
  model: ModelInfo | null;
  outbox: OutboxFigures | null;
  /** When the controller last heard anything from it (ms since the epoch). */
  lastSeen: number;
  /** When its status last changed. */
  statusAt: number;
  /** Its latest telemetry sample. */
  lastTelemetry: TelemetrySample | null;
  /** Its latest report. */
  lastReport: ReportMessage | null;
}

/** One status change. */
export interface StatusRecord {
  state: StatusMessage["state"];
  reason: StatusMessage["reason"] | null;
  at: number;
}

/** A change of a device's serving model, as its statuses announced it. */
export interface ModelChange {
  version: string;
  kind: string | null;
  /** When the status announcing it was sent (ms since the epoch). */
  at: number;
}

/** A job as the controller saw it through progress messages and its report. */
export interface JobRecord {
  fleet: string;
  device: string;
  id: string;
  type: string;
  state: JobState;
  stage: string | null;
  progress: number;
  updatedAt: number;
  result: unknown;
  error: QuantdErrorJSON | null;
}

/** A telemetry sample with its device. */
export interface TelemetryRecord extends TelemetrySample {
  device: string;
}

/** One telemetry message as the controller received it. */
export interface TelemetryItem {
  fleet: string;
  device: string;
  msg: TelemetryMessage;
  receivedAt: number;
}

/**
 * A device's public key as the controller knows it: `enrolled` by an
 * operator (`quantd fleet enroll`, or confirming on the dashboard), or
 * `pending` when a device that is not enrolled presented it on its own
 * (trust on first use, until an operator confirms).
 */
export interface EnrolmentRecord {
  fleet: string;
  device: string;
  /** base64url of the raw Ed25519 public key. */
  publicKey: string;
  state: "enrolled" | "pending";
  at: number;
}

/** A release the controller holds (its files are on disk, under the releases directory). */
export interface ReleaseRecord {
  /** SHA-256 of the manifest bytes. */
  id: string;
  version: string;
  task: string;
  notes: string;
  /** Total bytes of its files. */
  bytes: number;
  createdAt: number;
  /** The manifest's exact bytes (what the signature covers). */
  manifest: string;
  signature: { kid: string; sig: string };
}

/**
 * A rollout as stored: a few indexed columns and the whole state as one
 * document. Writers compare and swap on `revision`, so two replicas (or a
 * restarted controller and the CLI) never lose each other's change.
 */
export interface RolloutRecord {
  id: string;
  fleet: string;
  release: string;
  /** `running`, `paused`, `halted`, `completed` or `aborted`. */
  state: string;
  /** Incremented by every save. */
  revision: number;
  createdAt: number;
  updatedAt: number;
  /** The rollout's state document (waves, devices, figures, halt reason). */
  body: unknown;
}

/** The controller's storage. */
export interface FleetStore {
  /** Records a release; false when that id is already recorded. */
  addRelease(r: ReleaseRecord): Promise<boolean>;
  release(id: string): Promise<ReleaseRecord | undefined>;
  /** Releases, newest first. @defaultValue limit 100 */
  releases(limit?: number): Promise<ReleaseRecord[]>;
  /**
   * Saves a rollout when its stored revision is still `expectedRevision`
   * (0: it must not exist yet), storing it with revision `expectedRevision + 1`.
   * False when someone else saved it meanwhile: re-read and decide again.
   */
  saveRollout(r: Omit<RolloutRecord, "revision">, expectedRevision: number): Promise<boolean>;
  rollout(id: string): Promise<RolloutRecord | undefined>;
  /** Rollouts, newest first; only those in `states` when given. @defaultValue limit 100 */
  rollouts(states?: readonly string[], limit?: number): Promise<RolloutRecord[]>;
  /** Enrols a device's key (replacing any key or pending proposal): its signed messages are stored from now on. */
  enroll(fleet: string, device: string, publicKey: string, at: number): Promise<void>;
  /** Records a key a device presented on its own, unless the device already has a record; true when recorded. */
  proposeEnrolment(fleet: string, device: string, publicKey: string, at: number): Promise<boolean>;
  /** Removes a device's key or proposal (its messages are refused again); false when there was none. */
  removeEnrolment(fleet: string, device: string): Promise<boolean>;
  /** A device's enrolment, or undefined. */
  enrolment(fleet: string, device: string): Promise<EnrolmentRecord | undefined>;
  /** Every enrolment of one state (or all), by fleet then device. */
  enrolments(state?: EnrolmentRecord["state"]): Promise<EnrolmentRecord[]>;
  /** Records a status message (a history row always; the device row when newer). */
  recordStatus(fleet: string, device: string, status: StatusMessage, receivedAt: number): Promise<void>;
  /**
   * Keeps every sample of each telemetry message and the latest on its device,
   * in one transaction: the controller writes telemetry in groups because a
   * thousand devices send a thousand messages a second.
   */
  recordTelemetry(items: readonly TelemetryItem[]): Promise<void>;
  /** Records a job progress message; an older message never overwrites a newer state. */
  recordJob(fleet: string, device: string, msg: JobMessage, receivedAt: number): Promise<void>;
  /** Records a report; false when its id was already recorded (QoS 1 duplicates). */
  recordReport(fleet: string, device: string, report: ReportMessage, receivedAt: number): Promise<boolean>;
  /** Devices, by fleet then name; one fleet when given. */
  devices(fleet?: string): Promise<DeviceRecord[]>;
  device(fleet: string, device: string): Promise<DeviceRecord | undefined>;
  /** Status changes, newest first. @defaultValue limit 100 */
  statusHistory(fleet: string, device: string, limit?: number): Promise<StatusRecord[]>;
  /**
   * The device's serving models, one entry per change its statuses announced
   * (a retained status delivered again adds nothing), newest first.
   * @defaultValue limit 100
   */
  modelHistory(fleet: string, device: string, limit?: number): Promise<ModelChange[]>;
  /** Reports, newest first. @defaultValue limit 100 */
  reports(fleet: string, device: string, limit?: number): Promise<ReportMessage[]>;
  /** One report by id, or undefined. */
  report(fleet: string, device: string, id: string): Promise<ReportMessage | undefined>;
  /** A job, or undefined. */
  job(fleet: string, device: string, id: string): Promise<JobRecord | undefined>;
  /** Jobs of a fleet (or one device), newest first. @defaultValue limit 100 */
  jobs(fleet: string, device?: string, limit?: number): Promise<JobRecord[]>;
  /** Telemetry samples taken at or after `since`, oldest first. @defaultValue limit 10000 */
  telemetry(fleet: string, device: string, since: number, limit?: number): Promise<TelemetryRecord[]>;
  /** Deletes telemetry older than `before` (ms); returns how many rows went. */
  pruneTelemetry(before: number): Promise<number>;
  close(): Promise<void>;
}
