/**
 * The agent's side of the fleet link: its job commands queue jobs for the
 * agent's one job engine (recalibrate, quantize-dynamic, release, and bench
 * and rollback from serving-jobs.ts); status, set-config and collect act on
 * the live registry, batcher and config. Telemetry samples come from the
 * server's metrics.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { readProcessFigures } from "../core/process-figures.ts";
import { percentile } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import type { FleetConfig } from "../fleet/device/config.ts";
import type { FleetCommandHandler } from "../fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../fleet/device/link.ts";
import type { TelemetrySample } from "../fleet/protocol.ts";
import { loadOrCreateSigningKey } from "../fleet/signing.ts";
import type { JobEngine } from "../jobs/engine.ts";
import type { MicroBatcher } from "../server/batcher.ts";
import type { ServerMetrics } from "../server/server-metrics.ts";
import type { Store } from "../store/store.ts";
import type { AgentConfig } from "./config.ts";
import type { DriftMonitor } from "./drift.ts";
import type { ModelRegistry } from "./registry.ts";

/** The device key's file name in the state directory when `fleet.deviceKeyFile` is not set. */
export const DEVICE_KEY_FILE = "fleet-device.key";

/** What the link needs from a running agent. */
export interface AgentFleetParts {
  config: AgentConfig;
  store: Store;
  registry: ModelRegistry;
  batcher: MicroBatcher;
  metrics: ServerMetrics;
  /** The agent's job engine: job commands queue jobs for it. */
  engine: JobEngine;
  /** Whether this process runs the engine's jobs (`engine.running` is false while another process holds the runner lock). */
  runsJobs: boolean;
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
  return {
    async status() {
      const active = registry.active();
      return {
        serving: active === undefined ? null : { version: active.version, kind: active.kind },
        queueDepth: parts.batcher.depth,
        capture: { ...config.capture },
        jobs: parts.runsJobs && parts.engine.running ? "this agent" : "another process",
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
  return createFleetLink(fleet, {
    store: parts.store,
    deviceKey,
    handler: createAgentFleetHandler(parts),
    engine: parts.engine,
    status: () => {
      const v = parts.registry.activeVersion();
      const rejected = parts.registry.startupRejection();
      const degraded =
        rejected === undefined
          ? {}
          : {
              rejectedAtStart: {
                path: rejected.path,
                code: rejected.error.code,
                message: rejected.error.message,
              },
            };
      return {
        agentVersion: parts.agentVersion,
        model:
          v === undefined ? null : { version: String(v.id), kind: v.kind, sha256: v.sha256, ...degraded },
      };
    },
    telemetry: telemetrySampler(parts),
    ...(parts.log === undefined ? {} : { log: parts.log }),
  });
}
