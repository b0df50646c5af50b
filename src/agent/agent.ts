/**
 * The agent process: listens first (so `/v2/health/live` answers and a second
 * agent on the same socket is refused before anything heavy happens), opens
 * the store, loads the model to serve (then `/v2/health/ready` turns 200), and
 * on stop: refuses new work, drains the batch queue, closes the listeners,
 * releases the sessions and closes the store.
 */
import { chmodSync, existsSync, mkdirSync, statSync } from "node:fs";
import { DEFAULT_KEEP_RELEASES } from "../fleet/device/config.ts";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { QuantdError } from "../errors.ts";
import type { FleetLink } from "../fleet/device/link.ts";
import { redactUrl } from "../redact.ts";
import { ORT_VERSION } from "../runtime/ort-session.ts";
import { MicroBatcher } from "../server/batcher.ts";
import { type Listeners, startListeners } from "../server/listen.ts";
import { addProcessMetrics } from "../server/metrics.ts";
import { type MetricsListener, startMetricsListener } from "../server/metrics-listener.ts";
import { createRoutes } from "../server/routes.ts";
import { ServerMetrics } from "../server/server-metrics.ts";
import { openStoreRecovering } from "../store/recover.ts";
import { databasePath, type Store } from "../store/store.ts";
import { CaptureQueue } from "./capture-queue.ts";
import { coverageOf, createDriftMonitor, type DriftMonitor } from "./drift.ts";
import type { AgentConfig } from "./config.ts";
import { heapTrimmer, TrimAfterPeaks } from "./heap-trim.ts";
import type { JobRunner } from "./jobs.ts";
import { createRecalibrationRunner, RECALIBRATE_JOB } from "./recalibrate.ts";
import { createReleaseHandler, RELEASE_JOB, releaseOf } from "./release.ts";
import { ModelRegistry, type RegistryEvent, reregisterModelFiles } from "./registry.ts";

/**
 * Longest wait of the serving process for another process's SQLite write lock, in ms. SQLite waits by
 * blocking the thread, and this thread answers requests: a write that meets a lock fails fast with
 * STORE_BUSY (capture retries later; a job's stage record is skipped; an admin call gets 503).
 */
const SERVING_BUSY_TIMEOUT_MS = 20;
/** Stored samples added to the probe batch of a promoted version. */
const PROBE_SAMPLES = 14;

/** A running agent. */
export interface Agent {
  readonly config: AgentConfig;
  readonly store: Store;
  readonly registry: ModelRegistry;
  readonly batcher: MicroBatcher;
  readonly metrics: ServerMetrics;
  readonly listeners: Listeners;
  /** The read-only `/metrics` listener of `metrics.listen`, when configured. */
  readonly metricsListener: MetricsListener | undefined;
  /** The recalibration job runner (`running` is false while another process holds the runner lock: it retries). */
  readonly jobs: JobRunner | undefined;
  /** The fleet link, when a broker is configured. */
  readonly fleet: FleetLink | undefined;
  /** Stops gracefully (idempotent); resolves when everything is closed. */
  stop(): Promise<void>;
}

/** Options of {@link startAgent}. */
export interface StartAgentOptions {
  /** Log lines (stderr in the CLI). */
  log?: (line: string) => void;
  /** Randomness of traffic capture. @defaultValue Math.random */
  random?: () => number;
  /** Run queued recalibration jobs. @defaultValue true */
  runJobs?: boolean;
}

/** One line describing a registry event. */
export function describeEvent(e: RegistryEvent): string {
  switch (e.type) {
    case "loaded":
      return `serving model version ${e.version.id} (${e.version.kind}, ${e.version.sha256.slice(0, 12)})`;
    case "swapped":
      return `swapped ${e.from === undefined ? "in" : `version ${e.from} →`} version ${e.to.id} (${e.to.kind})`;
    case "rejected":
      return `rejected model${e.version === undefined ? "" : ` version ${e.version.id}`}: ${e.error.toLine()}`;
    case "rolled-back":
      return `rolled back (${e.trigger}) from version ${e.from} to ${e.to.id}: ${e.reason}`;
    case "checks-passed":
      return `version ${e.version.id} passed post-swap checks (p95 ${e.figures.p95Ms.toFixed(2)} ms, ${e.figures.failed}/${e.figures.batches} failed)`;
  }
}

/** Permission bits the state directory may never have: group write, anything for others (0750 at most). */
const STATE_DIR_MODE_FORBIDDEN = 0o027;

/**
 * Creates the state directory, or takes group write and every permission of
 * others off an existing one, whoever created it: it holds the collected
 * inputs and the models.
 *
 * @throws FILE_WRITE_FAILED when it cannot be created or its mode changed
 */
function prepareStateDir(stateDir: string, log: (line: string) => void): void {
  try {
    mkdirSync(stateDir, { recursive: true, mode: 0o750 });
    const mode = statSync(stateDir).mode & 0o7777;
    if ((mode & STATE_DIR_MODE_FORBIDDEN) !== 0) {
      chmodSync(stateDir, mode & ~STATE_DIR_MODE_FORBIDDEN);
      log(
        `state directory ${stateDir} was mode ${mode.toString(8)}; now ${(mode & ~STATE_DIR_MODE_FORBIDDEN).toString(8)}`,
      );
    }
  } catch (err) {
    throw new QuantdError("FILE_WRITE_FAILED", `cannot prepare the state directory ${stateDir}`, {
      cause: err,
    });
  }
}

/**
 * Opens the store; a damaged database is moved aside (and said so) and a
 * fresh one created, into which the model files on disk are registered again
 * so the board keeps serving the model it served.
 */
async function openAgentStore(
  config: AgentConfig,
  registry: ModelRegistry,
  log: (line: string) => void,
): Promise<Store> {
  const { store, setAside } = await openStoreRecovering(databasePath(config.stateDir), {
    busyTimeoutMs: SERVING_BUSY_TIMEOUT_MS,
    samples: {
      maxRows: config.samplePool.maxRows,
      maxBytes: config.samplePool.maxBytes,
      countTokens: (text, pair) => registry.countTokens(text, pair),
    },
  });
  if (setAside === undefined) return store;
  log(
    `store: the database was damaged (${setAside.reason}); kept as ${setAside.movedTo}, started a fresh one`,
  );
  try {
    const { versions, active, skipped } = await reregisterModelFiles(
      store.models,
      join(config.stateDir, "models"),
    );
    log(
      `store: registered ${versions.length} model file(s) again` +
        (active === undefined ? "" : `, version ${active.id} (${active.sha256.slice(0, 12)}) active`) +
        (skipped.length === 0 ? "" : `; skipped ${skipped.join(", ")} (content does not match the name)`),
    );
  } catch (err) {
    store.close();
    throw err;
  }
  return store;
}

/**
 * Starts the agent.
 *
 * @throws STATE_CONFLICT when another agent serves on the socket
 * @throws CONFIG_INVALID when the socket path is taken by a non-socket
 * @throws STORE_* when the database cannot be opened
 * @throws MODEL_* / FILE_NOT_FOUND / TOKENIZER_* when no model can serve
 */
export async function startAgent(config: AgentConfig, options: StartAgentOptions = {}): Promise<Agent> {
  const log = options.log ?? (() => undefined);
  const random = options.random ?? Math.random;
  prepareStateDir(config.stateDir, log);

  let metrics: ServerMetrics | undefined;
  let drift: DriftMonitor | undefined;
  const registry: ModelRegistry = new ModelRegistry({
    // Bound below, once the store is open; the registry reads it only from start().
    get models() {
      return store.models;
    },
    modelsDir: join(config.stateDir, "models"),
    tokenizerDir: config.tokenizerDir,
    task: config.task,
    threads: config.threads,
    workers: config.inferenceWorkers,
    swap: config.swap,
    maxModelBytes: config.limits.maxModelBytes,
    // A new version is also probed on a few stored inputs, not only on the fixed probe texts.
    probeTexts: () => store.samples.pick({ n: PROBE_SAMPLES, seed: Date.now() }).map((s) => s.text),
    onEvent: (e) => {
      // A new serving model: live inputs are counted against what its calibration covered.
      if (e.type === "swapped" || e.type === "rolled-back") drift?.setCoverage(activeCoverage());
      if (e.type === "swapped" && e.from !== undefined) metrics?.swaps.inc();
      if (e.type === "rolled-back") metrics?.rollbacks.inc({ trigger: e.trigger });
      log(describeEvent(e));
    },
  });
  const heap = new TrimAfterPeaks({ trim: await heapTrimmer() });
  const batcher = new MicroBatcher(registry, {
    ...config.batching,
    // One batch per worker thread at once; one on the JS thread.
    concurrency: Math.max(1, config.inferenceWorkers),
    onBatch: (size, ms) => {
      metrics?.batchSize.observe(size);
      metrics?.batchDuration.observe(ms / 1000);
      metrics?.recentBatchMs.add(ms);
      heap.afterBatch();
    },
  });
  metrics = new ServerMetrics({ queueDepth: () => batcher.depth, active: () => registry.active() });
  addProcessMetrics(metrics.registry, { version: pkg.version, bun: Bun.version, onnxruntime: ORT_VERSION });

  let accepting = true;
  let store: Store;
  const capture = new CaptureQueue({
    samples: () => store.samples,
    rate: config.capture.rate,
    random,
    onDropped: (n) => metrics?.storeWritesDropped.inc({ kind: "capture" }, n),
    log,
  });
  const activeCoverage = () => coverageOf(registry.activeVersion()?.metrics);
  drift = createDriftMonitor({
    countTokens: (input) =>
      typeof input === "string" ? registry.countTokens(input) : registry.countTokens(input[0], input[1]),
    pairTokens: (first, second) => registry.pairTokens(first, second),
    metrics: metrics.registry,
    ...(config.jobs.recalibrateOnDrift === undefined
      ? {}
      : { recalibrateShare: config.jobs.recalibrateOnDrift }),
    // Kept whatever the capture rate: the recalibration they call for has to calibrate on them.
    onOutOfCoverage: (inputs) => capture.offer(inputs, 1),
  });
  const handler = createRoutes({
    modelName: config.modelName,
    backend: registry,
    batcher,
    limits: config.limits,
    countTokens: (texts) => registry.requestTokens(texts),
    metrics,
    admin: registry,
    accepting: () => accepting,
    onClassified: (inputs, tokenCounts) => {
      // Drift watches inputs' lengths (a pair's two texts together) against calibration; pairs are captured as pairs.
      drift?.observe(inputs, tokenCounts);
      if (config.capture.enabled) capture.offer(inputs);
    },
  });

  const listeners = await startListeners({
    socketPath: config.socketPath,
    tcp: config.tcp,
    maxRequestBodySize: config.limits.maxBodyBytes + 64 * 1024,
    handler,
  });
  log(
    `listening on ${config.socketPath}` +
      (listeners.tcp === undefined ? "" : ` and http://${listeners.tcp.host}:${listeners.tcp.port}`),
  );
  try {
    store = await openAgentStore(config, registry, log);
  } catch (err) {
    await listeners.stop();
    throw err;
  }
  try {
    await registry.start(config.model, config.modelExplicit);
    drift.setCoverage(activeCoverage());
  } catch (err) {
    await listeners.stop();
    await registry.close();
    store.close();
    throw err;
  }

  // Declared before the runner starts: resuming an interrupted job reports through it at once.
  let fleet: FleetLink | undefined;
  // Jobs run in the agent because a promotion must swap the session this process serves from.
  let jobs: JobRunner | undefined;
  if (options.runJobs ?? true) {
    const runner = createRecalibrationRunner({
      store,
      stateDir: config.stateDir,
      promoter: registry,
      // A promoted release's int8 version names its fp32 base: later recalibrations start from it,
      // and after a rollback from the previous version's (the configured model when it has none).
      baseModel: () => {
        const base = releaseOf(store.models.active()?.metrics)?.base;
        return base !== undefined && existsSync(base) ? base : config.model;
      },
      tokenizerDir: config.tokenizerDir,
      task: config.task,
      ...(config.fleet === undefined
        ? {}
        : {
            // Fleet releases: a new fp32 base, downloaded, checked and recalibrated by the same runner.
            moreHandlers: (deps) => {
              const fleetConfig = config.fleet;
              return {
                [RELEASE_JOB]: createReleaseHandler({
                  ...deps,
                  releaseKeys: fleetConfig?.releaseKeys ?? [],
                  keep: fleetConfig?.keepReleases ?? DEFAULT_KEEP_RELEASES,
                  servingLabels: () => registry.active()?.labels,
                  servingTokenizerDir: () => config.tokenizerDir,
                }),
              };
            },
          }),
      liveLengths: () => drift?.snapshot().lengths,
      log,
      // Reports of fleet-run jobs name the configured fleet and device; the link publishes every job change.
      ...(config.fleet === undefined ? {} : { fleet: config.fleet.fleet, device: config.fleet.device }),
      onUpdate: (job) => fleet?.jobUpdated(job),
      timeoutMs: config.jobs.timeoutMs,
      ...(config.jobs.recalibrateEveryMs === undefined &&
      config.jobs.recalibrateAfterSamples === undefined &&
      config.jobs.recalibrateOnDrift === undefined
        ? {}
        : {
            schedule: {
              job: { type: RECALIBRATE_JOB, params: {} },
              ...(config.jobs.recalibrateEveryMs === undefined
                ? {}
                : { everyMs: config.jobs.recalibrateEveryMs }),
              ...(config.jobs.recalibrateAfterSamples === undefined
                ? {}
                : { afterNewSamples: config.jobs.recalibrateAfterSamples }),
              samplesSeen: () => store.samples.stats().seen,
              due: () => drift?.recalibrationDue(),
            },
          }),
    });
    jobs = runner;
  }

  if (config.fleet !== undefined) {
    try {
      // The MQTT client is loaded only by agents that join a fleet.
      const { startAgentFleetLink } = await import("./fleet.ts");
      fleet = startAgentFleetLink(config.fleet, {
        config,
        store,
        registry,
        batcher,
        metrics,
        runner: jobs,
        agentVersion: pkg.version,
        drift,
        log,
      });
      log(
        `fleet: device ${config.fleet.device} of fleet ${config.fleet.fleet} via ${redactUrl(config.fleet.broker)}`,
      );
    } catch (err) {
      await listeners.stop();
      await registry.close();
      store.close();
      throw err;
    }
  }

  let scrape: MetricsListener | undefined;
  if (config.metricsListen !== undefined) {
    try {
      const registryOfMetrics = metrics.registry;
      scrape = startMetricsListener(config.metricsListen, () => registryOfMetrics.render());
      log(`metrics: GET /metrics on http://${scrape.address.host}:${scrape.address.port} (read-only)`);
    } catch (err) {
      await fleet?.stop({ flushMs: 0 });
      await listeners.stop();
      await registry.close();
      store.close();
      throw err;
    }
  }

  // After the fleet link exists: resuming an interrupted job reports its changes through it.
  // Another process (a `quantd job --wait`) may hold the state directory's runner lock, or the disk be
  // full: serve anyway, and take the lock once it is free.
  jobs?.start({ retryLock: true });

  let stopping: Promise<void> | undefined;
  return {
    config,
    store,
    registry,
    batcher,
    metrics,
    listeners,
    metricsListener: scrape,
    jobs,
    fleet,
    stop() {
      stopping ??= (async () => {
        accepting = false;
        // A running job pauses at its next stage boundary and resumes at the next start.
        await jobs?.stop();
        // After the runner, so a paused job's last change is queued; the outbox keeps what is not sent.
        await fleet?.stop({ flushMs: 1000 });
        await batcher.drain();
        await listeners.stop();
        await scrape?.stop();
        await batcher.drain();
        heap.stop();
        capture.flush();
        capture.stop();
        await registry.close();
        store.close();
        log("stopped");
      })();
      return stopping;
    },
  };
}
