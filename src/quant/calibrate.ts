/**
 * The calibration runner: runs the fp32 model over calibration batches with
 * the requested intermediate tensors exposed as graph outputs, and feeds each
 * fetched tensor to its own observer, batch by batch.
 *
 * - Only the requested tensors are added as outputs and fetched; the model is
 *   cloned shallowly (only the graph's output list is new), so weights are not
 *   copied.
 * - Graph inputs are observed from the feeds; constants (initializers, Constant
 *   nodes) are observed once from their value, never fetched.
 * - Padding never reaches the statistics: padded batches are split into rows
 *   and regrouped by exact length (right padding, as the tokenizer produces),
 *   so every batch that runs is unpadded. Batches are kept only until their
 *   length bucket fills, so memory is bounded by `batchSize` × distinct lengths
 *   plus the observers' fixed state, not by the number of samples.
 */
import { assertNever, QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import { GraphIndex } from "../onnx/graph.ts";
import { tensorToFloat32 } from "../onnx/tensor.ts";
import type { ModelProto } from "../onnx/types.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { BatchEncoding } from "../runtime/tokenizer.ts";
import type { InferenceSession, SessionOptions, Tensor } from "../runtime/types.ts";
import type { CalibrationMethod } from "./methods.ts";
import { createObserver, type Observer, type ObserverSpec, type TensorRange } from "./observers/index.ts";

/**
 * Bytes of fetched tensors after which garbage is collected. onnxruntime hands
 * every output over in a fresh buffer held outside the JS heap, which the
 * collector's heuristics undercount; without a nudge the dead buffers of
 * earlier runs pile up and peak memory grows with the number of samples
 * (measured on BERT-Mini: peak RSS 1024 vs 128 samples +15 % at 32 MB, +4 % at
 * 8 MB, for a few milliseconds of collection per 8 MB).
 */
const COLLECT_EVERY_BYTES = 8 * 2 ** 20;

function collectGarbage(): void {
  // Bun: synchronous full collection; Node: only when started with --expose-gc
  const g = globalThis as { Bun?: { gc(force: boolean): void }; gc?: () => void };
  if (g.Bun !== undefined) g.Bun.gc(true);
  else g.gc?.();
}

/** Default number of same-length rows run together. */
export const DEFAULT_CALIBRATION_BATCH_SIZE = 8;

/** Rows up to this length run `batchSize` at a time; longer rows in batches of `batchSize × this` tokens. */
export const FULL_BATCH_MAX_LENGTH = 32;

/** Options for {@link calibrate}. */
export interface CalibrationOptions {
  /** Range estimator. */
  method: CalibrationMethod;
  /** Histogram bins (percentile, entropy, mse). @defaultValue 2048 */
  bins?: number;
  /** Percentage kept by the percentile method. @defaultValue 99.999 */
  percentile?: number;
  /**
   * Most rows per model run. Rows are grouped by exact length so no batch is padded;
   * rows longer than {@link FULL_BATCH_MAX_LENGTH} tokens run in proportionally smaller
   * batches (at most `batchSize × 32` tokens per run), so peak memory depends on neither
   * the number of samples nor the longest one. 1 runs every sample alone.
   * @defaultValue {@link DEFAULT_CALIBRATION_BATCH_SIZE} (8)
   */
  batchSize?: number;
  /** onnxruntime session options for the instrumented model. @defaultValue graph optimization "basic" */
  session?: SessionOptions;
  /** Called after each model run with samples done and the total (NaN when the input is a stream). */
  onProgress?: (done: number, total: number) => void;
}

/** What {@link calibrate} found. */
export interface CalibrationResult {
  /** Range per requested tensor, in request order. */
  ranges: Map<string, TensorRange>;
  /** Samples (rows) observed. */
  samples: number;
  /** Model runs. */
  batches: number;
  /** Wall time, session creation included. */
  elapsedMs: number;
  /** Where the time went: instrumenting, encoding and loading the model; onnxruntime runs; observers. */
  timings: { setupMs: number; inferenceMs: number; observeMs: number };
}

/** The observer a method uses. */
export function observerSpecFor(
  opts: Pick<CalibrationOptions, "method" | "bins" | "percentile">,
): ObserverSpec {
  const bins = opts.bins === undefined ? {} : { bins: opts.bins };
  switch (opts.method) {
    case "minmax":
      return { type: "minmax" };
    case "moving-average":
      return { type: "moving-average-minmax" };
    case "percentile":
      return opts.percentile === undefined
        ? { type: "percentile", ...bins }
        : { type: "percentile", ...bins, percentile: opts.percentile };
    case "entropy":
      return { type: "entropy", ...bins };
    case "mse":
      return { type: "mse", ...bins };
    default:
      return assertNever(opts.method, "calibration method");
  }
}

/** One unpadded row taken out of a batch. */
interface Row {
  inputIds: BigInt64Array;
  tokenTypeIds: BigInt64Array;
  truncated: boolean;
  positions: BatchEncoding["positions"];
}

function checkEncoding(enc: BatchEncoding, which: number): void {
  const { batchSize, seqLen } = enc;
  const bad = (why: string): never => {
    throw new QuantdError("CALIB_FAILED", `calibration batch ${which} is malformed: ${why}`, {
      details: { batch: which, batchSize, seqLen },
    });
  };
  if (!Number.isInteger(batchSize) || batchSize < 1 || !Number.isInteger(seqLen) || seqLen < 1) {
    bad(`batch size ${batchSize} × length ${seqLen}`);
  }
  const n = batchSize * seqLen;
  if (enc.inputIds.length !== n || enc.attentionMask.length !== n || enc.tokenTypeIds.length !== n) {
    bad(`tensors do not hold ${batchSize}×${seqLen} elements`);
  }
  if (enc.lengths.length !== batchSize) bad(`${enc.lengths.length} lengths for ${batchSize} rows`);
  for (let r = 0; r < batchSize; r++) {
    const len = enc.lengths[r]!;
    if (!Number.isInteger(len) || len < 1 || len > seqLen) bad(`row ${r} has length ${len}`);
    // right padding: the last real token is attended, the first pad is not
    const base = r * seqLen;
    if (enc.attentionMask[base + len - 1] !== 1n || (len < seqLen && enc.attentionMask[base + len] !== 0n)) {
      bad(`row ${r}'s attention mask does not match its length ${len} (only right padding is supported)`);
    }
  }
}

/**
 * Regroups rows by exact length into unpadded batches of at most `batchSize`
 * rows and `batchSize × FULL_BATCH_MAX_LENGTH` tokens. Exported for tests.
 */
export class LengthBuckets {
  readonly #batchSize: number;
  readonly #buckets = new Map<number, Row[]>();

  constructor(batchSize: number) {
    this.#batchSize = batchSize;
  }

  /** Rows per batch at length `len`. */
  #rowsFor(len: number): number {
    const budget = this.#batchSize * FULL_BATCH_MAX_LENGTH;
    return Math.max(1, Math.min(this.#batchSize, Math.floor(budget / len)));
  }

  /** Unpadded batches ready to run after adding `enc`. */
  add(enc: BatchEncoding): BatchEncoding[] {
    const { batchSize, seqLen } = enc;
    // a full unpadded batch runs as it is; anything else is regrouped (copying ids is cheap next to a run)
    if (batchSize === this.#rowsFor(seqLen) && enc.lengths.every((len) => len === seqLen)) return [enc];
    const ready: BatchEncoding[] = [];
    for (let r = 0; r < batchSize; r++) {
      const len = enc.lengths[r]!;
      const base = r * seqLen;
      const row: Row = {
        inputIds: enc.inputIds.slice(base, base + len),
        tokenTypeIds: enc.tokenTypeIds.slice(base, base + len),
        truncated: enc.truncated[r] ?? false,
        positions: enc.positions,
      };
      let bucket = this.#buckets.get(len);
      if (bucket === undefined) {
        bucket = [];
        this.#buckets.set(len, bucket);
      }
      bucket.push(row);
      if (bucket.length === this.#rowsFor(len)) {
        this.#buckets.delete(len);
        ready.push(stack(bucket, len));
      }
    }
    return ready;
  }

  /** The partly filled buckets, as batches. */
  flush(): BatchEncoding[] {
    const out: BatchEncoding[] = [];
    for (const [len, rows] of this.#buckets) out.push(stack(rows, len));
    this.#buckets.clear();
    return out;
  }
}

function stack(rows: readonly Row[], len: number): BatchEncoding {
  const n = rows.length;
  const inputIds = new BigInt64Array(n * len);
  const tokenTypeIds = new BigInt64Array(n * len);
  for (let r = 0; r < n; r++) {
    inputIds.set(rows[r]!.inputIds, r * len);
    tokenTypeIds.set(rows[r]!.tokenTypeIds, r * len);
  }
  return {
    batchSize: n,
    seqLen: len,
    inputIds,
    attentionMask: new BigInt64Array(n * len).fill(1n),
    tokenTypeIds,
    lengths: new Array<number>(n).fill(len),
    truncated: rows.map((r) => r.truncated),
    // Rows of one tokenizer share its position style.
    ...(rows[0]?.positions !== undefined ? { positions: rows[0].positions } : {}),
  };
}

/** A tensor's values as float32 for an observer (float32 outputs pass through uncopied). */
function toFloat32(name: string, t: Tensor): Float32Array {
  switch (t.type) {
    case "float32":
      return t.data as Float32Array;
    case "int64": {
      const src = t.data as BigInt64Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]!);
      return out;
    }
    case "int32":
    case "int8":
    case "uint8":
    case "bool":
      return Float32Array.from(t.data as Int32Array | Int8Array | Uint8Array);
    case "float16":
      throw new QuantdError(
        "QUANT_UNSUPPORTED",
        `cannot calibrate ${name}: float16 tensors are not supported`,
      );
    default:
      return assertNever(t.type, "tensor element type");
  }
}

async function* iterate(
  inputs: readonly BatchEncoding[] | AsyncIterable<BatchEncoding>,
): AsyncGenerator<BatchEncoding> {
  if (Symbol.asyncIterator in inputs) {
    for await (const b of inputs) yield b;
  } else {
    for (const b of inputs) yield b;
  }
}

/** Where each requested tensor's values come from. */
interface TensorPlan {
  fetched: string[];
  fromFeeds: string[];
  constants: string[];
}

function planTensors(index: GraphIndex, names: readonly string[]): TensorPlan {
  const plan: TensorPlan = { fetched: [], fromFeeds: [], constants: [] };
  const unknown: string[] = [];
  for (const name of names) {
    if (index.isGraphInput(name)) plan.fromFeeds.push(name);
    else if (index.constant(name) !== undefined) plan.constants.push(name);
    else if (index.producer(name) !== undefined) plan.fetched.push(name);
    else unknown.push(name);
  }
  if (unknown.length > 0) {
    throw new QuantdError(
      "CALIB_FAILED",
      `cannot observe ${unknown.length} tensor(s) the model does not have: ${unknown.slice(0, 5).join(", ")}${unknown.length > 5 ? ", …" : ""}`,
      { details: { unknown } },
    );
  }
  return plan;
}

/**
 * Runs the fp32 `model` over `inputs` and returns the range of each tensor in
 * `tensorNames`, estimated by `opts.method`.
 *
 * @param model - the fp32 model (not modified)
 * @param tensorNames - tensors to observe: node outputs, graph inputs or constants
 * @param inputs - tokenized batches (right-padded, any lengths), or a stream of them
 * @throws CALIB_EMPTY when no sample was given
 * @throws CALIB_FAILED when a name is not in the model, a batch is malformed, or a run fails
 * @throws MODEL_LOAD_FAILED when onnxruntime rejects the instrumented model
 * @throws USAGE when the options are out of range
 */
export async function calibrate(
  model: ModelProto,
  tensorNames: readonly string[],
  inputs: readonly BatchEncoding[] | AsyncIterable<BatchEncoding>,
  opts: CalibrationOptions,
): Promise<CalibrationResult> {
  const t0 = performance.now();
  const batchSize = opts.batchSize ?? DEFAULT_CALIBRATION_BATCH_SIZE;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new QuantdError("USAGE", `calibration batch size must be a positive integer, got ${batchSize}`);
  }
  const spec = observerSpecFor(opts);
  const names = [...new Set(tensorNames)];
  const observers = new Map<string, Observer>();
  for (const name of names) observers.set(name, createObserver(spec));

  // Shallow clone: a new output list on a new graph object; nodes and weights are shared, never edited.
  const graph = { ...model.graph, output: [...model.graph.output] };
  const index = new GraphIndex(graph);
  const plan = planTensors(index, names);
  for (const name of plan.constants) {
    const c = index.constant(name)!;
    observers.get(name)!.update(tensorToFloat32(c));
  }

  let session: InferenceSession | undefined;
  const total = Array.isArray(inputs)
    ? (inputs as readonly BatchEncoding[]).reduce((s, b) => s + b.batchSize, 0)
    : Number.NaN;
  if (total === 0)
    throw new QuantdError("CALIB_EMPTY", "calibration needs at least one sample, none were given");
  // Rows and runs done, and where the time went (the result's `timings`).
  const done = { samples: 0, batches: 0 };
  const timings = { setupMs: 0, inferenceMs: 0, observeMs: 0 };
  let uncollected = 0;
  try {
    for (const name of plan.fetched) index.addProbeOutput(name);
    // "basic" by default: exposing the observed tensors blocks most extended fusions anyway, and the
    // extended optimizer passes cost more session-creation time than they save over a calibration run
    session = await createOrtSession(encodeModel({ ...model, graph }), {
      graphOptimizationLevel: "basic",
      ...opts.session,
    });
    const live = session;
    timings.setupMs = performance.now() - t0;
    const fetches = plan.fetched;

    const run = async (enc: BatchEncoding): Promise<void> => {
      const feeds = feedsForEncoding(live, enc);
      const ta = performance.now();
      for (const name of plan.fromFeeds) {
        const t = feeds[name];
        if (t === undefined) {
          throw new QuantdError("CALIB_FAILED", `graph input ${name} is not fed from token batches`);
        }
        observers.get(name)!.update(toFloat32(name, t));
      }
      if (fetches.length > 0) {
        let out: Record<string, Tensor>;
        const tr = performance.now();
        timings.observeMs += tr - ta;
        try {
          out = await live.run(feeds, fetches);
        } catch (err) {
          throw new QuantdError("CALIB_FAILED", `calibration run ${done.batches + 1} failed`, {
            cause: err,
            details: { batchSize: enc.batchSize, seqLen: enc.seqLen },
          });
        }
        const to = performance.now();
        timings.inferenceMs += to - tr;
        for (const name of fetches) {
          const t = out[name];
          if (t === undefined) throw new QuantdError("CALIB_FAILED", `onnxruntime did not return ${name}`);
          observers.get(name)!.update(toFloat32(name, t));
          uncollected += t.data.byteLength;
        }
        if (uncollected >= COLLECT_EVERY_BYTES) {
          uncollected = 0;
          collectGarbage();
        }
        timings.observeMs += performance.now() - to;
      }
      done.batches++;
      done.samples += enc.batchSize;
      opts.onProgress?.(done.samples, total);
    };

    const buckets = new LengthBuckets(batchSize);
    let seen = 0;
    for await (const enc of iterate(inputs)) {
      checkEncoding(enc, seen);
      seen++;
      for (const ready of buckets.add(enc)) await run(ready);
    }
    for (const ready of buckets.flush()) await run(ready);
    if (done.samples === 0)
      throw new QuantdError("CALIB_EMPTY", "calibration needs at least one sample, none were given");
  } catch (err) {
    throw QuantdError.from(err, "CALIB_FAILED");
  } finally {
    await session?.release();
  }

  const tResult = performance.now();
  const ranges = new Map<string, TensorRange>();
  for (const name of names) ranges.set(name, observers.get(name)!.result());
  timings.observeMs += performance.now() - tResult;
  return {
    ranges,
    samples: done.samples,
    batches: done.batches,
    elapsedMs: performance.now() - t0,
    timings,
  };
}
