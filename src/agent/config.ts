/**
 * The agent's configuration: defaults from the board profile, then a JSON or
 * TOML file, then `QUANTD_*` environment variables, then command-line flags.
 * Everything is validated once, at start, so a typo fails the service with one
 * CONFIG_INVALID line naming the key instead of surfacing hours later.
 */
import { readFileSync } from "node:fs";
import { homedir, hostname } from "node:os";
import { basename, dirname, extname, join, resolve } from "node:path";
import type { BoardProfile } from "../device/profiles.ts";
import { QuantdError } from "../errors.ts";
import type { FleetConfig } from "../fleet/device/config.ts";
import { deviceNameOf } from "../fleet/protocol.ts";
import { isRecord } from "../json.ts";
import { QUANTIZE_PREFERENCES, type QuantizePreference } from "../quant/methods.ts";
import { modelFileOf } from "../runtime/model-files.ts";
import {
  POOLING_MODES,
  type PoolingMode,
  TASK_KINDS,
  type TaskKind,
  type TaskOverride,
} from "../runtime/task.ts";
import type { TcpAddress } from "../server/listen.ts";

/** Micro-batching of inference requests. */
export interface BatchingConfig {
  /** Most texts in one inference batch. */
  maxBatch: number;
  /**
   * Longest wait for more texts after the first one of a batch, in ms. With 0 a
   * batch is flushed as soon as the session is free, so texts that arrived
   * while the previous batch ran are batched and a lone request never waits.
   */
  maxDelayMs: number;
  /** Most texts waiting; beyond this requests get 503 with Retry-After. */
  maxQueue: number;
}

/** Request size limits. */
export interface LimitsConfig {
  /** Largest request body, in bytes. */
  maxBodyBytes: number;
  /** Most texts in one request. */
  maxTexts: number;
  /** Largest text, in UTF-8 bytes. */
  maxTextBytes: number;
  /** Largest model file a promotion accepts, in bytes. */
  maxModelBytes: number;
  /** Most tokens in one request (each text counted up to the model's sequence limit). */
  maxRequestTokens: number;
}

/** Opt-in capture of live traffic into the sample pool. */
export interface CaptureConfig {
  enabled: boolean;
  /** Fraction of texts kept, in (0, 1]. */
  rate: number;
}

/** Post-swap checks that roll a promotion back automatically. */
export interface SwapChecksConfig {
  /** Largest tolerated fraction of failed batches on the new model. */
  errorRate: number;
  /** Largest tolerated p95 latency of the new model over the old one's. */
  p95Ratio: number;
  /** Batches observed on the new model before it is judged (and kept). */
  window: number;
}

/** A loopback TCP listener. */
export type TcpConfig = TcpAddress;

/** The resolved configuration of `quantd agent`. */
export interface AgentConfig {
  /** Holds the database (`quantd.db`) and the model versions (`models/`). */
  stateDir: string;
  /** The Unix socket the server listens on. */
  socketPath: string;
  /** Optional TCP listener, loopback only. */
  tcp: TcpConfig | undefined;
  /**
   * Where a Prometheus scraper reads `/metrics` (`metrics.listen`, any host): a
   * separate listener that serves that one read-only route and nothing of the
   * inference or admin API. @defaultValue none: `/metrics` on the socket only
   */
  metricsListen: TcpAddress | undefined;
  /** The initial fp32 model. */
  model: string;
  /** Whether `model` was asked for explicitly (then it is served even if the store has an active version). */
  modelExplicit: boolean;
  /** Directory with the tokenizer and config.json. @defaultValue the initial model's directory */
  tokenizerDir: string;
  /**
   * Whether `tokenizerDir` was configured: the store's active version then starts only if it was
   * registered with that tokenizer (else each stored version serves with its own). @defaultValue false
   */
  tokenizerDirExplicit?: boolean;
  /** The model name in the Open Inference Protocol routes. @defaultValue the initial model's directory name (its file's stem at the filesystem root) */
  modelName: string;
  /**
   * Whether `modelName` was configured; else it follows the model served (a
   * stored version serving without --model, or in place of an explicit model
   * that did not load, gives its own). @defaultValue false
   */
  modelNameExplicit?: boolean;
  /**
   * What the operator sets over the task detected from the model (`task.kind`, `task.pooling`,
   * `task.normalize`); a setting the model's outputs contradict stops the start. @defaultValue detected
   */
  task: TaskOverride;
  /** onnxruntime intra-op threads. */
  threads: number;
  /**
   * Worker threads that run the serving model, each with its own session
   * (and `threads` onnxruntime threads); the batcher runs as many batches at
   * once. With 0 the model runs on the server's JS thread. Workers keep the
   * server answering health checks while batches run, and several workers
   * with one onnxruntime thread each serve more than one session with several
   * threads (`bun bench/serve.ts --only 5`), at the memory of one session per
   * worker. The default, one worker, keeps health checks and other requests
   * answered while a large request runs (onnxruntime-node runs a session
   * synchronously on its calling thread). @defaultValue 1
   */
  inferenceWorkers: number;
  batching: BatchingConfig;
  limits: LimitsConfig;
  capture: CaptureConfig;
  swap: SwapChecksConfig;
  /** What recalibrations serve when int8 is smaller but not faster (see {@link QUANTIZE_PREFERENCES}). */
  quantize: { prefer: QuantizePreference };
  /** Sample pool bounds. */
  samplePool: { maxRows: number; maxBytes: number };
  /** The job engine: its timeout and when it queues a recalibration by itself. */
  jobs: JobsConfig;
  /** The fleet link (`fleet.*` keys, or `--broker --device --fleet`); undefined when no broker is set. */
  fleet: FleetConfig | undefined;
}

/**
 * The agent's job engine. A recalibration is queued by `quantd job`, by the
 * fleet, and, when set, on a schedule and after enough new samples.
 */
export interface JobsConfig {
  /** A job running longer ends TIMED_OUT. @defaultValue 60 minutes */
  timeoutMs: number;
  /** Queue a recalibration this often (`jobs.recalibrateEveryHours`). @defaultValue never */
  recalibrateEveryMs: number | undefined;
  /** Queue one once this many new distinct samples reached the pool (`jobs.recalibrateAfterSamples`). @defaultValue never */
  recalibrateAfterSamples: number | undefined;
  /**
   * Queue one once this share of live inputs (after 200) is longer than the
   * active int8 model's calibration covered (`jobs.recalibrateOnDrift`, e.g.
   * 0.05); those inputs are kept in the sample pool for it. @defaultValue never
   */
  recalibrateOnDrift: number | undefined;
}

/** Values given on the command line; they win over the file and the environment. */
export interface ConfigFlags {
  config?: string;
  stateDir?: string;
  socket?: string;
  model?: string;
  tcp?: string;
  /** `metrics.listen`: HOST:PORT of the read-only `/metrics` listener. */
  metricsListen?: string;
  /** Fleet broker URL, device id and fleet name (`fleet.broker`, `fleet.device`, `fleet.fleet`). */
  broker?: string;
  device?: string;
  fleet?: string;
}

/** Inputs of {@link loadAgentConfig}. */
export interface LoadConfigOptions {
  /** Board profile for threads and pool bounds. */
  profile: Pick<BoardProfile, "threads" | "samplePool">;
  /** The shipped fp32 model, used when nothing names one. */
  defaultModel: string;
  /** Command-line values; they override the environment and the file. */
  flags?: ConfigFlags;
  /** @defaultValue process.env */
  env?: Record<string, string | undefined>;
}

/** Default request limits. */
export const DEFAULT_LIMITS: LimitsConfig = {
  maxBodyBytes: 1024 * 1024,
  maxTexts: 256,
  maxTextBytes: 64 * 1024,
  maxModelBytes: 1024 * 1024 * 1024,
  maxRequestTokens: 16 * 1024,
};

/** Default post-swap checks: over its first 200 batches, more than 1 % failed batches or a p95 batch latency above 1.2 × the old model's rolls a new model back. */
export const DEFAULT_SWAP_CHECKS: SwapChecksConfig = { errorRate: 0.01, p95Ratio: 1.2, window: 200 };

type KeyType = "string" | "int" | "number" | "boolean" | "tcp" | "address" | "task" | "pooling" | "prefer";

interface KeySpec {
  /** Dotted path in the file, e.g. `batching.maxBatch`. */
  path: string;
  type: KeyType;
  min?: number;
  max?: number;
  /** Exclusive lower bound. */
  above?: number;
}

/** Every accepted key. The environment name is `QUANTD_` + the path in upper snake case. */
const KEYS: readonly KeySpec[] = [
  { path: "stateDir", type: "string" },
  { path: "socketPath", type: "string" },
  { path: "tcp", type: "tcp" },
  { path: "metrics.listen", type: "address" },
  { path: "model", type: "string" },
  { path: "tokenizerDir", type: "string" },
  { path: "modelName", type: "string" },
  { path: "task.kind", type: "task" },
  { path: "task.pooling", type: "pooling" },
  { path: "task.normalize", type: "boolean" },
  { path: "threads", type: "int", min: 1, max: 256 },
  { path: "inferenceWorkers", type: "int", min: 0, max: 64 },
  { path: "batching.maxBatch", type: "int", min: 1, max: 4096 },
  { path: "batching.maxDelayMs", type: "number", min: 0, max: 10_000 },
  { path: "batching.maxQueue", type: "int", min: 1, max: 1_000_000 },
  { path: "limits.maxBodyBytes", type: "int", min: 64, max: 1024 * 1024 * 1024 },
  { path: "limits.maxTexts", type: "int", min: 1, max: 100_000 },
  { path: "limits.maxTextBytes", type: "int", min: 1, max: 16 * 1024 * 1024 },
  { path: "limits.maxModelBytes", type: "int", min: 1024, max: 2 * 1024 * 1024 * 1024 },
  { path: "limits.maxRequestTokens", type: "int", min: 1, max: 100_000_000 },
  { path: "capture.enabled", type: "boolean" },
  { path: "capture.rate", type: "number", above: 0, max: 1 },
  { path: "swap.errorRate", type: "number", min: 0, max: 1 },
  { path: "swap.p95Ratio", type: "number", above: 0 },
  { path: "swap.window", type: "int", min: 1, max: 1_000_000 },
  { path: "jobs.timeoutMinutes", type: "number", above: 0, max: 7 * 24 * 60 },
  { path: "jobs.recalibrateEveryHours", type: "number", above: 0, max: 24 * 365 },
  { path: "jobs.recalibrateAfterSamples", type: "int", min: 1 },
  { path: "jobs.recalibrateOnDrift", type: "number", above: 0, max: 1 },
  { path: "quantize.prefer", type: "prefer" },
  { path: "samplePool.maxRows", type: "int", min: 1 },
  { path: "samplePool.maxBytes", type: "int", min: 1 },
  { path: "fleet.broker", type: "string" },
  { path: "fleet.fleet", type: "string" },
  { path: "fleet.device", type: "string" },
  { path: "fleet.caFile", type: "string" },
  { path: "fleet.certFile", type: "string" },
  { path: "fleet.keyFile", type: "string" },
  { path: "fleet.username", type: "string" },
  { path: "fleet.password", type: "string" },
  { path: "fleet.keepaliveSec", type: "int", min: 1, max: 65535 },
  { path: "fleet.willDelaySec", type: "int", min: 0, max: 86_400 },
  { path: "fleet.telemetryIntervalMs", type: "int", min: 10, max: 3_600_000 },
  { path: "fleet.maxPacketBytes", type: "int", min: 131_072, max: 268_435_455 },
  { path: "fleet.operatorKeys", type: "string" },
  { path: "fleet.deviceKeyFile", type: "string" },
  { path: "fleet.releaseKeys", type: "string" },
  { path: "fleet.keepReleases", type: "int", min: 1, max: 100 },
];

/** `batching.maxBatch` → `QUANTD_BATCHING_MAX_BATCH`. */
export function envName(path: string): string {
  return `QUANTD_${path
    .split(".")
    .map((p) => p.replace(/([a-z0-9])([A-Z])/g, "$1_$2"))
    .join("_")
    .toUpperCase()}`;
}

function invalid(key: string, message: string, source: string): QuantdError {
  return new QuantdError("CONFIG_INVALID", `config key ${key} (${source}): ${message}`, {
    details: { key, source },
  });
}

const LOOPBACK_NAMES = new Set(["localhost", "::1", "[::1]", "ip6-localhost"]);

/** True for `localhost`, `::1` and any 127.0.0.0/8 address. */
export function isLoopbackHost(host: string): boolean {
  if (LOOPBACK_NAMES.has(host.toLowerCase())) return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  return m?.slice(1).every((o) => Number(o) <= 255) ?? false;
}

/**
 * Parses `HOST:PORT` (`[::1]:8080` for IPv6) and refuses hosts that are not
 * loopback: the inference API has no authentication, the socket's file mode is
 * its access control, and a TCP port must not widen that to the network.
 *
 * @throws CONFIG_INVALID for a malformed value or a non-loopback host
 */
export function parseTcp(raw: unknown, key = "tcp", source = "flag"): TcpConfig {
  const { host, port } = parseAddress(raw, key, source);
  if (!isLoopbackHost(host)) {
    throw invalid(
      key,
      `host ${host} is not a loopback address: the TCP listener serves only 127.0.0.0/8, ::1 or localhost`,
      source,
    );
  }
  return { host, port };
}

/**
 * Parses `HOST:PORT` (`[::1]:8080` for IPv6) or `{host, port}`, any host: for
 * listeners that serve nothing a client could change (the metrics listener).
 *
 * @throws CONFIG_INVALID for a malformed value
 */
export function parseAddress(raw: unknown, key: string, source = "flag"): TcpAddress {
  let host: string;
  let port: unknown;
  if (isRecord(raw)) {
    host = String(raw["host"] ?? "127.0.0.1");
    port = raw["port"];
  } else if (typeof raw === "string") {
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(raw.trim());
    if (m === null) throw invalid(key, `expected HOST:PORT, got ${JSON.stringify(raw)}`, source);
    host = m[1]!;
    port = Number(m[2]);
  } else throw invalid(key, "expected HOST:PORT or {host, port}", source);
  if (host.startsWith("[")) host = host.slice(1, -1);
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw invalid(key, `port must be an integer in 0..65535, got ${JSON.stringify(port)}`, source);
  }
  return { host, port };
}

function coerce(spec: KeySpec, raw: unknown, source: string): unknown {
  const fromEnv = source.startsWith("env");
  switch (spec.type) {
    case "string":
      if (typeof raw !== "string" || raw.trim() === "")
        throw invalid(spec.path, "must be a non-empty string", source);
      return raw;
    case "task":
    case "pooling":
    case "prefer": {
      const allowed: readonly string[] =
        spec.type === "task" ? TASK_KINDS : spec.type === "pooling" ? POOLING_MODES : QUANTIZE_PREFERENCES;
      if (typeof raw !== "string" || !allowed.includes(raw)) {
        throw invalid(spec.path, `must be one of ${allowed.join(", ")}, got ${JSON.stringify(raw)}`, source);
      }
      return raw;
    }
    case "tcp":
      return parseTcp(raw, spec.path, source);
    case "address":
      return parseAddress(raw, spec.path, source);
    case "boolean": {
      if (typeof raw === "boolean") return raw;
      if (fromEnv && typeof raw === "string") {
        const s = raw.trim().toLowerCase();
        if (["1", "true", "yes", "on"].includes(s)) return true;
        if (["0", "false", "no", "off"].includes(s)) return false;
      }
      throw invalid(spec.path, `must be true or false, got ${JSON.stringify(raw)}`, source);
    }
    case "int":
    case "number": {
      let n: number;
      if (typeof raw === "number") n = raw;
      else if (typeof raw === "bigint") n = Number(raw);
      else if (fromEnv && typeof raw === "string" && raw.trim() !== "") n = Number(raw.trim());
      else throw invalid(spec.path, `must be a number, got ${JSON.stringify(raw)}`, source);
      if (!Number.isFinite(n))
        throw invalid(spec.path, `must be a finite number, got ${JSON.stringify(raw)}`, source);
      if (spec.type === "int" && !Number.isSafeInteger(n)) {
        throw invalid(spec.path, `must be an integer, got ${JSON.stringify(raw)}`, source);
      }
      if (spec.min !== undefined && n < spec.min)
        throw invalid(spec.path, `must be >= ${spec.min}, got ${n}`, source);
      if (spec.max !== undefined && n > spec.max)
        throw invalid(spec.path, `must be <= ${spec.max}, got ${n}`, source);
      if (spec.above !== undefined && n <= spec.above) {
        throw invalid(spec.path, `must be > ${spec.above}, got ${n}`, source);
      }
      return n;
    }
  }
}

/**
 * Reads a config file: TOML for `.toml`, JSON otherwise.
 *
 * @throws CONFIG_INVALID when it cannot be read or parsed, or is not a table/object
 */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", `cannot read config file ${path}`, { cause: err });
  }
  let parsed: unknown;
  const toml = extname(path).toLowerCase() === ".toml";
  try {
    parsed = toml ? Bun.TOML.parse(text) : JSON.parse(text);
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", `config file ${path} is not valid ${toml ? "TOML" : "JSON"}`, {
      cause: err,
    });
  }
  if (!isRecord(parsed)) throw new QuantdError("CONFIG_INVALID", `config file ${path} must hold an object`);
  return parsed;
}

/** Flattens `{batching: {maxBatch: 8}}` to `batching.maxBatch`, refusing unknown keys. */
function flattenFile(obj: Record<string, unknown>, file: string): Map<string, unknown> {
  const known = new Set(KEYS.map((k) => k.path));
  const sections = new Set(KEYS.filter((k) => k.path.includes(".")).map((k) => k.path.split(".")[0]!));
  const out = new Map<string, unknown>();
  for (const [key, value] of Object.entries(obj)) {
    if (sections.has(key)) {
      if (!isRecord(value)) throw invalid(key, "must be a table/object", file);
      for (const [sub, v] of Object.entries(value)) {
        const path = `${key}.${sub}`;
        if (!known.has(path)) throw invalid(path, "unknown key", file);
        out.set(path, v);
      }
    } else if (known.has(key)) out.set(key, value);
    else throw invalid(key, `unknown key (known: ${[...known].join(", ")})`, file);
  }
  return out;
}

/** The agent's state directory when none is configured: systemd's `STATE_DIRECTORY`, else `$XDG_STATE_HOME/quantd` or `~/.local/state/quantd`. */
export function defaultStateDir(env: Record<string, string | undefined>): string {
  // systemd's StateDirectory= sets STATE_DIRECTORY (possibly a colon-separated list).
  const systemd = env["STATE_DIRECTORY"]?.split(":")[0];
  if (systemd !== undefined && systemd !== "") return systemd;
  const xdg = env["XDG_STATE_HOME"];
  return join(xdg !== undefined && xdg !== "" ? xdg : join(homedir(), ".local/state"), "quantd");
}

/** The fleet section, when a broker is set (the device id defaults to the host name, the fleet to `default`). */
function fleetConfig(
  values: Map<string, unknown>,
  pathValue: (key: string) => string | undefined,
): FleetConfig | undefined {
  const str = (key: string): string | undefined => values.get(key) as string | undefined;
  const broker = str("fleet.broker");
  if (broker === undefined) return undefined;
  const fleet: FleetConfig = {
    broker,
    fleet: str("fleet.fleet") ?? "default",
    device: str("fleet.device") ?? deviceNameOf(hostname()),
  };
  // Operator public keys: comma- or space-separated, so one environment variable holds several (rotation).
  const operatorKeys = str("fleet.operatorKeys");
  if (operatorKeys !== undefined) fleet.operatorKeys = operatorKeys.split(/[\s,]+/).filter((k) => k !== "");
  const releaseKeys = str("fleet.releaseKeys");
  if (releaseKeys !== undefined) fleet.releaseKeys = releaseKeys.split(/[\s,]+/).filter((k) => k !== "");
  const keepReleases = values.get("fleet.keepReleases") as number | undefined;
  if (keepReleases !== undefined) fleet.keepReleases = keepReleases;
  for (const key of ["caFile", "certFile", "keyFile", "deviceKeyFile"] as const) {
    const v = pathValue(`fleet.${key}`);
    if (v !== undefined) fleet[key] = v;
  }
  for (const key of ["username", "password"] as const) {
    const v = str(`fleet.${key}`);
    if (v !== undefined) fleet[key] = v;
  }
  for (const key of ["keepaliveSec", "willDelaySec", "telemetryIntervalMs", "maxPacketBytes"] as const) {
    const v = values.get(`fleet.${key}`) as number | undefined;
    if (v !== undefined) fleet[key] = v;
  }
  return fleet;
}

/**
 * Resolves the agent's configuration.
 *
 * Precedence, lowest first: board profile and built-in defaults, the file
 * (`--config`, else `QUANTD_CONFIG`), `QUANTD_*` environment variables, flags.
 * The socket defaults to `$RUNTIME_DIRECTORY/quantd.sock` (systemd's
 * RuntimeDirectory=), else `<stateDir>/quantd.sock`.
 *
 * @throws CONFIG_INVALID naming the key, and where the bad value came from, for any invalid value or unknown key
 */
export function loadAgentConfig(opts: LoadConfigOptions): AgentConfig {
  const sources = readSources(opts);
  const config = assembleConfig(opts, sources);
  checkResolved(config);
  return config;
}

/** The raw values of every source, lowest precedence first (each checked as it is read), and how to read paths. */
interface Sources {
  values: Map<string, unknown>;
  /** A path value: relative to the config file when it came from the file, else to the working directory. */
  pathValue: (key: string) => string | undefined;
}

/** Reads the file, the environment and the flags, in that order of precedence. */
function readSources(opts: LoadConfigOptions): Sources {
  const env = opts.env ?? process.env;
  const flags = opts.flags ?? {};
  const values = new Map<string, unknown>();
  const set = (path: string, raw: unknown, source: string): void => {
    const spec = KEYS.find((k) => k.path === path);
    if (spec === undefined) throw invalid(path, "unknown key", source);
    values.set(path, coerce(spec, raw, source));
  };

  const file = flags.config ?? env["QUANTD_CONFIG"];
  let fileDir: string | undefined;
  if (file !== undefined && file !== "") {
    fileDir = dirname(resolve(file));
    for (const [path, raw] of flattenFile(readConfigFile(file), file)) set(path, raw, file);
  }
  for (const spec of KEYS) {
    const name = envName(spec.path);
    const raw = env[name];
    if (raw !== undefined && raw !== "") set(spec.path, raw, `env ${name}`);
  }
  const flagKeys: readonly [string | undefined, string, string][] = [
    [flags.stateDir, "stateDir", "--state-dir"],
    [flags.socket, "socketPath", "--socket"],
    [flags.model, "model", "--model"],
    [flags.tcp, "tcp", "--tcp"],
    [flags.metricsListen, "metrics.listen", "--metrics-listen"],
    [flags.broker, "fleet.broker", "--broker"],
    [flags.device, "fleet.device", "--device"],
    [flags.fleet, "fleet.fleet", "--fleet"],
  ];
  for (const [value, path, flag] of flagKeys) if (value !== undefined) set(path, value, flag);

  // Relative paths in a file are relative to the file, as a reader of the file expects.
  const flagFor: Record<string, string | undefined> = {
    stateDir: flags.stateDir,
    socketPath: flags.socket,
    model: flags.model,
  };
  const flagsOrEnvSet = (key: string): boolean =>
    flagFor[key] !== undefined || (env[envName(key)] ?? "") !== "";
  const pathValue = (key: string): string | undefined => {
    const v = values.get(key) as string | undefined;
    if (v === undefined) return undefined;
    return fileDir !== undefined && !flagsOrEnvSet(key) ? resolve(fileDir, v) : resolve(v);
  };
  return { values, pathValue };
}

/** The configuration from the sources' values, with the board profile's and the built-in defaults. */
function assembleConfig(opts: LoadConfigOptions, { values, pathValue }: Sources): AgentConfig {
  const env = opts.env ?? process.env;
  const num = (key: string, fallback: number): number => (values.get(key) as number | undefined) ?? fallback;
  const optionalNum = (key: string, unit: number): number | undefined => {
    const v = values.get(key) as number | undefined;
    return v === undefined ? undefined : v * unit;
  };
  const stateDir = pathValue("stateDir") ?? resolve(defaultStateDir(env));
  const runtimeDir = env["RUNTIME_DIRECTORY"]?.split(":")[0];
  const socketPath =
    pathValue("socketPath") ??
    (runtimeDir !== undefined && runtimeDir !== ""
      ? join(runtimeDir, "quantd.sock")
      : join(stateDir, "quantd.sock"));
  const given = pathValue("model") ?? resolve(opts.defaultModel);
  // A model directory (Optimum's layout, or what `quantize --out DIR` writes) serves its model.onnx.
  const model = modelFileOf(given);
  const maxBatch = num("batching.maxBatch", 16);
  return {
    stateDir,
    socketPath,
    tcp: values.get("tcp") as TcpConfig | undefined,
    metricsListen: values.get("metrics.listen") as TcpAddress | undefined,
    model,
    modelExplicit: values.has("model"),
    tokenizerDir: pathValue("tokenizerDir") ?? dirname(model),
    tokenizerDirExplicit: values.has("tokenizerDir"),
    modelName: (values.get("modelName") as string | undefined) ?? defaultModelName(model),
    modelNameExplicit: values.has("modelName"),
    task: {
      ...(values.has("task.kind") ? { kind: values.get("task.kind") as TaskKind } : {}),
      ...(values.has("task.pooling") ? { pooling: values.get("task.pooling") as PoolingMode } : {}),
      ...(values.has("task.normalize") ? { normalize: values.get("task.normalize") as boolean } : {}),
    },
    threads: num("threads", opts.profile.threads),
    inferenceWorkers: num("inferenceWorkers", 1),
    batching: {
      maxBatch,
      maxDelayMs: num("batching.maxDelayMs", 0),
      maxQueue: num("batching.maxQueue", Math.max(256, maxBatch * 16)),
    },
    limits: {
      maxBodyBytes: num("limits.maxBodyBytes", DEFAULT_LIMITS.maxBodyBytes),
      maxTexts: num("limits.maxTexts", DEFAULT_LIMITS.maxTexts),
      maxTextBytes: num("limits.maxTextBytes", DEFAULT_LIMITS.maxTextBytes),
      maxModelBytes: num("limits.maxModelBytes", DEFAULT_LIMITS.maxModelBytes),
      maxRequestTokens: num("limits.maxRequestTokens", DEFAULT_LIMITS.maxRequestTokens),
    },
    capture: {
      enabled: (values.get("capture.enabled") as boolean | undefined) ?? false,
      rate: num("capture.rate", 0.1),
    },
    jobs: {
      timeoutMs: num("jobs.timeoutMinutes", 60) * 60_000,
      recalibrateEveryMs: optionalNum("jobs.recalibrateEveryHours", 3_600_000),
      recalibrateAfterSamples: optionalNum("jobs.recalibrateAfterSamples", 1),
      recalibrateOnDrift: optionalNum("jobs.recalibrateOnDrift", 1),
    },
    quantize: { prefer: (values.get("quantize.prefer") as QuantizePreference | undefined) ?? "latency" },
    swap: {
      errorRate: num("swap.errorRate", DEFAULT_SWAP_CHECKS.errorRate),
      p95Ratio: num("swap.p95Ratio", DEFAULT_SWAP_CHECKS.p95Ratio),
      window: num("swap.window", DEFAULT_SWAP_CHECKS.window),
    },
    samplePool: {
      maxRows: num("samplePool.maxRows", opts.profile.samplePool.maxRows),
      maxBytes: num("samplePool.maxBytes", opts.profile.samplePool.maxBytes),
    },
    fleet: fleetConfig(values, pathValue),
  };
}

/**
 * The model's name when the config sets none: its directory's name, made a
 * valid name. A model at the filesystem root has no directory name: the
 * file's stem then, and `model` when nothing of it is usable — a default must
 * never fail the config check (a missing file is reported as such when the
 * agent starts, naming it).
 */
export function defaultModelName(model: string): string {
  const valid = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  return valid(basename(dirname(model))) || valid(basename(model, extname(model))) || "model";
}

/** What only the resolved configuration can show: a bad model name, a short queue, a socket path too long. */
function checkResolved(config: AgentConfig): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(config.modelName)) {
    throw invalid(
      "modelName",
      `must be letters, digits, '.', '_' or '-', got ${JSON.stringify(config.modelName)}`,
      "resolved",
    );
  }
  if (config.batching.maxQueue < config.batching.maxBatch) {
    throw invalid(
      "batching.maxQueue",
      `must be >= batching.maxBatch (${config.batching.maxBatch})`,
      "resolved",
    );
  }
  // Linux's sun_path holds 107 bytes; a longer path fails at bind with an unhelpful error.
  if (Buffer.byteLength(config.socketPath) > 107) {
    throw invalid(
      "socketPath",
      `${config.socketPath} is longer than the 107 bytes a Unix socket path may have`,
      "resolved",
    );
  }
}
