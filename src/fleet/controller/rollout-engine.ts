/**
 * The rollout engine: every tick it reads each live rollout, sends what is
 * due (releases to the current wave's online devices, rollbacks after a
 * halt), judges finished jobs and telemetry against the gate, and saves the
 * result if nobody changed the rollout meanwhile (see `rollout.ts` for the
 * document). One pass is a list of named steps: start the wave, act on each
 * device, then halt on a failure, or soak and pass the wave, or complete.
 */
import { median } from "../../core/stats.ts";
import { QuantdError } from "../../errors.ts";
import { isRecord } from "../../json.ts";
import { FINAL_JOB_STATES } from "../../store/jobs.ts";
import { connectMqtt, type MqttConnection, type MqttConnectOptions } from "../mqtt-client.ts";
import { createFleetRequester, type FleetRequester } from "../operator/requester.ts";
import { type CommandReply, MAX_COMMAND_TTL_MS } from "../protocol.ts";
import type { SigningKey } from "../signing.ts";
import {
  addEvent,
  asRollout,
  type DeviceRollout,
  type Rollout,
  type RolloutBody,
  type RolloutGate,
  type RolloutState,
  type WaveRollout,
} from "./rollout.ts";
import type { DeviceRecord, FleetStore, TelemetryRecord } from "./store.ts";

/** Default engine tick. */
export const DEFAULT_ROLLOUT_TICK_MS = 2000;
/** Requests a device must have served since its swap before its error rate counts. */
export const MIN_REQUESTS_FOR_ERROR_RATE = 20;
/** Telemetry samples with latency a device must have sent before and after its swap for a latency comparison. */
export const MIN_LATENCY_SAMPLES = 3;

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

/** Judges one device of a rollout at one time; true when its part changed. */
type JudgeDevice = (name: string, d: DeviceRollout) => Promise<boolean>;

/**
 * Sends the signed commands a rollout needs, one requester per fleet over the
 * engine's own connection. A command that cannot be sent or gets no reply is
 * `undefined`: the engine sends the same id again on a later tick.
 */
class CommandSender {
  private readonly requesters = new Map<string, Promise<FleetRequester>>();

  constructor(
    private readonly conn: MqttConnection,
    private readonly signer: SigningKey,
    private readonly replyTimeoutMs: number,
  ) {}

  async send(
    fleet: string,
    device: string,
    name: "release" | "rollback",
    params: Record<string, unknown>,
    id: string,
  ): Promise<CommandReply | undefined> {
    if (!this.conn.connected) return undefined;
    try {
      return await (await this.requester(fleet)).request(device, name, params, {
        id,
        // Long enough to reach a device that drops off right now; the engine sends the same id again anyway.
        ttlMs: Math.min(MAX_COMMAND_TTL_MS, 10 * 60_000),
        timeoutMs: this.replyTimeoutMs,
      });
    } catch {
      return undefined;
    }
  }

  async close(): Promise<void> {
    for (const r of this.requesters.values()) await (await r.catch(() => undefined))?.close();
    await this.conn.close();
  }

  private requester(fleet: string): Promise<FleetRequester> {
    let r = this.requesters.get(fleet);
    if (r === undefined) {
      r = createFleetRequester(this.conn, fleet, { signer: this.signer });
      r.catch(() => this.requesters.delete(fleet));
      this.requesters.set(fleet, r);
    }
    return r;
  }
}

/**
 * One device's next step in a rollout, by its state: a pending device gets
 * the release once online, a sent one is judged by its report, a succeeded
 * one by its telemetry after the swap, and one marked for rollback is sent
 * the rollback. Each step mutates `d` and logs an event when it acts.
 */
class DeviceJudge {
  constructor(
    private readonly store: FleetStore,
    private readonly commands: CommandSender,
    private readonly releaseUrl: string,
  ) {}

  async judge(r: Rollout, name: string, d: DeviceRollout, rec: DeviceRecord | undefined, at: number) {
    switch (d.state) {
      case "pending":
        return await this.sendRelease(r, name, d, rec, at);
      case "sent":
        return await this.readReport(r, name, d, at);
      case "succeeded":
        return await this.watchAfterSwap(r, name, d, at);
      case "rollback":
        return await this.sendRollback(r, name, d, at);
      default:
        return false;
    }
  }

  private async sendRelease(
    r: Rollout,
    name: string,
    d: DeviceRollout,
    rec: DeviceRecord | undefined,
    at: number,
  ): Promise<boolean> {
    const { body } = r;
    if (at - d.since > body.spec.pendingExpiryMs) {
      d.state = "expired";
      d.reason = "offline past the pending expiry";
      addEvent(body, at, `${name}: expired while offline`);
      return true;
    }
    if (rec?.online !== true) return false;
    const before = p50s(await this.store.telemetry(r.fleet, name, at - 5 * 60_000, 1000));
    const reply = await this.commands.send(r.fleet, name, "release", this.releaseParams(r), d.jobId);
    if (reply === undefined) return false;
    if (!reply.ok) {
      d.state = "failed";
      d.reason = `refused the release: ${reply.error.code}: ${reply.error.message}`;
    } else {
      d.state = "sent";
      d.sentAt = at;
      if (before.length > 0) d.baselineP50Ms = median(before);
    }
    addEvent(body, at, `${name}: ${d.state === "sent" ? "release sent" : d.reason}`);
    return true;
  }

  private releaseParams(r: Rollout): Record<string, unknown> {
    const { spec } = r.body;
    const gate = spec.gate;
    return {
      release: r.release,
      url: this.releaseUrl,
      ...(spec.samples !== undefined ? { samples: spec.samples } : {}),
      ...(gate.agreement !== undefined ? { gate: { minAgreement: gate.agreement / 100 } } : {}),
      ...(gate.latencyRatio !== undefined ? { maxLatencyRatio: gate.latencyRatio } : {}),
    };
  }

  private async readReport(r: Rollout, name: string, d: DeviceRollout, at: number): Promise<boolean> {
    const { body } = r;
    const job = await this.store.job(r.fleet, name, d.jobId);
    if (job === undefined || !FINAL_JOB_STATES.includes(job.state)) {
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
      const breach = gateBreach(body.spec.gate, d.figures);
      d.state = breach === undefined ? "succeeded" : "failed";
      if (breach !== undefined) d.reason = breach;
    }
    addEvent(body, at, `${name}: ${d.state}${d.reason !== undefined ? ` (${d.reason})` : ""}`);
    return true;
  }

  /** After the swap: its telemetry must stay within the gate until its wave has passed. */
  private async watchAfterSwap(r: Rollout, name: string, d: DeviceRollout, at: number): Promise<boolean> {
    const { body } = r;
    if (d.finishedAt === undefined || body.waves[d.wave]?.state === "passed") return false;
    const after = await this.store.telemetry(r.fleet, name, d.finishedAt, 5000);
    const figures = { ...d.figures };
    const requests = after.reduce((a, s) => a + (num(s.requests) ?? 0), 0);
    const errors = after.reduce((a, s) => a + (num(s.errors) ?? 0), 0);
    if (requests >= MIN_REQUESTS_FOR_ERROR_RATE) figures.errorRate = errors / requests;
    const p50 = p50s(after);
    const beforeP50 = d.baselineP50Ms;
    if (beforeP50 !== undefined && beforeP50 > 0 && p50.length >= MIN_LATENCY_SAMPLES) {
      figures.telemetryLatencyRatio = median(p50) / beforeP50;
    }
    d.figures = figures;
    const breach = gateBreach(body.spec.gate, figures);
    if (breach === undefined) return false;
    d.state = "failed";
    d.reason = breach;
    addEvent(body, at, `${name}: failed after the swap (${breach})`);
    return true;
  }

  private async sendRollback(r: Rollout, name: string, d: DeviceRollout, at: number): Promise<boolean> {
    const reply = await this.commands.send(r.fleet, name, "rollback", {}, `${d.jobId}-rollback`);
    if (reply === undefined) return false;
    d.state = "rolled-back";
    if (!reply.ok) d.reason = `${d.reason ?? ""}; rollback refused: ${reply.error.code}`;
    addEvent(r.body, at, `${name}: ${reply.ok ? "rolled back" : `rollback refused (${reply.error.code})`}`);
    return true;
  }
}

/** Starts the current wave if it is waiting: its devices become pending. True when it started. */
function startWave(body: RolloutBody, at: number): boolean {
  const wave = body.waves[body.current];
  if (wave === undefined || wave.state !== "waiting") return false;
  wave.state = "running";
  wave.startedAt = at;
  for (const name of wave.devices) {
    const d = body.devices[name];
    if (d !== undefined && d.state === "waiting") {
      d.state = "pending";
      d.since = at;
    }
  }
  addEvent(body, at, `wave ${body.current + 1} of ${body.waves.length} started: ${wave.devices.join(", ")}`);
  return true;
}

/**
 * Each device's next step; after a halt only the rollbacks and the jobs still
 * out. True when any device's part changed.
 */
async function actOnDevices(body: RolloutBody, state: RolloutState, judge: JudgeDevice): Promise<boolean> {
  let changed = false;
  for (const [name, d] of Object.entries(body.devices)) {
    if (state === "halted" && d.state !== "rollback" && d.state !== "sent") continue;
    if (await judge(name, d)) changed = true;
    // A job still running at the halt may promote after it: that device goes back too.
    if (state === "halted" && d.promoted === true && (d.state === "succeeded" || d.state === "failed")) {
      d.state = "rollback";
      await judge(name, d);
    }
  }
  return changed;
}

/**
 * Halts the rollout on a failed device: its wave goes back to what it
 * served (all of it when it is the current wave; a late device of a wave
 * that already passed goes back alone), and nobody else gets the release.
 */
function halt(body: RolloutBody, name: string, d: DeviceRollout, at: number): void {
  body.haltReason = `${name} (wave ${d.wave + 1}): ${d.reason ?? "failed"}`;
  const wave = body.waves[body.current];
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
}

/**
 * A running wave whose devices are all done (some succeeded, none out)
 * soaks; once it soaked long enough it passes and the next wave is due. True
 * when the wave changed.
 */
function advanceWave(body: RolloutBody, wave: WaveRollout, at: number): boolean {
  const ds = wave.devices.map((n) => body.devices[n]!);
  const busy = ds.some((d) => d.state === "sent");
  const ok = ds.filter((d) => d.state === "succeeded").length;
  if (busy || ok === 0 || !ds.every((d) => ["succeeded", "pending", "expired"].includes(d.state)))
    return false;
  let changed = false;
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
  return changed;
}

/** Whether every wave has passed and no device is still out. */
function isComplete(body: RolloutBody): boolean {
  return !Object.values(body.devices).some((d) => ["pending", "sent"].includes(d.state));
}

/** The engine: one pass per live rollout per tick, saved by compare-and-swap. */
class Engine implements RolloutEngine {
  private readonly judgeOf: DeviceJudge;
  private readonly commands: CommandSender;
  private readonly timer: ReturnType<typeof setInterval>;
  private running: Promise<void> | undefined;
  private readonly log: (line: string) => void;
  private readonly now: () => number;

  constructor(private readonly options: RolloutEngineOptions) {
    this.log = options.log ?? (() => {});
    this.now = options.now ?? Date.now;
    const conn = connectMqtt({ ...options.connect, clean: true, sessionExpirySec: 0 });
    this.commands = new CommandSender(conn, options.signer, options.replyTimeoutMs ?? 5000);
    this.judgeOf = new DeviceJudge(options.store, this.commands, options.releaseUrl);
    this.timer = setInterval(() => void this.tick(), options.tickMs ?? DEFAULT_ROLLOUT_TICK_MS);
    this.timer.unref?.();
  }

  async tick(): Promise<void> {
    if (this.running !== undefined) return await this.running;
    this.running = this.passAll();
    try {
      await this.running;
    } finally {
      this.running = undefined;
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
    await this.commands.close();
  }

  private async passAll(): Promise<void> {
    const { store } = this.options;
    try {
      for (const rec of await store.rollouts(["running", "halted"], 1000)) {
        const r = asRollout(rec);
        const p = await this.pass(r);
        if (!p.changed && p.state === r.state) continue;
        const saved = await store.saveRollout(
          { ...r, state: p.state, updatedAt: this.now(), body: p.body },
          r.revision,
        );
        if (!saved) this.log(`rollout ${r.id}: changed elsewhere meanwhile; taken up again next tick`);
        else if (p.state !== r.state)
          this.log(`rollout ${r.id}: ${p.state}${p.body.haltReason ? `: ${p.body.haltReason}` : ""}`);
      }
    } catch (err) {
      this.log(`rollouts: ${QuantdError.from(err).toLine()}`);
    }
  }

  /** One rollout's pass, on a copy of its document. */
  private async pass(r: Rollout): Promise<Pass> {
    const body = structuredClone(r.body);
    let state = r.state as RolloutState;
    const at = this.now();
    const devices = new Map((await this.options.store.devices(r.fleet)).map((d) => [d.device, d]));
    const work = { ...r, body };
    const judge: JudgeDevice = (name, d) => this.judgeOf.judge(work, name, d, devices.get(name), at);
    let changed = state === "running" && startWave(body, at);
    // Devices act while running, or after a halt for their rollback; nothing is sent while paused.
    if (state === "running" || state === "halted") {
      if (await actOnDevices(body, state, judge)) changed = true;
    }
    if (state !== "running") return { body, state, changed };
    const wave = body.waves[body.current];
    const failed = Object.entries(body.devices).find(([, d]) => d.state === "failed");
    if (failed !== undefined) {
      state = "halted";
      halt(body, failed[0], failed[1], at);
      changed = true;
      // Send the rollbacks in this pass rather than the next.
      for (const [n, x] of Object.entries(body.devices)) if (x.state === "rollback") await judge(n, x);
    } else if (wave !== undefined && (wave.state === "running" || wave.state === "soaking")) {
      if (advanceWave(body, wave, at)) changed = true;
    } else if (wave === undefined && isComplete(body)) {
      state = "completed";
      addEvent(body, at, "completed");
      changed = true;
    }
    return { body, state, changed };
  }
}

/**
 * Starts the engine that drives the store's live rollouts: every tick it reads
 * each, sends what is due (releases to the current wave's online devices,
 * rollbacks after a halt), judges finished jobs and telemetry against the gate,
 * and saves the result if nobody changed the rollout meanwhile.
 */
export function startRolloutEngine(options: RolloutEngineOptions): RolloutEngine {
  return new Engine(options);
}
