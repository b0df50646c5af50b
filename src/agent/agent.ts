/**
 * The agent process: listens first (so `/v2/health/live` answers and a second
 * agent on the same socket is refused before anything heavy happens), opens
 * the store, loads the model to serve (then `/v2/health/ready` turns 200), and
 * on stop: refuses new work, drains the batch queue, closes the listeners,
 * releases the sessions and closes the store.
 */
import { chmodSync, mkdirSync, statSync } from "node:fs";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { QuantdError } from "../errors.ts";
import type { FleetLink } from "../fleet/device/link.ts";
import type { JobEngine } from "../jobs/engine.ts";
import type { JobSchedule } from "../jobs/schedule.ts";
import { redactUrl } from "../redact.ts";
import { ORT_VERSION } from "../runtime/ort-session.ts";
import { MicroBatcher } from "../server/batcher.ts";
import { type Listeners, startListeners } from "../server/listen.ts";
import { addProcessMetrics } from "../server/metrics.ts";
import { type MetricsListener, startMetricsListener } from "../server/metrics-listener.ts";
import { createRoutes } from "../server/routes.ts";
import { ServerMetrics } from "../server/server-metrics.ts";
import { openStoreRecovering } from "../store/recover.ts";
import type { ModelVersion } from "../store/models.ts";
import { databasePath, type Store } from "../store/store.ts";
import { CaptureQueue } from "./capture-queue.ts";
import { type AgentConfig, defaultModelName } from "./config.ts";
import { coverageOf, createDriftMonitor, type DriftMonitor } from "./drift.ts";
import { heapTrimmer, TrimAfterPeaks } from "./heap-trim.ts";
import { BASE_METRIC, RECALIBRATE_JOB } from "./recalibrate.ts";
import { type ModelRegistry, type RegistryEvent, SOURCE_METRIC } from "./registry.ts";
import { reregisterModelFiles } from "./model-files.ts";
import { type AgentServices, createAgentServices } from "./services.ts";
import { servingJobHandlers } from "./serving-jobs.ts";

/**
 * Longest wait of the serving process for another process's SQLite write lock, in ms. SQLite waits by
 * blocking the thread, and this thread answers requests: a write that meets a lock fails fast with
 * STORE_BUSY (capture retries later; a job's stage record is skipped; an admin call gets 503).
 */
const SERVING_BUSY_TIMEOUT_MS = 20;

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
  /** The job engine, running every job type (`running` is false while another process holds the runner lock: it retries). */
  readonly jobs: JobEngine | undefined;
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
  /** Run queued jobs. @defaultValue true */
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
    case "kept-serving":
      return (
        `degraded: ${e.path} was not served, ${e.error.toLine()}; serving stored version ${e.version.id} ` +
        `(${e.version.kind}, ${e.version.sha256.slice(0, 12)}) instead` +
        (e.tokenizerDir === undefined ? "" : ` with the tokenizer in ${e.tokenizerDir}`)
      );
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

/** The scheduled recalibrations the config asks for, if any. */
function recalibrationSchedule(
  config: AgentConfig,
  drift: () => DriftMonitor | undefined,
): ((store: Store) => JobSchedule) | undefined {
  const { recalibrateEveryMs, recalibrateAfterSamples, recalibrateOnDrift } = config.jobs;
  if (
    recalibrateEveryMs === undefined &&
    recalibrateAfterSamples === undefined &&
    recalibrateOnDrift === undefined
  ) {
    return undefined;
  }
  return (store) => ({
    job: { type: RECALIBRATE_JOB, params: {} },
    ...(recalibrateEveryMs === undefined ? {} : { everyMs: recalibrateEveryMs }),
    ...(recalibrateAfterSamples === undefined ? {} : { afterNewSamples: recalibrateAfterSamples }),
    samplesSeen: () => store.samples.stats().seen,
    due: () => drift()?.recalibrationDue(),
  });
}

/** What serves inference, built before anything is opened so the server can listen first. */
interface Serving {
  services: AgentServices;
  metrics: ServerMetrics;
  batcher: MicroBatcher;
  capture: CaptureQueue;
  drift: DriftMonitor;
  heap: TrimAfterPeaks;
  routes: ReturnType<typeof createRoutes>;
  /** The OIP model name the routes serve under (set once the model to serve is known). */
  naming: { modelName: string };
  /** Refuses new work from now on. */
  refuse(): void;
}

/** Where the fleet link goes once it exists: the job engine tells it of every job change. */
interface LinkSlot {
  link: FleetLink | undefined;
}

/** Stage 1: the services, the batcher and metrics, capture, drift and the routes over them. */
async function buildServing(
  config: AgentConfig,
  options: StartAgentOptions,
  log: (line: string) => void,
  slot: LinkSlot,
): Promise<Serving> {
  let metrics: ServerMetrics | undefined;
  let drift: DriftMonitor | undefined;
  const activeCoverage = () => coverageOf(services.registry.activeVersion()?.metrics);
  const services: AgentServices = createAgentServices(config, {
    serving: true,
    openStore: (registry) => openAgentStore(config, registry, log),
    onRegistryEvent: (e) => {
      // A new serving model: live inputs are counted against what its calibration covered.
      if (e.type === "swapped" || e.type === "rolled-back") drift?.setCoverage(activeCoverage());
      if (e.type === "swapped" && e.from !== undefined) metrics?.swaps.inc();
      if (e.type === "rolled-back") metrics?.rollbacks.inc({ trigger: e.trigger });
      log(describeEvent(e));
    },
    handlers: servingJobHandlers,
    liveLengths: () => drift?.snapshot().lengths,
    ...(() => {
      const schedule = recalibrationSchedule(config, () => drift);
      return schedule === undefined ? {} : { schedule };
    })(),
    onUpdate: (job) => slot.link?.jobUpdated(job),
    log,
  });
  const { registry } = services;
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
  const capture = new CaptureQueue({
    samples: () => services.store.samples,
    rate: config.capture.rate,
    random: options.random ?? Math.random,
    onDropped: (n) => metrics?.storeWritesDropped.inc({ kind: "capture" }, n),
    log,
  });
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
  const monitor = drift;
  let accepting = true;
  const naming = { modelName: config.modelName };
  const routes = createRoutes({
    // Read per request: a stored version serving in place of the configured model gives its own name.
    get modelName() {
      return naming.modelName;
    },
    backend: registry,
    batcher,
    limits: config.limits,
    countTokens: (texts) => registry.requestTokens(texts),
    metrics,
    admin: registry,
    accepting: () => accepting,
    onClassified: (inputs, tokenCounts) => {
      // Drift watches inputs' lengths (a pair's two texts together) against calibration; pairs are captured as pairs.
      monitor.observe(inputs, tokenCounts);
      if (config.capture.enabled) capture.offer(inputs);
    },
  });
  const refuse = (): void => {
    accepting = false;
  };
  return { services, metrics, batcher, capture, drift, heap, routes, naming, refuse };
}

/** Stage 2: the socket (and TCP) listeners; a second agent on the socket is refused here. */
async function listen(
  config: AgentConfig,
  serving: Serving,
  log: (line: string) => void,
): Promise<Listeners> {
  const listeners = await startListeners({
    socketPath: config.socketPath,
    tcp: config.tcp,
    maxRequestBodySize: config.limits.maxBodyBytes + 64 * 1024,
    handler: serving.routes,
  });
  log(
    `listening on ${config.socketPath}` +
      (listeners.tcp === undefined ? "" : ` and http://${listeners.tcp.host}:${listeners.tcp.port}`),
  );
  return listeners;
}

/**
 * Stage 3: the store, then the model to serve (`/v2/health/ready` turns 200).
 * When a stored version serves (no --model, or the explicit model did not
 * load), the routes take that version's name (unless `modelName` is configured).
 */
async function openAndLoad(config: AgentConfig, serving: Serving): Promise<void> {
  const { services, drift } = serving;
  await services.open();
  const served = await services.registry.start(config.model, config.modelExplicit);
  if (config.modelNameExplicit !== true) {
    const stored = storedVersionName(served, services.store.models.list(), config.stateDir);
    if (services.registry.startupRejection() !== undefined) serving.naming.modelName = stored ?? "model";
    // Without --model the store's active version serves: its name, not the default model's (a RoBERTa is no sst2-bert-mini).
    else if (!config.modelExplicit && stored !== undefined) serving.naming.modelName = stored;
  }
  drift.setCoverage(coverageOf(services.registry.activeVersion()?.metrics));
}

/**
 * The OIP name of a stored version, as a start with the file it was promoted
 * from gives: that file's name ({@link defaultModelName}); a version a
 * recalibration built was promoted from the job's work file in the state
 * directory, so the fp32 base it was built from names it. `undefined` when no
 * file outside the state directory is recorded.
 */
export function storedVersionName(
  version: ModelVersion,
  versions: readonly ModelVersion[],
  stateDir: string,
): string | undefined {
  const seen = new Set<number>();
  let v: ModelVersion | undefined = version;
  while (v !== undefined && !seen.has(v.id)) {
    seen.add(v.id);
    const source = v.metrics[SOURCE_METRIC];
    if (typeof source === "string" && !isInside(stateDir, source)) return defaultModelName(source);
    const base: unknown = v.metrics[BASE_METRIC];
    v = typeof base === "string" ? versions.find((w) => w.path === base) : undefined;
  }
  return undefined;
}

/** Whether `path` lies in `dir` (or is it). */
function isInside(dir: string, path: string): boolean {
  const rel = relative(resolve(dir), resolve(path));
  // `..` as a segment, not as a prefix: a file named `..model.onnx` in `dir` is inside it.
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/** Stage 4: the fleet link, when a broker is configured. */
async function joinFleet(
  config: AgentConfig,
  serving: Serving,
  runJobs: boolean,
  log: (line: string) => void,
): Promise<FleetLink | undefined> {
  if (config.fleet === undefined) return undefined;
  // The MQTT client is loaded only by agents that join a fleet.
  const { startAgentFleetLink } = await import("./fleet.ts");
  const { services } = serving;
  const link = startAgentFleetLink(config.fleet, {
    config,
    store: services.store,
    registry: services.registry,
    batcher: serving.batcher,
    metrics: serving.metrics,
    // Job commands queue jobs for the engine either way; it runs them only when this process runs jobs.
    engine: services.engine,
    runsJobs: runJobs,
    agentVersion: pkg.version,
    drift: serving.drift,
    log,
  });
  log(
    `fleet: device ${config.fleet.device} of fleet ${config.fleet.fleet} via ${redactUrl(config.fleet.broker)}`,
  );
  return link;
}

/** Stage 5: the read-only `/metrics` listener of `metrics.listen`, when configured. */
function startScrape(
  config: AgentConfig,
  serving: Serving,
  log: (line: string) => void,
): MetricsListener | undefined {
  if (config.metricsListen === undefined) return undefined;
  const registryOfMetrics = serving.metrics.registry;
  const scrape = startMetricsListener(config.metricsListen, () => registryOfMetrics.render());
  log(`metrics: GET /metrics on http://${scrape.address.host}:${scrape.address.port} (read-only)`);
  return scrape;
}

/** The running agent's handle, and its orderly stop. */
function runningAgent(
  config: AgentConfig,
  serving: Serving,
  parts: {
    listeners: Listeners;
    scrape: MetricsListener | undefined;
    fleet: FleetLink | undefined;
    jobs: JobEngine | undefined;
  },
  log: (line: string) => void,
): Agent {
  const { services, batcher, capture, heap } = serving;
  const { listeners, scrape, fleet, jobs } = parts;
  let stopping: Promise<void> | undefined;
  return {
    config: { ...config, modelName: serving.naming.modelName },
    store: services.store,
    registry: services.registry,
    batcher,
    metrics: serving.metrics,
    listeners,
    metricsListener: scrape,
    jobs,
    fleet,
    stop() {
      stopping ??= (async () => {
        serving.refuse();
        // A running job pauses at its next stage boundary and resumes at the next start.
        await jobs?.stop();
        // After the engine, so a paused job's last change is queued; the outbox keeps what is not sent.
        await fleet?.stop({ flushMs: 1000 });
        await batcher.drain();
        await listeners.stop();
        await scrape?.stop();
        await batcher.drain();
        heap.stop();
        capture.flush();
        capture.stop();
        await services.close();
        log("stopped");
      })();
      return stopping;
    },
  };
}

/**
 * Starts the agent: serving parts, listeners, store and model, fleet link,
 * metrics listener, then the job engine (in that order; a failure at any
 * stage undoes the stages before it).
 *
 * @throws STATE_CONFLICT when another agent serves on the socket
 * @throws CONFIG_INVALID when the socket path is taken by a non-socket
 * @throws STORE_* when the database cannot be opened
 * @throws MODEL_* / FILE_NOT_FOUND / TOKENIZER_* when no model can serve
 */
export async function startAgent(config: AgentConfig, options: StartAgentOptions = {}): Promise<Agent> {
  const log = options.log ?? (() => undefined);
  const runJobs = options.runJobs ?? true;
  prepareStateDir(config.stateDir, log);
  const slot: LinkSlot = { link: undefined };
  const serving = await buildServing(config, options, log, slot);
  const listeners = await listen(config, serving, log);
  let scrape: MetricsListener | undefined;
  try {
    await openAndLoad(config, serving);
    slot.link = await joinFleet(config, serving, runJobs, log);
    scrape = startScrape(config, serving, log);
  } catch (err) {
    await slot.link?.stop({ flushMs: 0 });
    await listeners.stop();
    await serving.services.close();
    throw err;
  }
  // After the fleet link exists: resuming an interrupted job reports its changes through it.
  // Another process (a `quantd job --wait`) may hold the state directory's runner lock, or the disk be
  // full: serve anyway, and take the lock once it is free.
  const jobs = runJobs ? serving.services.engine : undefined;
  jobs?.start({ retryLock: true });
  return runningAgent(config, serving, { listeners, scrape, fleet: slot.link, jobs }, log);
}
