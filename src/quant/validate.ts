/**
 * Validation of int8 candidates against fp32 at scale: thousands of held-out
 * samples for several candidates, on a board.
 *
 * - Batches with length bucketing, as serving runs them: samples sorted by
 *   token length, so a batch pads little. Static int8 and fp32 give the same
 *   logits padded or not (padding is masked, scales are fixed). Dynamic int8
 *   takes its activation range over the whole batch tensor, so a dynamic
 *   candidate runs one unpadded sample at a time, as a single request would.
 * - fp32 reference logits are computed once per run, chunk by chunk as a
 *   candidate first needs them, and cached by model SHA-256 and sample id
 *   (the agent's store keeps them), so the next candidate and the next job
 *   reuse them.
 * - Early stop: samples run in a fixed pseudo-random order (by hash of the
 *   text, so a file sorted by length or topic is not seen in that order), and
 *   at a few looks (doubling prefixes) the gate is checked. A candidate stops
 *   as passed when its bound already clears the gate, and as failed as soon as
 *   even all remaining samples agreeing could not lift it over. Passing at an
 *   early look is a repeated test, so α is spent among the looks (Bonferroni,
 *   `lookLevels`: the last look keeps 80 % of it, the earlier ones share the
 *   rest): the bound holds at the stated confidence whenever validation stops.
 *   Looks are used only when the set is at least twice what the first look
 *   needs; otherwise one look at the end, uncorrected.
 */
import { createHash } from "node:crypto";
import { QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import type { ModelProto } from "../onnx/types.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { BatchEncoding, Tokenizer } from "../runtime/tokenizer.ts";
import type { InferenceSession, SessionOptions } from "../runtime/types.ts";
import { clopperPearsonLower, DEFAULT_CONFIDENCE, samplesToCertify } from "./confidence.ts";
import {
  argmaxRows,
  compareLogits,
  DEFAULT_NEAR_TIE_MARGIN,
  type GateMetrics,
  type GateSpec,
  type LogitMatrix,
  lookLevels,
  topTwoMargins,
} from "./gate.ts";
import type { QuantSample } from "./samples.ts";
import { planLooks } from "./split.ts";

export { planLooks } from "./split.ts";

/** Encoded samples, with the bookkeeping the report needs. */
export interface EncodedSamples {
  batches: BatchEncoding[];
  /** Samples cut to the model's longest sequence. */
  truncated: number;
  /** Labels in batch order (undefined where a sample has none). */
  labels: (number | undefined)[];
  /** Index in `samples` of each row, in batch order. */
  order: number[];
  /** Token count of each row (before padding), in batch order. */
  lengths: number[];
}

/**
 * Tokenizes samples into batches sorted by length (so padding is small),
 * remembering labels in batch order. Samples longer than `maxLength` are cut
 * (longest-first, special tokens kept) and counted.
 */
export function encodeSamples(
  tokenizer: Tokenizer,
  samples: readonly QuantSample[],
  batchSize: number,
  maxLength: number,
): EncodedSamples {
  const encoded = samples.map((s, i) => ({ i, e: tokenizer.encode(s.text, s.pair, { maxLength }) }));
  encoded.sort((a, b) => a.e.inputIds.length - b.e.inputIds.length || a.i - b.i);
  const batches: BatchEncoding[] = [];
  const labels: (number | undefined)[] = [];
  const order: number[] = [];
  const lengths: number[] = [];
  let truncated = 0;
  for (let start = 0; start < encoded.length; start += batchSize) {
    const chunk = encoded.slice(start, start + batchSize);
    batches.push(tokenizer.pad(chunk.map((c) => c.e)));
    for (const c of chunk) {
      labels.push(samples[c.i]!.label);
      order.push(c.i);
      lengths.push(c.e.inputIds.length);
      if (c.e.truncated) truncated++;
    }
  }
  return { batches, truncated, labels, order, lengths };
}

/** Samples per validation batch (fp32 and static candidates). */
export const VALIDATION_BATCH = 16;

/**
 * fp32 logits kept across runs, keyed by the fp32 model's SHA-256 and the
 * sample's pool id (the agent's store implements it).
 */
export interface ReferenceLogitsCache {
  /** The cached rows among `ids` (absent ids are simply missing from the map). */
  get(modelSha256: string, ids: readonly number[]): Map<number, Float32Array>;
  /** Stores rows (an existing row is replaced). */
  put(modelSha256: string, rows: readonly { id: number; logits: Float32Array }[]): void;
}

/** When validation stopped before the last sample, and why. */
export type EarlyStop = "passed" | "failed";

/** Figures of one candidate's validation. */
export interface CandidateValidation {
  metrics: GateMetrics;
  /** Samples run (less than the set when it stopped early). */
  samples: number;
  stopped?: EarlyStop;
  ms: number;
}

/** What the validator did, for the report. */
export interface ValidationSummary {
  /** Validation samples. */
  samples: number;
  /** fp32 and static batches: up to this many samples of similar length. */
  batchSize: number;
  /** Prefix sizes at which the gate was checked (the last is the whole set). */
  looks: number[];
  /** Level of the bound at the earlier looks and at the last (see `lookLevels`). */
  lookLevels: { interim: number; final: number };
  reference: { fromCache: number; computed: number; ms: number };
  /** Sample-runs of every candidate together. */
  candidateSamples: number;
  candidateMs: number;
  earlyStops: { passed: number; failed: number };
}

/** Options of {@link createValidator}. */
export interface ValidatorOptions {
  tokenizer: Tokenizer;
  maxLength: number;
  /** The held-out samples. */
  samples: readonly QuantSample[];
  gate: GateSpec;
  /** The fp32 model file and its SHA-256 (the cache key). */
  fp32: { path: string; sha256: string };
  session: SessionOptions;
  cache?: ReferenceLogitsCache;
  /** Stop a candidate as soon as the verdict is certain. @defaultValue true */
  earlyStop?: boolean;
  /** @defaultValue {@link VALIDATION_BATCH} */
  batchSize?: number;
}

/** Validates candidates against fp32 on one held-out set (see the module comment). */
export interface Validator {
  /** The looks and their confidence, fixed for the run. */
  readonly looks: readonly number[];
  /** Validates one candidate; `perSample` runs it one sample at a time (dynamic int8). */
  validate(model: ModelProto, perSample: boolean): Promise<CandidateValidation>;
  /** What was done so far. */
  summary(): ValidationSummary;
  /** Samples truncated to the model's longest sequence. */
  readonly truncated: number;
  /** Token count of every validation sample. */
  readonly lengths: readonly number[];
}

/** The order samples are validated in: by SHA-1 of the text, a fixed shuffle any file order survives. */
function hashOrder(samples: readonly QuantSample[]): number[] {
  const key = samples.map((s) => createHash("sha1").update(s.text).digest("hex"));
  return samples.map((_, i) => i).sort((a, b) => (key[a]! < key[b]! ? -1 : key[a]! > key[b]! ? 1 : a - b));
}

/** One look's worth of samples, encoded both ways, with its fp32 logits once computed. */
interface Chunk {
  samples: QuantSample[];
  batched: EncodedSamples;
  single: EncodedSamples;
  reference?: LogitMatrix;
  margins?: Float64Array;
}

/**
 * A validator over `opts.samples`.
 *
 * @throws INFERENCE_FAILED / MODEL_LOAD_FAILED from onnxruntime (when validating)
 */
export function createValidator(opts: ValidatorOptions): Validator {
  const confidence = opts.gate.confidence ?? DEFAULT_CONFIDENCE;
  const batchSize = opts.batchSize ?? VALIDATION_BATCH;
  const n = opts.samples.length;
  const earlyStop = opts.earlyStop ?? true;
  const looks = planLooks(n, opts.gate, earlyStop);
  const levels = lookLevels(confidence, looks.length);
  const ordered = hashOrder(opts.samples).map((i) => opts.samples[i]!);
  const chunks: Chunk[] = [];
  let truncated = 0;
  for (let start = 0, k = 0; k < looks.length; start = looks[k]!, k++) {
    const samples = ordered.slice(start, looks[k]);
    const batched = encodeSamples(opts.tokenizer, samples, batchSize, opts.maxLength);
    const single = encodeSamples(opts.tokenizer, samples, 1, opts.maxLength);
    truncated += batched.truncated;
    chunks.push({ samples, batched, single });
  }
  const ignoreMargin = opts.gate.ignoreMargin ?? 0;
  const tieMargin = ignoreMargin > 0 ? ignoreMargin : DEFAULT_NEAR_TIE_MARGIN;
  const stats: ValidationSummary = {
    samples: n,
    batchSize,
    looks,
    lookLevels: levels,
    reference: { fromCache: 0, computed: 0, ms: 0 },
    candidateSamples: 0,
    candidateMs: 0,
    earlyStops: { passed: 0, failed: 0 },
  };

  /** fp32 logits of a chunk: cached rows where the store has them, the rest computed. */
  const referenceOf = async (chunk: Chunk): Promise<LogitMatrix> => {
    if (chunk.reference !== undefined) return chunk.reference;
    const t0 = performance.now();
    const ids = chunk.batched.order.map((i) => chunk.samples[i]!.id);
    const known = ids.filter((id): id is number => id !== undefined);
    const cached = readCache(opts.cache, opts.fp32.sha256, known);
    // Rows (in batch order) the cache does not hold: computed in length-sorted batches of their own.
    const missing = ids.flatMap((id, r) => (id !== undefined && cached.has(id) ? [] : [r]));
    let computed: LogitMatrix | undefined;
    let computedOrder: number[] = [];
    if (missing.length > 0) {
      const subset = missing.map((r) => chunk.samples[chunk.batched.order[r]!]!);
      const enc = encodeSamples(opts.tokenizer, subset, batchSize, opts.maxLength);
      const session = await createOrtSession(opts.fp32.path, opts.session);
      try {
        computed = await collectLogits(session, enc.batches);
      } finally {
        await session.release();
      }
      computedOrder = enc.order.map((k) => missing[k]!);
      stats.reference.computed += missing.length;
    }
    const cols = computed?.cols ?? cached.values().next().value?.length ?? 0;
    const data = new Float32Array(ids.length * cols);
    for (const [r, id] of ids.entries()) {
      const row = id === undefined ? undefined : cached.get(id);
      if (row !== undefined) data.set(row.subarray(0, cols), r * cols);
    }
    if (computed !== undefined) {
      const fresh: { id: number; logits: Float32Array }[] = [];
      for (const [k, r] of computedOrder.entries()) {
        const row = computed.data.slice(k * cols, (k + 1) * cols);
        data.set(row, r * cols);
        const id = ids[r];
        if (id !== undefined) fresh.push({ id, logits: row });
      }
      try {
        if (opts.cache !== undefined && fresh.length > 0) opts.cache.put(opts.fp32.sha256, fresh);
      } catch {
        // A cache is an optimization: a locked or full store must not fail the validation.
      }
    }
    stats.reference.fromCache += ids.length - missing.length;
    const matrix: LogitMatrix = { data, rows: ids.length, cols };
    chunk.reference = matrix;
    chunk.margins = topTwoMargins(matrix);
    stats.reference.ms += performance.now() - t0;
    return matrix;
  };

  const validate = async (model: ModelProto, perSample: boolean): Promise<CandidateValidation> => {
    const t0 = performance.now();
    const refParts: LogitMatrix[] = [];
    const candParts: LogitMatrix[] = [];
    const labels: (number | undefined)[] = [];
    // Running tallies of what the gate counts, for the futility check after every batch.
    let seen = 0;
    let gateN = 0;
    let gateAgree = 0;
    let stopped: EarlyStop | undefined;
    const session = await createOrtSession(encodeModel(model), opts.session);
    try {
      for (const [k, chunk] of chunks.entries()) {
        const reference = await referenceOf(chunk);
        const enc = perSample ? chunk.single : chunk.batched;
        const refTop = argmaxRows(reference);
        const parts: Float32Array[] = [];
        let row = 0;
        for (const batch of enc.batches) {
          const out = await runBatch(session, batch);
          parts.push(out.data);
          const top = argmaxRows(out);
          for (let r = 0; r < out.rows; r++, row++) {
            const counted = ignoreMargin <= 0 || chunk.margins![row]! >= tieMargin;
            if (!counted) continue;
            gateN++;
            if (refTop[row] !== -1 && refTop[row] === top[r]) gateAgree++;
          }
          // Futility: even if every sample left agreed, the bound at the end would miss the gate.
          const left = n - seen - row;
          if (
            earlyStop &&
            opts.gate.decideOn !== "point" &&
            clopperPearsonLower(gateAgree + left, gateN + left, levels.final) < opts.gate.minAgreement
          ) {
            stopped = "failed";
            break;
          }
        }
        const cand = stack(parts, row, reference.cols);
        refParts.push(row === reference.rows ? reference : sliceRows(reference, row));
        candParts.push(cand);
        labels.push(...enc.labels.slice(0, row));
        seen += row;
        if (stopped !== undefined) break;
        // Passed already: the bound at this look clears the gate (accuracy bounds need every sample).
        if (
          k < chunks.length - 1 &&
          opts.gate.decideOn !== "point" &&
          opts.gate.maxAccuracyDrop === undefined &&
          gateN >= samplesToCertify(opts.gate.minAgreement, levels.interim) &&
          clopperPearsonLower(gateAgree, gateN, levels.interim) >= opts.gate.minAgreement
        ) {
          stopped = "passed";
          break;
        }
      }
    } finally {
      await session.release();
    }
    const metrics = compareLogits(concatRows(refParts), concatRows(candParts), labels, {
      confidence,
      ignoreMargin,
      // A pass at an earlier look was tested at the stricter interim level; anything else at the last look's.
      boundLevel: stopped === "passed" ? levels.interim : levels.final,
    });
    if (stopped !== undefined) {
      metrics.stopped = stopped;
      stats.earlyStops[stopped]++;
    }
    metrics.planned = n;
    const ms = performance.now() - t0;
    stats.candidateSamples += seen;
    stats.candidateMs += ms;
    return { metrics, samples: seen, ...(stopped !== undefined ? { stopped } : {}), ms };
  };

  return {
    looks,
    validate,
    summary: () => structuredClone(stats),
    get truncated() {
      return truncated;
    },
    lengths: chunks.flatMap((c) => c.batched.lengths),
  };
}

/** The cached rows of `ids`; none when there is no cache or it cannot be read (it is only an optimization). */
function readCache(
  cache: ReferenceLogitsCache | undefined,
  sha256: string,
  ids: readonly number[],
): Map<number, Float32Array> {
  if (cache === undefined || ids.length === 0) return new Map();
  try {
    return cache.get(sha256, ids);
  } catch {
    return new Map();
  }
}

/** Runs one batch and checks the output is float32 [batch, classes]. @throws INFERENCE_FAILED */
async function runBatch(session: InferenceSession, b: BatchEncoding): Promise<LogitMatrix> {
  const output = session.outputNames.includes("logits") ? "logits" : session.outputNames[0];
  if (output === undefined) throw new QuantdError("INFERENCE_FAILED", "model has no outputs");
  const out = await session.run(feedsForEncoding(session, b), [output]);
  const t = out[output];
  if (t === undefined || t.type !== "float32" || t.dims.length !== 2 || t.dims[0] !== b.batchSize) {
    throw new QuantdError(
      "INFERENCE_FAILED",
      `output ${output} should be float32 [batch, classes], got ${t?.type} [${t?.dims.join(", ")}]`,
    );
  }
  return { data: Float32Array.from(t.data as Float32Array), rows: t.dims[0]!, cols: t.dims[1]! };
}

function stack(parts: readonly Float32Array[], rows: number, cols: number): LogitMatrix {
  const data = new Float32Array(rows * cols);
  let at = 0;
  for (const p of parts) {
    data.set(p.subarray(0, Math.min(p.length, data.length - at)), at);
    at += p.length;
  }
  return { data, rows, cols };
}

function sliceRows(m: LogitMatrix, rows: number): LogitMatrix {
  return { data: m.data.slice(0, rows * m.cols), rows, cols: m.cols };
}

function concatRows(parts: readonly LogitMatrix[]): LogitMatrix {
  const cols = parts[0]?.cols ?? 0;
  const rows = parts.reduce((s, p) => s + p.rows, 0);
  return stack(
    parts.map((p) => p.data),
    rows,
    cols,
  );
}

/** Runs `session` over batches and stacks its logits into one matrix. @throws INFERENCE_FAILED */
export async function collectLogits(
  session: InferenceSession,
  batches: readonly BatchEncoding[],
): Promise<LogitMatrix> {
  const parts: LogitMatrix[] = [];
  for (const b of batches) parts.push(await runBatch(session, b));
  return concatRows(parts);
}
