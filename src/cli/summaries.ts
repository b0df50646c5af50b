/**
 * Human summaries of what the agent and the fleet answer: a finished job's
 * report, a device's status, the model registry's versions. `--json` prints
 * the full objects instead; these lines are for a person at a terminal, so
 * they pick the figures that decide something (decision, agreement, latency,
 * size, stages) and leave the rest to `--json`.
 */
import type { QuantdErrorJSON } from "../errors.ts";
import { describeRejectedAtStart, type StatusMessage } from "../fleet/protocol.ts";
import { describeRecordedAgreement, floorPct } from "../quant/gate.ts";
import type { ModelVersionView } from "../server/types.ts";
import { describeRecalibration } from "./commands/job.ts";
import { formatBytes, formatMs, formatPercent, renderTable } from "./render.ts";

/** A finished job as the store holds it or as a fleet report carries it. */
export interface JobView {
  id: string;
  type: string;
  state: string;
  result?: unknown;
  error?: QuantdErrorJSON | null;
  startedAt?: number | null;
  finishedAt?: number | null;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A recalibration result is recognized by its decision, whatever job type produced it (quantize-dynamic too). */
function isRecalibrationResult(v: unknown): boolean {
  return (
    isRecord(v) && (v["decision"] === "promoted" || v["decision"] === "rejected") && isRecord(v["stageMs"])
  );
}

function scalarText(key: string, v: unknown): string {
  if (typeof v === "number") {
    if (/Ms$/.test(key)) return formatMs(v);
    if (/Bytes$/.test(key)) return formatBytes(v);
    if (/^(agreement|accuracy)$/i.test(key)) return formatPercent(v);
    return Number.isInteger(v) ? String(v) : v.toFixed(4);
  }
  if (Array.isArray(v)) return v.map((x) => (isRecord(x) ? JSON.stringify(x) : String(x))).join(", ");
  return String(v);
}

/**
 * A result object as `key value` rows, nested keys joined with dots (`a.b`),
 * so an unknown job type still reads as a table rather than one line of JSON.
 * Durations (`…Ms`) and sizes (`…Bytes`) get their units.
 */
export function fieldRows(obj: Record<string, unknown>, prefix = "", depth = 0): string[][] {
  const rows: string[][] = [];
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined || v === null) continue;
    const key = prefix === "" ? k : `${prefix}.${k}`;
    if (isRecord(v) && depth < 2) rows.push(...fieldRows(v, key, depth + 1));
    else rows.push([key, isRecord(v) ? JSON.stringify(v) : scalarText(k, v)]);
  }
  return rows;
}

/** Lines for a finished (or failed) job: a recalibration's figures, else its result as a table. */
export function describeJob(job: JobView): string[] {
  const error = job.error ?? null;
  if (isRecalibrationResult(job.result) || (job.type === "recalibrate" && job.result === undefined)) {
    return describeRecalibration({ id: job.id, state: job.state, error, result: job.result ?? null });
  }
  const lines = [`job ${job.id} (${job.type}): ${job.state}${error === null ? "" : ` (${error.code})`}`];
  const rows: string[][] = [];
  if (error !== null) rows.push(["error", `${error.code}: ${error.message}`]);
  if (isRecord(job.result)) rows.push(...fieldRows(job.result));
  else if (job.result !== undefined && job.result !== null) rows.push(["result", String(job.result)]);
  if (typeof job.startedAt === "number" && typeof job.finishedAt === "number")
    rows.push(["took", formatMs(job.finishedAt - job.startedAt)]);
  for (const l of renderTable(rows)) lines.push(`  ${l}`);
  return lines;
}

/** What `quantd fleet recalibrate|rollback` learned about one device. */
export interface FleetOutcomeView {
  device: string;
  id: string;
  state: string;
  report?: JobView;
  error?: QuantdErrorJSON;
}

/** Lines for one device's outcome of a fleet job command: the refusal, the queued job, or its report. */
export function describeFleetOutcome(o: FleetOutcomeView): string[] {
  if (o.report !== undefined) return [`${o.device}:`, ...describeJob(o.report).map((l) => `  ${l}`)];
  const why = o.error === undefined ? "" : ` ${o.error.code}: ${o.error.message}`;
  return [`${o.device}: job ${o.id} ${o.state}${why}`];
}

function modelText(m: unknown): string {
  if (!isRecord(m)) return "-";
  const version = m["version"] ?? "?";
  return m["kind"] === undefined ? String(version) : `${String(version)} (${String(m["kind"])})`;
}

function ago(at: number | null | undefined, now: number): string {
  if (at === null || at === undefined) return "-";
  const s = Math.max(0, Math.round((now - at) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

/**
 * Lines for the fleet's retained statuses (`quantd fleet devices`): a table,
 * then a line per online device serving a stored version because the model it
 * was started with did not load (the `degraded` column marks its row).
 */
export function describeFleetDevices(statuses: readonly StatusMessage[], now: number): string[] {
  const rows = [["device", "state", "agent", "model", "kind", "outbox", "since", ""]];
  const notes: string[] = [];
  for (const s of statuses) {
    const degraded = s.state === "online" ? describeRejectedAtStart(s.model) : undefined;
    if (degraded !== undefined) notes.push(`${s.device} degraded: ${degraded}`);
    rows.push([
      s.device,
      s.state,
      s.agentVersion ?? "-",
      s.model?.version ?? "-",
      s.model?.kind ?? "-",
      s.outbox === undefined ? "-" : `${s.outbox.queued} queued, ${s.outbox.dropped} dropped`,
      ago(s.at, now),
      degraded === undefined ? "" : "degraded",
    ]);
  }
  return [...renderTable(rows), ...notes];
}

/** Lines for a device's status reply (`quantd fleet report DEVICE`): the device, then its last job. */
export function describeDeviceStatus(device: string, status: Record<string, unknown>): string[] {
  const rows: string[][] = [
    ["device", device],
    ["state", String(status["state"] ?? "-")],
    ["agent", String(status["agentVersion"] ?? "-")],
    ["model", modelText(status["model"] ?? status["serving"])],
  ];
  const degraded = describeRejectedAtStart(status["model"]);
  if (degraded !== undefined) rows.push(["degraded", degraded]);
  if (typeof status["queueDepth"] === "number") rows.push(["queue", `${status["queueDepth"]} requests`]);
  if (typeof status["running"] === "string") rows.push(["running job", status["running"]]);
  const outbox = status["outbox"];
  if (isRecord(outbox)) rows.push(["outbox", `${outbox["queued"]} queued, ${outbox["dropped"]} dropped`]);
  const job = status["lastJob"];
  rows.push(["last job", isRecord(job) ? `${job["id"]} (${job["type"]})` : "none"]);
  const lines = renderTable(rows);
  if (isRecord(job) && typeof job["id"] === "string" && typeof job["state"] === "string") {
    const view: JobView = {
      id: job["id"],
      type: String(job["type"]),
      state: job["state"],
      result: job["result"] ?? undefined,
      error: isRecord(job["error"]) ? (job["error"] as unknown as QuantdErrorJSON) : null,
      startedAt: typeof job["startedAt"] === "number" ? job["startedAt"] : null,
      finishedAt: typeof job["finishedAt"] === "number" ? job["finishedAt"] : null,
    };
    lines.push(...describeJob(view));
  }
  return lines;
}

function figure(metrics: Record<string, unknown> | undefined, path: readonly string[]): number | undefined {
  let v: unknown = metrics;
  for (const k of path) v = isRecord(v) ? v[k] : undefined;
  return typeof v === "number" ? v : undefined;
}

/** The registry's versions as a table, newest first, the serving one marked with `*`. */
export function describeModelVersions(
  versions: readonly ModelVersionView[],
  active: number | null,
): string[] {
  if (versions.length === 0) return ["no model versions registered"];
  const rows: string[][] = [["", "version", "state", "kind", "agreement", "p50", "sha256", "reason"]];
  for (const v of [...versions].sort((a, b) => b.id - a.id)) {
    const agreement = figure(v.metrics, ["validation", "agreement"]);
    // With the lower bound the gate decided on, when the version was validated with one.
    const lower = figure(v.metrics, ["validation", "agreementLower"]);
    const p50 = figure(v.metrics, ["bench", "candidateP50Ms"]);
    rows.push([
      v.id === active ? "*" : "",
      String(v.id),
      v.state,
      v.kind,
      agreement === undefined
        ? "-"
        : lower === undefined
          ? `${(agreement * 100).toFixed(2)}%`
          : `${floorPct(agreement)} (≥ ${floorPct(lower)})`,
      p50 === undefined ? "-" : formatMs(p50),
      v.sha256.slice(0, 12),
      v.reason ?? "",
    ]);
  }
  return renderTable(rows, ["left", "right", "left", "left", "right", "right"]);
}

/** One version, after a promote or rollback: what now serves. */
export function describeModelVersion(verb: string, v: ModelVersionView): string[] {
  const rows: string[][] = [
    ["version", `${v.id} (${v.kind}, ${v.state})`],
    ["file", v.path],
    ["sha256", v.sha256],
  ];
  const source = v.metrics["source"];
  if (typeof source === "string" && source !== v.path) rows.splice(1, 0, ["from", source]);
  const agreement = describeRecordedAgreement(v.metrics["validation"]);
  if (agreement !== undefined) rows.push(["agreement", agreement]);
  return [`${verb} version ${v.id}`, ...renderTable(rows).map((l) => `  ${l}`)];
}
