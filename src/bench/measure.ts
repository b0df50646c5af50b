/**
 * The benchmark itself: for several models, shapes and thread counts, measure
 * session load time, file size, latency of interleaved runs (A B A B … after
 * warm-up, so machine drift affects every model alike), peak memory in a fresh
 * child process, and, with labelled data, accuracy and top-1 agreement with the
 * first model. A failure (missing or broken model, a shape the model rejects,
 * data that does not fit) becomes an error in that row; the other rows still run.
 *
 * CLI-independent: the agent's promotion step calls {@link runBench} with the
 * active and the candidate model.
 */
import { statSync } from "node:fs";
import { QuantdError, type QuantdErrorJSON } from "../errors.ts";
import { externalDataFiles } from "../onnx/codec.ts";
import { explainRefusedModel } from "../onnx/file-scan.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { GraphOptimizationLevel, InferenceSession, Tensor } from "../runtime/types.ts";
import { findVocabSize, findVocabSizeInGraph, type Shape, shapeLabel, syntheticFeeds } from "./inputs.ts";
import { type MemoryFigure, measurePeakMemory } from "./memory.ts";
import { type LatencySummary, interleavedOrder, medianRatio, summarize, throughput } from "./stats.ts";

/** One model to benchmark. */
export interface BenchModel {
  /** Short name shown in tables and charts. */
  label: string;
  /** Path of the `.onnx` file. */
  path: string;
  /**
   * Ratios compare each model with the first model of its family (an int8 BERT-base
   * with the fp32 BERT-base, not with BERT-Mini). @defaultValue "default"
   */
  family?: string;
  /**
   * Vocabulary size for synthetic token ids.
   * @defaultValue `vocab_size` of a `config.json` beside the model (or one folder up)
   */
  vocabSize?: number;
}

/**
 * Real inputs from labelled text. Built per model by the caller (see `data.ts`),
 * because each model may bring its own tokenizer.
 */
export interface ModelData {
  /** Feeds of `[batch, seq]` from real text, truncated or padded to `seq`. @throws DATA_MISMATCH */
  feedsFor(session: InferenceSession, shape: Shape): Record<string, Tensor>;
  /** Predicted class of every sample (natural lengths), for accuracy and agreement. */
  predict(session: InferenceSession): Promise<number[]>;
  /** The true label of every sample, aligned with `predict`. */
  labels: readonly number[];
}

/** Options for {@link runBench}. */
export interface BenchOptions {
  models: readonly BenchModel[];
  shapes: readonly Shape[];
  /** Intra-op thread counts; each gets its own sessions. */
  threads: readonly number[];
  /** Timed runs per model, shape and thread count. */
  runs: number;
  /** Untimed runs per model before timing. */
  warmup: number;
  /** Measure peak memory in a child process per row. @defaultValue true */
  memory?: boolean;
  /** Runs in the memory child after loading. @defaultValue 3 */
  memoryRuns?: number;
  /** Seed of synthetic token ids. @defaultValue 1 */
  seed?: number;
  /** @defaultValue "all" */
  graphOptimizationLevel?: GraphOptimizationLevel;
  /**
   * Real text, per model: given, latency uses tokenized text and rows carry
   * accuracy and agreement with the first model of the family. A model for which
   * it returns a QuantdError gets that error in its rows. (The memory child
   * still feeds synthetic ids of the same shape: memory depends on the shape,
   * not on which tokens fill it.)
   */
  data?: (model: BenchModel) => Promise<ModelData>;
  /** Called as work is done, for a progress bar. */
  onProgress?: (event: BenchProgress) => void;
}

/** Progress of {@link runBench}, in work units (one per load, warm-up run, timed run, memory probe). */
export interface BenchProgress {
  done: number;
  total: number;
  /** What is being done, e.g. `run bert-mini b1×s128 t1`. */
  what: string;
}

/** Accuracy on labelled data and top-1 agreement with the family's first model. */
export interface Quality {
  samples: number;
  accuracy: number;
  /** Undefined for the first model of the family (or when that model failed). */
  agreement?: number;
}

/** Ratios of a row to the first model of its family at the same shape and threads (below 1 = faster). */
export interface LatencyRatio {
  /** Label of the model compared with. */
  baseline: string;
  /** `p50(row) / p50(baseline)`. */
  p50: number;
  /** Median of per-pair ratios of interleaved runs (see `medianRatio`). */
  medianOfPairs: number;
}

/** What identifies a row. */
export interface RowKey {
  model: string;
  path: string;
  family: string;
  shape: Shape;
  threads: number;
}

/** A measured row. */
export interface BenchRowOk extends RowKey {
  status: "ok";
  latency: LatencySummary;
  /** Every timed run in order, for pairing and for re-analysis. */
  latenciesMs: number[];
  /** Sequences per second (`batch` × 1000 / mean latency). */
  throughput: number;
  /** Session creation time in this process (the first load of a run is primed; see the memory probe for a cold one). */
  loadMs: number;
  /** Size of the `.onnx` file (external data files, which quantd's models do not use, are not counted). */
  sizeBytes: number;
  /** Peak memory, or why it could not be measured; undefined when memory was not asked for. */
  memory?: MemoryFigure | { error: QuantdErrorJSON };
  ratio?: LatencyRatio;
  /** With data: accuracy and agreement, or why they could not be computed. */
  quality?: Quality | { error: QuantdErrorJSON };
}

/** A row that could not be measured. */
export interface BenchRowError extends RowKey {
  status: "error";
  error: QuantdErrorJSON;
  sizeBytes?: number;
  loadMs?: number;
}

/** One result row per (model, shape, threads). */
export type BenchRow = BenchRowOk | BenchRowError;

/** Everything {@link runBench} measured, rows ordered by threads, then shape, then model. */
export interface BenchResult {
  rows: BenchRow[];
  runs: number;
  warmup: number;
  seed: number;
  /** Whether latency used real text (`data`) rather than synthetic ids. */
  realText: boolean;
}

interface Loaded {
  model: BenchModel;
  family: string;
  session?: InferenceSession;
  loadMs?: number;
  sizeBytes?: number;
  vocabSize?: number;
  data?: ModelData;
  /** Why this model cannot run at all (load failure, bad data). */
  error?: QuantdError;
}

function errorJson(err: unknown): QuantdErrorJSON {
  return QuantdError.from(err, "BENCH_FAILED").toJSON();
}

/**
 * Checks the options that apply to every row.
 * @throws USAGE on no models or shapes, duplicate labels, `runs` < 1, `warmup` < 0,
 *   or a non-positive shape or thread count
 */
export function validateBenchOptions(opts: BenchOptions): void {
  const bad = (m: string): never => {
    throw new QuantdError("USAGE", m);
  };
  if (opts.models.length === 0) bad("bench needs at least one model");
  if (opts.shapes.length === 0) bad("bench needs at least one shape");
  if (opts.threads.length === 0) bad("bench needs at least one thread count");
  if (!Number.isSafeInteger(opts.runs) || opts.runs < 1)
    bad(`runs must be an integer >= 1, got ${opts.runs}`);
  if (!Number.isSafeInteger(opts.warmup) || opts.warmup < 0) {
    bad(`warmup must be an integer >= 0, got ${opts.warmup}`);
  }
  for (const s of opts.shapes) {
    if (!Number.isSafeInteger(s.batch) || s.batch < 1 || !Number.isSafeInteger(s.seq) || s.seq < 1) {
      bad(`batch and seq must be integers >= 1, got batch ${s.batch}, seq ${s.seq}`);
    }
  }
  for (const t of opts.threads) if (!Number.isSafeInteger(t) || t < 1) bad(`threads must be >= 1, got ${t}`);
  const labels = new Set<string>();
  for (const m of opts.models) {
    if (labels.has(m.label)) bad(`two models are labelled "${m.label}"; labels must be unique`);
    labels.add(m.label);
  }
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch (err) {
    throw new QuantdError("FILE_NOT_FOUND", `model file ${path} not found`, { cause: err });
  }
}

/** Counts work units done for {@link BenchOptions.onProgress}. */
class Progress {
  done = 0;
  constructor(
    readonly total: number,
    private readonly onProgress: BenchOptions["onProgress"],
  ) {}

  tick(what: string, units = 1): void {
    this.done += units;
    this.onProgress?.({ done: Math.min(this.done, this.total), total: this.total, what });
  }
}

/** Work units of a whole run: loads, warm-up and timed runs, memory probes, evaluations. */
function workUnits(opts: BenchOptions, withMemory: boolean): number {
  const nModels = opts.models.length;
  const perGroup = nModels * (1 + opts.shapes.length * (opts.warmup + opts.runs + (withMemory ? 1 : 0)));
  return opts.threads.length * perGroup + (opts.data !== undefined ? nModels : 0);
}

/** Predictions and labels of a model on the labelled data, or why there are none. */
type QualityInput = { predictions: number[]; labels: readonly number[] } | QuantdError;

/**
 * Runs the benchmark. Never throws for a bad model, shape or data file: those
 * become {@link BenchRowError} rows.
 *
 * @throws USAGE when the options are invalid for every row (see {@link validateBenchOptions})
 */
export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  validateBenchOptions(opts);
  const seed = opts.seed ?? 1;
  const withMemory = opts.memory ?? true;
  const progress = new Progress(workUnits(opts, withMemory), opts.onProgress);
  const dataByModel = await prepareData(opts);
  const quality = new Map<string, QualityInput>();
  await primeRuntime(opts);

  const rows: BenchRow[] = [];
  for (const threads of opts.threads) {
    const loaded = await loadModels(opts, threads, dataByModel, progress);
    // Accuracy and agreement: once per model, with the first thread count's sessions.
    if (opts.data !== undefined && threads === opts.threads[0]) await evaluate(loaded, quality, progress);
    for (const shape of opts.shapes)
      rows.push(...(await measureShape(opts, loaded, shape, threads, seed, progress)));
    for (const l of loaded) await l.session?.release();
    // Memory after the sessions are released, so children do not compete with them for RAM.
    if (withMemory) await measureMemory(opts, rows, loaded, threads, seed, progress);
  }

  attachRatios(rows, opts.models);
  if (opts.data !== undefined) attachQuality(rows, opts.models, quality);
  return { rows, runs: opts.runs, warmup: opts.warmup, seed, realText: opts.data !== undefined };
}

/** Data and quality are per model, independent of shape and threads: prepared once, an error kept per model. */
async function prepareData(opts: BenchOptions): Promise<Map<string, ModelData | QuantdError>> {
  const dataByModel = new Map<string, ModelData | QuantdError>();
  if (opts.data === undefined) return dataByModel;
  for (const m of opts.models) {
    try {
      dataByModel.set(m.label, await opts.data(m));
    } catch (err) {
      dataByModel.set(m.label, QuantdError.from(err, "DATA_MISMATCH"));
    }
  }
  return dataByModel;
}

/**
 * The first session of a process pays one-off set-up costs (~150 ms on BERT-Mini); load and drop one
 * so that the first model's load time is not inflated relative to the others.
 */
async function primeRuntime(opts: BenchOptions): Promise<void> {
  for (const m of opts.models) {
    try {
      await (await createOrtSession(m.path, { intraOpThreads: opts.threads[0]! })).release();
      return;
    } catch {
      // a broken model fails later in its own row; prime with the next one
    }
  }
}

/** The graph optimization level option, when one is set. */
function optimizationOf(opts: BenchOptions): { graphOptimizationLevel?: GraphOptimizationLevel } {
  return opts.graphOptimizationLevel !== undefined
    ? { graphOptimizationLevel: opts.graphOptimizationLevel }
    : {};
}

/** Every model's session at `threads`, its data and vocabulary, or why it cannot run. */
async function loadModels(
  opts: BenchOptions,
  threads: number,
  dataByModel: Map<string, ModelData | QuantdError>,
  progress: Progress,
): Promise<Loaded[]> {
  const loaded: Loaded[] = [];
  for (const model of opts.models) {
    const l: Loaded = { model, family: model.family ?? "default" };
    loaded.push(l);
    try {
      await loadModel(l, opts, threads, dataByModel.get(model.label));
    } catch (err) {
      l.error = await explainRefusedModel(model.path, QuantdError.from(err, "MODEL_LOAD_FAILED"));
    }
    progress.tick(`load ${model.label} t${threads}`);
  }
  return loaded;
}

async function loadModel(
  l: Loaded,
  opts: BenchOptions,
  threads: number,
  data: ModelData | QuantdError | undefined,
): Promise<void> {
  const { model } = l;
  l.sizeBytes = fileSize(model.path);
  const t0 = performance.now();
  l.session = await createOrtSession(model.path, { intraOpThreads: threads, ...optimizationOf(opts) });
  l.loadMs = performance.now() - t0;
  // An external-data model's weights are in its side files: its size is theirs too, as quantize's ratio counts it.
  // onnxruntime loaded it, so a file quantd's own decoder cannot read keeps its plain size rather than no row.
  for (const f of await externalDataFiles(model.path).catch(() => [])) l.sizeBytes += fileSize(f);
  // After the load, so a broken model reports itself rather than a tokenizer it lacks.
  if (data instanceof QuantdError) throw data;
  l.data = data;
  l.vocabSize = model.vocabSize ?? findVocabSize(model.path);
  if (l.data === undefined && l.vocabSize === undefined) {
    l.vocabSize = await findVocabSizeInGraph(model.path);
    if (l.vocabSize === undefined) {
      throw new QuantdError(
        "MODEL_INPUTS_MISMATCH",
        `vocabulary size of ${model.path} unknown: no config.json with vocab_size beside it and no ` +
          "embedding Gather on input_ids in the graph",
      );
    }
  }
}

/** Predictions of every loaded model on its labelled data, for accuracy and agreement. */
async function evaluate(
  loaded: readonly Loaded[],
  quality: Map<string, QualityInput>,
  progress: Progress,
): Promise<void> {
  for (const l of loaded) {
    if (l.session !== undefined && l.data !== undefined) {
      try {
        quality.set(l.model.label, { predictions: await l.data.predict(l.session), labels: l.data.labels });
      } catch (err) {
        quality.set(l.model.label, QuantdError.from(err, "DATA_MISMATCH"));
      }
    } else if (l.error !== undefined) {
      quality.set(l.model.label, l.error);
    }
    progress.tick(`evaluate ${l.model.label}`);
  }
}

/** A model's feeds at one shape and its timed runs so far. */
interface Series {
  feeds: Record<string, Tensor>;
  times: number[];
}

/** The rows of one shape at `threads`: warm-up, interleaved timed runs, one row per model. */
async function measureShape(
  opts: BenchOptions,
  loaded: readonly Loaded[],
  shape: Shape,
  threads: number,
  seed: number,
  progress: Progress,
): Promise<BenchRow[]> {
  const where = `${shapeLabel(shape)} t${threads}`;
  // Failed models skip work; keep the bar honest by catching up to where this shape should end.
  const shapeEnd = progress.done + loaded.length * (opts.warmup + opts.runs);
  const state: ShapeState = { series: new Map(), failed: new Map() };
  await warmUp(opts, loaded, shape, seed, state, progress, where);
  await timeInterleaved(opts.runs, state, progress, where);
  if (progress.done < shapeEnd) progress.tick(`done ${where}`, shapeEnd - progress.done);
  const rows = loaded.map((l) => rowOf(l, shape, threads, state.series.get(l), state.failed.get(l)));
  // An error row has no memory probe: its unit is done now.
  if (opts.memory ?? true) {
    for (const row of rows) if (row.status === "error") progress.tick(`skip memory ${row.model}`);
  }
  return rows;
}

/** Where each model of a shape stands: its series while it runs, its error once it failed. */
interface ShapeState {
  series: Map<Loaded, Series>;
  failed: Map<Loaded, QuantdError>;
}

/** Feeds and untimed runs of every model that loaded; a model that fails here is marked failed. */
async function warmUp(
  opts: BenchOptions,
  loaded: readonly Loaded[],
  shape: Shape,
  seed: number,
  { series, failed }: ShapeState,
  progress: Progress,
  where: string,
): Promise<void> {
  for (const l of loaded) {
    if (l.error !== undefined || l.session === undefined) {
      failed.set(l, l.error ?? new QuantdError("MODEL_LOAD_FAILED", `${l.model.path} did not load`));
      continue;
    }
    try {
      const feeds =
        l.data !== undefined
          ? l.data.feedsFor(l.session, shape)
          : syntheticFeeds(l.session.inputs, shape, { vocabSize: l.vocabSize!, seed });
      for (let i = 0; i < opts.warmup; i++) {
        await l.session.run(feeds);
        progress.tick(`warm-up ${l.model.label} ${where}`);
      }
      series.set(l, { feeds, times: [] });
    } catch (err) {
      failed.set(l, QuantdError.from(err, "INFERENCE_FAILED"));
    }
  }
}

/** Interleaved A B A B …: a model that fails mid-way drops out; the others go on. */
async function timeInterleaved(
  runs: number,
  { series, failed }: ShapeState,
  progress: Progress,
  where: string,
): Promise<void> {
  const active = [...series.keys()];
  for (const idx of interleavedOrder(active.length, runs)) {
    const l = active[idx]!;
    const s = series.get(l);
    if (s === undefined || failed.has(l)) {
      progress.tick(`skip ${l.model.label}`);
      continue;
    }
    const t0 = performance.now();
    try {
      await l.session!.run(s.feeds);
      s.times.push(performance.now() - t0);
    } catch (err) {
      failed.set(l, QuantdError.from(err, "INFERENCE_FAILED"));
      series.delete(l);
    }
    progress.tick(`run ${l.model.label} ${where}`);
  }
}

/** A model's row at one shape: its latency figures, or the error that stopped it. */
function rowOf(
  l: Loaded,
  shape: Shape,
  threads: number,
  s: Series | undefined,
  err: QuantdError | undefined,
): BenchRow {
  const key: RowKey = { model: l.model.label, path: l.model.path, family: l.family, shape, threads };
  if (err !== undefined || s === undefined) {
    const row: BenchRowError = { ...key, status: "error", error: errorJson(err) };
    if (l.sizeBytes !== undefined) row.sizeBytes = l.sizeBytes;
    if (l.loadMs !== undefined) row.loadMs = l.loadMs;
    return row;
  }
  const latency = summarize(s.times);
  return {
    ...key,
    status: "ok",
    latency,
    latenciesMs: s.times,
    throughput: throughput(shape.batch, latency.mean),
    loadMs: l.loadMs!,
    sizeBytes: l.sizeBytes!,
  };
}

/** Peak memory of each measured row at `threads`, each in a fresh child process. */
async function measureMemory(
  opts: BenchOptions,
  rows: readonly BenchRow[],
  loaded: readonly Loaded[],
  threads: number,
  seed: number,
  progress: Progress,
): Promise<void> {
  for (const row of rows) {
    if (row.status !== "ok" || row.threads !== threads) continue;
    const l = loaded.find((x) => x.model.label === row.model)!;
    try {
      row.memory = await measurePeakMemory({
        model: row.path,
        shape: row.shape,
        threads,
        // Memory does not depend on which ids are fed; id 1 exists in any vocabulary.
        vocabSize: l.vocabSize ?? 2,
        runs: opts.memoryRuns ?? 3,
        seed,
        ...optimizationOf(opts),
      });
    } catch (err) {
      row.memory = { error: errorJson(err) };
    }
    progress.tick(`memory ${row.model} ${shapeLabel(row.shape)} t${threads}`);
  }
}

function firstOfFamily(models: readonly BenchModel[], family: string): BenchModel | undefined {
  return models.find((m) => (m.family ?? "default") === family);
}

function attachRatios(rows: BenchRow[], models: readonly BenchModel[]): void {
  for (const row of rows) {
    if (row.status !== "ok") continue;
    const first = firstOfFamily(models, row.family);
    if (first === undefined || first.label === row.model) continue;
    const base = rows.find(
      (r): r is BenchRowOk =>
        r.status === "ok" &&
        r.model === first.label &&
        r.threads === row.threads &&
        r.shape.batch === row.shape.batch &&
        r.shape.seq === row.shape.seq,
    );
    if (base === undefined) continue;
    row.ratio = {
      baseline: base.model,
      p50: row.latency.p50 / base.latency.p50,
      medianOfPairs: medianRatio(base.latenciesMs, row.latenciesMs),
    };
  }
}

function attachQuality(
  rows: BenchRow[],
  models: readonly BenchModel[],
  quality: Map<string, QualityInput>,
): void {
  const computed = new Map<string, Quality | { error: QuantdErrorJSON }>();
  for (const m of models) {
    const q = quality.get(m.label);
    if (q === undefined) continue;
    if (q instanceof QuantdError) {
      computed.set(m.label, { error: q.toJSON() });
      continue;
    }
    let correct = 0;
    q.predictions.forEach((p, i) => {
      if (p === q.labels[i]) correct++;
    });
    const out: Quality = {
      samples: q.predictions.length,
      accuracy: correct / Math.max(1, q.predictions.length),
    };
    const first = firstOfFamily(models, m.family ?? "default");
    const ref = first === undefined || first.label === m.label ? undefined : quality.get(first.label);
    if (
      ref !== undefined &&
      !(ref instanceof QuantdError) &&
      ref.predictions.length === q.predictions.length
    ) {
      let same = 0;
      q.predictions.forEach((p, i) => {
        if (p === ref.predictions[i]) same++;
      });
      out.agreement = same / Math.max(1, q.predictions.length);
    }
    computed.set(m.label, out);
  }
  for (const row of rows) {
    const q = computed.get(row.model);
    if (row.status === "ok" && q !== undefined) row.quality = q;
  }
}
