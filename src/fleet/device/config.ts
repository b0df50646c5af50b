/**
 * The fleet link's configuration (the `fleet` section of the agent config, or
 * `quantd agent --broker URL --device ID --fleet NAME`) and its translation
 * into MQTT connection options.
 */
import { readFileSync } from "node:fs";
import { QuantdError } from "../../errors.ts";
import { type MqttConnectOptions, parseBrokerUrl } from "../mqtt-client.ts";
import { checkName, MAX_COMMAND_BYTES, MAX_TELEMETRY_SAMPLES } from "../protocol.ts";
import { parsePublicKey } from "../signing.ts";

/** Default MQTT keepalive, in seconds. */
export const DEFAULT_KEEPALIVE_SEC = 30;
/** Default Will Delay: a reconnect within it shows no `offline` blip. */
export const DEFAULT_WILL_DELAY_SEC = 15;
/** Default session expiry: subscriptions and queued commands survive this long offline. */
export const DEFAULT_SESSION_EXPIRY_SEC = 3600;
/** Default telemetry sampling period. */
export const DEFAULT_TELEMETRY_INTERVAL_MS = 1000;
/**
 * Default Maximum Packet Size of a device: room for the largest command it
 * parses and no more, so nothing larger ever reaches its memory.
 */
export const DEFAULT_DEVICE_MAX_PACKET_BYTES = 2 * MAX_COMMAND_BYTES;
/** Default number of samples per telemetry message. */
export const DEFAULT_TELEMETRY_BATCH = 10;

/** How a device joins its fleet. */
export interface FleetConfig {
  /** `mqtt://host:port` or `mqtts://host:port`. */
  broker: string;
  /** Fleet name: the second topic level. */
  fleet: string;
  /** Device id: the third topic level and the MQTT client id. */
  device: string;
  /** PEM file of the CA that signed the broker certificate (mqtts). */
  caFile?: string;
  /** PEM client certificate and key files (mutual TLS). */
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
  /** @defaultValue {@link DEFAULT_KEEPALIVE_SEC} */
  keepaliveSec?: number;
  /** @defaultValue {@link DEFAULT_WILL_DELAY_SEC} */
  willDelaySec?: number;
  /** @defaultValue {@link DEFAULT_SESSION_EXPIRY_SEC} */
  sessionExpirySec?: number;
  /** @defaultValue {@link DEFAULT_TELEMETRY_INTERVAL_MS} */
  telemetryIntervalMs?: number;
  /** Samples per telemetry message, at most `MAX_TELEMETRY_SAMPLES`. @defaultValue {@link DEFAULT_TELEMETRY_BATCH} */
  telemetryBatch?: number;
  /** MQTT 5 Maximum Packet Size announced in CONNECT. @defaultValue {@link DEFAULT_DEVICE_MAX_PACKET_BYTES} */
  maxPacketBytes?: number;
  /**
   * Public keys of the operators whose signed commands this device runs
   * (several for rotation). Empty: every command is refused with
   * COMMAND_UNAUTHORIZED. @defaultValue []
   */
  operatorKeys?: readonly string[];
  /**
   * The device's private signing key (PEM), created on first start when
   * missing; the agent logs its public half for enrolment.
   * @defaultValue `<stateDir>/fleet-device.key`
   */
  deviceKeyFile?: string;
  /**
   * Public keys whose signed releases this device takes (`quantd fleet
   * release create --release-key`). Empty: every release is refused before
   * download. @defaultValue []
   */
  releaseKeys?: readonly string[];
  /** Releases kept on disk at most (the serving model's and its rollback target's are always kept). @defaultValue {@link DEFAULT_KEEP_RELEASES} */
  keepReleases?: number;
}

/** Default of {@link FleetConfig.keepReleases}. */
export const DEFAULT_KEEP_RELEASES = 3;

function readPem(path: string | undefined, key: string): string | undefined {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", `${key}: cannot read ${path}`, { cause: err, details: { key } });
  }
}

function positiveInt(
  v: number | undefined,
  key: string,
  fallback: number,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new QuantdError("CONFIG_INVALID", `${key} must be an integer in [${min}, ${max}], got ${v}`, {
      details: { key },
    });
  }
  return v;
}

function checkedKeys(keys: readonly string[], what = "operatorKeys"): string[] {
  return keys.map((k, i) => {
    try {
      parsePublicKey(k);
    } catch (err) {
      throw new QuantdError("CONFIG_INVALID", `${what}[${i}] is not an Ed25519 public key`, {
        cause: err,
        details: { key: what },
      });
    }
    return k.trim();
  });
}

/** A {@link FleetConfig} with defaults applied and files read. */
export interface ResolvedFleetConfig {
  fleet: string;
  device: string;
  keepaliveSec: number;
  willDelaySec: number;
  sessionExpirySec: number;
  telemetryIntervalMs: number;
  telemetryBatch: number;
  /** Trusted operator public keys, checked. */
  operatorKeys: string[];
  /** Trusted release public keys, checked. */
  releaseKeys: string[];
  keepReleases: number;
  /** Connection options without the will (the link adds it). */
  connect: MqttConnectOptions;
}

/**
 * Validates a fleet config, reads its certificate files and applies defaults.
 *
 * @throws CONFIG_INVALID naming the key: bad URL, bad fleet/device name, unreadable PEM file, cert without key, non-positive number
 */
export function resolveFleetConfig(config: FleetConfig): ResolvedFleetConfig {
  const url = parseBrokerUrl(config.broker);
  checkName(config.fleet, "fleet");
  checkName(config.device, "device");
  if ((config.certFile === undefined) !== (config.keyFile === undefined)) {
    throw new QuantdError("CONFIG_INVALID", "a client certificate needs its key (certFile and keyFile)", {
      details: { key: config.certFile === undefined ? "certFile" : "keyFile" },
    });
  }
  if (url.protocol === "mqtt:" && (config.caFile ?? config.certFile) !== undefined) {
    throw new QuantdError("CONFIG_INVALID", "certificates need an mqtts:// broker URL", {
      details: { key: "broker" },
    });
  }
  const keepaliveSec = positiveInt(config.keepaliveSec, "keepaliveSec", DEFAULT_KEEPALIVE_SEC);
  const willDelaySec = positiveInt(config.willDelaySec, "willDelaySec", DEFAULT_WILL_DELAY_SEC, 0);
  const sessionExpirySec = positiveInt(
    config.sessionExpirySec,
    "sessionExpirySec",
    DEFAULT_SESSION_EXPIRY_SEC,
  );
  const connect: MqttConnectOptions = {
    url: config.broker,
    clientId: config.device,
    keepaliveSec,
    clean: false,
    // The will waits for the delay or the end of the session, whichever is first:
    // the session must outlive the delay or short reconnects would still flap.
    sessionExpirySec: Math.max(sessionExpirySec, willDelaySec),
    // A packet must hold the largest command; MQTT caps it at 256 MiB.
    maxPacketBytes: positiveInt(
      config.maxPacketBytes,
      "maxPacketBytes",
      DEFAULT_DEVICE_MAX_PACKET_BYTES,
      MAX_COMMAND_BYTES * 2,
      268_435_455,
    ),
  };
  const ca = readPem(config.caFile, "caFile");
  const cert = readPem(config.certFile, "certFile");
  const key = readPem(config.keyFile, "keyFile");
  if (ca !== undefined) connect.ca = ca;
  if (cert !== undefined) connect.cert = cert;
  if (key !== undefined) connect.key = key;
  if (config.username !== undefined) connect.username = config.username;
  if (config.password !== undefined) connect.password = config.password;
  return {
    fleet: config.fleet,
    device: config.device,
    keepaliveSec,
    willDelaySec,
    sessionExpirySec,
    telemetryIntervalMs: positiveInt(
      config.telemetryIntervalMs,
      "telemetryIntervalMs",
      DEFAULT_TELEMETRY_INTERVAL_MS,
      10,
    ),
    operatorKeys: checkedKeys(config.operatorKeys ?? []),
    releaseKeys: checkedKeys(config.releaseKeys ?? [], "releaseKeys"),
    keepReleases: positiveInt(config.keepReleases, "keepReleases", DEFAULT_KEEP_RELEASES, 1, 100),
    telemetryBatch: positiveInt(
      config.telemetryBatch,
      "telemetryBatch",
      DEFAULT_TELEMETRY_BATCH,
      1,
      MAX_TELEMETRY_SAMPLES,
    ),
    connect,
  };
}
