/**
 * What the dashboard says of devices, jobs and reports: the figures a
 * report's result carries (whatever job produced it), report and job
 * summaries that leave the (possibly large) results out, each device's
 * latest figures across its recent reports, and the overview that puts them
 * beside the fleet's aggregates and alerts (`fleet-view.ts`).
 */
import { isRecord } from "../../json.ts";
import type { ReportFigures, ReportMessage, TaskMetric } from "../protocol.ts";
import {
  degradedLine,
  failureReason,
  fleetAggregates,
  fleetAlerts,
  inState,
  recentJobs,
} from "./fleet-view.ts";
import type { DeviceRecord, FleetStore, JobRecord } from "./store.ts";

/** The task's own figure of a recorded validation's `task` (see {@link ReportFigures.taskMetric}). */
function taskMetricOf(kind: string, task: Record<string, unknown>): TaskMetric | undefined {
  const figures = (typeof task.figures === "object" && task.figures !== null ? task.figures : {}) as Record<
    string,
    unknown
  >;
  const pick = (name: string, value: unknown, share: boolean): TaskMetric | undefined =>
    typeof value === "number" && Number.isFinite(value) ? { kind, name, value, share } : undefined;
  switch (kind) {
    case "embedding":
      return pick("mean cosine", figures.meanCosine, false);
    case "regression":
      return pick("Pearson", figures.pearson, false);
    case "token-classification":
      return pick("samples whose every token agrees", task.sampleAgreement, true);
    case "multi-label":
      return pick("samples whose every label agrees", task.sampleAgreement, true);
    default:
      return undefined;
  }
}

/** The figures the device table shows, from a report's result. */
export function reportFigures(result: unknown): ReportFigures {
  if (typeof result !== "object" || result === null) return {};
  const r = result as Record<string, unknown>;
  const obj = (v: unknown): Record<string, unknown> =>
    typeof v === "object" && v !== null ? (v as Record<string, unknown>) : {};
  const num = (v: unknown): number | undefined =>
    typeof v === "number" && Number.isFinite(v) ? v : undefined;
  const out: ReportFigures = {};
  // The agent's recalibration result: figures of the active (before) and candidate models.
  const bench = obj(r.bench);
  const active = obj(r.active);
  const candidate = obj(r.candidate);
  const isInt8 = (kind: unknown): boolean => typeof kind === "string" && kind.startsWith("int8");
  const int8 =
    num(r.int8P50Ms) ??
    (isInt8(candidate.kind)
      ? num(bench.candidateP50Ms)
      : isInt8(active.kind)
        ? num(bench.activeP50Ms)
        : undefined);
  const fp32 =
    num(r.fp32P50Ms) ??
    (active.kind === "fp32"
      ? num(bench.activeP50Ms)
      : candidate.kind === "fp32"
        ? num(bench.candidateP50Ms)
        : undefined);
  const agreement = num(r.agreement) ?? num(obj(r.validation).agreement);
  const accuracy = num(r.accuracy);
  if (int8 !== undefined) out.int8P50Ms = int8;
  if (fp32 !== undefined) out.fp32P50Ms = fp32;
  if (agreement !== undefined) out.agreement = agreement;
  // Only beside its own agreement: a bound from another report would describe another model.
  const lower = num(r.agreement) === undefined ? num(obj(r.validation).agreementLower) : undefined;
  if (agreement !== undefined && lower !== undefined) out.agreementLower = lower;
  // What the agreement counted (tokens, label decisions, samples at cosine ≥ 0.98), for another task than a classifier.
  const task = obj(obj(r.validation).task);
  if (agreement !== undefined && num(r.agreement) === undefined && typeof task.kind === "string") {
    if (task.kind !== "classification") {
      out.task = `${task.kind}: ${typeof task.unit === "string" ? task.unit : "sample"}s`;
    }
    const metric = taskMetricOf(task.kind, task);
    if (metric !== undefined) out.taskMetric = metric;
  }
  if (accuracy !== undefined) out.accuracy = accuracy;
  if (typeof r.modelVersion === "string") out.modelVersion = r.modelVersion;
  else if (r.decision === "promoted" && typeof candidate.version === "number")
    out.modelVersion = String(candidate.version);
  return out;
}

/** What a listing says of a report: its outcome and figures, never its (possibly large) result. */
export interface ReportSummary {
  id: string;
  jobId: string;
  type: string;
  state: ReportMessage["state"];
  startedAt: number | null;
  finishedAt: number | null;
  /** The error's code and the start of its message, when the job failed. */
  error?: { code: string; message: string };
  /** Why it failed or was rejected, one line. */
  reason?: string;
  figures: ReportFigures;
}

/** A report's summary: `/api/devices` stays small however large the reports are. */
export function summarizeReport(r: ReportMessage): ReportSummary {
  const out: ReportSummary = {
    id: String(r.id),
    jobId: String(r.jobId),
    type: String(r.type),
    state: r.state,
    startedAt: typeof r.startedAt === "number" ? r.startedAt : null,
    finishedAt: typeof r.finishedAt === "number" ? r.finishedAt : null,
    figures: reportFigures(r.result),
  };
  if (r.error !== undefined && r.error !== null) {
    out.error = { code: String(r.error.code), message: String(r.error.message).slice(0, 200) };
  }
  const reason = failureReason(r.error, r.result);
  if (reason !== undefined) out.reason = reason.slice(0, 300);
  return out;
}

/** A job as the device history lists it: state, stage, figures, stage times and why it failed, not its result. */
export function jobSummary(j: JobRecord): Omit<JobRecord, "result"> & {
  figures: ReportFigures;
  stageMs: Record<string, number> | null;
  reason?: string;
} {
  const { result, ...rest } = j;
  const stageMs =
    isRecord(result) && isRecord(result.stageMs) ? (result.stageMs as Record<string, number>) : null;
  const reason = failureReason(j.error, result);
  return { ...rest, figures: reportFigures(result), stageMs, ...(reason === undefined ? {} : { reason }) };
}

/**
 * A device as listed: its last report summarized, the figures of its latest
 * report that had any, and, while it is online and serves a stored version
 * because the model it was started with did not load, what it says of that.
 */
export function deviceSummary(
  d: DeviceRecord,
  figures: ReportFigures = reportFigures(d.lastReport?.result),
): Omit<DeviceRecord, "lastReport"> & {
  lastReport: ReportSummary | null;
  figures: ReportFigures;
  degraded?: string;
} {
  const degraded = degradedLine(d);
  return {
    ...d,
    lastReport: d.lastReport === null ? null : summarizeReport(d.lastReport),
    figures,
    ...(degraded === undefined ? {} : { degraded }),
  };
}

/** How many of a device's reports are searched for its latest figures. */
const FIGURES_LOOKBACK = 20;

const FIGURE_KEYS = ["int8P50Ms", "fp32P50Ms", "agreement", "accuracy"] as const;

/**
 * Each figure from the device's latest report that had it: a bench or a
 * rollback after a recalibration must not blank the table's agreement (nor
 * a recalibration the bench's latency). Looked up once per device and last
 * report, then cached.
 */
export function createFiguresCache(store: FleetStore): (d: DeviceRecord) => Promise<ReportFigures> {
  const cache = new Map<string, { reportId: string; figures: ReportFigures }>();
  return async (d) => {
    const own = reportFigures(d.lastReport?.result);
    if (d.lastReport === null || FIGURE_KEYS.every((k) => own[k] !== undefined)) return own;
    const key = `${d.fleet}/${d.device}`;
    const hit = cache.get(key);
    if (hit?.reportId === d.lastReport.id) return hit.figures;
    const figures: ReportFigures = { ...own };
    for (const r of await store.reports(d.fleet, d.device, FIGURES_LOOKBACK)) {
      const f = reportFigures(r.result);
      for (const k of FIGURE_KEYS) if (figures[k] === undefined && f[k] !== undefined) figures[k] = f[k];
      // The bound travels with the agreement of the same report.
      if (
        figures.agreement === f.agreement &&
        figures.agreementLower === undefined &&
        f.agreementLower !== undefined
      )
        figures.agreementLower = f.agreementLower;
      if (figures.agreement === f.agreement && figures.task === undefined && f.task !== undefined)
        figures.task = f.task;
      if (figures.agreement === f.agreement && figures.taskMetric === undefined && f.taskMetric !== undefined)
        figures.taskMetric = f.taskMetric;
    }
    cache.set(key, { reportId: d.lastReport.id, figures });
    return figures;
  };
}

/** The overview: devices with figures, filtered by fleet and state, with the fleet's aggregates and alerts. */
export async function fleetOverview(
  store: FleetStore,
  latestFigures: (d: DeviceRecord) => Promise<ReportFigures>,
  fleet: string | undefined,
  state: string | null,
  now: number,
) {
  const all = await store.devices(fleet);
  const figures = new Map<DeviceRecord, ReportFigures>();
  for (const d of all) figures.set(d, await latestFigures(d));
  const jobs = await recentJobs(store, all);
  const alerts = fleetAlerts(all, jobs, now);
  const alerting = new Set(alerts.map((a) => `${a.fleet}/${a.device}`));
  const devices = all.filter((d) => inState(d, state, alerting));
  const fleets = fleet === undefined ? [...new Set(all.map((d) => d.fleet))] : [fleet];
  return {
    fleets,
    aggregates: fleetAggregates(all, (d) => figures.get(d) ?? {}),
    alerts,
    devices: devices.map((d) => deviceSummary(d, figures.get(d))),
  };
}
