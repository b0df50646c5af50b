/**
 * The agent's services, composed once for every process that runs its jobs:
 * `quantd agent` (and the demo, which starts one) and `quantd job … --wait`
 * build the same store, model registry, job engine and fleet identity from the
 * same config, so a job runs and reports the same way whichever process runs
 * it. In particular its `report` message names the configured fleet and device
 * (`quantd/v1/local/<host>` only when the config names no fleet), and the
 * device name comes from one rule (`deviceNameOf`).
 *
 * Two steps, because the agent listens before it opens anything heavy: the
 * registry exists at once (the server is built on it), the store and the
 * engine from {@link AgentServices.open}.
 */
import { hostname } from "node:os";
import { join } from "node:path";
import { QuantdError } from "../errors.ts";
import { DEFAULT_KEEP_RELEASES } from "../fleet/device/config.ts";
import { type FleetIdentity, jobReporter } from "../fleet/device/jobs.ts";
import { deviceNameOf, LOCAL_FLEET } from "../fleet/protocol.ts";
import { JobEngine, type JobEngineOptions } from "../jobs/engine.ts";
import type { JobHandler } from "../jobs/handler.ts";
import type { LengthHistogram } from "../quant/drift.ts";
import type { Job } from "../store/jobs.ts";
import type { Store } from "../store/store.ts";
import type { AgentConfig } from "./config.ts";
import {
  createRecalibrationHandler,
  QUANTIZE_DYNAMIC_JOB,
  RECALIBRATE_JOB,
  type RecalibrationDeps,
} from "./recalibrate.ts";
import { recalibrationBase } from "./recalibration-base.ts";
import { ModelRegistry, type RegistryEvent } from "./registry.ts";
import { createReleaseHandler, RELEASE_JOB } from "./release.ts";

/** Stored samples added to the probe batch of a promoted version. */
const PROBE_SAMPLES = 14;

/** `<stateDir>/jobs`: the jobs' work directories and the runner lock. */
export function jobsDir(stateDir: string): string {
  return join(stateDir, "jobs");
}

/** The fleet and device this agent's messages name: the config's, else fleet `local` and the host's name. */
function fleetIdentity(config: AgentConfig): FleetIdentity {
  return config.fleet === undefined
    ? { fleet: LOCAL_FLEET, device: deviceNameOf(hostname()) }
    : { fleet: config.fleet.fleet, device: config.fleet.device };
}

/** Options of {@link createAgentJobEngine}. */
export interface AgentJobEngineOptions
  extends RecalibrationDeps,
    Pick<JobEngineOptions, "timeoutMs" | "pollMs" | "schedule" | "log" | "onUpdate"> {
  store: Store;
  /** The state directory: work directories go to `<stateDir>/jobs`, stale temporary files are cleaned in `<stateDir>/models`. */
  stateDir: string;
  /** Who the reports name. */
  identity: FleetIdentity;
  /** Fleet releases: the release job, with its trusted keys (none: no release jobs). */
  releases?: { keys: readonly string[]; keep: number; servingLabels: () => readonly string[] | undefined };
  /** Further handlers (the serving agent's bench and rollback). */
  handlers?: Readonly<Record<string, JobHandler>>;
}

/**
 * The agent's {@link JobEngine}: recalibrate, quantize-dynamic and (with
 * `releases`) release jobs in the state directory.
 *
 * Every job it ends — succeeded, rejected, failed (an empty pool, a full
 * disk, cancelled, timed out, interrupted too often) — queues exactly one
 * `report` message in the store's outbox, after the engine recorded the end
 * and before `onUpdate` hears of it. The outbox keeps it whether or not a
 * fleet link runs in this process (`quantd job --wait` has none); the agent's
 * link drains it.
 */
export function createAgentJobEngine(options: AgentJobEngineOptions): JobEngine {
  const handlers: Record<string, JobHandler> = {
    [RECALIBRATE_JOB]: createRecalibrationHandler(options),
    [QUANTIZE_DYNAMIC_JOB]: createRecalibrationHandler(options, { mode: "dynamic" }),
    ...options.handlers,
  };
  const releases = options.releases;
  if (releases !== undefined) {
    // Fleet releases: a new fp32 base, downloaded, checked and recalibrated by the same engine.
    handlers[RELEASE_JOB] = createReleaseHandler({
      ...options,
      releaseKeys: releases.keys,
      keep: releases.keep,
      servingLabels: releases.servingLabels,
      servingTokenizerDir: () => options.tokenizerDir,
    });
  }
  const { store } = options;
  return new JobEngine({
    jobs: store.jobs,
    workRoot: jobsDir(options.stateDir),
    handlers,
    tempDirs: [join(options.stateDir, "models")],
    report: jobReporter(options.identity, (topic, body) => store.outbox.enqueue(topic, body)),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.pollMs !== undefined ? { pollMs: options.pollMs } : {}),
    ...(options.schedule !== undefined ? { schedule: options.schedule } : {}),
    ...(options.log !== undefined ? { log: options.log } : {}),
    ...(options.onUpdate !== undefined ? { onUpdate: options.onUpdate } : {}),
  });
}

/** Options of {@link createAgentServices}. */
export interface AgentServicesOptions {
  /** Opens the store (the agent: with recovery and a short busy timeout; token counts from the registry). */
  openStore: (registry: ModelRegistry) => Promise<Store>;
  /** Whether this process serves inference (worker threads for the registry). @defaultValue false */
  serving?: boolean;
  /** The registry's events (swaps, rollbacks, post-swap checks). */
  onRegistryEvent?: (event: RegistryEvent) => void;
  /** Token lengths of the live traffic, for a recalibration's report. */
  liveLengths?: () => LengthHistogram | undefined;
  /** Handlers beyond the agent's own job types (the serving agent's bench and rollback). */
  handlers?: (registry: ModelRegistry) => Readonly<Record<string, JobHandler>>;
  schedule?: (store: Store) => JobEngineOptions["schedule"];
  onUpdate?: (job: Job) => void;
  log?: (line: string) => void;
}

/** Store, registry, job engine and fleet identity of one agent config. */
export interface AgentServices {
  readonly config: AgentConfig;
  readonly identity: FleetIdentity;
  readonly registry: ModelRegistry;
  /** @throws INTERNAL before {@link AgentServices.open} */
  readonly store: Store;
  /** Not started: the caller starts it (the agent) or runs jobs in the foreground (`job --wait`). @throws INTERNAL before open */
  readonly engine: JobEngine;
  /** Opens the store and composes the engine. */
  open(): Promise<Store>;
  /** Stops the engine, closes the registry and the store. */
  close(): Promise<void>;
}

/** Composes an agent's services; the store and the engine wait for {@link AgentServices.open}. */
export function createAgentServices(config: AgentConfig, options: AgentServicesOptions): AgentServices {
  let store: Store | undefined;
  let engine: JobEngine | undefined;
  const opened = (): Store => {
    if (store === undefined) throw new QuantdError("INTERNAL", "the agent's store is not open yet");
    return store;
  };
  const registry = new ModelRegistry({
    // Read only from start(), once the store is open.
    get models() {
      return opened().models;
    },
    modelsDir: join(config.stateDir, "models"),
    tokenizerDir: config.tokenizerDir,
    tokenizerExplicit: config.tokenizerDirExplicit === true,
    task: config.task,
    threads: config.threads,
    workers: options.serving === true ? config.inferenceWorkers : 0,
    swap: config.swap,
    maxModelBytes: config.limits.maxModelBytes,
    // A new version is also probed on a few stored inputs, not only on the fixed probe texts.
    probeTexts: () =>
      opened()
        .samples.pick({ n: PROBE_SAMPLES, seed: Date.now() })
        .map((s) => s.text),
    ...(options.onRegistryEvent === undefined ? {} : { onEvent: options.onRegistryEvent }),
  });
  const identity = fleetIdentity(config);
  const composeEngine = (s: Store): JobEngine => {
    const schedule = options.schedule?.(s);
    return createAgentJobEngine({
      store: s,
      stateDir: config.stateDir,
      identity,
      promoter: registry,
      baseModel: () => recalibrationBase(s.models.active(), config.model, () => s.models.list()),
      // Read when a job runs: the tokenizer the serving version was registered with, not the configured one.
      get tokenizerDir() {
        return registry.tokenizerDir();
      },
      task: config.task,
      defaults: { prefer: config.quantize.prefer },
      // A serving agent's jobs take one thread and leave the other cores to serving; `job --wait` serves nothing.
      ...(options.serving === true ? {} : { threads: config.threads }),
      timeoutMs: config.jobs.timeoutMs,
      ...(config.fleet === undefined
        ? {}
        : {
            releases: {
              keys: config.fleet.releaseKeys ?? [],
              keep: config.fleet.keepReleases ?? DEFAULT_KEEP_RELEASES,
              servingLabels: () => registry.active()?.labels,
            },
          }),
      ...(options.handlers === undefined ? {} : { handlers: options.handlers(registry) }),
      ...(options.liveLengths === undefined ? {} : { liveLengths: options.liveLengths }),
      ...(schedule === undefined ? {} : { schedule }),
      ...(options.onUpdate === undefined ? {} : { onUpdate: options.onUpdate }),
      ...(options.log === undefined ? {} : { log: options.log }),
    });
  };
  return {
    config,
    identity,
    registry,
    get store() {
      return opened();
    },
    get engine() {
      if (engine === undefined)
        throw new QuantdError("INTERNAL", "the agent's job engine is not composed yet");
      return engine;
    },
    async open() {
      store ??= await options.openStore(registry);
      engine ??= composeEngine(store);
      return store;
    },
    async close() {
      await engine?.stop();
      await registry.close();
      store?.close();
    },
  };
}
