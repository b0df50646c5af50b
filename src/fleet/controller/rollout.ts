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
 *
 * This file holds the document, its spec and the operator's changes (start,
 * pause, resume, abort); `rollout-engine.ts` drives live rollouts.
 */
import { randomBytes } from "node:crypto";
import { QuantdError } from "../../errors.ts";
import { checkName } from "../protocol.ts";
import type { FleetStore, RolloutRecord } from "./store.ts";

/** Default waves: a canary, then 10 %, half, everything. */
export const DEFAULT_WAVES: readonly number[] = [1, 10, 50, 100];
/** Default soak after a wave's last success. */
export const DEFAULT_SOAK_MS = 10 * 60_000;
/** Default time a device offline during its wave may still get the release. */
export const DEFAULT_PENDING_EXPIRY_MS = 24 * 3_600_000;

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

/** A stored rollout with its document typed. */
export function asRollout(r: RolloutRecord): Rollout {
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

/** Appends an event to the document, keeping the newest 100. */
export function addEvent(body: RolloutBody, at: number, line: string): void {
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
