/**
 * Shared setup of the job runner and recalibration tests: a fresh state
 * directory with a store seeded from the shipped SST-2 training sample, the
 * registry as the promoter (offline, as `quantd job recalibrate --wait` uses
 * it), and the agent's job engine over them.
 */
import { TOKENIZER_METRIC } from "../../src/agent/version-tokenizer.ts";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DEFAULT_SWAP_CHECKS } from "../../src/agent/config.ts";
import type { JobEngine } from "../../src/jobs/engine.ts";
import { CHECKPOINT_FILE } from "../../src/jobs/running-job.ts";
import { RECALIBRATE_JOB } from "../../src/agent/recalibrate.ts";
import type { RecalibrateJobParams } from "../../src/agent/recalibrate-params.ts";
import { createAgentJobEngine, jobsDir } from "../../src/agent/services.ts";
import { ModelRegistry } from "../../src/agent/registry.ts";
import { recalibrationBase } from "../../src/agent/recalibration-base.ts";
import { sha256Hex } from "../../src/core/hash.ts";
import { loadTokenizer } from "../../src/runtime/tokenizer.ts";
import { readSamplesTsv } from "../../src/runtime/tsv.ts";
import type { Job } from "../../src/store/jobs.ts";
import type { ModelKind } from "../../src/store/models.ts";
import { databasePath, openStore, type Store } from "../../src/store/store.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";

/** The shipped 4k-row SST-2 training sample: the pool the tests seed. */
export const trainTsv: string = resolve(repoRoot, "calib/samples/sst2-train-4k.tsv");

/** Small, fast job parameters: 64 + 64 samples, a short benchmark without child processes. */
export const FAST_PARAMS: RecalibrateJobParams = {
  samples: 64,
  validationSamples: 64,
  benchRuns: 10,
  benchMemory: false,
  // int8 static agrees on ~98–100 % of 64 samples; the tests are about the job, not the gate, so it
  // decides on the point estimate (64 samples certify nothing near 99 %: see recalibrate-job's pool test).
  gate: 0.95,
  decideOn: "point",
  // A shared 2-core machine makes latency noisy; the tests check the decision path, not the speed.
  maxLatencyRatio: 1.5,
};

/** A fresh temporary directory. */
export function tempDir(prefix = "quantd-jobs-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Opens the store of `stateDir` with token counts from the shipped tokenizer. */
export async function openTestStore(stateDir: string, busyTimeoutMs?: number): Promise<Store> {
  const tokenizer = await loadTokenizer(shippedModelDir);
  return openStore(databasePath(stateDir), {
    samples: { countTokens: (t) => tokenizer.tokenIds(t).length + tokenizer.specialsSingle },
    ...(busyTimeoutMs !== undefined ? { busyTimeoutMs } : {}),
  });
}

/** Leaves the store of `stateDir` as an earlier quantd did: no version records a tokenizer copy. */
export async function forgetTokenizerCopies(stateDir: string): Promise<void> {
  const store = await openTestStore(stateDir);
  try {
    store.db
      .prepare("UPDATE model_versions SET metrics = json_remove(metrics, ?)")
      .run(`$.${TOKENIZER_METRIC}`);
  } finally {
    store.close();
  }
}

/** Adds the first `n` rows of the shipped training sample (or the rows at `lines`) to the pool. */
export async function seedSamples(store: Store, n: number, lines?: readonly number[]): Promise<void> {
  const all = await readSamplesTsv(trainTsv);
  const rows = lines === undefined ? all.slice(0, n) : all.filter((r) => lines.includes(r.line));
  store.samples.add(
    rows.map((r) => ({ text: r.text, label: r.label ?? null })),
    { source: "file" },
  );
}

/** A registry over the store, not serving (the offline promoter). */
export function offlineRegistry(store: Store, stateDir: string): ModelRegistry {
  return new ModelRegistry({
    models: store.models,
    modelsDir: join(stateDir, "models"),
    tokenizerDir: shippedModelDir,
    threads: 1,
    swap: DEFAULT_SWAP_CHECKS,
  });
}

/** A state directory, its store seeded with `samples` rows, a registry and the runner. */
export interface JobEnv {
  stateDir: string;
  store: Store;
  registry: ModelRegistry;
  runner: JobEngine;
  log: string[];
  close(): Promise<void>;
}

/** Builds a {@link JobEnv}. */
export async function jobEnv(
  options: {
    stateDir?: string;
    samples?: number;
    /** Seed these lines of the training sample instead of the first `samples`. */
    lines?: readonly number[];
    seed?: boolean;
    timeoutMs?: number;
    busyTimeoutMs?: number;
    onUpdate?: (job: Job) => void;
    /** Called before the registry registers and loads the base model (e.g. to mount the models dir). */
    beforeStart?: (stateDir: string) => void;
    /** Start recalibrations from the base the agent picks (the registry's copy of the served fp32 model), not the shipped file. */
    agentBase?: boolean;
  } = {},
): Promise<JobEnv> {
  const stateDir = options.stateDir ?? join(tempDir(), "state");
  const store = await openTestStore(stateDir, options.busyTimeoutMs);
  if (options.seed ?? true) await seedSamples(store, options.samples ?? 400, options.lines);
  options.beforeStart?.(stateDir);
  const registry = offlineRegistry(store, stateDir);
  // As `quantd job recalibrate --wait` does: the store's active version serves, else the fp32 model becomes version 1.
  await registry.start(shippedModelPath, false);
  const log: string[] = [];
  const runner = createAgentJobEngine({
    store,
    stateDir,
    promoter: registry,
    baseModel:
      options.agentBase === true
        ? () => recalibrationBase(store.models.active(), shippedModelPath)
        : shippedModelPath,
    tokenizerDir: shippedModelDir,
    threads: 1,
    identity: { fleet: "test-fleet", device: "test-device" },
    log: (l) => log.push(l),
    ...(options.onUpdate !== undefined ? { onUpdate: options.onUpdate } : {}),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
  });
  return {
    stateDir,
    store,
    registry,
    runner,
    log,
    async close() {
      await runner.stop();
      await registry.close();
      store.close();
    },
  };
}

/**
 * Places a candidate in a job's work directory with a checkpoint saying the
 * pick and the quantization are done (as a crash after those stages leaves
 * it), then queues the job: the runner resumes it at the benchmark. The pick is
 * the one the job would make (64 + 64, seed 1). Returns the candidate's SHA-256.
 */
export function queueResumedJob(
  store: Store,
  stateDir: string,
  id: string,
  params: RecalibrateJobParams,
  bytes: Uint8Array,
  report?: unknown,
  kind: ModelKind = "int8-static",
): string {
  const pick = store.samples.pickDisjoint(64, 64, 1);
  const dir = join(jobsDir(stateDir), id);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "candidate.onnx"), bytes);
  if (report !== undefined) writeFileSync(join(dir, "report.json"), JSON.stringify(report));
  const sha256 = sha256Hex(bytes);
  writeFileSync(
    join(dir, CHECKPOINT_FILE),
    JSON.stringify({
      pick: {
        calibration: pick.calibration.map((s) => s.id),
        validation: pick.validation.map((s) => s.id),
        pool: store.samples.count(),
      },
      quantize: { sha256, bytes: bytes.byteLength, kind },
    }),
  );
  store.jobs.create({ id, type: RECALIBRATE_JOB, params: { ...params } });
  return sha256;
}
