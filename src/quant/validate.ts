/**
 * Validation of int8 candidates against fp32 at scale: thousands of held-out
 * samples for several candidates, on a board.
 *
 * - Batches with length bucketing, as serving runs them: samples sorted by
 *   token length, so a batch pads little. Static int8 and fp32 give the same
 *   logits padded or not (padding is masked, scales are fixed).
 * - Dynamic int8 takes each activation's range over the whole batch tensor, so
 *   a row's logits depend on its batch mates, and serving runs a sample in
 *   two forms: in a micro-batch of up to {@link VALIDATION_BATCH} (the agent's
 *   default `batching.maxBatch`) samples of one token length, unpadded
 *   (`planBatches(…, "unpadded")`), under load, and alone when idle, the
 *   common case on a board. Neither form bounds the other: a batch's range
 *   contains each row's own, so a row in a batch sits on a coarser grid, but
 *   rounding on a finer grid moves a near-tie as readily (measured: rows that
 *   flip alone and not in their batch, and the reverse). So a dynamic
 *   candidate runs each sample in its serving batch and alone, and a sample
 *   agrees only when it agrees in both: one trial per sample, whose bound
 *   lower-bounds both forms' agreement at once at the stated confidence (two
 *   separate bounds would each need half the error), so the looks below
 *   apply unchanged. The metrics keep each form's flips (`servingForms`);
 *   their logits are those of the form that flipped, else of the one farther
 *   from fp32. A sample alone in its batch runs once. `bench/gate.ts`
 *   cross-checks the bound so gated against each form's agreement.
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
import { type BatchEncoding, planBatches, type Tokenizer } from "../runtime/tokenizer.ts";
import type { InferenceSession, SessionOptions } from "../runtime/types.ts";
import { DEFAULT_CONFIDENCE } from "./confidence.ts";
import { cannotPass, passesAtLook } from "./early-stop.ts";
import {
  argmaxRows,
  compareLogits,
  DEFAULT_NEAR_TIE_MARGIN,
  type GateMetrics,
  type GateSpec,
  type LogitMatrix,
  lookLevels,
  type ServingForms,
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
 * (longest-first, special tokens kept) and counted. `"unpadded"` batching puts
 * only samples of one token length together, as serving does; rows come in
 * the same order either way (by length, then by index).
 */
export function encodeSamples(
  tokenizer: Tokenizer,
  samples: readonly QuantSample[],
  batchSize: number,
  maxLength: number,
  batching: "sorted" | "unpadded" = "sorted",
): EncodedSamples {
  const encoded = samples.map((s) => tokenizer.encode(s.text, s.pair, { maxLength }));
  const out: EncodedSamples = { batches: [], truncated: 0, labels: [], order: [], lengths: [] };
  for (const rows of planBatches(
    encoded.map((e) => e.inputIds.length),
    batchSize,
    batching,
  )) {
    out.batches.push(tokenizer.pad(rows.map((i) => encoded[i]!)));
    for (const i of rows) {
      out.labels.push(samples[i]!.label);
      out.order.push(i);
      out.lengths.push(encoded[i]!.inputIds.length);
      if (encoded[i]!.truncated) out.truncated++;
    }
  }
  return out;
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
  /** Most samples per batch: of similar length (fp32, static), of one length (dynamic). */
  batchSize: number;
  /** Prefix sizes at which the gate was checked (the last is the whole set). */
  looks: number[];
  /** Level of the bound at the earlier looks and at the last (see `lookLevels`). */
  lookLevels: { interim: number; final: number };
  reference: { fromCache: number; computed: number; ms: number };
  /** Sample-runs of every candidate together. */
  candidateSamples: number;
  candidateMs: number;
  /**
   * Sample-runs of dynamic candidates alone, on top of their serving batches
   * (a sample alone in its batch runs once; in `candidateMs`). Absent: none.
   */
  aloneSamples?: number;
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
  /**
   * Validates one candidate; `dynamicRanges` (dynamic int8, whose ranges are
   * taken per batch at run time) runs it as serving does, in batches of one
   * token length and alone, and a sample agrees only when it agrees in both
   * (see the module comment).
   */
  validate(model: ModelProto, dynamicRanges: boolean): Promise<CandidateValidation>;
  /** What was done so far. */
  summary(): ValidationSummary;
  /** Samples truncated to the model's longest sequence. */
  readonly truncated: number;
  /** Token count of every validation sample. */
  readonly lengths: readonly number[];
  /**
   * Trials the whole set holds, all the gate's bound can count: the samples,
   * or another task's tokens or label decisions (`task-validate.ts`).
   */
  readonly trials: { count: number; unit: string };
}

/** The order samples are validated in: by SHA-1 of the text, a fixed shuffle any file order survives. */
export function hashOrder(samples: readonly QuantSample[]): number[] {
  const key = samples.map((s) => createHash("sha1").update(s.text).digest("hex"));
  return samples.map((_, i) => i).sort((a, b) => (key[a]! < key[b]! ? -1 : key[a]! > key[b]! ? 1 : a - b));
}

/** One look's worth of samples, encoded both ways, with its fp32 logits once computed. */
interface Chunk {
  samples: QuantSample[];
  /** Length-sorted batches (fp32 and static candidates). */
  batched: EncodedSamples;
  /** Batches of one token length each, as serving forms them (dynamic candidates); rows in `batched`'s order. */
  unpadded: EncodedSamples;
  /** One sample per batch, as an idle server runs it (dynamic candidates, encoded when first needed); same order. */
  alone?: EncodedSamples;
  reference?: LogitMatrix;
  margins?: Float64Array;
}

/** A validator's fixed plan (looks, levels, encoded chunks) and its running figures. */
interface ValidationPlan {
  opts: ValidatorOptions;
  n: number;
  batchSize: number;
  earlyStop: boolean;
  confidence: number;
  levels: { interim: number; final: number };
  ignoreMargin: number;
  /** fp32 top-2 margin under which a sample is a near-tie. */
  tieMargin: number;
  chunks: Chunk[];
  stats: ValidationSummary;
}

/** What the gate has counted of one candidate so far, and the rows it ran. */
interface Tally {
  /** Samples run. */
  seen: number;
  /** Samples the gate counts (near-ties left out under `ignoreMargin`), and those that agreed. */
  gateN: number;
  gateAgree: number;
  refParts: LogitMatrix[];
  candParts: LogitMatrix[];
  labels: (number | undefined)[];
  /** Dynamic candidates: flips in each serving form so far. */
  forms?: ServingForms;
}

/**
 * A validator over `opts.samples`.
 *
 * @throws INFERENCE_FAILED / MODEL_LOAD_FAILED from onnxruntime (when validating)
 */
export function createValidator(opts: ValidatorOptions): Validator {
  const plan = planValidation(opts);
  return {
    looks: plan.stats.looks,
    validate: (model, dynamicRanges) => validateCandidate(plan, model, dynamicRanges),
    summary: () => structuredClone(plan.stats),
    truncated: plan.chunks.reduce((sum, c) => sum + c.batched.truncated, 0),
    lengths: plan.chunks.flatMap((c) => c.batched.lengths),
    trials: { count: plan.n, unit: "sample" },
  };
}

/** The looks and their levels, and the samples in hash order cut into one chunk per look, encoded both ways. */
function planValidation(opts: ValidatorOptions): ValidationPlan {
  const confidence = opts.gate.confidence ?? DEFAULT_CONFIDENCE;
  const batchSize = opts.batchSize ?? VALIDATION_BATCH;
  const n = opts.samples.length;
  const earlyStop = opts.earlyStop ?? true;
  const looks = planLooks(n, opts.gate, earlyStop);
  const levels = lookLevels(confidence, looks.length);
  const ordered = hashOrder(opts.samples).map((i) => opts.samples[i]!);
  const chunks: Chunk[] = [];
  for (let start = 0, k = 0; k < looks.length; start = looks[k]!, k++) {
    const samples = ordered.slice(start, looks[k]);
    chunks.push({
      samples,
      batched: encodeSamples(opts.tokenizer, samples, batchSize, opts.maxLength),
      unpadded: encodeSamples(opts.tokenizer, samples, batchSize, opts.maxLength, "unpadded"),
    });
  }
  const ignoreMargin = opts.gate.ignoreMargin ?? 0;
  return {
    opts,
    n,
    batchSize,
    earlyStop,
    confidence,
    levels,
    ignoreMargin,
    tieMargin: ignoreMargin > 0 ? ignoreMargin : DEFAULT_NEAR_TIE_MARGIN,
    chunks,
    stats: {
      samples: n,
      batchSize,
      looks,
      lookLevels: levels,
      reference: { fromCache: 0, computed: 0, ms: 0 },
      candidateSamples: 0,
      candidateMs: 0,
      earlyStops: { passed: 0, failed: 0 },
    },
  };
}

/** fp32 logits of a chunk (batch order): cached rows where the store has them, the rest computed and stored. */
async function referenceOf(plan: ValidationPlan, chunk: Chunk): Promise<LogitMatrix> {
  if (chunk.reference !== undefined) return chunk.reference;
  const t0 = performance.now();
  const { opts, stats } = plan;
  const ids = chunk.batched.order.map((i) => chunk.samples[i]!.id);
  const cached = readCache(
    opts.cache,
    opts.fp32.sha256,
    ids.filter((id): id is number => id !== undefined),
  );
  // Rows (in batch order) the cache does not hold: computed in length-sorted batches of their own.
  const missing = ids.flatMap((id, r) => (id !== undefined && cached.has(id) ? [] : [r]));
  const computed = missing.length > 0 ? await computeReference(plan, chunk, missing) : undefined;
  const cols = computed?.logits.cols ?? cached.values().next().value?.length ?? 0;
  const data = new Float32Array(ids.length * cols);
  for (const [r, id] of ids.entries()) {
    const row = id === undefined ? undefined : cached.get(id);
    if (row !== undefined) data.set(row.subarray(0, cols), r * cols);
  }
  if (computed !== undefined) {
    const fresh: { id: number; logits: Float32Array }[] = [];
    for (const [k, r] of computed.rows.entries()) {
      const row = computed.logits.data.slice(k * cols, (k + 1) * cols);
      data.set(row, r * cols);
      const id = ids[r];
      if (id !== undefined) fresh.push({ id, logits: row });
    }
    writeCache(opts.cache, opts.fp32.sha256, fresh);
  }
  stats.reference.computed += missing.length;
  stats.reference.fromCache += ids.length - missing.length;
  const matrix: LogitMatrix = { data, rows: ids.length, cols };
  chunk.reference = matrix;
  chunk.margins = topTwoMargins(matrix);
  stats.reference.ms += performance.now() - t0;
  return matrix;
}

/** fp32 logits of the `missing` rows of a chunk (batch-order row numbers), with the row each logit row belongs to. */
async function computeReference(
  plan: ValidationPlan,
  chunk: Chunk,
  missing: readonly number[],
): Promise<{ logits: LogitMatrix; rows: number[] }> {
  const { opts } = plan;
  const subset = missing.map((r) => chunk.samples[chunk.batched.order[r]!]!);
  const enc = encodeSamples(opts.tokenizer, subset, plan.batchSize, opts.maxLength);
  const session = await createOrtSession(opts.fp32.path, opts.session);
  try {
    return { logits: await collectLogits(session, enc.batches), rows: enc.order.map((k) => missing[k]!) };
  } finally {
    await session.release();
  }
}

/**
 * Validates one candidate chunk by chunk (look by look), stopping early when
 * the verdict is certain (see the module comment).
 */
async function validateCandidate(
  plan: ValidationPlan,
  model: ModelProto,
  dynamicRanges: boolean,
): Promise<CandidateValidation> {
  const t0 = performance.now();
  const tally: Tally = { seen: 0, gateN: 0, gateAgree: 0, refParts: [], candParts: [], labels: [] };
  let stopped: EarlyStop | undefined;
  const session = await createOrtSession(encodeModel(model), plan.opts.session);
  try {
    for (const [k, chunk] of plan.chunks.entries()) {
      stopped = await runChunk(plan, session, chunk, dynamicRanges, tally);
      if (stopped === undefined && k < plan.chunks.length - 1 && passedAtLook(plan, tally))
        stopped = "passed";
      if (stopped !== undefined) break;
    }
  } finally {
    await session.release();
  }
  const metrics = compareLogits(concatRows(tally.refParts), concatRows(tally.candParts), tally.labels, {
    confidence: plan.confidence,
    ignoreMargin: plan.ignoreMargin,
    // A pass at an earlier look was tested at the stricter interim level; anything else at the last look's.
    boundLevel: stopped === "passed" ? plan.levels.interim : plan.levels.final,
  });
  if (tally.forms !== undefined) metrics.servingForms = tally.forms;
  return recordValidation(plan.stats, metrics, {
    planned: plan.n,
    samples: tally.seen,
    stopped,
    ms: performance.now() - t0,
  });
}

/**
 * A candidate's validation as every validator returns it (this one and `task-validate.ts`'s): its
 * metrics marked with where it stopped and what was planned, and counted in the run's summary.
 */
export function recordValidation(
  stats: ValidationSummary,
  metrics: GateMetrics,
  run: { planned: number; samples: number; stopped: EarlyStop | undefined; ms: number },
): CandidateValidation {
  const { planned, samples, stopped, ms } = run;
  if (stopped !== undefined) {
    metrics.stopped = stopped;
    stats.earlyStops[stopped]++;
  }
  metrics.planned = planned;
  stats.candidateSamples += samples;
  stats.candidateMs += ms;
  return { metrics, samples, ...(stopped !== undefined ? { stopped } : {}), ms };
}

/**
 * Runs a candidate over one chunk, batch by batch, counting what the gate
 * counts; `"failed"` as soon as even every sample left agreeing could not lift
 * the bound over the gate (futility).
 */
async function runChunk(
  plan: ValidationPlan,
  session: InferenceSession,
  chunk: Chunk,
  dynamicRanges: boolean,
  tally: Tally,
): Promise<EarlyStop | undefined> {
  const { gate } = plan.opts;
  const reference = await referenceOf(plan, chunk);
  const enc = dynamicRanges ? chunk.unpadded : chunk.batched;
  const refTop = argmaxRows(reference);
  const parts: Float32Array[] = [];
  let row = 0;
  let stopped: EarlyStop | undefined;
  for (const batch of enc.batches) {
    let out = await runBatch(session, batch);
    if (dynamicRanges)
      out = await withAloneForm(plan, session, chunk, { first: row, batched: out, refTop }, tally);
    parts.push(out.data);
    const top = argmaxRows(out);
    for (let r = 0; r < out.rows; r++, row++) {
      if (plan.ignoreMargin > 0 && chunk.margins![row]! < plan.tieMargin) continue;
      tally.gateN++;
      if (refTop[row] !== -1 && refTop[row] === top[r]) tally.gateAgree++;
    }
    const left = plan.n - tally.seen - row;
    if (
      plan.earlyStop &&
      cannotPass(gate, { n: tally.gateN, agree: tally.gateAgree }, left, plan.levels.final)
    ) {
      stopped = "failed";
      break;
    }
  }
  tally.candParts.push(stack(parts, row, reference.cols));
  tally.refParts.push(row === reference.rows ? reference : sliceRows(reference, row));
  tally.labels.push(...enc.labels.slice(0, row));
  tally.seen += row;
  return stopped;
}

/**
 * A dynamic candidate's serving batch (chunk rows from `first` on) run again
 * one sample at a time: each row's flips counted per form, and the logits the
 * gate judges the row by: the form that flipped, else the one farther from
 * fp32 (so a row agrees only when it agrees in both). A batch of one is
 * already its alone form.
 */
async function withAloneForm(
  plan: ValidationPlan,
  session: InferenceSession,
  chunk: Chunk,
  run: { first: number; batched: LogitMatrix; refTop: Int32Array },
  tally: Tally,
): Promise<LogitMatrix> {
  const { first, batched, refTop } = run;
  const alone = batched.rows === 1 ? batched : await runAlone(plan, session, chunk, first, batched.rows);
  const reference = chunk.reference!;
  const forms = { batched: argmaxRows(batched), alone: argmaxRows(alone) };
  const { cols } = batched;
  const data = new Float32Array(batched.data.length);
  tally.forms ??= { batchedFlips: 0, aloneFlips: 0 };
  const flips = tally.forms;
  for (let r = 0; r < batched.rows; r++) {
    const want = refTop[first + r]!;
    const batchedAgrees = want !== -1 && forms.batched[r] === want;
    const aloneAgrees = want !== -1 && forms.alone[r] === want;
    if (!batchedAgrees) flips.batchedFlips++;
    if (!aloneAgrees) flips.aloneFlips++;
    const pick = !batchedAgrees
      ? batched
      : !aloneAgrees
        ? alone
        : rowError(reference, first + r, alone, r) > rowError(reference, first + r, batched, r)
          ? alone
          : batched;
    data.set(pick.data.subarray(r * cols, (r + 1) * cols), r * cols);
  }
  return { data, rows: batched.rows, cols };
}

/** Rows `first`… of a chunk, each run alone (encoded once per chunk when first needed). */
async function runAlone(
  plan: ValidationPlan,
  session: InferenceSession,
  chunk: Chunk,
  first: number,
  rows: number,
): Promise<LogitMatrix> {
  const { tokenizer, maxLength } = plan.opts;
  chunk.alone ??= encodeSamples(tokenizer, chunk.samples, 1, maxLength, "unpadded");
  plan.stats.aloneSamples = (plan.stats.aloneSamples ?? 0) + rows;
  return collectLogits(session, chunk.alone.batches.slice(first, first + rows));
}

/** Σ |candidate − reference| over one row (`candRow` of `candidate`, `refRow` of `reference`). */
function rowError(reference: LogitMatrix, refRow: number, candidate: LogitMatrix, candRow: number): number {
  let sum = 0;
  for (let c = 0; c < reference.cols; c++) {
    sum += Math.abs(
      candidate.data[candRow * candidate.cols + c]! - reference.data[refRow * reference.cols + c]!,
    );
  }
  return sum;
}

/** Passed already: the bound at this look clears the gate (accuracy bounds need every sample). */
function passedAtLook(plan: ValidationPlan, tally: Tally): boolean {
  return passesAtLook(plan.opts.gate, { n: tally.gateN, agree: tally.gateAgree }, plan.levels.interim);
}

/** The cached rows of `ids`; none when there is no cache or it cannot be read (it is only an optimization). */
export function readCache(
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

/** Stores fresh rows; a locked or full store must not fail the validation (a cache is an optimization). */
export function writeCache(
  cache: ReferenceLogitsCache | undefined,
  sha256: string,
  rows: readonly { id: number; logits: Float32Array }[],
): void {
  if (cache === undefined || rows.length === 0) return;
  try {
    cache.put(sha256, rows);
  } catch {
    // see above
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
