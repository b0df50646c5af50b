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

/** Default Maximum Packet Size of a controller: room for the largest report, the largest message it stores. */
export const DEFAULT_CONTROLLER_MAX_PACKET_BYTES = 2 * MAX_REPORT_BYTES;

/** Telemetry messages written per transaction at most. */
export const TELEMETRY_GROUP = 500;
/** Longest wait before a partial group of telemetry is written, in ms. */
export const TELEMETRY_FLUSH_MS = 200;
/** Telemetry messages waiting for the store beyond which new ones are dropped and counted. */
export const MAX_TELEMETRY_BACKLOG = 50_000;

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
  /** Telemetry messages dropped because the store fell behind (see {@link MAX_TELEMETRY_BACKLOG}). */
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

/**
 * Starts the controller; it connects and reconnects in the background.
 *
 * @throws CONFIG_INVALID on a bad broker URL or transient fleet name
 */
export function startController(options: ControllerOptions): FleetController {
  const log = options.log ?? (() => {});
  const now = options.now ?? Date.now;
  const clientId = options.clientId ?? `quantd-controller-${hostname()}`.replace(/[^\w.-]/g, "-");
  const transient = options.transient;
  if (transient !== undefined) checkName(transient.fleet, "fleet");
  const conn: MqttConnection = connectMqtt({
    url: options.broker,
    clientId,
    clean: transient !== undefined,
    sessionExpirySec: transient !== undefined ? 0 : 7 * 24 * 3600,
    ...(options.username === undefined ? {} : { username: options.username }),
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(options.ca === undefined ? {} : { ca: options.ca }),
    ...(options.cert === undefined ? {} : { cert: options.cert }),
    ...(options.key === undefined ? {} : { key: options.key }),
    maxPacketBytes: options.maxPacketBytes ?? DEFAULT_CONTROLLER_MAX_PACKET_BYTES,
  });
  const listeners = new Set<(e: ControllerEvent) => void>();
  const stats: ControllerStats = {
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
  const keys = createDeviceKeys(options.store, now);
  // Logged once per device and reason, so a flood does not flood the log.
  const warned = new Set<string>();
  const authentic = async (t: ParsedTopic, m: MqttMessage): Promise<boolean> => {
    const r = await keys.check(t.fleet, t.device, m.topic, m.payload, m.userProperties);
    if (r.ok) return true;
    if (r.reason === "unsigned") stats.refused.unsigned++;
    else if (r.reason === "bad-signature") stats.refused.badSignature++;
    else stats.refused.notEnrolled++;
    const key = `${t.fleet}/${t.device}/${r.reason}`;
    if (r.reason === "not-enrolled" && r.proposed) {
      log(
        `controller: ${t.fleet}/${t.device} is not enrolled; it presented a key, confirm it on the dashboard or with quantd fleet enroll`,
      );
    } else if (!warned.has(key) && warned.size < 10_000) {
      warned.add(key);
      log(`controller: refused ${t.kind} from ${t.fleet}/${t.device}: ${r.reason}`);
    }
    return false;
  };
  let subscribed = false;
  const readyWaiters = new Set<() => void>();
  // Messages are stored one at a time, in arrival order, so a device's status
  // and job updates never race each other.
  let chain: Promise<void> = Promise.resolve();

  const emit = (e: ControllerEvent): void => {
    for (const fn of listeners) fn(e);
  };

  const ingest = async (t: ParsedTopic, m: MqttMessage): Promise<void> => {
    const body = decodeJson(m.payload);
    const at = now();
    const bad = (): void => {
      stats.malformed++;
      log(`controller: skipped a malformed ${t.kind} message on ${m.topic}`);
    };
    if (!isRecord(body)) return bad();
    const { fleet, device } = t;
    switch (t.kind) {
      case "status":
        if (!isStatus(body)) return bad();
        await options.store.recordStatus(fleet, device, body, at);
        break;
      case "telemetry":
        // Handled in groups by queueTelemetry; never chained one by one.
        return;
      case "job":
        if (!isJob(body)) return bad();
        await options.store.recordJob(fleet, device, body, at);
        break;
      case "report":
        if (!isReport(body)) return bad();
        if (!(await options.store.recordReport(fleet, device, body, at))) {
          stats.duplicateReports++;
          return;
        }
        break;
      case "cmd":
      case "reply":
        return;
    }
    stats.messages++;
    stats.byKind[t.kind]++;
    emit({ kind: t.kind, fleet, device, at });
  };

  // Telemetry is the bulk of the traffic (a message per device per interval):
  // it is written in groups, one transaction each, and under overload the
  // newest is dropped and counted rather than queued without bound (it is QoS 0).
  let telemetry: TelemetryItem[] = [];
  let telemetryInFlight = 0;
  let flushTimer: ReturnType<typeof setTimeout> | undefined;
  const flushTelemetry = (): void => {
    if (flushTimer !== undefined) clearTimeout(flushTimer);
    flushTimer = undefined;
    if (telemetry.length === 0) return;
    const items = telemetry;
    telemetry = [];
    chain = chain
      .then(() => options.store.recordTelemetry(items))
      .then(() => {
        stats.messages += items.length;
        stats.byKind.telemetry += items.length;
        const seen = new Set<string>();
        for (const it of items) {
          const key = `${it.fleet}/${it.device}`;
          if (seen.has(key)) continue;
          seen.add(key);
          emit({ kind: "telemetry", fleet: it.fleet, device: it.device, at: it.receivedAt });
        }
      })
      .catch((err: unknown) => {
        log(`controller: cannot store ${items.length} telemetry messages: ${QuantdError.from(err).toLine()}`);
      })
      .finally(() => {
        telemetryInFlight -= items.length;
      });
  };
  const queueTelemetry = (t: ParsedTopic, m: MqttMessage): void => {
    const body = decodeJson(m.payload);
    if (!isRecord(body) || !isTelemetry(body)) {
      stats.malformed++;
      log(`controller: skipped a malformed telemetry message on ${m.topic}`);
      return;
    }
    const extra = body.samples.length - MAX_TELEMETRY_SAMPLES;
    if (extra > 0) {
      stats.truncatedSamples += extra;
      body.samples = body.samples.slice(extra);
      log(
        `controller: kept the newest ${MAX_TELEMETRY_SAMPLES} of ${extra + MAX_TELEMETRY_SAMPLES} samples on ${m.topic}`,
      );
    }
    if (telemetryInFlight >= MAX_TELEMETRY_BACKLOG) {
      stats.droppedTelemetry++;
      return;
    }
    telemetryInFlight++;
    telemetry.push({ fleet: t.fleet, device: t.device, msg: body, receivedAt: now() });
    if (telemetry.length >= TELEMETRY_GROUP) flushTelemetry();
    else flushTimer ??= setTimeout(flushTelemetry, TELEMETRY_FLUSH_MS);
  };

  conn.onMessage((m) => {
    const t = parseTopic(m.topic);
    if (t === undefined || t.kind === "cmd" || t.kind === "reply") return;
    if (m.payload.byteLength > SIZE_CAPS[t.kind]) {
      stats.oversize++;
      log(
        `controller: refused a ${m.payload.byteLength}-byte ${t.kind} message on ${m.topic} (cap ${SIZE_CAPS[t.kind]})`,
      );
      return;
    }
    if (t.kind === "telemetry") {
      authentic(t, m)
        .then((ok) => {
          if (ok) queueTelemetry(t, m);
        })
        .catch((err: unknown) =>
          log(`controller: cannot check ${m.topic}: ${QuantdError.from(err).toLine()}`),
        );
      return;
    }
    chain = chain
      .then(async () => {
        if (await authentic(t, m)) await ingest(t, m);
      })
      .catch((err: unknown) => {
        log(`controller: cannot store ${m.topic}: ${QuantdError.from(err).toLine()}`);
      });
  });
  // Subscribe on every CONNACK, session present or not: mosquitto 2.0 with
  // `persistence true` restores the session after a restart but not its
  // `$share/…` subscription, and the controller would otherwise go deaf.
  conn.onConnect(({ sharedSubscriptions }) => {
    stats.connected = true;
    stats.subscribes++;
    // A broker without shared subscriptions (the embedded one of `quantd demo`) says so in its
    // CONNACK and refuses `$share/…`: subscribe plainly then, which is right for one controller.
    if (!sharedSubscriptions && transient === undefined && options.shared !== false) {
      log("controller: the broker has no shared subscriptions; subscribing as the only controller");
    }
    const filter =
      transient !== undefined
        ? `${TOPIC_ROOT}/${transient.fleet}/+/#`
        : sharedSubscriptions && options.shared !== false
          ? CONTROLLER_SHARED_FILTER
          : CONTROLLER_FILTER;
    conn
      .subscribe([filter], { qos: 1 })
      .then(() => {
        subscribed = true;
        for (const w of readyWaiters) w();
        readyWaiters.clear();
      })
      .catch((err: unknown) => log(`controller: cannot subscribe: ${QuantdError.from(err).toLine()}`));
  });
  conn.onClose(() => {
    stats.connected = false;
    subscribed = false;
  });
  conn.onError((err) => log(`controller: ${err.toLine()}`));

  const retention = options.telemetryRetentionMs ?? 24 * 3600 * 1000;
  const pruneTimer = setInterval(() => {
    options.store.pruneTelemetry(now() - retention).catch((err: unknown) => {
      log(`controller: prune failed: ${QuantdError.from(err).toLine()}`);
    });
  }, 60_000);
  pruneTimer.unref?.();

  return {
    clientId,
    store: options.store,
    waitReady(timeoutMs) {
      if (subscribed && conn.connected) return Promise.resolve(true);
      return new Promise((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          resolve(true);
        };
        const timer = setTimeout(() => {
          readyWaiters.delete(done);
          resolve(false);
        }, timeoutMs);
        readyWaiters.add(done);
      });
    },
    onEvent(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    stats: () => ({ ...stats, byKind: { ...stats.byKind }, refused: { ...stats.refused } }),
    async enroll(fleet, device, publicKey) {
      checkName(fleet, "fleet");
      checkName(device, "device");
      parsePublicKey(publicKey);
      await options.store.enroll(fleet, device, publicKey.trim(), now());
      keys.forget(fleet, device);
    },
    async confirmEnrolment(fleet, device, publicKey) {
      const e = await options.store.enrolment(fleet, device);
      if (e?.state !== "pending" || e.publicKey !== publicKey.trim()) {
        throw new QuantdError("NOT_FOUND", `no pending key ${publicKey} for ${fleet}/${device}`, {
          details: { fleet, device },
        });
      }
      await options.store.enroll(fleet, device, e.publicKey, now());
      keys.forget(fleet, device);
      log(`controller: ${fleet}/${device} enrolled (key ${keyId(e.publicKey)})`);
    },
    async stop() {
      clearInterval(pruneTimer);
      await conn.close();
      flushTelemetry();
      await chain;
    },
  };
}
