/**
 * The one file that imports mqtt.js. Everything else in `fleet/` talks to the
 * broker through {@link MqttConnection}, a small MQTT 5 surface: publish
 * (resolving on PUBACK for QoS 1), subscribe, messages with their request /
 * response properties, and connect / close events.
 */
import mqtt, { type IClientOptions, type IClientPublishOptions, type MqttClient } from "mqtt";
import { QuantdError } from "../errors.ts";
import { maskSecret, redactUrl } from "../redact.ts";

/** MQTT delivery guarantee used by quantd (QoS 2 is never needed: every message carries an id). */
export type MqttQos = 0 | 1;

/** A received message with the MQTT 5 properties quantd uses. */
export interface MqttMessage {
  topic: string;
  payload: Uint8Array;
  qos: number;
  retain: boolean;
  /** Where a request wants its reply (MQTT 5 Response Topic). */
  responseTopic?: string;
  /** Opaque bytes to echo in the reply (MQTT 5 Correlation Data). */
  correlationData?: Uint8Array;
  /** Seconds left before the message expires, as the broker forwarded it. */
  messageExpiryInterval?: number;
  /** MQTT 5 User Properties (the first value of a repeated name). */
  userProperties?: Record<string, string>;
}

/** Options of one publish. */
export interface MqttPublishOptions {
  /** @defaultValue 0 */
  qos?: MqttQos;
  /** @defaultValue false */
  retain?: boolean;
  /** MQTT 5 Response Topic: where the receiver should publish its reply. */
  responseTopic?: string;
  /** MQTT 5 Correlation Data, echoed in the reply so the requester can match it. */
  correlationData?: Uint8Array;
  /** Seconds after which the broker drops the message instead of delivering it. */
  messageExpiryInterval?: number;
  /** MQTT 5 User Properties (quantd's signatures). */
  userProperties?: Record<string, string>;
}

/** The Last Will: what the broker publishes when the client vanishes. */
export interface MqttWill {
  topic: string;
  payload: string;
  qos: MqttQos;
  retain: boolean;
  /** MQTT 5 Will Delay Interval in seconds: a reconnect within it cancels the will. */
  delaySec?: number;
  /** MQTT 5 User Properties of the will. */
  userProperties?: Record<string, string>;
}

/** How to reach and log in to the broker. */
export interface MqttConnectOptions {
  /** `mqtt://host:port` or `mqtts://host:port`. */
  url: string;
  clientId: string;
  /** Broker login. */
  username?: string;
  password?: string;
  /** PEM contents (not paths): the CA that signed the broker's certificate. */
  ca?: string;
  /** PEM client certificate and key for mutual TLS. */
  cert?: string;
  key?: string;
  /** @defaultValue 30 */
  keepaliveSec?: number;
  /**
   * Clean Start. With `false` the broker keeps subscriptions and queued QoS 1
   * messages across reconnects for `sessionExpirySec`. @defaultValue true
   */
  clean?: boolean;
  /** MQTT 5 Session Expiry Interval. @defaultValue 0 */
  sessionExpirySec?: number;
  /** Published by the broker when this client vanishes (none when absent). */
  will?: MqttWill;
  /** Delay between reconnect attempts in ms; 0 disables reconnecting. @defaultValue 1000 */
  reconnectPeriodMs?: number;
  /** Give up the first connection attempt after this long, in ms. @defaultValue 10000 */
  connectTimeoutMs?: number;
  /**
   * MQTT 5 Maximum Packet Size sent in CONNECT: the broker drops (and never
   * delivers) anything larger to this client, so one oversized message cannot
   * be read into memory. @defaultValue {@link DEFAULT_MAX_PACKET_BYTES}
   */
  maxPacketBytes?: number;
}

/**
 * Default Maximum Packet Size of a quantd client (the operator CLI): 1 MiB
 * holds the largest report (`MAX_REPORT_BYTES`) with room to spare. Devices
 * and controllers announce less (`DEFAULT_DEVICE_MAX_PACKET_BYTES`,
 * `DEFAULT_CONTROLLER_MAX_PACKET_BYTES`).
 */
export const DEFAULT_MAX_PACKET_BYTES = 1024 * 1024;

/** How the broker acknowledged a QoS 1 publish. */
export interface PublishOutcome {
  /**
   * MQTT 5 PUBACK reason 0x10: the broker took the message but nobody was
   * subscribed, so it went nowhere (a controller that lost its shared
   * subscription in a broker restart has not subscribed again yet, say).
   */
  noSubscribers: boolean;
}

/** What the broker's CONNACK said. */
export interface ConnectInfo {
  /** The broker kept the session (subscriptions, queued messages) from before. */
  sessionPresent: boolean;
  /** MQTT 5 Shared Subscription Available: absent in the CONNACK means yes. */
  sharedSubscriptions: boolean;
}

/** A live (or reconnecting) connection to the broker. */
export interface MqttConnection {
  readonly clientId: string;
  /** Whether the connection is up right now. */
  readonly connected: boolean;
  /**
   * Publishes a message. QoS 1 resolves when the broker acknowledged it
   * (PUBACK), QoS 0 when it was written to the socket.
   *
   * @throws FLEET_UNAVAILABLE when the connection was closed or the broker refused it
   */
  publish(topic: string, payload: Uint8Array | string, options?: MqttPublishOptions): Promise<PublishOutcome>;
  /**
   * Subscribes to filters (and resolves on SUBACK). A SUBSCRIBE is always
   * sent, also for a filter subscribed before, and nothing is re-subscribed
   * behind the caller's back: owners subscribe again on every CONNACK,
   * session present or not, because mosquitto 2.0 with `persistence true`
   * restores a session without its `$share/…` subscriptions.
   *
   * @throws FLEET_UNAVAILABLE when the broker refuses a filter (ACL) or the connection is gone
   */
  subscribe(filters: readonly string[], options?: { qos?: MqttQos }): Promise<void>;
  /** Removes subscriptions. */
  unsubscribe(filters: readonly string[]): Promise<void>;
  /** Calls `fn` on every message; returns the unsubscribe function. */
  onMessage(fn: (message: MqttMessage) => void): () => void;
  /** Calls `fn` on every (re)connect. */
  onConnect(fn: (info: ConnectInfo) => void): () => void;
  /** Calls `fn` whenever the connection drops. */
  onClose(fn: () => void): () => void;
  /** Calls `fn` with connection errors (refused login, TLS, …); reconnecting goes on. */
  onError(fn: (err: QuantdError) => void): () => void;
  /**
   * Disconnects. Without `force`, in-flight messages get their acknowledgements
   * first; `force` drops the socket at once (the broker then sends the will).
   */
  close(options?: { force?: boolean }): Promise<void>;
}

function unavailable(message: string, cause?: unknown): QuantdError {
  return new QuantdError("FLEET_UNAVAILABLE", message, cause === undefined ? {} : { cause });
}

function toClientOptions(o: MqttConnectOptions): IClientOptions {
  const opts: IClientOptions = {
    protocolVersion: 5,
    clientId: o.clientId,
    keepalive: o.keepaliveSec ?? 30,
    clean: o.clean ?? true,
    reconnectPeriod: o.reconnectPeriodMs ?? 1000,
    connectTimeout: o.connectTimeoutMs ?? 10_000,
    // Offline QoS 0 (telemetry) is worthless later; QoS 1 goes through the SQLite outbox instead.
    queueQoSZero: false,
    // mqtt.js skips a SUBSCRIBE for a filter it believes it holds and re-sends
    // only after a session-less CONNACK; both are wrong after a persistent
    // broker's restart (see subscribe above), so it keeps no subscription list.
    resubscribe: false,
    properties: {
      sessionExpiryInterval: o.sessionExpirySec ?? 0,
      maximumPacketSize: o.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES,
    },
  };
  if (o.username !== undefined) opts.username = o.username;
  if (o.password !== undefined) opts.password = o.password;
  if (o.ca !== undefined) opts.ca = o.ca;
  if (o.cert !== undefined) opts.cert = o.cert;
  if (o.key !== undefined) opts.key = o.key;
  if (o.url.startsWith("mqtts:")) opts.rejectUnauthorized = true;
  if (o.will !== undefined) {
    opts.will = {
      topic: o.will.topic,
      payload: Buffer.from(o.will.payload, "utf8"),
      qos: o.will.qos,
      retain: o.will.retain,
      properties: {
        ...(o.will.delaySec === undefined ? {} : { willDelayInterval: o.will.delaySec }),
        ...(o.will.userProperties === undefined ? {} : { userProperties: o.will.userProperties }),
      },
    };
  }
  return opts;
}

/**
 * Validates a broker URL.
 *
 * @throws CONFIG_INVALID unless it is `mqtt://` or `mqtts://` with a host
 */
export function parseBrokerUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    // No cause and no raw echo: the text may carry a password.
    throw new QuantdError("CONFIG_INVALID", `broker URL ${JSON.stringify(redactUrl(url))} is not a URL`, {
      details: { key: "broker" },
    });
  }
  if ((u.protocol !== "mqtt:" && u.protocol !== "mqtts:") || u.hostname === "") {
    throw new QuantdError(
      "CONFIG_INVALID",
      `broker URL must be mqtt://host[:port] or mqtts://host[:port], got ${redactUrl(url)}`,
      { details: { key: "broker" } },
    );
  }
  return u;
}

/**
 * The connection options of a checked broker URL. mqtt.js would parse a URL
 * string with Node's legacy `url.parse()`, which prints a deprecation warning
 * into the agent's log at every start.
 */
function brokerOptions(u: URL): IClientOptions {
  const protocol = u.protocol === "mqtts:" ? "mqtts" : "mqtt";
  const opts: IClientOptions = {
    protocol,
    // An IPv6 literal comes bracketed in a URL, bare in a socket address.
    host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: u.port === "" ? (protocol === "mqtts" ? 8883 : 1883) : Number(u.port),
  };
  if (u.username !== "") opts.username = decodeURIComponent(u.username);
  if (u.password !== "") opts.password = decodeURIComponent(u.password);
  return opts;
}

/** MQTT 5 PUBACK reason "No matching subscribers". */
const RC_NO_SUBSCRIBERS = 0x10;

/** mqtt.js's options for a publish with these MQTT 5 properties. */
function toPublishOptions(options: MqttPublishOptions): IClientPublishOptions {
  const opts: IClientPublishOptions = { qos: options.qos ?? 0, retain: options.retain ?? false };
  const props: NonNullable<IClientPublishOptions["properties"]> = {};
  if (options.responseTopic !== undefined) props.responseTopic = options.responseTopic;
  if (options.correlationData !== undefined) props.correlationData = Buffer.from(options.correlationData);
  if (options.messageExpiryInterval !== undefined)
    props.messageExpiryInterval = options.messageExpiryInterval;
  if (options.userProperties !== undefined) props.userProperties = options.userProperties;
  if (Object.keys(props).length > 0) opts.properties = props;
  return opts;
}

/** A received PUBLISH as an {@link MqttMessage}. */
function toMqttMessage(topic: string, payload: Buffer, packet: mqtt.IPublishPacket): MqttMessage {
  const p = packet.properties ?? {};
  const m: MqttMessage = {
    topic,
    // A view, not a copy: a large message is in memory once.
    payload: new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength),
    qos: packet.qos,
    retain: packet.retain,
  };
  if (p.responseTopic !== undefined) m.responseTopic = p.responseTopic;
  if (p.correlationData !== undefined) m.correlationData = new Uint8Array(p.correlationData);
  if (p.messageExpiryInterval !== undefined) m.messageExpiryInterval = p.messageExpiryInterval;
  if (p.userProperties !== undefined) {
    const up: Record<string, string> = {};
    for (const [k, v] of Object.entries(p.userProperties)) up[k] = String(Array.isArray(v) ? v[0] : v);
    m.userProperties = up;
  }
  return m;
}

function wrap(client: MqttClient, clientId: string, password: string | undefined): MqttConnection {
  let closed = false;
  const errorListeners = new Set<(err: QuantdError) => void>();
  // mqtt.js resolves a publish with the PUBLISH packet and swallows PUBACK
  // reason 0x10; the packet stream still shows it, keyed by message id.
  const noSubscribers = new Set<number>();
  client.on("packetreceive", (packet) => {
    if (
      packet.cmd === "puback" &&
      packet.reasonCode === RC_NO_SUBSCRIBERS &&
      packet.messageId !== undefined
    ) {
      noSubscribers.add(packet.messageId);
    }
  });
  client.on("close", () => noSubscribers.clear());
  client.on("error", (err) => {
    // No cause: its message could carry the password, and causes are printed.
    const e = unavailable(`MQTT connection error: ${maskSecret(err.message, password)}`);
    for (const fn of errorListeners) fn(e);
  });
  const listen = <A extends unknown[]>(
    add: (fn: (...a: A) => void) => void,
    remove: (fn: (...a: A) => void) => void,
    fn: (...a: A) => void,
  ): (() => void) => {
    add(fn);
    return () => remove(fn);
  };
  return {
    clientId,
    get connected() {
      return client.connected;
    },
    async publish(topic, payload, options = {}) {
      if (closed) throw unavailable("MQTT connection is closed");
      const opts = toPublishOptions(options);
      const body = typeof payload === "string" ? Buffer.from(payload, "utf8") : Buffer.from(payload);
      try {
        const sent = await client.publishAsync(topic, body, opts);
        const id = sent?.messageId;
        const nobody = id !== undefined && noSubscribers.delete(id);
        return { noSubscribers: nobody };
      } catch (err) {
        // mqtt.js rejects PUBACK reason codes >= 0x80 (ACL, quota) with the code on the error.
        const rc = (err as { code?: unknown }).code;
        if (typeof rc === "number" && rc >= 0x80) {
          throw unavailable(`broker refused the message on ${topic} (reason 0x${rc.toString(16)})`, err);
        }
        throw unavailable(`publish to ${topic} failed`, err);
      }
    },
    async subscribe(filters, options = {}) {
      if (closed) throw unavailable("MQTT connection is closed");
      let grants: Awaited<ReturnType<MqttClient["subscribeAsync"]>>;
      try {
        grants = await client.subscribeAsync([...filters], { qos: options.qos ?? 1 });
      } catch (err) {
        throw unavailable(`subscribe to ${filters.join(", ")} failed`, err);
      }
      const refused = grants.filter((g) => g.qos >= 0x80);
      if (refused.length > 0) {
        throw unavailable(
          `broker refused subscription to ${refused.map((g) => g.topic).join(", ")}`,
          undefined,
        );
      }
    },
    async unsubscribe(filters) {
      if (closed) return;
      await client.unsubscribeAsync([...filters]);
    },
    onMessage(fn) {
      const h = (topic: string, payload: Buffer, packet: mqtt.IPublishPacket): void =>
        fn(toMqttMessage(topic, payload, packet));
      return listen(
        (f) => client.on("message", f),
        (f) => client.off("message", f),
        h,
      );
    },
    onConnect(fn) {
      const h = (packet: mqtt.IConnackPacket): void =>
        fn({
          sessionPresent: packet.sessionPresent,
          sharedSubscriptions: packet.properties?.sharedSubscriptionAvailable !== false,
        });
      return listen(
        (f) => client.on("connect", f),
        (f) => client.off("connect", f),
        h,
      );
    },
    onClose(fn) {
      const h = (): void => fn();
      return listen(
        (f) => client.on("close", f),
        (f) => client.off("close", f),
        h,
      );
    },
    onError(fn) {
      errorListeners.add(fn);
      return () => errorListeners.delete(fn);
    },
    async close(options = {}) {
      if (closed) return;
      closed = true;
      await client.endAsync(options.force ?? false);
    },
  };
}

/**
 * Opens a connection that reconnects on its own and returns at once; use
 * {@link MqttConnection.onConnect} to know when it is up. This is the agent's
 * mode: a board boots with or without a network.
 *
 * @throws CONFIG_INVALID when the URL is not mqtt:// or mqtts://
 */
export function connectMqtt(options: MqttConnectOptions): MqttConnection {
  const broker = brokerOptions(parseBrokerUrl(options.url));
  const opts = { ...broker, ...toClientOptions(options) };
  return wrap(mqtt.connect(opts), options.clientId, passwordOf(opts));
}

function passwordOf(opts: IClientOptions): string | undefined {
  const pw = opts.password;
  return pw === undefined ? undefined : String(pw);
}

/**
 * Connects and waits for the first CONNACK (the CLI's mode).
 *
 * @throws CONFIG_INVALID when the URL is not mqtt:// or mqtts://
 * @throws FLEET_UNAVAILABLE when the broker cannot be reached or refuses the login within the timeout
 */
export async function connectMqttOnce(options: MqttConnectOptions): Promise<MqttConnection> {
  const broker = brokerOptions(parseBrokerUrl(options.url));
  const opts = { ...broker, ...toClientOptions(options), reconnectPeriod: 0 };
  const client = mqtt.connect(opts);
  const password = passwordOf(opts);
  const shown = redactUrl(options.url);
  const timeoutMs = options.connectTimeoutMs ?? 10_000;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(unavailable(`no answer from the broker at ${shown} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      client.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      client.once("error", (err) => {
        clearTimeout(timer);
        reject(unavailable(`cannot connect to the broker at ${shown}: ${maskSecret(err.message, password)}`));
      });
      client.once("close", () => {
        clearTimeout(timer);
        reject(unavailable(`the broker at ${shown} closed the connection`));
      });
    });
  } catch (err) {
    client.end(true);
    throw err;
  }
  client.options.reconnectPeriod = options.reconnectPeriodMs ?? 1000;
  return wrap(client, options.clientId, password);
}
