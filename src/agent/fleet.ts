/**
 * The agent's side of the fleet link: what each fleet command does in a
 * running agent. Recalibration (static or dynamic) is queued for the agent's
 * job runner, which owns the `recalibrate` job type; rollback, bench, status,
 * set-config and collect act on the live registry, batcher and config.
 * Telemetry samples come from the server's metrics.
 */
import type { DriftMonitor } from "./drift.ts";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { percentile } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import type { FleetConfig } from "../fleet/device/config.ts";
import type { FleetCommandHandler } from "../fleet/device/handler.ts";
import { createFleetLink, type ExternalJobRunner, type FleetLink } from "../fleet/device/link.ts";
import type { TelemetrySample } from "../fleet/protocol.ts";
import { loadOrCreateSigningKey } from "../fleet/signing.ts";
import type { MicroBatcher } from "../server/batcher.ts";
import { readProcessFigures } from "../core/process-figures.ts";
import type { ServerMetrics } from "../server/server-metrics.ts";
import type { Store } from "../store/store.ts";
import type { AgentConfig } from "./config.ts";
import type { JobRunner } from "./jobs.ts";
import { RECALIBRATE_JOB } from "./recalibrate.ts";
import { RELEASE_JOB } from "./release.ts";
import { type ModelRegistry, PROBE_TEXTS, probeInputs } from "./registry.ts";

/** The device key's file name in the state directory when `fleet.deviceKeyFile` is not set. */
export const DEVICE_KEY_FILE = "fleet-device.key";

/** What the link needs from a running agent. */
export interface AgentFleetParts {
  config: AgentConfig;
  store: Store;
  registry: ModelRegistry;
  batcher: MicroBatcher;
  metrics: ServerMetrics;
  /** The job runner, when this process runs jobs (another process may hold the runner lock). */
  runner: JobRunner | undefined;
  agentVersion: string;
  /** Live input lengths against the active model's coverage, sent with the telemetry. */
  drift?: DriftMonitor;
  log?: (line: string) => void;
}

function cpuTempC(): number | undefined {
  try {
    const milli = Number(readFileSync("/sys/class/thermal/thermal_zone0/temp", "utf8").trim());
    return Number.isFinite(milli) ? milli / 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** Where this process's cgroup v2 files are (systemd's MemoryMax= lands in its memory.max), or undefined. */
function cgroupDir(): string | undefined {
  try {
    const line = readFileSync("/proc/self/cgroup", "utf8")
      .split("\n")
      .find((l) => l.startsWith("0::"));
    return line === undefined ? undefined : join("/sys/fs/cgroup", line.slice(3).trim());
  } catch {
    return undefined;
  }
}

/**
 * The memory this process may use: its cgroup's memory.max (MemoryMax= of
 * the systemd unit), else the board's physical memory; undefined when neither
 * can be read.
 */
function memoryLimitBytes(dir: string | undefined): number | undefined {
  if (dir !== undefined) {
    try {
      const raw = readFileSync(join(dir, "memory.max"), "utf8").trim();
      const v = Number(raw);
      if (raw !== "max" && Number.isFinite(v) && v > 0) return v;
    } catch {
      // No cgroup v2 memory controller here: fall back to physical memory.
    }
  }
  try {
    const m = /^MemTotal:\s+(\d+)\s+kB/m.exec(readFileSync("/proc/meminfo", "utf8"));
    return m === null ? undefined : Number(m[1]) * 1024;
  } catch {
    return undefined;
  }
}

/**
 * Telemetry since the previous call: request rate, batch latency percentiles
 * (computed from the batch times of the interval, not from histogram bucket
 * bounds, which would read 5 ms for anything between 2.5 and 5 ms), RSS and
 * the memory limit, CPU temperature.
 */
function telemetrySampler(parts: AgentFleetParts): () => Omit<TelemetrySample, "at"> {
  let last = {
    at: performance.now(),
    texts: 0,
    requests: parts.metrics.requests.total(),
    errors: parts.metrics.errors.total(),
  };
  const cgroup = cgroupDir();
  // A previous interval's batches belong to no sample: start from now.
  parts.metrics.recentBatchMs.drain();
  return () => {
    const now = performance.now();
    const size = parts.metrics.batchSize.snapshot();
    const batches = parts.metrics.recentBatchMs.drain().values;
    const seconds = Math.max(1e-3, (now - last.at) / 1000);
    const limit = memoryLimitBytes(cgroup);
    const sample: Omit<TelemetrySample, "at"> = {
      requestRate: (size.sum - last.texts) / seconds,
      rssBytes: process.memoryUsage().rss,
      ...(limit === undefined ? {} : { memoryLimitBytes: limit }),
      queueDepth: parts.batcher.depth,
      // Requests and failed requests over the interval: a rollout's error-rate gate reads them.
      requests: parts.metrics.requests.total() - last.requests,
      errors: parts.metrics.errors.total() - last.errors,
      // The `process_*` figures of /metrics, for boards no scraper reaches.
      process: readProcessFigures(),
    };
    if (batches.length > 0) {
      sample.latencyMs = {
        p50: percentile(batches, 50),
        p95: percentile(batches, 95),
        p99: percentile(batches, 99),
      };
    }
    const temp = cpuTempC();
    if (temp !== undefined) sample.cpuTempC = temp;
    const drift = parts.drift?.snapshot();
    if (drift !== undefined) {
      // Since the serving model started (or the last drift recalibration): how many inputs fell outside its calibration.
      sample.drift = {
        inputs: drift.inputs,
        outOfCoverage: drift.outOfCoverage,
        share: drift.share,
        longestTokens: drift.lengths.max,
        ...(drift.coverage !== undefined ? { coveredTokens: drift.coverage.maxTokens } : {}),
      };
    }
    last = {
      at: now,
      texts: size.sum,
      requests: parts.metrics.requests.total(),
      errors: parts.metrics.errors.total(),
    };
    return sample;
  };
}

/** The agent's {@link FleetCommandHandler}. */
export function createAgentFleetHandler(parts: AgentFleetParts): FleetCommandHandler {
  const { registry, config } = parts;
  const queued = async (): Promise<never> => {
    // The link hands these to the job runner (see the ExternalJobRunner below); reaching here is a wiring bug.
    throw new QuantdError("INTERNAL", "recalibration runs in the agent's job runner, not in the fleet link");
  };
  return {
    recalibrate: queued,
    quantizeDynamic: queued,
    async bench(params, ctx) {
      // End-to-end latency of the serving model (tokenize + run) on the probe texts (pairs for a pair
      // classifier), one batch per run.
      const runs = params.iterations ?? 30;
      const served = registry.active();
      const texts = served === undefined ? [...PROBE_TEXTS] : probeInputs(served.task.kind, PROBE_TEXTS);
      await registry.classify(texts);
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        // Cancelled (quantd job cancel), timed out or the agent stopping: the reason says which.
        if (ctx.signal.aborted) throw QuantdError.from(ctx.signal.reason, "JOB_CANCELLED");
        const t0 = performance.now();
        await registry.classify(texts);
        times.push(performance.now() - t0);
        if (i % 10 === 9) ctx.progress("measuring", (i + 1) / runs);
      }
      times.sort((a, b) => a - b);
      const at = (q: number): number => times[Math.min(times.length - 1, Math.floor(q * times.length))] ?? 0;
      const active = registry.active();
      return {
        modelVersion: active === undefined ? null : String(active.version),
        kind: active?.kind ?? null,
        task: active?.task.kind ?? null,
        batch: texts.length,
        runs,
        p50Ms: at(0.5),
        p95Ms: at(0.95),
      };
    },
    async rollback(params) {
      if (params.version !== undefined) {
        throw new QuantdError(
          "COMMAND_INVALID",
          "this agent rolls back to the previously active version only; send rollback without a version",
          { details: { key: "version" } },
        );
      }
      const v = await registry.rollback("fleet rollback command");
      return { modelVersion: String(v.id), kind: v.kind, sha256: v.sha256 };
    },
    async status() {
      const active = registry.active();
      return {
        serving: active === undefined ? null : { version: active.version, kind: active.kind },
        queueDepth: parts.batcher.depth,
        capture: { ...config.capture },
        jobs: parts.runner?.running === true ? "this agent" : "another process",
      };
    },
    async setConfig(params) {
      // Only settings the running agent reads live can change; the others need a restart and are refused.
      for (const key of Object.keys(params)) {
        if (key !== "capture.rate") {
          throw new QuantdError(
            "CONFIG_INVALID",
            `${key} cannot change while the agent runs; set it in the config file`,
            {
              details: { key },
            },
          );
        }
      }
      const rate = params["capture.rate"];
      if (typeof rate === "number") {
        if (!config.capture.enabled) {
          throw new QuantdError(
            "CONFIG_INVALID",
            "capture is off in this agent's config; capture.rate has no effect",
            {
              details: { key: "capture.rate" },
            },
          );
        }
        if (!(rate > 0))
          throw new QuantdError("CONFIG_INVALID", "capture.rate must be > 0 (use collect stop)");
        config.capture.rate = rate;
      }
      return { "capture.rate": config.capture.rate };
    },
    async collect(params) {
      // Capture is wired at agent start; collect toggles it by its rate (0 = off) when it was enabled.
      if (!config.capture.enabled) {
        throw new QuantdError(
          "CONFIG_INVALID",
          "start the agent with capture.enabled = true to collect live samples",
          {
            details: { key: "capture.enabled" },
          },
        );
      }
      config.capture.rate =
        params.action === "stop" ? 0 : (params.rate ?? (config.capture.rate > 0 ? config.capture.rate : 0.1));
      return {
        capturing: config.capture.rate > 0,
        rate: config.capture.rate,
        pool: parts.store.samples.stats(),
      };
    },
  };
}

/**
 * Starts the fleet link of a running agent.
 *
 * @throws CONFIG_INVALID from the fleet config
 */
export function startAgentFleetLink(fleet: FleetConfig, parts: AgentFleetParts): FleetLink {
  const keyFile = fleet.deviceKeyFile ?? join(parts.config.stateDir, DEVICE_KEY_FILE);
  const { key: deviceKey, created } = loadOrCreateSigningKey(keyFile);
  parts.log?.(
    `fleet: device key ${deviceKey.publicKey}${created ? ` (new, in ${keyFile})` : ""}; ` +
      `enrol it: quantd fleet enroll ${fleet.device} --fleet ${fleet.fleet} --pubkey ${deviceKey.publicKey}`,
  );
  if ((fleet.operatorKeys ?? []).length === 0) {
    parts.log?.(
      "fleet: no operator key is trusted (fleet.operatorKeys): every fleet command will be refused",
    );
  }
  const runner: ExternalJobRunner = {
    types: [RECALIBRATE_JOB, RELEASE_JOB],
    jobFor(cmd) {
      if (cmd.name === "release") return { type: RELEASE_JOB, params: { ...cmd.params } };
      if (cmd.name === "recalibrate") return { type: RECALIBRATE_JOB, params: { ...cmd.params } };
      if (cmd.name === "quantize-dynamic")
        return { type: RECALIBRATE_JOB, params: { ...cmd.params, mode: "dynamic" } };
      return undefined;
    },
    wake: () => parts.runner?.wake(),
  };
  return createFleetLink(fleet, {
    store: parts.store,
    deviceKey,
    jobTimeoutMs: parts.config.jobs.timeoutMs,
    handler: createAgentFleetHandler(parts),
    runner,
    status: () => {
      const v = parts.registry.activeVersion();
      return {
        agentVersion: parts.agentVersion,
        model: v === undefined ? null : { version: String(v.id), kind: v.kind, sha256: v.sha256 },
      };
    },
    telemetry: telemetrySampler(parts),
    ...(parts.log === undefined ? {} : { log: parts.log }),
  });
}
