/**
 * Rollouts: a release put on a fleet's devices in waves that stop
 * themselves. The devices of the fleet (sorted by name) are split into
 * growing waves (`1,10,50,100%`, cumulative; the first is the canary); each
 * device of the current wave is sent a signed `release` command and quantizes
 * the release on the board (`agent/release.ts`). A wave passes when every
 * device that took the job succeeded within the gates (agreement with the new
 * fp32, the benchmark's latency ratio, and after the swap the latency and
 * error rate of its telemetry) and the soak time has passed with no breach;
 * the next wave then starts. A device that rejects or fails the job, or
 * breaches a gate, halts the rollout by itself and the devices of that wave
 * that promoted the release are rolled back to their previous version.
 *
 * A device offline when its wave starts is left pending: it gets the
 * release when it returns (while the rollout runs, until the pending expiry)
 * and does not hold its wave back. The whole state is one document in the
 * controller's store, saved by compare-and-swap on its revision, so a
 * restarted controller or a second replica continues it; commands carry
 * fixed ids, so sending one twice never runs a job twice.
 */
import { randomBytes } from "node:crypto";
import { QuantdError } from "../../errors.ts";
import { isRecord } from "../../json.ts";
import { connectMqtt, type MqttConnectOptions, type MqttConnection } from "../mqtt-client.ts";
import { checkName, type CommandReply, MAX_COMMAND_TTL_MS } from "../protocol.ts";
import { createFleetRequester, type FleetRequester } from "../operator/requester.ts";
import type { SigningKey } from "../signing.ts";
import type { DeviceRecord, FleetStore, JobRecord, RolloutRecord, TelemetryRecord } from "./store.ts";

/** Default waves: a canary, then 10 %, half, everything. */
export const DEFAULT_WAVES: readonly number[] = [1, 10, 50, 100];
/** Default soak after a wave's last success. */
export const DEFAULT_SOAK_MS = 10 * 60_000;
/** Default time a device offline during its wave may still get the release. */
export const DEFAULT_PENDING_EXPIRY_MS = 24 * 3_600_000;
/** Default engine tick. */
export const DEFAULT_ROLLOUT_TICK_MS = 2000;
/** Requests a device must have served since its swap before its error rate counts. */
export const MIN_REQUESTS_FOR_ERROR_RATE = 20;
/** Telemetry samples with latency a device must have sent before and after its swap for a latency comparison. */
export const MIN_LATENCY_SAMPLES = 3;

/** Rollout states. */
export type RolloutState = "running" | "paused" | "halted" | "completed" | "aborted";
/** States in which the engine still acts (sends releases or rollbacks). */
export const LIVE_ROLLOUT_STATES: readonly RolloutState[] = ["running", "paused", "halted"];

/** The gates a wave must pass. */
export interface RolloutGate {
  /** Minimum int8/fp32 top-1 agreement on the device's held-out samples, percent. */
  agreement?: number;
  /** Largest int8/serving latency ratio: the device's benchmark and its post-swap telemetry p50. */
  latencyRatio?: number;
  /** Largest share of failed requests after the swap. */
  errorRate?: number;
}

/** What `rollout start` asked for. */
export interface RolloutSpec {
  waves: number[];
  gate: RolloutGate;
  soakMs: number;
  pendingExpiryMs: number;
  /** Calibration samples of each device's recalibration (the device's default when absent). */
  samples?: number;
}

/** One device's part in a rollout. */
export interface DeviceRollout {
  wave: number;
  /**
   * `waiting` (its wave has not started), `pending` (offline when it should
   * get it), `sent`, `succeeded`, `failed`, `expired` (never came back in
   * time), `rollback` (to be rolled back), `rolled-back`, `skipped` (the
   * rollout stopped before it got the release).
   */
  state: string;
  jobId: string;
  since: number;
  sentAt?: number;
  finishedAt?: number;
  /** The figures its report and telemetry gave. */
  figures?: { agreement?: number; latencyRatio?: number; telemetryLatencyRatio?: number; errorRate?: number };
  /** Why it failed or was rolled back. */
  reason?: string;
  /** Its p50 latency (ms) before the swap, from telemetry. */
  baselineP50Ms?: number;
  /** Whether it serves (or served) the release's int8 model. */
  promoted?: boolean;
}

/** One wave. */
export interface WaveRollout {
  devices: string[];
  state: "waiting" | "running" | "soaking" | "passed" | "failed";
  startedAt?: number;
  soakSince?: number;
  endedAt?: number;
}

/** The rollout document. */
export interface RolloutBody {
  spec: RolloutSpec;
  releaseVersion: string;
  current: number;
  waves: WaveRollout[];
  devices: Record<string, DeviceRollout>;
  haltReason?: string;
  /** When an operator paused it (while paused): resuming moves the soak clock on by the pause. */
  pausedAt?: number;
  /** The newest events, oldest first (at most 100). */
  events: { at: number; line: string }[];
}

/** A rollout as read from the store. */
export interface Rollout extends Omit<RolloutRecord, "body"> {
  body: RolloutBody;
}

function usage(message: string, key: string): QuantdError {
  return new QuantdError("USAGE", message, { details: { flag: key } });
}

/** Parses `1,10,50,100%`: growing cumulative percentages ending at 100. @throws USAGE */
export function parseWaves(text: string): number[] {
  const waves = text
    .replace(/%/g, "")
    .split(",")
    .map((x) => Number(x.trim()));
  if (waves.length === 0 || waves.some((w) => !Number.isFinite(w) || w <= 0 || w > 100)) {
    throw usage(
      `--waves takes percentages in (0, 100] such as 1,10,50,100%, got ${JSON.stringify(text)}`,
      "waves",
    );
  }
  for (let i = 1; i < waves.length; i++) {
    if (waves[i]! <= waves[i - 1]!)
      throw usage("--waves must grow: each wave covers more of the fleet", "waves");
  }
  if (waves.at(-1) !== 100) waves.push(100);
  return waves;
}

/** Parses `agreement=99.5,latencyRatio=1.1,errorRate=0.01`. @throws USAGE */
export function parseGate(text: string): RolloutGate {
  const gate: RolloutGate = {};
  for (const part of text.split(",").filter((p) => p.trim() !== "")) {
    const [k, v] = part.split("=").map((x) => x.trim());
    const n = Number(v);
    if (k === "agreement" && n > 0 && n <= 100) gate.agreement = n;
    else if (k === "latencyRatio" && n > 0 && n < 100) gate.latencyRatio = n;
    else if (k === "errorRate" && n >= 0 && n <= 1) gate.errorRate = n;
    else {
      throw usage(
        `--gate takes agreement=PERCENT (0-100], latencyRatio=RATIO, errorRate=FRACTION [0, 1]; got ${JSON.stringify(part)}`,
        "gate",
      );
    }
  }
  return gate;
}

/** Parses `10m`, `30s`, `2h`, `500ms` or a number of seconds. @throws USAGE */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (m === null)
    throw usage(`--${flag} takes a duration such as 10m, 30s or 2h, got ${JSON.stringify(text)}`, flag);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "s") as "ms" | "s" | "m" | "h"];
  return Math.round(Number(m[1]) * unit);
}

/** Splits devices (in order) into cumulative waves; every wave gets at least one new device while any are left. */
export function planWaves(devices: readonly string[], waves: readonly number[]): string[][] {
  const out: string[][] = [];
  let taken = 0;
  for (const pct of waves) {
    const upto = Math.min(devices.length, Math.max(taken + 1, Math.ceil((pct / 100) * devices.length)));
    if (upto <= taken) continue;
    out.push(devices.slice(taken, upto));
    taken = upto;
  }
  return out;
}

function asRollout(r: RolloutRecord): Rollout {
  return { ...r, body: r.body as RolloutBody };
}

/** Options of {@link createRollout}. */
export interface CreateRolloutOptions extends RolloutSpec {
  release: string;
  fleet: string;
  now?: number;
}

/**
 * Plans and stores a rollout of a release over a fleet's devices as the
 * store knows them now. The controller's engine starts the first wave.
 *
 * @throws NOT_FOUND for an unknown release or a fleet without devices; STATE_CONFLICT when the fleet already has a live rollout
 */
export async function createRollout(store: FleetStore, o: CreateRolloutOptions): Promise<Rollout> {
  checkName(o.fleet, "fleet");
  const release = await store.release(o.release);
  if (release === undefined) throw new QuantdError("NOT_FOUND", `release ${o.release} not found`);
  const live = (await store.rollouts(LIVE_ROLLOUT_STATES)).find(
    (r) => r.fleet === o.fleet && r.state !== "halted",
  );
  if (live !== undefined) {
    throw new QuantdError(
      "STATE_CONFLICT",
      `fleet ${o.fleet} already has rollout ${live.id} (${live.state}); abort it first`,
      {
        details: { rollout: live.id },
      },
    );
  }
  const devices = (await store.devices(o.fleet)).map((d) => d.device).sort();
  if (devices.length === 0)
    throw new QuantdError("NOT_FOUND", `fleet ${o.fleet} has no devices the controller knows`);
  const now = o.now ?? Date.now();
  const id = `ro-${randomBytes(4).toString("hex")}`;
  const waves = planWaves(devices, o.waves);
  const body: RolloutBody = {
    spec: {
      waves: o.waves,
      gate: o.gate,
      soakMs: o.soakMs,
      pendingExpiryMs: o.pendingExpiryMs,
      ...(o.samples !== undefined ? { samples: o.samples } : {}),
    },
    releaseVersion: release.version,
    current: 0,
    waves: waves.map((w) => ({ devices: w, state: "waiting" })),
    devices: {},
    events: [
      {
        at: now,
        line: `started: ${waves.map((w) => w.length).join(" + ")} devices in ${waves.length} waves`,
      },
    ],
  };
  waves.forEach((w, i) => {
    for (const d of w) body.devices[d] = { wave: i, state: "waiting", jobId: `${id}-${d}`, since: now };
  });
  const rec = {
    id,
    fleet: o.fleet,
    release: o.release,
    state: "running",
    createdAt: now,
    updatedAt: now,
    body,
  };
  if (!(await store.saveRollout(rec, 0))) throw new QuantdError("STATE_CONFLICT", `rollout ${id} exists`);
  return { ...rec, revision: 1 };
}

/** A rollout by id or unique prefix. @throws NOT_FOUND */
export async function findRollout(store: FleetStore, idOrPrefix?: string): Promise<Rollout> {
  if (idOrPrefix !== undefined) {
    const exact = await store.rollout(idOrPrefix);
    if (exact !== undefined) return asRollout(exact);
  }
  const all = await store.rollouts(undefined, 1000);
  const hits = idOrPrefix === undefined ? all.slice(0, 1) : all.filter((r) => r.id.startsWith(idOrPrefix));
  if (hits.length !== 1) {
    throw new QuantdError(
      "NOT_FOUND",
      idOrPrefix === undefined ? "no rollouts" : `no single rollout ${JSON.stringify(idOrPrefix)}`,
    );
  }
  return asRollout(hits[0]!);
}

function addEvent(body: RolloutBody, at: number, line: string): void {
  body.events.push({ at, line });
  if (body.events.length > 100) body.events.splice(0, body.events.length - 100);
}

/**
 * Pauses, resumes or aborts a rollout (compare-and-swap, retried on a
 * concurrent change). Abort stops sending releases; devices keep what they serve.
 *
 * @throws NOT_FOUND; STATE_CONFLICT when the rollout's state does not allow it
 */
export async function changeRollout(
  store: FleetStore,
  idOrPrefix: string,
  action: "pause" | "resume" | "abort",
  now = Date.now(),
): Promise<Rollout> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = await findRollout(store, idOrPrefix);
    const allowed =
      action === "pause"
        ? r.state === "running"
        : action === "resume"
          ? r.state === "paused"
          : r.state !== "aborted" && r.state !== "completed";
    if (!allowed)
      throw new QuantdError("STATE_CONFLICT", `rollout ${r.id} is ${r.state}; cannot ${action} it`);
    const state: RolloutState = action === "pause" ? "paused" : action === "resume" ? "running" : "aborted";
    const body = structuredClone(r.body);
    addEvent(body, now, `${action} by an operator`);
    if (action === "pause") body.pausedAt = now;
    if (action === "resume") resumeSoak(body, now);
    if (action === "abort") {
      for (const d of Object.values(body.devices))
        if (d.state === "waiting" || d.state === "pending") d.state = "skipped";
    }
    if (await store.saveRollout({ ...r, state, updatedAt: now, body }, r.revision)) {
      return { ...r, state, body, revision: r.revision + 1, updatedAt: now };
    }
  }
  throw new QuantdError("STATE_CONFLICT", `rollout ${idOrPrefix} keeps changing; try again`);
}

/**
 * A paused rollout is not watched (no telemetry is judged), so a soak must not
 * pass while paused: the current wave's soak starts again later by the pause's
 * length, as if the pause had not happened.
 */
function resumeSoak(body: RolloutBody, now: number): void {
  const wave = body.waves[body.current];
  if (body.pausedAt !== undefined && wave?.state === "soaking" && wave.soakSince !== undefined) {
    wave.soakSince += Math.max(0, now - body.pausedAt);
  }
  delete body.pausedAt;
}

/** What an operator typed for a rollout (the CLI's flags, the dashboard's form); absent fields take the defaults. */
export interface RolloutSpecInput {
  waves?: string;
  gate?: string;
  soak?: string;
  pendingExpiry?: string;
  samples?: number;
}

/**
 * The spec of `rollout start` from what an operator typed, checked before the
 * store is asked anything: waves {@link DEFAULT_WAVES}, no gate, soak
 * {@link DEFAULT_SOAK_MS}, pending expiry {@link DEFAULT_PENDING_EXPIRY_MS}.
 *
 * @throws USAGE naming the field that is malformed
 */
export function rolloutSpec(input: RolloutSpecInput): RolloutSpec {
  const { waves, gate, soak, pendingExpiry, samples } = input;
  return {
    waves: waves === undefined ? [...DEFAULT_WAVES] : parseWaves(waves),
    gate: gate === undefined ? {} : parseGate(gate),
    soakMs: soak === undefined ? DEFAULT_SOAK_MS : parseDuration(soak, "soak"),
    pendingExpiryMs:
      pendingExpiry === undefined
        ? DEFAULT_PENDING_EXPIRY_MS
        : parseDuration(pendingExpiry, "pending-expiry"),
    ...(samples !== undefined ? { samples } : {}),
  };
}

/** A release by id, unique id prefix or version name. @throws NOT_FOUND */
export async function findRelease(store: FleetStore, what: string): Promise<string> {
  const all = await store.releases(1000);
  const hits = all.filter(
    (r) => r.id === what || r.version === what || (what.length >= 6 && r.id.startsWith(what)),
  );
  if (hits.length !== 1) {
    throw new QuantdError(
      "NOT_FOUND",
      hits.length === 0
        ? `no release ${JSON.stringify(what)}`
        : `${JSON.stringify(what)} names ${hits.length} releases; give the id`,
    );
  }
  return hits[0]!.id;
}

// ---------------------------------------------------------------- the engine

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

/** The figures a device's release job reported. */
function reportedFigures(result: unknown): { agreement?: number; latencyRatio?: number; promoted: boolean } {
  const r = isRecord(result) ? result : {};
  const validation = isRecord(r.validation) ? r.validation : {};
  const bench = isRecord(r.bench) ? r.bench : {};
  const agreement = num(validation.agreement);
  const latencyRatio = num(bench.latencyRatio);
  return {
    ...(agreement !== undefined ? { agreement } : {}),
    ...(latencyRatio !== undefined ? { latencyRatio } : {}),
    promoted: r.decision === "promoted",
  };
}

function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function p50s(samples: readonly TelemetryRecord[]): number[] {
  return samples
    .map((s) => num((s.latencyMs as { p50?: unknown } | undefined)?.p50))
    .filter((x): x is number => x !== undefined);
}

/** Why a device's figures breach the gate, or undefined. */
export function gateBreach(gate: RolloutGate, f: NonNullable<DeviceRollout["figures"]>): string | undefined {
  if (gate.agreement !== undefined && f.agreement !== undefined && f.agreement * 100 < gate.agreement) {
    return `agreement ${(f.agreement * 100).toFixed(2)} % < ${gate.agreement} %`;
  }
  if (gate.latencyRatio !== undefined && f.latencyRatio !== undefined && f.latencyRatio > gate.latencyRatio) {
    return `benchmark latency ratio ${f.latencyRatio.toFixed(3)} > ${gate.latencyRatio}`;
  }
  if (
    gate.latencyRatio !== undefined &&
    f.telemetryLatencyRatio !== undefined &&
    f.telemetryLatencyRatio > gate.latencyRatio
  ) {
    return `post-swap p50 latency ratio ${f.telemetryLatencyRatio.toFixed(3)} > ${gate.latencyRatio}`;
  }
  if (gate.errorRate !== undefined && f.errorRate !== undefined && f.errorRate > gate.errorRate) {
    return `post-swap error rate ${f.errorRate.toFixed(4)} > ${gate.errorRate}`;
  }
  return undefined;
}

/** Options of {@link startRolloutEngine}. */
export interface RolloutEngineOptions {
  store: FleetStore;
  /** Broker connection of the engine's own client (its client id is made from `clientId`). */
  connect: MqttConnectOptions;
  /** The operator key the engine signs commands with (devices must trust it). */
  signer: SigningKey;
  /** The controller's HTTP address devices download releases from. */
  releaseUrl: string;
  /** @defaultValue {@link DEFAULT_ROLLOUT_TICK_MS} */
  tickMs?: number;
  /** Reply timeout of a command. @defaultValue 5000 */
  replyTimeoutMs?: number;
  log?: (line: string) => void;
  now?: () => number;
}

/** A running engine. */
export interface RolloutEngine {
  /** Runs one pass over the live rollouts now (the timer does so every tick). */
  tick(): Promise<void>;
  stop(): Promise<void>;
}

/** What one pass decided for a rollout. */
interface Pass {
  body: RolloutBody;
  state: RolloutState;
  changed: boolean;
}

/**
 * Starts the engine that drives the store's live rollouts: every tick it reads
 * each, sends what is due (releases to the current wave's online devices,
 * rollbacks after a halt), judges finished jobs and telemetry against the gate,
 * and saves the result if nobody changed the rollout meanwhile.
 */
export function startRolloutEngine(options: RolloutEngineOptions): RolloutEngine {
  const { store } = options;
  const log = options.log ?? (() => {});
  const now = options.now ?? Date.now;
  const conn: MqttConnection = connectMqtt({ ...options.connect, clean: true, sessionExpirySec: 0 });
  const requesters = new Map<string, Promise<FleetRequester>>();
  const requester = (fleet: string): Promise<FleetRequester> => {
    let r = requesters.get(fleet);
    if (r === undefined) {
      r = createFleetRequester(conn, fleet, { signer: options.signer });
      r.catch(() => requesters.delete(fleet));
      requesters.set(fleet, r);
    }
    return r;
  };
  const send = async (
    fleet: string,
    device: string,
    name: "release" | "rollback",
    params: Record<string, unknown>,
    id: string,
  ): Promise<CommandReply | undefined> => {
    if (!conn.connected) return undefined;
    try {
      return await (await requester(fleet)).request(device, name, params, {
        id,
        // Long enough to reach a device that drops off right now; the engine sends the same id again anyway.
        ttlMs: Math.min(MAX_COMMAND_TTL_MS, 10 * 60_000),
        timeoutMs: options.replyTimeoutMs ?? 5000,
      });
    } catch {
      return undefined;
    }
  };

  const judgeDevice = async (
    r: Rollout,
    name: string,
    d: DeviceRollout,
    rec: DeviceRecord | undefined,
    at: number,
  ): Promise<boolean> => {
    const { body } = r;
    const gate = body.spec.gate;
    if (d.state === "pending") {
      if (at - d.since > body.spec.pendingExpiryMs) {
        d.state = "expired";
        d.reason = "offline past the pending expiry";
        addEvent(body, at, `${name}: expired while offline`);
        return true;
      }
      if (rec?.online !== true) return false;
      const before = await store.telemetry(r.fleet, name, at - 5 * 60_000, 1000);
      const base = median(p50s(before));
      const params: Record<string, unknown> = {
        release: r.release,
        url: options.releaseUrl,
        ...(body.spec.samples !== undefined ? { samples: body.spec.samples } : {}),
        ...(gate.agreement !== undefined ? { gate: { minAgreement: gate.agreement / 100 } } : {}),
        ...(gate.latencyRatio !== undefined ? { maxLatencyRatio: gate.latencyRatio } : {}),
      };
      const reply = await send(r.fleet, name, "release", params, d.jobId);
      if (reply === undefined) return false;
      if (!reply.ok) {
        d.state = "failed";
        d.reason = `refused the release: ${reply.error.code}: ${reply.error.message}`;
      } else {
        d.state = "sent";
        d.sentAt = at;
        if (base !== undefined) d.baselineP50Ms = base;
      }
      addEvent(body, at, `${name}: ${d.state === "sent" ? "release sent" : d.reason}`);
      return true;
    }
    if (d.state === "sent") {
      const job: JobRecord | undefined = await store.job(r.fleet, name, d.jobId);
      if (job === undefined || !["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"].includes(job.state)) {
        // A device that took the job and never reported within the pending expiry may serve anything: a failure.
        if (at - (d.sentAt ?? d.since) <= body.spec.pendingExpiryMs) return false;
        d.state = "failed";
        d.reason = `no report within ${Math.round(body.spec.pendingExpiryMs / 60_000)} min of the release`;
        addEvent(body, at, `${name}: ${d.reason}`);
        return true;
      }
      const f = reportedFigures(job.result);
      d.finishedAt = job.updatedAt;
      d.promoted = f.promoted;
      d.figures = {
        ...(f.agreement !== undefined ? { agreement: f.agreement } : {}),
        ...(f.latencyRatio !== undefined ? { latencyRatio: f.latencyRatio } : {}),
      };
      if (job.state !== "SUCCEEDED") {
        d.state = "failed";
        d.reason = `${job.state}: ${job.error?.code ?? ""} ${job.error?.message ?? ""}`.trim();
      } else {
        const breach = gateBreach(gate, d.figures);
        d.state = breach === undefined ? "succeeded" : "failed";
        if (breach !== undefined) d.reason = breach;
      }
      addEvent(body, at, `${name}: ${d.state}${d.reason !== undefined ? ` (${d.reason})` : ""}`);
      return true;
    }
    if (d.state === "succeeded" && d.finishedAt !== undefined && body.waves[d.wave]?.state !== "passed") {
      // After the swap: its telemetry must stay within the gate until its wave has passed.
      const after = await store.telemetry(r.fleet, name, d.finishedAt, 5000);
      const figures = { ...d.figures };
      const requests = after.reduce((a, s) => a + (num(s.requests) ?? 0), 0);
      const errors = after.reduce((a, s) => a + (num(s.errors) ?? 0), 0);
      if (requests >= MIN_REQUESTS_FOR_ERROR_RATE) figures.errorRate = errors / requests;
      const p50 = p50s(after);
      const beforeP50 = d.baselineP50Ms;
      if (beforeP50 !== undefined && beforeP50 > 0 && p50.length >= MIN_LATENCY_SAMPLES) {
        figures.telemetryLatencyRatio = (median(p50) ?? 0) / beforeP50;
      }
      d.figures = figures;
      const breach = gateBreach(gate, figures);
      if (breach === undefined) return false;
      d.state = "failed";
      d.reason = breach;
      addEvent(body, at, `${name}: failed after the swap (${breach})`);
      return true;
    }
    if (d.state === "rollback") {
      const reply = await send(r.fleet, name, "rollback", {}, `${d.jobId}-rollback`);
      if (reply === undefined) return false;
      d.state = "rolled-back";
      if (!reply.ok) d.reason = `${d.reason ?? ""}; rollback refused: ${reply.error.code}`;
      addEvent(body, at, `${name}: ${reply.ok ? "rolled back" : `rollback refused (${reply.error.code})`}`);
      return true;
    }
    return false;
  };

  const pass = async (r: Rollout): Promise<Pass> => {
    const body = structuredClone(r.body);
    let state = r.state as RolloutState;
    const at = now();
    const devices = new Map((await store.devices(r.fleet)).map((d) => [d.device, d]));
    let changed = false;
    const work = { ...r, body };
    if (state === "running") {
      const wave = body.waves[body.current];
      if (wave !== undefined && wave.state === "waiting") {
        wave.state = "running";
        wave.startedAt = at;
        for (const name of wave.devices) {
          const d = body.devices[name];
          if (d !== undefined && d.state === "waiting") {
            d.state = "pending";
            d.since = at;
          }
        }
        addEvent(
          body,
          at,
          `wave ${body.current + 1} of ${body.waves.length} started: ${wave.devices.join(", ")}`,
        );
        changed = true;
      }
    }
    // Devices act while running, or after a halt for their rollback; nothing is sent while paused.
    if (state === "running" || state === "halted") {
      for (const [name, d] of Object.entries(body.devices)) {
        if (state === "halted" && d.state !== "rollback" && d.state !== "sent") continue;
        if (await judgeDevice(work, name, d, devices.get(name), at)) changed = true;
        // A job still running at the halt may promote after it: that device goes back too.
        if (state === "halted" && d.promoted === true && (d.state === "succeeded" || d.state === "failed")) {
          d.state = "rollback";
          await judgeDevice(work, name, d, devices.get(name), at);
        }
      }
    }
    if (state === "running") {
      const wave = body.waves[body.current];
      const failed = Object.entries(body.devices).find(([, d]) => d.state === "failed");
      if (failed !== undefined) {
        const [name, d] = failed;
        state = "halted";
        body.haltReason = `${name} (wave ${d.wave + 1}): ${d.reason ?? "failed"}`;
        // The failing device's wave goes back to what it served: all of it when it is the current
        // wave; a late device of a wave that already passed goes back alone.
        const back = d.wave === body.current ? (body.waves[d.wave]?.devices ?? []) : [name];
        if (d.wave === body.current && wave !== undefined) {
          wave.state = "failed";
          wave.endedAt = at;
        }
        for (const n of back) {
          const x = body.devices[n];
          if (x !== undefined && (x.state === "succeeded" || (x.state === "failed" && x.promoted === true))) {
            x.state = "rollback";
          }
        }
        for (const x of Object.values(body.devices)) {
          if (x.state === "waiting" || x.state === "pending") x.state = "skipped";
        }
        addEvent(body, at, `halted: ${body.haltReason}`);
        changed = true;
        // Send the rollbacks in this pass rather than the next.
        for (const [n, x] of Object.entries(body.devices)) {
          if (x.state === "rollback") await judgeDevice(work, n, x, devices.get(n), at);
        }
      } else if (wave !== undefined && (wave.state === "running" || wave.state === "soaking")) {
        const ds = wave.devices.map((n) => body.devices[n]!);
        const busy = ds.some((d) => d.state === "sent");
        const ok = ds.filter((d) => d.state === "succeeded").length;
        if (!busy && ok > 0 && ds.every((d) => ["succeeded", "pending", "expired"].includes(d.state))) {
          if (wave.state === "running") {
            wave.state = "soaking";
            wave.soakSince = at;
            addEvent(body, at, `wave ${body.current + 1}: ${ok} of ${ds.length} succeeded; soaking`);
            changed = true;
          }
          if (wave.state === "soaking" && at - (wave.soakSince ?? at) >= body.spec.soakMs) {
            wave.state = "passed";
            wave.endedAt = at;
            body.current++;
            addEvent(body, at, `wave ${body.current} passed`);
            changed = true;
          }
        }
      } else if (wave === undefined) {
        const open = Object.values(body.devices).some((d) => ["pending", "sent"].includes(d.state));
        if (!open) {
          state = "completed";
          addEvent(body, at, "completed");
          changed = true;
        }
      }
    }
    return { body, state, changed };
  };

  let running: Promise<void> | undefined;
  const tick = async (): Promise<void> => {
    if (running !== undefined) return await running;
    running = (async () => {
      try {
        for (const rec of await store.rollouts(["running", "halted"], 1000)) {
          const r = asRollout(rec);
          const p = await pass(r);
          if (!p.changed && p.state === r.state) continue;
          const saved = await store.saveRollout(
            { ...r, state: p.state, updatedAt: now(), body: p.body },
            r.revision,
          );
          if (!saved) log(`rollout ${r.id}: changed elsewhere meanwhile; taken up again next tick`);
          else if (p.state !== r.state)
            log(`rollout ${r.id}: ${p.state}${p.body.haltReason ? `: ${p.body.haltReason}` : ""}`);
        }
      } catch (err) {
        log(`rollouts: ${QuantdError.from(err).toLine()}`);
      }
    })();
    try {
      await running;
    } finally {
      running = undefined;
    }
  };
  const timer = setInterval(() => void tick(), options.tickMs ?? DEFAULT_ROLLOUT_TICK_MS);
  timer.unref?.();
  return {
    tick,
    async stop() {
      clearInterval(timer);
      await running;
      for (const r of requesters.values()) await (await r.catch(() => undefined))?.close();
      await conn.close();
    },
  };
}
