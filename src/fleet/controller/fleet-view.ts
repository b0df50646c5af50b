/**
 * What the dashboard shows an operator, computed from the store: fleet
 * aggregates (devices by kind and version, online, worst agreement, slowest
 * p95), alerts (offline devices, failed jobs, outbox drops, memory near its
 * limit, a device serving a stored version because its configured model did
 * not load), device filters, and a device's model history with each change
 * marked as a promotion, a rollback or a change the controller cannot explain.
 */
import { isRecord } from "../../json.ts";
import { describeRejectedAtStart, type ReportFigures, type ReportMessage } from "../protocol.ts";
import type { DeviceRecord, FleetStore, JobRecord, ModelChange } from "./store.ts";

/** Share of its memory limit above which a device is flagged. */
export const MEMORY_ALERT_SHARE = 0.9;
/** How far back failed jobs raise an alert. */
export const FAILED_JOB_WINDOW_MS = 24 * 3600_000;
/** Job states that count as failed. */
const FAILED_STATES = new Set(["FAILED", "TIMED_OUT"]);

/** One alert. */
export interface Alert {
  kind: "offline" | "failed-job" | "outbox-drops" | "memory" | "degraded";
  fleet: string;
  device: string;
  /** What to read, one line. */
  message: string;
  at: number;
}

/** Fleet-wide figures. */
export interface FleetAggregates {
  devices: number;
  online: number;
  byKind: Record<string, number>;
  byVersion: Record<string, number>;
  worstAgreement: { fleet: string; device: string; value: number } | null;
  slowestP95Ms: { fleet: string; device: string; value: number } | null;
}

/** Device states the table filters by. */
export const DEVICE_STATES = ["online", "offline", "alerting"] as const;

/** A device's memory limit, when its telemetry reports one. */
function memoryLimit(d: DeviceRecord): number | undefined {
  const v = d.lastTelemetry?.memoryLimitBytes;
  return typeof v === "number" && v > 0 ? v : undefined;
}

/** The reason of a failed job, one line: its error, or a rejection's reasons. */
export function failureReason(error: unknown, result: unknown): string | undefined {
  if (isRecord(error)) return `${String(error.code)}: ${String(error.message)}`;
  if (isRecord(result) && result.decision === "rejected" && Array.isArray(result.reasons)) {
    return `rejected: ${result.reasons.map(String).join("; ")}`;
  }
  return undefined;
}

/**
 * What an online device serving a stored version because the model it was
 * started with did not load says of it (one line), else `undefined`.
 */
export function degradedLine(d: DeviceRecord): string | undefined {
  // An offline device's status says what it served when it went, not what it will start with.
  return d.online ? describeRejectedAtStart(d.model) : undefined;
}

/** One kind of alert a device may raise. */
type DeviceAlert = (d: DeviceRecord) => Alert | undefined;

function degradedAlert(d: DeviceRecord): Alert | undefined {
  const line = degradedLine(d);
  if (line === undefined) return undefined;
  return {
    kind: "degraded",
    fleet: d.fleet,
    device: d.device,
    message: line.slice(0, 300),
    at: d.statusAt || d.lastSeen,
  };
}

function offlineAlert(d: DeviceRecord): Alert | undefined {
  if (d.online) return undefined;
  return {
    kind: "offline",
    fleet: d.fleet,
    device: d.device,
    message: "offline",
    at: d.statusAt || d.lastSeen,
  };
}

function outboxDropsAlert(d: DeviceRecord): Alert | undefined {
  const dropped = d.outbox?.dropped ?? 0;
  if (!(dropped > 0)) return undefined;
  return {
    kind: "outbox-drops",
    fleet: d.fleet,
    device: d.device,
    message: `outbox dropped ${dropped} message${dropped === 1 ? "" : "s"} (${d.outbox?.queued ?? 0} queued)`,
    at: d.lastSeen,
  };
}

function memoryAlert(d: DeviceRecord): Alert | undefined {
  const rss = d.lastTelemetry?.rssBytes;
  const limit = memoryLimit(d);
  // An offline device's last sample says nothing of its memory now.
  if (!d.online || typeof rss !== "number" || limit === undefined || rss < MEMORY_ALERT_SHARE * limit) {
    return undefined;
  }
  return {
    kind: "memory",
    fleet: d.fleet,
    device: d.device,
    message: `memory ${(rss / 1048576).toFixed(0)} of ${(limit / 1048576).toFixed(0)} MiB (${((100 * rss) / limit).toFixed(0)} %)`,
    at: d.lastTelemetry?.at ?? d.lastSeen,
  };
}

/** The alerts a device may raise, in the order each device's are listed before the newest-first sort. */
const DEVICE_ALERTS: readonly DeviceAlert[] = [degradedAlert, offlineAlert, outboxDropsAlert, memoryAlert];

/** A job's alert: failed or timed out within {@link FAILED_JOB_WINDOW_MS} of `now`. */
function failedJobAlert(j: JobRecord, now: number): Alert | undefined {
  if (!FAILED_STATES.has(j.state) || j.updatedAt < now - FAILED_JOB_WINDOW_MS) return undefined;
  const why = failureReason(j.error, j.result) ?? "no reason reported";
  return {
    kind: "failed-job",
    fleet: j.fleet,
    device: j.device,
    message: `${j.type} ${j.state}: ${why}`.slice(0, 300),
    at: j.updatedAt,
  };
}

/** The alerts of `devices` and of the failed jobs among `jobs` (newest first). */
export function fleetAlerts(
  devices: readonly DeviceRecord[],
  jobs: readonly JobRecord[],
  now: number,
): Alert[] {
  const alerts = [
    ...devices.flatMap((d) => DEVICE_ALERTS.map((alert) => alert(d))),
    ...jobs.map((j) => failedJobAlert(j, now)),
  ];
  return alerts.filter((a): a is Alert => a !== undefined).sort((a, b) => b.at - a.at);
}

/** Aggregates of `devices`; `figures` gives each device's latest report figures. */
export function fleetAggregates(
  devices: readonly DeviceRecord[],
  figures: (d: DeviceRecord) => ReportFigures,
): FleetAggregates {
  const out: FleetAggregates = {
    devices: devices.length,
    online: 0,
    byKind: {},
    byVersion: {},
    worstAgreement: null,
    slowestP95Ms: null,
  };
  for (const d of devices) {
    if (d.online) out.online++;
    const kind = d.model?.kind ?? "unknown";
    const version = d.model?.version ?? "unknown";
    out.byKind[kind] = (out.byKind[kind] ?? 0) + 1;
    out.byVersion[version] = (out.byVersion[version] ?? 0) + 1;
    const agreement = figures(d).agreement;
    if (agreement !== undefined && (out.worstAgreement === null || agreement < out.worstAgreement.value)) {
      out.worstAgreement = { fleet: d.fleet, device: d.device, value: agreement };
    }
    const p95 = d.lastTelemetry?.latencyMs?.p95;
    if (typeof p95 === "number" && (out.slowestP95Ms === null || p95 > out.slowestP95Ms.value)) {
      out.slowestP95Ms = { fleet: d.fleet, device: d.device, value: p95 };
    }
  }
  return out;
}

/** Whether a device is in a filter state. */
export function inState(d: DeviceRecord, state: string | null, alerting: ReadonlySet<string>): boolean {
  switch (state) {
    case "online":
      return d.online;
    case "offline":
      return !d.online;
    case "alerting":
      return alerting.has(`${d.fleet}/${d.device}`);
    default:
      return true;
  }
}

/** The failed jobs of every fleet of `devices`, newest first (for alerts). */
export async function recentJobs(store: FleetStore, devices: readonly DeviceRecord[]): Promise<JobRecord[]> {
  const fleets = [...new Set(devices.map((d) => d.fleet))];
  const perFleet = await Promise.all(fleets.map((f) => store.jobs(f, undefined, 200)));
  return perFleet.flat();
}

/** A model change with what caused it. */
export interface MarkedModelChange extends ModelChange {
  /** `promoted` (a job's candidate), `rollback`, `first` (first seen) or `changed` (no job explains it). */
  marker: "promoted" | "rollback" | "first" | "changed";
  /** The job that caused it. */
  jobId?: string;
}

/** How far apart a model change and the report of the job that made it may be. */
const CAUSE_WINDOW_MS = 120_000;

/**
 * Marks each model change (newest first) with the job that caused it: a
 * report that promoted a candidate or rolled back explains the one change
 * closest to it, within {@link CAUSE_WINDOW_MS}.
 */
export function markModelChanges(
  changes: readonly ModelChange[],
  reports: readonly ReportMessage[],
): MarkedModelChange[] {
  const explained = new Map<number, { report: ReportMessage; gap: number }>();
  for (const r of reports) {
    if (r.state !== "SUCCEEDED" || typeof r.finishedAt !== "number") continue;
    if (r.type !== "rollback" && !(isRecord(r.result) && r.result.decision === "promoted")) continue;
    let closest = -1;
    for (let i = 0; i < changes.length; i++) {
      const gap = Math.abs(r.finishedAt - changes[i]!.at);
      if (gap <= CAUSE_WINDOW_MS && (closest < 0 || gap < Math.abs(r.finishedAt - changes[closest]!.at)))
        closest = i;
    }
    if (closest < 0) continue;
    const gap = Math.abs(r.finishedAt - changes[closest]!.at);
    const held = explained.get(closest);
    if (held === undefined || gap < held.gap) explained.set(closest, { report: r, gap });
  }
  return changes.map((c, i) => {
    const cause = explained.get(i)?.report;
    if (cause !== undefined) {
      return {
        ...c,
        marker: cause.type === "rollback" ? "rollback" : "promoted",
        jobId: String(cause.jobId),
      };
    }
    return { ...c, marker: i === changes.length - 1 ? "first" : "changed" };
  });
}
