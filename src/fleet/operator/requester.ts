/**
 * The requesting side of fleet commands (the CLI and the controller): MQTT 5
 * request/response with a Response Topic under the device's own tree and
 * random Correlation Data, a command id for idempotent retries, an expiry
 * both as the MQTT Message Expiry and as `expiresAt` in the body, and waiting
 * for a job's final report.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { QuantdError } from "../../errors.ts";
import type { MqttConnection } from "../mqtt-client.ts";
import {
  type CommandEnvelope,
  type CommandName,
  type CommandReply,
  decodeJson,
  deviceTopics,
  encodeJson,
  type JobMessage,
  parseTopic,
  type ReportMessage,
  TOPIC_ROOT,
} from "../protocol.ts";
import type { SigningKey } from "../signing.ts";

/** Default time a command stays valid. */
export const DEFAULT_COMMAND_TTL_MS = 60_000;

/** Options of one request. */
export interface RequestOptions {
  /** Idempotency key; reuse it to retry. @defaultValue a random UUID */
  id?: string;
  /** How long the command stays valid (broker expiry and `expiresAt`). @defaultValue {@link DEFAULT_COMMAND_TTL_MS} */
  ttlMs?: number;
  /** How long to wait for the reply. @defaultValue 10000 */
  timeoutMs?: number;
}

/** A job's end as seen by the requester. */
export interface FinishedJob {
  device: string;
  id: string;
  state: ReportMessage["state"];
  report: ReportMessage;
}

/** Sends commands to the devices of one fleet. */
export interface FleetRequester {
  /**
   * Sends a command and resolves with the device's reply (which may be an
   * error reply: check `ok`).
   *
   * @throws FLEET_UNAVAILABLE when no reply arrives within the timeout
   */
  request(
    device: string,
    name: CommandName | string,
    params?: Record<string, unknown>,
    options?: RequestOptions,
  ): Promise<CommandReply>;
  /**
   * Waits for the report of job `jobId` on `device`. Call before sending the
   * command (or right after: reports are QoS 1 and the subscription is made here).
   *
   * @throws JOB_TIMED_OUT when no report arrives within `timeoutMs`
   */
  waitForReport(device: string, jobId: string, timeoutMs: number): Promise<FinishedJob>;
  /** Calls `fn` with every `jobs/{id}` progress message of the fleet; returns the unsubscribe function. */
  onJobProgress(fn: (device: string, msg: JobMessage) => void): () => void;
  /** Unsubscribes. */
  close(): Promise<void>;
}

/** Options of {@link createFleetRequester}. */
export interface FleetRequesterOptions {
  /**
   * The operator key every command is signed with. Devices run only commands
   * signed by a key they trust; unsigned ones get COMMAND_UNAUTHORIZED.
   */
  signer?: SigningKey;
}

/** Subscribes to this client's replies in `fleet` and returns a requester. */
export async function createFleetRequester(
  conn: MqttConnection,
  fleet: string,
  requesterOptions: FleetRequesterOptions = {},
): Promise<FleetRequester> {
  const signer = requesterOptions.signer;
  const waiting = new Map<string, (reply: CommandReply) => void>();
  const reportWaiters = new Map<string, (r: ReportMessage) => void>();
  const seenReports = new Map<string, ReportMessage>();
  const progressListeners = new Set<(device: string, msg: JobMessage) => void>();
  const replyFilter = `${TOPIC_ROOT}/${fleet}/+/reply/${conn.clientId}`;
  const reportFilter = `${TOPIC_ROOT}/${fleet}/+/report`;
  const jobFilter = `${TOPIC_ROOT}/${fleet}/+/jobs/+`;
  const off = conn.onMessage((m) => {
    const t = parseTopic(m.topic);
    if (t === undefined || t.fleet !== fleet) return;
    if (t.kind === "reply" && m.correlationData !== undefined) {
      const key = Buffer.from(m.correlationData).toString("hex");
      const fn = waiting.get(key);
      const body = decodeJson(m.payload);
      if (fn !== undefined && typeof body === "object" && body !== null) fn(body as CommandReply);
    } else if (t.kind === "report") {
      const body = decodeJson(m.payload) as ReportMessage | undefined;
      if (body === undefined || typeof body.jobId !== "string") return;
      const key = `${t.device}/${body.jobId}`;
      seenReports.set(key, body);
      reportWaiters.get(key)?.(body);
    } else if (t.kind === "job") {
      const body = decodeJson(m.payload) as JobMessage | undefined;
      if (body === undefined) return;
      for (const fn of progressListeners) fn(t.device, body);
    }
  });
  const filters = [replyFilter, reportFilter, jobFilter];
  await conn.subscribe(filters, { qos: 1 });
  // Again on every later CONNACK: the connection keeps no subscription list of its own.
  const offConnect = conn.onConnect(() => {
    conn.subscribe(filters, { qos: 1 }).catch(() => {});
  });

  return {
    async request(device, name, params = {}, options = {}) {
      const topics = deviceTopics(fleet, device);
      const ttlMs = options.ttlMs ?? DEFAULT_COMMAND_TTL_MS;
      const env: CommandEnvelope = { id: options.id ?? randomUUID(), expiresAt: Date.now() + ttlMs, params };
      const correlation = randomBytes(16);
      const key = correlation.toString("hex");
      const timeoutMs = options.timeoutMs ?? 10_000;
      const reply = new Promise<CommandReply>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(key);
          reject(
            new QuantdError(
              "FLEET_UNAVAILABLE",
              `no reply from ${device} to ${name} within ${timeoutMs} ms`,
              {
                details: { device, command: name, id: env.id },
              },
            ),
          );
        }, timeoutMs);
        waiting.set(key, (r) => {
          clearTimeout(timer);
          waiting.delete(key);
          resolve(r);
        });
      });
      const topic = topics.cmd(name as CommandName);
      const body = encodeJson(env);
      try {
        await conn.publish(topic, body, {
          ...(signer === undefined ? {} : { userProperties: signer.sign(topic, body) }),
          qos: 1,
          responseTopic: topics.reply(conn.clientId),
          correlationData: correlation,
          messageExpiryInterval: Math.max(1, Math.ceil(ttlMs / 1000)),
        });
      } catch (err) {
        waiting.get(key)?.({ id: env.id, command: name, ok: false, error: QuantdError.from(err).toJSON() });
      }
      return await reply;
    },
    waitForReport(device, jobId, timeoutMs) {
      const key = `${device}/${jobId}`;
      const done = (report: ReportMessage): FinishedJob => ({
        device,
        id: jobId,
        state: report.state,
        report,
      });
      const seen = seenReports.get(key);
      if (seen !== undefined) return Promise.resolve(done(seen));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          reportWaiters.delete(key);
          reject(
            new QuantdError(
              "JOB_TIMED_OUT",
              `no report for job ${jobId} from ${device} within ${timeoutMs} ms`,
              {
                details: { device, jobId },
              },
            ),
          );
        }, timeoutMs);
        reportWaiters.set(key, (r) => {
          clearTimeout(timer);
          reportWaiters.delete(key);
          resolve(done(r));
        });
      });
    },
    onJobProgress(fn) {
      progressListeners.add(fn);
      return () => progressListeners.delete(fn);
    },
    async close() {
      off();
      offConnect();
      await conn.unsubscribe(filters).catch(() => {});
    },
  };
}
