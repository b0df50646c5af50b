/**
 * The fleet wire protocol, shared by the agent's link, the controller and the
 * CLI: topic names under `quantd/v1/{fleet}/{device}/`, the JSON payloads, and
 * the validation of incoming commands. A command that fails validation is
 * answered with a {@link QuantdError} (`COMMAND_INVALID`, `COMMAND_EXPIRED`)
 * and changes nothing.
 */
import { QuantdError, type QuantdErrorJSON } from "../errors.ts";
import { isRecord } from "../json.ts";
import {
  CALIBRATION_METHODS,
  type CalibrationMethod,
  QUANTIZE_PREFERENCES,
  type QuantizePreference,
  REQUESTED_MODES,
  type RequestedMode,
} from "../quant/methods.ts";
import type { Job, JobState } from "../store/jobs.ts";

/** Version segment of every topic; bumped only for incompatible payload changes. */
export const TOPIC_ROOT = "quantd/v1";

/** What a fleet or device name may look like: one safe topic level, never starting with `_` (reserved). */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** What a command id may look like (the same rule as job ids). */
export const COMMAND_ID_PATTERN = /^[A-Za-z0-9][\w.:-]{0,127}$/;

// ---------------------------------------------------------------- size caps
// Every message is bounded, so nobody who can publish can make a device or a
// controller read, parse or store without limit. The MQTT Maximum Packet Size
// (1 MiB by default) stops bigger packets at the broker; these caps are the
// payload schemas' own.

/** Furthest ahead a signed command may expire; a device remembers each command id until then. */
export const MAX_COMMAND_TTL_MS = 24 * 3_600_000;
/** Largest command body a device parses. */
export const MAX_COMMAND_BYTES = 64 * 1024;
/** Largest `status` body the controller stores. */
export const MAX_STATUS_BYTES = 16 * 1024;
/** Largest `jobs/{id}` body the controller stores. */
export const MAX_JOB_BYTES = 16 * 1024;
/** Largest `report` body: a device cuts its result down to fit, the controller refuses more. */
export const MAX_REPORT_BYTES = 128 * 1024;
/** Largest `telemetry` body the controller parses. */
export const MAX_TELEMETRY_BYTES = 128 * 1024;
/** Samples per `telemetry` message the controller keeps (the newest; the rest are counted). */
export const MAX_TELEMETRY_SAMPLES = 120;

/**
 * Checks a fleet or device name.
 *
 * @throws CONFIG_INVALID naming `key` when it is not one safe topic level
 */
export function checkName(value: string, key: string): string {
  if (typeof value !== "string" || !NAME_PATTERN.test(value)) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `${key} must be 1-64 characters of letters, digits, '_', '.', '-' (starting with a letter or digit), got ${JSON.stringify(value)}`,
      { details: { key } },
    );
  }
  return value;
}

/** The fleet a device's reports name when it belongs to none (`quantd job … --wait` without a `fleet` config). */
export const LOCAL_FLEET = "local";

/**
 * A host name made into a device name: every character a topic level may not
 * hold becomes `-`, what does not start with a letter or digit is cut, at most
 * 64 characters; `device` when nothing is left. The one rule for a device's
 * default name (the agent's config and the reports of jobs run without one).
 */
export function deviceNameOf(host: string): string {
  const name = host
    .replace(/[^A-Za-z0-9_.-]/g, "-")
    .replace(/^[^A-Za-z0-9]+/, "")
    .slice(0, 64);
  return name === "" ? "device" : name;
}

/** Topic builders for one device. */
export interface DeviceTopics {
  base: string;
  status: string;
  telemetry: string;
  report: string;
  job(id: string): string;
  cmd(name: CommandName): string;
  /** Filter the agent subscribes to for commands. */
  cmdFilter: string;
  /** Where a requester with this client id wants replies (under the device's own tree, so one ACL covers it). */
  reply(requesterId: string): string;
}

/** The topics of `device` in `fleet`. @throws CONFIG_INVALID on a bad name */
export function deviceTopics(fleet: string, device: string): DeviceTopics {
  const base = `${TOPIC_ROOT}/${checkName(fleet, "fleet")}/${checkName(device, "device")}`;
  return {
    base,
    status: `${base}/status`,
    telemetry: `${base}/telemetry`,
    report: `${base}/report`,
    job: (id) => `${base}/jobs/${id}`,
    cmd: (name) => `${base}/cmd/${name}`,
    cmdFilter: `${base}/cmd/+`,
    reply: (requesterId) => `${base}/reply/${requesterId}`,
  };
}

/** The shared subscription controllers use, so replicas split the fleet's messages. */
export const CONTROLLER_SHARED_FILTER = `$share/quantd-controllers/${TOPIC_ROOT}/+/+/#`;

/** The same messages without sharing, for a broker that has no shared subscriptions (one controller only). */
export const CONTROLLER_FILTER = `${TOPIC_ROOT}/+/+/#`;

/** A topic of the fleet tree, decoded. */
export type ParsedTopic =
  | { kind: "status"; fleet: string; device: string }
  | { kind: "telemetry"; fleet: string; device: string }
  | { kind: "report"; fleet: string; device: string }
  | { kind: "job"; fleet: string; device: string; jobId: string }
  | { kind: "cmd"; fleet: string; device: string; name: string }
  | { kind: "reply"; fleet: string; device: string; requester: string };

/** Decodes a topic of the fleet tree, or `undefined` for anything else. */
export function parseTopic(topic: string): ParsedTopic | undefined {
  const parts = topic.split("/");
  if (parts.length < 5 || `${parts[0]}/${parts[1]}` !== TOPIC_ROOT) return undefined;
  const fleet = parts[2]!;
  const device = parts[3]!;
  if (!NAME_PATTERN.test(fleet) || !NAME_PATTERN.test(device)) return undefined;
  const rest = parts.slice(4);
  if (rest.length === 1) {
    if (rest[0] === "status") return { kind: "status", fleet, device };
    if (rest[0] === "telemetry") return { kind: "telemetry", fleet, device };
    if (rest[0] === "report") return { kind: "report", fleet, device };
    return undefined;
  }
  if (rest.length === 2) {
    const [head, tail] = rest as [string, string];
    if (head === "jobs") return { kind: "job", fleet, device, jobId: tail };
    if (head === "cmd") return { kind: "cmd", fleet, device, name: tail };
    if (head === "reply") return { kind: "reply", fleet, device, requester: tail };
  }
  return undefined;
}

// ---------------------------------------------------------------- payloads

/** The model a device serves, as reported in its status. */
export interface ModelInfo {
  /** Registry version id. */
  version: string;
  /** `fp32`, `int8-static`, `int8-dynamic`, … as the registry names it. */
  kind: string;
  sha256?: string;
  /** Set when the model the agent was started with (`--model`) did not load and this stored version serves instead. */
  rejectedAtStart?: { path: string; code: string; message: string };
}

/**
 * What a degraded device says of the model it was started with: one line, or
 * `undefined` when the model it reports (a status's `model`, whatever its
 * shape: it comes from the device) carries no well-formed `rejectedAtStart`.
 * The fleet CLI and the dashboard's alerts word it alike.
 */
export function describeRejectedAtStart(model: unknown): string | undefined {
  if (!isRecord(model) || !isRecord(model.rejectedAtStart)) return undefined;
  const { path, code, message } = model.rejectedAtStart;
  if (typeof path !== "string" || typeof code !== "string") return undefined;
  const why = typeof message === "string" && message !== "" ? `${code}: ${message}` : code;
  const version = typeof model.version === "string" ? `version ${model.version}` : "a stored version";
  return `started with ${path}, which did not load (${why}); ${version} serves instead`;
}

/** Outbox figures every status and telemetry message carries, so drops are visible fleet-wide. */
export interface OutboxFigures {
  queued: number;
  bytes: number;
  dropped: number;
}

/** The retained `status` message. */
export interface StatusMessage {
  state: "online" | "offline";
  fleet: string;
  device: string;
  /** ms since the epoch; `null` in the Last Will (written at connect time, published later). */
  at: number | null;
  agentVersion?: string;
  model?: ModelInfo | null;
  outbox?: OutboxFigures;
  /** Why offline: `will` (the broker lost the agent) or `shutdown`. */
  reason?: "will" | "shutdown";
}

/** One telemetry sample, taken by the agent each interval. */
export interface TelemetrySample {
  at: number;
  /** Requests per second over the interval. */
  requestRate?: number;
  /** Percentiles of the interval's batch times, in ms (absent when no batch ran). */
  latencyMs?: { p50: number; p95: number; p99: number };
  rssBytes?: number;
  /** The memory the agent may use: its cgroup's memory.max (systemd MemoryMax=), else physical memory. */
  memoryLimitBytes?: number;
  cpuTempC?: number;
  [key: string]: unknown;
}

/** A `telemetry` message: the samples since the last one. */
export interface TelemetryMessage {
  device: string;
  at: number;
  samples: TelemetrySample[];
  outbox: OutboxFigures;
}

/** A `jobs/{id}` progress message. */
export interface JobMessage {
  id: string;
  type: string;
  state: JobState;
  stage: string | null;
  progress: number;
  at: number;
}

/** A `report` message: a finished job's outcome (QoS 1, via the outbox). */
export interface ReportMessage {
  /** Unique per report (the job id: a job reports once) — subscribers dedupe on it. */
  id: string;
  device: string;
  jobId: string;
  type: string;
  state: JobState;
  result?: unknown;
  error?: QuantdErrorJSON;
  startedAt: number | null;
  finishedAt: number | null;
}

/** The `report` message of a finished job: its id is the report's, so a job reports once. */
export function jobReport(job: Job, device: string): ReportMessage {
  const report: ReportMessage = {
    id: job.id,
    device,
    jobId: job.id,
    type: job.type,
    state: job.state,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
  };
  if (job.result !== null) report.result = job.result;
  if (job.error !== null) report.error = job.error;
  return report;
}

/** The `jobs/{id}` message of a job's change. */
export function jobMessage(job: Job, at: number): JobMessage {
  return { id: job.id, type: job.type, state: job.state, stage: job.stage, progress: job.progress, at };
}

/**
 * The figures a job result should carry for the fleet dashboard (any other
 * keys are kept as they are): measured int8 and fp32 p50 latency, top-1
 * agreement of int8 with fp32 on held-out samples, labelled accuracy, and the
 * model version the job produced.
 */
export interface ReportFigures {
  int8P50Ms?: number;
  fp32P50Ms?: number;
  agreement?: number;
  /** The agreement's lower confidence bound (the gate's figure), when the report carries it. */
  agreementLower?: number;
  /**
   * What the agreement counts for a model other than a sentence classifier, e.g.
   * `token-classification: tokens` (from the validation's task figures).
   */
  task?: string;
  /**
   * The figure a user of that task reads beside the agreement (from the same
   * validation): mean cosine to fp32 (embeddings), Pearson (regression), the
   * share of samples whose every token or label decision agrees (token
   * classification, multi-label).
   */
  taskMetric?: TaskMetric;
  accuracy?: number;
  modelVersion?: string;
}

/** A task's own figure in a report (see {@link ReportFigures.taskMetric}). */
export interface TaskMetric {
  /** The task (`embedding`, `regression`, …). */
  kind: string;
  /** `mean cosine`, `Pearson`, `samples whose every token agrees`. */
  name: string;
  value: number;
  /** Shown as a percentage (a share of samples) rather than a coefficient. */
  share: boolean;
}

/** A command's reply, on the request's Response Topic with its Correlation Data. */
export type CommandReply =
  | { id: string | null; command: string; ok: true; result: unknown }
  | { id: string | null; command: string; ok: false; error: QuantdErrorJSON };

// ---------------------------------------------------------------- commands

/** Every command name, as the last level of `cmd/{name}`. */
export const COMMAND_NAMES = [
  "recalibrate",
  "quantize-dynamic",
  "bench",
  "rollback",
  "status",
  "set-config",
  "collect",
  "release",
] as const;

// Every command's cost is bounded by its parameters' ranges (and every job by the job timeout):
// a command from a trusted operator can still be a mistake.
/** Most calibration samples a `recalibrate` command may ask for. */
export const MAX_COMMAND_SAMPLES = 10_000;
/** Most runs a `bench` command may ask for (a run is one batch of the probe texts). */
export const MAX_BENCH_ITERATIONS = 1_000;
/** Longest sequence a `bench` command may ask for. */
export const MAX_BENCH_SEQ = 512;

/** A command name. */
export type CommandName = (typeof COMMAND_NAMES)[number];

/**
 * Keys `set-config` may change. Paths (model, socket, state directory) are
 * deliberately absent: a remote party must never point the agent at a file.
 */
export const SET_CONFIG_KEYS = {
  "capture.enabled": "boolean",
  "capture.rate": "fraction",
  "batching.maxBatch": "int",
  "batching.maxDelayMs": "int",
  "limits.maxQueue": "int",
  "telemetry.intervalMs": "int",
} as const;

/** A key `set-config` accepts. */
export type SetConfigKey = keyof typeof SET_CONFIG_KEYS;

/** The accuracy gate of a recalibration. */
export interface GateParams {
  /** Minimum int8/fp32 top-1 agreement on held-out samples, 0…1. */
  minAgreement?: number;
  /** Maximum accuracy drop vs fp32 on labelled samples, 0…1. */
  maxAccuracyDrop?: number;
  /** What must clear `minAgreement`: the agreement's lower confidence bound (default) or the point estimate. */
  decideOn?: "bound" | "point";
  /** Confidence of the lower bound, 0…1 (default 0.95). */
  confidence?: number;
}

/** `recalibrate` parameters. */
export interface RecalibrateParams {
  samples?: number;
  method?: CalibrationMethod;
  gate?: GateParams;
  /** The int8 form: `auto` builds every form fast on the board and times them there. @defaultValue "static" */
  mode?: RequestedMode;
  /** A candidate slower than fp32: `latency` keeps fp32 serving, `size` serves the smaller int8. @defaultValue the device's `quantize.prefer` */
  prefer?: QuantizePreference;
}

/** `p[key]` when it is one of `choices`; undefined when absent. @throws COMMAND_INVALID otherwise */
function choiceIn<T extends string>(
  p: Record<string, unknown>,
  key: string,
  choices: readonly T[],
): T | undefined {
  const v = p[key];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !(choices as readonly string[]).includes(v)) {
    throw invalid(`${key} must be one of ${choices.join(", ")}`, { key });
  }
  return v as T;
}

/** `quantize-dynamic` parameters. */
export interface QuantizeDynamicParams {
  gate?: GateParams;
}

/** `bench` parameters. */
export interface BenchParams {
  /** Sequence length of the benchmark inputs. */
  seq?: number;
  iterations?: number;
}

/** `rollback` parameters. */
export interface RollbackParams {
  /** Registry version to return to. @defaultValue the previous version */
  version?: string;
}

/**
 * `release` parameters: take release `release` (its id, the SHA-256 of its
 * signed manifest) from `url` (the controller's HTTP base), check it against
 * the device's trusted release keys and recalibrate on it as the new fp32 base.
 */
export interface ReleaseParams {
  release: string;
  url: string;
  samples?: number;
  gate?: GateParams;
  /** Largest accepted candidate/serving latency ratio in the job's benchmark. */
  maxLatencyRatio?: number;
}

/** Longest release URL a command may carry. */
export const MAX_RELEASE_URL_CHARS = 2048;

/** `collect` parameters. */
export interface CollectParams {
  action: "start" | "stop";
  /** Share of live requests captured, 0…1 (start only). */
  rate?: number;
}

/** `set-config` parameters: allow-listed keys only. */
export type SetConfigParams = Partial<Record<SetConfigKey, number | boolean>>;

/** A validated command. */
export type FleetCommand =
  | { name: "recalibrate"; params: RecalibrateParams }
  | { name: "quantize-dynamic"; params: QuantizeDynamicParams }
  | { name: "bench"; params: BenchParams }
  | { name: "rollback"; params: RollbackParams }
  | { name: "status"; params: Record<string, never> }
  | { name: "set-config"; params: SetConfigParams }
  | { name: "collect"; params: CollectParams }
  | { name: "release"; params: ReleaseParams };

/** A command as it travels: an id (idempotency key), an expiry and parameters. */
export interface CommandEnvelope {
  id: string;
  /** ms since the epoch after which the agent refuses the command. */
  expiresAt?: number;
  params?: Record<string, unknown>;
}

function invalid(message: string, details?: Record<string, unknown>): QuantdError {
  return new QuantdError("COMMAND_INVALID", message, details === undefined ? {} : { details });
}

function onlyKeys(o: Record<string, unknown>, allowed: readonly string[], what: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) {
      throw invalid(`unknown ${what} parameter ${JSON.stringify(k)} (allowed: ${allowed.join(", ")})`, {
        key: k,
      });
    }
  }
}

function intIn(o: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(`${key} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`, { key });
  }
  return v;
}

function fraction(o: Record<string, unknown>, key: string): number | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || v > 1) {
    throw invalid(`${key} must be a number in [0, 1], got ${JSON.stringify(v)}`, { key });
  }
  return v;
}

function parseGate(v: unknown): GateParams | undefined {
  if (v === undefined) return undefined;
  if (!isRecord(v)) throw invalid("gate must be an object", { key: "gate" });
  onlyKeys(v, ["minAgreement", "maxAccuracyDrop", "decideOn", "confidence"], "gate");
  const gate: GateParams = {};
  const a = fraction(v, "minAgreement");
  const d = fraction(v, "maxAccuracyDrop");
  const c = fraction(v, "confidence");
  if (a !== undefined) gate.minAgreement = a;
  if (d !== undefined) gate.maxAccuracyDrop = d;
  if (c !== undefined) gate.confidence = c;
  const on = v["decideOn"];
  if (on !== undefined) {
    if (on !== "bound" && on !== "point") {
      throw invalid(`gate.decideOn must be bound or point, got ${JSON.stringify(on)}`, { key: "decideOn" });
    }
    gate.decideOn = on;
  }
  return gate;
}

/**
 * Validates a command's parameters.
 *
 * @throws COMMAND_INVALID on an unknown command, an unknown key, or a value of the wrong type or range
 */
export function parseCommand(name: string, raw: unknown): FleetCommand {
  const p = raw ?? {};
  if (!isRecord(p)) throw invalid("params must be a JSON object");
  if (!(COMMAND_NAMES as readonly string[]).includes(name)) {
    throw invalid(`unknown command ${JSON.stringify(name)} (known: ${COMMAND_NAMES.join(", ")})`, {
      command: name,
    });
  }
  const cmd = name as CommandName;
  switch (cmd) {
    case "recalibrate": {
      onlyKeys(p, ["samples", "method", "gate", "mode", "prefer"], cmd);
      const params: RecalibrateParams = {};
      const samples = intIn(p, "samples", 1, MAX_COMMAND_SAMPLES);
      if (samples !== undefined) params.samples = samples;
      const method = choiceIn(p, "method", CALIBRATION_METHODS);
      if (method !== undefined) params.method = method;
      const gate = parseGate(p.gate);
      if (gate !== undefined) params.gate = gate;
      const mode = choiceIn(p, "mode", REQUESTED_MODES);
      if (mode !== undefined) params.mode = mode;
      const prefer = choiceIn(p, "prefer", QUANTIZE_PREFERENCES);
      if (prefer !== undefined) params.prefer = prefer;
      return { name: cmd, params };
    }
    case "quantize-dynamic": {
      onlyKeys(p, ["gate"], cmd);
      const gate = parseGate(p.gate);
      return { name: cmd, params: gate === undefined ? {} : { gate } };
    }
    case "bench": {
      onlyKeys(p, ["seq", "iterations"], cmd);
      const params: BenchParams = {};
      const seq = intIn(p, "seq", 1, MAX_BENCH_SEQ);
      const iterations = intIn(p, "iterations", 1, MAX_BENCH_ITERATIONS);
      if (seq !== undefined) params.seq = seq;
      if (iterations !== undefined) params.iterations = iterations;
      return { name: cmd, params };
    }
    case "rollback": {
      onlyKeys(p, ["version"], cmd);
      if (p.version !== undefined && (typeof p.version !== "string" || !NAME_PATTERN.test(p.version))) {
        throw invalid("version must be a registry version id", { key: "version" });
      }
      return { name: cmd, params: typeof p.version === "string" ? { version: p.version } : {} };
    }
    case "status":
      onlyKeys(p, [], cmd);
      return { name: cmd, params: {} };
    case "set-config": {
      const keys = Object.keys(SET_CONFIG_KEYS);
      onlyKeys(p, keys, "set-config");
      if (Object.keys(p).length === 0) throw invalid("set-config needs at least one key");
      const params: SetConfigParams = {};
      for (const [k, v] of Object.entries(p)) {
        const key = k as SetConfigKey;
        const kind = SET_CONFIG_KEYS[key];
        if (kind === "boolean") {
          if (typeof v !== "boolean") throw invalid(`${key} must be true or false`, { key });
          params[key] = v;
        } else if (kind === "fraction") {
          params[key] = fraction(p, key) as number;
        } else {
          params[key] = intIn(p, key, 0, 1_000_000) as number;
        }
      }
      return { name: cmd, params };
    }
    case "release": {
      onlyKeys(p, ["release", "url", "samples", "gate", "maxLatencyRatio"], cmd);
      if (typeof p.release !== "string" || !/^[0-9a-f]{64}$/.test(p.release)) {
        throw invalid("release must be a release id (64 hex digits)", { key: "release" });
      }
      if (
        typeof p.url !== "string" ||
        p.url.length > MAX_RELEASE_URL_CHARS ||
        !/^https?:\/\/[^\s]+$/.test(p.url)
      ) {
        throw invalid("url must be the controller's http:// or https:// address", { key: "url" });
      }
      const params: ReleaseParams = { release: p.release, url: p.url };
      const samples = intIn(p, "samples", 1, MAX_COMMAND_SAMPLES);
      if (samples !== undefined) params.samples = samples;
      const gate = parseGate(p.gate);
      if (gate !== undefined) params.gate = gate;
      const ratio = p.maxLatencyRatio;
      if (ratio !== undefined) {
        if (typeof ratio !== "number" || !(ratio > 0 && ratio < 100)) {
          throw invalid("maxLatencyRatio must be a positive ratio below 100", { key: "maxLatencyRatio" });
        }
        params.maxLatencyRatio = ratio;
      }
      return { name: cmd, params };
    }
    case "collect": {
      onlyKeys(p, ["action", "rate"], cmd);
      if (p.action !== "start" && p.action !== "stop") {
        throw invalid('collect needs action "start" or "stop"', { key: "action" });
      }
      const rate = fraction(p, "rate");
      return { name: cmd, params: rate === undefined ? { action: p.action } : { action: p.action, rate } };
    }
  }
}

/**
 * Decodes a command message body into its envelope.
 *
 * @throws COMMAND_INVALID when the body is not a JSON object with a valid `id`, a numeric `expiresAt` and object `params`
 */
export function parseEnvelope(payload: Uint8Array): CommandEnvelope {
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
  } catch (err) {
    throw new QuantdError("COMMAND_INVALID", "command body is not UTF-8 JSON", { cause: err });
  }
  if (!isRecord(body)) throw invalid("command body must be a JSON object");
  onlyKeys(body, ["id", "expiresAt", "params"], "command");
  if (typeof body.id !== "string" || !COMMAND_ID_PATTERN.test(body.id)) {
    throw invalid("command id must be 1-128 characters of letters, digits, '_', '.', ':', '-'", {
      key: "id",
    });
  }
  const env: CommandEnvelope = { id: body.id };
  if (body.expiresAt !== undefined) {
    if (typeof body.expiresAt !== "number" || !Number.isFinite(body.expiresAt)) {
      throw invalid("expiresAt must be a time in ms since the epoch", { key: "expiresAt" });
    }
    env.expiresAt = body.expiresAt;
  }
  if (body.params !== undefined) {
    if (!isRecord(body.params)) throw invalid("params must be a JSON object", { key: "params" });
    env.params = body.params;
  }
  return env;
}

/** Encodes a value as a UTF-8 JSON payload. */
export function encodeJson(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/** Decodes a UTF-8 JSON payload, or `undefined` when it is not JSON. */
export function decodeJson(payload: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return undefined;
  }
}

/**
 * A report's payload within {@link MAX_REPORT_BYTES}: a result too large to
 * send is replaced by its size (the controller would refuse the whole report,
 * and the job's outcome matters more than its bulk).
 */
export function encodeReport<R extends { result?: unknown; error?: QuantdErrorJSON | null }>(
  report: R,
): Uint8Array {
  const body = encodeJson(report);
  if (body.byteLength <= MAX_REPORT_BYTES) return body;
  const cut: R = { ...report, result: { truncated: true, resultBytes: body.byteLength } };
  if (report.error !== undefined && report.error !== null) {
    cut.error = { code: report.error.code, message: String(report.error.message).slice(0, 4096) };
  }
  return encodeJson(cut);
}
