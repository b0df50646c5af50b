/**
 * What a device says about itself without being asked: its retained status
 * (`online` at every connect and whenever what it serves changes, `offline`
 * on a clean stop, and the `offline` Last Will the broker sends for it after
 * the will delay) and its telemetry, sampled periodically and sent in QoS 0
 * batches. Everything is signed with the device key; the status also carries
 * the public key (trust on first use).
 */
import { QuantdError } from "../../errors.ts";
import type { OutboxStats, OutboxStore } from "../../store/outbox.ts";
import type { MqttConnection, MqttWill } from "../mqtt-client.ts";
import {
  type DeviceTopics,
  encodeJson,
  type OutboxFigures,
  type StatusMessage,
  type TelemetryMessage,
  type TelemetrySample,
} from "../protocol.ts";
import { PUB_PROPERTY, type SigningKey } from "../signing.ts";
import type { ResolvedFleetConfig } from "./config.ts";
import type { AgentIdentity } from "./handler.ts";

/** The outbox's figures as the fleet messages carry them. */
function outboxFigures(s: OutboxStats): OutboxFigures {
  return { queued: s.count, bytes: s.bytes, dropped: s.dropped };
}

/** What {@link DevicePresence} needs. */
export interface PresenceDeps {
  config: ResolvedFleetConfig;
  topics: DeviceTopics;
  deviceKey: SigningKey;
  outbox: OutboxStore;
  /** Agent and model versions (read at every status). */
  identity: () => AgentIdentity;
  /** One telemetry sample; `at` is added. None are sent when absent. */
  telemetry?: () => Omit<TelemetrySample, "at">;
  now: () => number;
  log: (line: string) => void;
}

/** A device's retained status and its telemetry. */
export class DevicePresence {
  readonly #d: PresenceDeps;
  #conn: MqttConnection | undefined;
  /** What the last retained status said about the agent; a change (a model swap) republishes it. */
  #published = "";
  #samples: TelemetrySample[] = [];
  /** Telemetry batches sent. */
  telemetrySent = 0;

  constructor(deps: PresenceDeps) {
    this.#d = deps;
  }

  /** Signs what the device publishes. */
  sign(topic: string, payload: Uint8Array): Record<string, string> {
    return this.#d.deviceKey.sign(topic, payload);
  }

  #statusProps(topic: string, payload: Uint8Array): Record<string, string> {
    return { ...this.sign(topic, payload), [PUB_PROPERTY]: this.#d.deviceKey.publicKey };
  }

  /** The retained `offline` the broker publishes when the device vanishes (after the will delay). */
  will(): MqttWill {
    const { config, topics } = this.#d;
    const will: StatusMessage = {
      state: "offline",
      fleet: config.fleet,
      device: config.device,
      at: null,
      reason: "will",
    };
    return {
      topic: topics.status,
      payload: JSON.stringify(will),
      qos: 1,
      retain: true,
      delaySec: config.willDelaySec,
      userProperties: this.#statusProps(topics.status, encodeJson(will)),
    };
  }

  /** Uses `conn` from now on (once it exists: its will is made before it). */
  attach(conn: MqttConnection): void {
    this.#conn = conn;
  }

  #identityKey(): string {
    const id = this.#d.identity();
    return JSON.stringify([id.agentVersion, id.model]);
  }

  /** The `online` status now. */
  message(): StatusMessage {
    const { config, now, outbox } = this.#d;
    const id = this.#d.identity();
    return {
      state: "online",
      fleet: config.fleet,
      device: config.device,
      at: now(),
      agentVersion: id.agentVersion,
      model: id.model,
      outbox: outboxFigures(outbox.stats()),
    };
  }

  async #publishStatus(msg: StatusMessage): Promise<void> {
    const conn = this.#conn;
    if (conn === undefined || !conn.connected) return;
    const { topics } = this.#d;
    const body = encodeJson(msg);
    await conn.publish(topics.status, body, {
      qos: 1,
      retain: true,
      userProperties: this.#statusProps(topics.status, body),
    });
  }

  /** Publishes the retained `online` status (a failure is logged). */
  async publishOnline(): Promise<void> {
    if (this.#conn?.connected !== true) return;
    try {
      this.#published = this.#identityKey();
      await this.#publishStatus(this.message());
    } catch (err) {
      this.#d.log(`fleet: status not published: ${QuantdError.from(err).toLine()}`);
    }
  }

  /** Publishes the retained `offline` status of a clean stop. */
  async publishOffline(): Promise<void> {
    await this.#publishStatus({ ...this.message(), state: "offline", reason: "shutdown" }).catch(() => {});
  }

  /** Once per telemetry interval: republishes a changed status, takes a sample, sends a full batch. */
  tick(): void {
    const conn = this.#conn;
    if (conn?.connected === true && this.#identityKey() !== this.#published) void this.publishOnline();
    const { telemetry, now, config, topics, outbox } = this.#d;
    if (telemetry === undefined) return;
    try {
      this.#samples.push({ ...telemetry(), at: now() });
    } catch (err) {
      this.#d.log(`fleet: telemetry sample failed: ${QuantdError.from(err).toLine()}`);
    }
    if (this.#samples.length < config.telemetryBatch) return;
    const samples = this.#samples;
    this.#samples = [];
    if (conn === undefined || !conn.connected) return;
    const msg: TelemetryMessage = {
      device: config.device,
      at: now(),
      samples,
      outbox: outboxFigures(outbox.stats()),
    };
    this.telemetrySent++;
    const body = encodeJson(msg);
    conn
      .publish(topics.telemetry, body, { qos: 0, userProperties: this.sign(topics.telemetry, body) })
      .catch(() => {});
  }
}
