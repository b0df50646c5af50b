/**
 * The fleet controller: one MQTT client with a persistent session and a
 * shared subscription (`$share/quantd-controllers/quantd/v1/+/+/#`), so
 * several replicas split a large fleet's messages and a restarted controller
 * receives what was queued for it. Every message goes into the
 * {@link FleetStore}; listeners (the dashboard's live updates) hear about each
 * change. Nothing is stored unless it is signed by the sending device's
 * enrolled key (see `device-keys.ts`) and within its kind's size cap;
 * refusals are counted. It subscribes again on every CONNACK, since a
 * persistent mosquitto restores the session without its `$share` filter.
 * The controller assumes nothing of the broker beyond MQTT 5 shared
 * subscriptions: it works the same on one mosquitto, a bridge or a cluster
 * (and, as the only controller, on a broker without them).
 */
import { hostname } from "node:os";
import { QuantdError } from "../../errors.ts";
import { isRecord } from "../../json.ts";
import { connectMqtt, type MqttConnection, type MqttMessage } from "../mqtt-client.ts";
import {
  CONTROLLER_FILTER,
  CONTROLLER_SHARED_FILTER,
  checkName,
  decodeJson,
  type JobMessage,
  MAX_JOB_BYTES,
  MAX_REPORT_BYTES,
  MAX_STATUS_BYTES,
  MAX_TELEMETRY_BYTES,
  MAX_TELEMETRY_SAMPLES,
  type ParsedTopic,
  parseTopic,
  type ReportMessage,
  type StatusMessage,
  type TelemetryMessage,
  TOPIC_ROOT,
} from "../protocol.ts";
import { keyId, parsePublicKey } from "../signing.ts";
import { createDeviceKeys } from "./device-keys.ts";
import type { FleetStore, TelemetryItem } from "./store.ts";
import { TelemetryBatcher } from "./telemetry-batcher.ts";

/** Default Maximum Packet Size of a controller: room for the largest report, the largest message it stores. */
export const DEFAULT_CONTROLLER_MAX_PACKET_BYTES = 2 * MAX_REPORT_BYTES;

/** What changed, for live views. */
export interface ControllerEvent {
  kind: "status" | "telemetry" | "job" | "report";
  fleet: string;
  device: string;
  at: number;
}

/** Options of {@link startController}. */
export interface ControllerOptions {
  broker: string;
  store: FleetStore;
  /** MQTT client id; distinct per replica, stable across restarts (the session is kept). @defaultValue `quantd-controller-<hostname>` */
  clientId?: string;
  /** Broker login. */
  username?: string;
  password?: string;
  /** PEM contents for mqtts: the broker's CA, and the client certificate and key for mutual TLS. */
  ca?: string;
  cert?: string;
  key?: string;
  /**
   * A controller for one fleet and one run (`quantd demo`): a plain
   * subscription to that fleet's topics and a session that ends with the
   * connection. On a shared broker it must neither take messages from the
   * replicas' shared group nor leave a session behind that queues messages for
   * nobody. @defaultValue every fleet, shared subscription, persistent session
   */
  transient?: { fleet: string };
  /**
   * Subscribe with `$share/quantd-controllers/…` so replicas split the
   * fleet's messages; false takes every message on a plain subscription (one
   * controller, or several that each want everything). @defaultValue true
   */
  shared?: boolean;
  /** MQTT 5 Maximum Packet Size announced in CONNECT. @defaultValue {@link DEFAULT_CONTROLLER_MAX_PACKET_BYTES} */
  maxPacketBytes?: number;
  /** Telemetry older than this is pruned every minute (1,000 devices at 1 sample/s is 86 M rows a day). @defaultValue 24 hours */
  telemetryRetentionMs?: number;
  /** The controller's log lines (dropped when absent). */
  log?: (line: string) => void;
  /** Clock, ms since the epoch. @defaultValue Date.now */
  now?: () => number;
}

/** Counters of a running controller. */
export interface ControllerStats {
  connected: boolean;
  /** Subscriptions sent: one per CONNACK. */
  subscribes: number;
  messages: number;
  byKind: Record<ControllerEvent["kind"], number>;
  /** Messages that were not valid fleet payloads (logged, skipped). */
  malformed: number;
  duplicateReports: number;
  /** Telemetry messages dropped because the store fell behind (see `MAX_TELEMETRY_BACKLOG`). */
  droppedTelemetry: number;
  /** Messages refused for exceeding their kind's size cap (`MAX_REPORT_BYTES`, …). */
  oversize: number;
  /** Telemetry samples dropped beyond `MAX_TELEMETRY_SAMPLES` in one message (the newest are kept). */
  truncatedSamples: number;
  /** Device messages refused before anything was stored: nothing unsigned, forged or from a device not enrolled is kept. */
  refused: {
    unsigned: number;
    badSignature: number;
    notEnrolled: number;
  };
}

/** The size cap of each kind of device message. */
const SIZE_CAPS: Record<ControllerEvent["kind"], number> = {
  status: MAX_STATUS_BYTES,
  telemetry: MAX_TELEMETRY_BYTES,
  job: MAX_JOB_BYTES,
  report: MAX_REPORT_BYTES,
};

/** A running controller. */
export interface FleetController {
  readonly clientId: string;
  readonly store: FleetStore;
  /** Resolves once connected and subscribed (true) or after `timeoutMs` (false). */
  waitReady(timeoutMs: number): Promise<boolean>;
  onEvent(fn: (e: ControllerEvent) => void): () => void;
  stats(): ControllerStats;
  /** Enrols a device's key now (its later messages are stored); `quantd fleet enroll` writes the store directly instead. */
  enroll(fleet: string, device: string, publicKey: string): Promise<void>;
  /**
   * Confirms the key a device presented (trust on first use), only if it is
   * still the pending one: an operator confirms the key they saw.
   *
   * @throws NOT_FOUND when no such key is pending
   */
  confirmEnrolment(fleet: string, device: string, publicKey: string): Promise<void>;
  /** Disconnects (the session stays on the broker); the store is left open. */
  stop(): Promise<void>;
}

const JOB_STATES = ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"];
const isTime = (v: unknown): boolean => typeof v === "number" && Number.isFinite(v);
const isTimeOrNull = (v: unknown): boolean => v === null || isTime(v);

// Devices are not trusted to be well-formed: a payload goes to the store only
// when every field the store indexes or orders by has the right type.
function isStatus(b: Record<string, unknown>): b is Record<string, unknown> & StatusMessage {
  return (b.state === "online" || b.state === "offline") && (b.at === undefined || isTimeOrNull(b.at));
}

function isTelemetry(b: Record<string, unknown>): b is Record<string, unknown> & TelemetryMessage {
  return Array.isArray(b.samples) && b.samples.every((x) => isRecord(x) && isTime(x.at));
}

function isJob(b: Record<string, unknown>): b is Record<string, unknown> & JobMessage {
  return (
    typeof b.id === "string" &&
    typeof b.type === "string" &&
    JOB_STATES.includes(String(b.state)) &&
    (b.stage === null || typeof b.stage === "string") &&
    typeof b.progress === "number" &&
    isTime(b.at)
  );
}

function isReport(b: Record<string, unknown>): b is Record<string, unknown> & ReportMessage {
  return (
    typeof b.id === "string" &&
    typeof b.jobId === "string" &&
    typeof b.type === "string" &&
    JOB_STATES.includes(String(b.state)) &&
    (b.finishedAt === undefined || isTimeOrNull(b.finishedAt))
  );
}

/** Telemetry older than this is pruned by default. */
const DEFAULT_TELEMETRY_RETENTION_MS = 24 * 3600 * 1000;
/** How often old telemetry is pruned. */
const PRUNE_INTERVAL_MS = 60_000;

function emptyStats(): ControllerStats {
  return {
    connected: false,
    subscribes: 0,
    messages: 0,
    byKind: { status: 0, telemetry: 0, job: 0, report: 0 },
    malformed: 0,
    duplicateReports: 0,
    droppedTelemetry: 0,
    oversize: 0,
    truncatedSamples: 0,
    refused: { unsigned: 0, badSignature: 0, notEnrolled: 0 },
  };
}

/** The broker connection of a controller: a persistent session unless it is transient. */
function connectController(options: ControllerOptions, clientId: string): MqttConnection {
  const transient = options.transient !== undefined;
  return connectMqtt({
    url: options.broker,
    clientId,
    clean: transient,
    sessionExpirySec: transient ? 0 : 7 * 24 * 3600,
    ...(options.username === undefined ? {} : { username: options.username }),
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(options.ca === undefined ? {} : { ca: options.ca }),
    ...(options.cert === undefined ? {} : { cert: options.cert }),
    ...(options.key === undefined ? {} : { key: options.key }),
    maxPacketBytes: options.maxPacketBytes ?? DEFAULT_CONTROLLER_MAX_PACKET_BYTES,
  });
}

/**
 * The running controller: each device message is checked (size cap,
 * signature), then stored; status, job and report messages one at a time in
 * arrival order, telemetry in groups.
 */
class Controller implements FleetController {
  readonly clientId: string;
  readonly store: FleetStore;
  private readonly conn: MqttConnection;
  private readonly counters = emptyStats();
  private readonly keys: ReturnType<typeof createDeviceKeys>;
  /** Refusals logged, once per device and reason, so a flood does not flood the log. */
  private readonly warned = new Set<string>();
  private readonly listeners = new Set<(e: ControllerEvent) => void>();
  private readonly readyWaiters = new Set<() => void>();
  private subscribed = false;
  /**
   * Messages are stored one at a time, in arrival order, so a device's status
   * and job updates never race each other.
   */
  private chain: Promise<void> = Promise.resolve();
  private readonly telemetry = new TelemetryBatcher((items) => this.storeTelemetry(items));
  private readonly pruneTimer: ReturnType<typeof setInterval>;
  private readonly log: (line: string) => void;
  private readonly now: () => number;

  constructor(private readonly options: ControllerOptions) {
    this.log = options.log ?? (() => {});
    this.now = options.now ?? Date.now;
    this.clientId = options.clientId ?? `quantd-controller-${hostname()}`.replace(/[^\w.-]/g, "-");
    this.store = options.store;
    if (options.transient !== undefined) checkName(options.transient.fleet, "fleet");
    this.conn = connectController(options, this.clientId);
    this.keys = createDeviceKeys(options.store, this.now);
    this.conn.onMessage((m) => this.receive(m));
    this.conn.onConnect(({ sharedSubscriptions }) => this.subscribe(sharedSubscriptions));
    this.conn.onClose(() => {
      this.counters.connected = false;
      this.subscribed = false;
    });
    this.conn.onError((err) => this.log(`controller: ${err.toLine()}`));
    this.pruneTimer = this.startPruning();
  }

  waitReady(timeoutMs: number): Promise<boolean> {
    if (this.subscribed && this.conn.connected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.readyWaiters.delete(done);
        resolve(false);
      }, timeoutMs);
      this.readyWaiters.add(done);
    });
  }

  onEvent(fn: (e: ControllerEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  stats(): ControllerStats {
    const c = this.counters;
    return { ...c, byKind: { ...c.byKind }, refused: { ...c.refused } };
  }

  async enroll(fleet: string, device: string, publicKey: string): Promise<void> {
    checkName(fleet, "fleet");
    checkName(device, "device");
    parsePublicKey(publicKey);
    await this.store.enroll(fleet, device, publicKey.trim(), this.now());
    this.keys.forget(fleet, device);
  }

  async confirmEnrolment(fleet: string, device: string, publicKey: string): Promise<void> {
    const e = await this.store.enrolment(fleet, device);
    if (e?.state !== "pending" || e.publicKey !== publicKey.trim()) {
      throw new QuantdError("NOT_FOUND", `no pending key ${publicKey} for ${fleet}/${device}`, {
        details: { fleet, device },
      });
    }
    await this.store.enroll(fleet, device, e.publicKey, this.now());
    this.keys.forget(fleet, device);
    this.log(`controller: ${fleet}/${device} enrolled (key ${keyId(e.publicKey)})`);
  }

  async stop(): Promise<void> {
    clearInterval(this.pruneTimer);
    await this.conn.close();
    this.telemetry.flush();
    await this.chain;
  }

  /** One message from the broker: capped, authenticated, then stored. */
  private receive(m: MqttMessage): void {
    const t = parseTopic(m.topic);
    if (t === undefined || t.kind === "cmd" || t.kind === "reply") return;
    const cap = SIZE_CAPS[t.kind];
    if (m.payload.byteLength > cap) {
      this.counters.oversize++;
      this.log(
        `controller: refused a ${m.payload.byteLength}-byte ${t.kind} message on ${m.topic} (cap ${cap})`,
      );
      return;
    }
    const kind = t.kind;
    if (kind === "telemetry") {
      this.authentic(t, m)
        .then((ok) => {
          if (ok) this.queueTelemetry(t, m);
        })
        .catch((err: unknown) =>
          this.log(`controller: cannot check ${m.topic}: ${QuantdError.from(err).toLine()}`),
        );
      return;
    }
    this.chain = this.chain
      .then(async () => {
        if (await this.authentic(t, m)) await this.ingest(t, kind, m);
      })
      .catch((err: unknown) => {
        this.log(`controller: cannot store ${m.topic}: ${QuantdError.from(err).toLine()}`);
      });
  }

  // Subscribe on every CONNACK, session present or not: mosquitto 2.0 with
  // `persistence true` restores the session after a restart but not its
  // `$share/…` subscription, and the controller would otherwise go deaf.
  private subscribe(sharedSubscriptions: boolean): void {
    this.counters.connected = true;
    this.counters.subscribes++;
    this.conn
      .subscribe([this.filter(sharedSubscriptions)], { qos: 1 })
      .then(() => {
        this.subscribed = true;
        for (const w of this.readyWaiters) w();
        this.readyWaiters.clear();
      })
      .catch((err: unknown) => this.log(`controller: cannot subscribe: ${QuantdError.from(err).toLine()}`));
  }

  /** What to subscribe to, given whether the broker's CONNACK offers shared subscriptions. */
  private filter(sharedSubscriptions: boolean): string {
    const { transient, shared } = this.options;
    if (transient !== undefined) return `${TOPIC_ROOT}/${transient.fleet}/+/#`;
    if (shared === false) return CONTROLLER_FILTER;
    if (sharedSubscriptions) return CONTROLLER_SHARED_FILTER;
    // A broker without shared subscriptions (the embedded one of `quantd demo`) says so in its
    // CONNACK and refuses `$share/…`: subscribe plainly then, which is right for one controller.
    this.log("controller: the broker has no shared subscriptions; subscribing as the only controller");
    return CONTROLLER_FILTER;
  }

  /** Whether the message is signed by its device's enrolled key; refusals are counted and logged. */
  private async authentic(t: ParsedTopic, m: MqttMessage): Promise<boolean> {
    const r = await this.keys.check(t.fleet, t.device, m.topic, m.payload, m.userProperties);
    if (r.ok) return true;
    const refused = this.counters.refused;
    if (r.reason === "unsigned") refused.unsigned++;
    else if (r.reason === "bad-signature") refused.badSignature++;
    else refused.notEnrolled++;
    const key = `${t.fleet}/${t.device}/${r.reason}`;
    if (r.reason === "not-enrolled" && r.proposed) {
      this.log(
        `controller: ${t.fleet}/${t.device} is not enrolled; it presented a key, confirm it on the dashboard or with quantd fleet enroll`,
      );
    } else if (!this.warned.has(key) && this.warned.size < 10_000) {
      this.warned.add(key);
      this.log(`controller: refused ${t.kind} from ${t.fleet}/${t.device}: ${r.reason}`);
    }
    return false;
  }

  /** Stores a status, job or report message. */
  private async ingest(t: ParsedTopic, kind: "status" | "job" | "report", m: MqttMessage): Promise<void> {
    const body = decodeJson(m.payload);
    const at = this.now();
    const { fleet, device } = t;
    if (!isRecord(body)) return this.malformed(kind, m.topic);
    switch (kind) {
      case "status":
        if (!isStatus(body)) return this.malformed(kind, m.topic);
        await this.store.recordStatus(fleet, device, body, at);
        break;
      case "job":
        if (!isJob(body)) return this.malformed(kind, m.topic);
        await this.store.recordJob(fleet, device, body, at);
        break;
      case "report":
        if (!isReport(body)) return this.malformed(kind, m.topic);
        if (!(await this.store.recordReport(fleet, device, body, at))) {
          this.counters.duplicateReports++;
          return;
        }
        break;
    }
    this.counters.messages++;
    this.counters.byKind[kind]++;
    this.emit({ kind, fleet, device, at });
  }

  private malformed(kind: string, topic: string): void {
    this.counters.malformed++;
    this.log(`controller: skipped a malformed ${kind} message on ${topic}`);
  }

  private emit(e: ControllerEvent): void {
    for (const fn of this.listeners) fn(e);
  }

  private queueTelemetry(t: ParsedTopic, m: MqttMessage): void {
    const body = decodeJson(m.payload);
    if (!isRecord(body) || !isTelemetry(body)) {
      this.malformed("telemetry", m.topic);
      return;
    }
    const extra = body.samples.length - MAX_TELEMETRY_SAMPLES;
    if (extra > 0) {
      this.counters.truncatedSamples += extra;
      body.samples = body.samples.slice(extra);
      this.log(
        `controller: kept the newest ${MAX_TELEMETRY_SAMPLES} of ${extra + MAX_TELEMETRY_SAMPLES} samples on ${m.topic}`,
      );
    }
    const item = { fleet: t.fleet, device: t.device, msg: body, receivedAt: this.now() };
    if (!this.telemetry.push(item)) this.counters.droppedTelemetry++;
  }

  /** Writes a group of telemetry on the chain, then tells the listeners once per device. */
  private storeTelemetry(items: TelemetryItem[]): Promise<void> {
    this.chain = this.chain
      .then(() => this.store.recordTelemetry(items))
      .then(() => {
        this.counters.messages += items.length;
        this.counters.byKind.telemetry += items.length;
        const seen = new Set<string>();
        for (const it of items) {
          const key = `${it.fleet}/${it.device}`;
          if (seen.has(key)) continue;
          seen.add(key);
          this.emit({ kind: "telemetry", fleet: it.fleet, device: it.device, at: it.receivedAt });
        }
      })
      .catch((err: unknown) => {
        this.log(
          `controller: cannot store ${items.length} telemetry messages: ${QuantdError.from(err).toLine()}`,
        );
      });
    return this.chain;
  }

  private startPruning(): ReturnType<typeof setInterval> {
    const retention = this.options.telemetryRetentionMs ?? DEFAULT_TELEMETRY_RETENTION_MS;
    const timer = setInterval(() => {
      this.store.pruneTelemetry(this.now() - retention).catch((err: unknown) => {
        this.log(`controller: prune failed: ${QuantdError.from(err).toLine()}`);
      });
    }, PRUNE_INTERVAL_MS);
    timer.unref?.();
    return timer;
  }
}

/**
 * Starts the controller; it connects and reconnects in the background.
 *
 * @throws CONFIG_INVALID on a bad broker URL or transient fleet name
 */
export function startController(options: ControllerOptions): FleetController {
  return new Controller(options);
}
