/**
 * Validation of int8 candidates of models other than single-text classifiers
 * (pairs, token classification, multi-label, regression, embeddings): the
 * task's outputs of fp32 and of every candidate on the same held-out samples,
 * turned by `task-metrics.ts` into the figures the gate judges. It has the
 * shape and the economies of the classifier's validator (`validate.ts`), and
 * shares its helpers:
 *
 * - fp32 outputs are computed once per run, look by look as a candidate first
 *   needs them, and cached by sample id in the agent's store under a key of the
 *   fp32 model's SHA-256 and what shapes the outputs (task, output, pooling,
 *   normalization, sequence limit), so the next candidate and the next job reuse them;
 * - samples run in the same fixed pseudo-random order (hash of the text), and
 *   the gate is checked at the same looks: a candidate stops as failed as soon
 *   as even every trial left agreeing could not lift its bound over the gate,
 *   and as passed at an earlier look when its bound at the looks' stricter
 *   level clears the gate and the task's point checks (mean cosine, neighbour
 *   overlap, Pearson) pass on the samples run. Looks are planned on samples;
 *   a token's or a label decision's bound counts its own trials.
 *
 * Within a look, samples run in steps sorted by token length (unpadded
 * batches of equal lengths), and futility is checked after every step.
 * Regression's tolerance is a share of fp32's spread: the futility check takes
 * it from the looks computed so far, the verdict from the samples run.
 */
import { createHash } from "node:crypto";
import { isQuantdError, QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import type { ModelProto, ValueInfoProto } from "../onnx/types.ts";
import { DataType } from "../onnx/types.ts";
import type { ModelFiles } from "../runtime/model-files.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import { detectTask, type TaskOverride, type TaskSpec } from "../runtime/task.ts";
import { checkTaskInputs, TaskModel } from "../runtime/task-model.ts";
import type { Encoding, TextInput, Tokenizer } from "../runtime/tokenizer.ts";
import type { TensorElementType, TensorInfo } from "../runtime/types.ts";
import { DEFAULT_CONFIDENCE } from "./confidence.ts";
import { cannotPass, passesAtLook, type TrialTally } from "./early-stop.ts";
import { type GateMetrics, lookLevels, type ServingForms } from "./gate.ts";
import type { QuantSample } from "./samples.ts";
import { planLooks } from "./split.ts";
import {
  compareTaskOutputs,
  DEFAULT_TASK_THRESHOLDS,
  regressionTolerance,
  sampleTrials,
  TRIAL_UNIT,
  type TaskThresholds,
  type TrialRule,
  worseOfForms,
} from "./task-metrics.ts";
import {
  type CandidateValidation,
  type EarlyStop,
  hashOrder,
  readCache,
  recordValidation,
  VALIDATION_BATCH,
  type ValidationSummary,
  type Validator,
  type ValidatorOptions,
  writeCache,
} from "./validate.ts";

/** Samples a candidate runs between two futility checks (a few batches, sorted by length). */
const TASK_VALIDATION_STEP = 64;

/** ONNX element types by the names onnxruntime's sessions give them (what task detection reads and names). */
const ELEMENT_TYPES: ReadonlyMap<number, TensorElementType> = new Map([
  [DataType.FLOAT, "float32"],
  [DataType.FLOAT16, "float16"],
  [DataType.INT64, "int64"],
  [DataType.INT32, "int32"],
  [DataType.INT8, "int8"],
  [DataType.UINT8, "uint8"],
  [DataType.BOOL, "bool"],
]);

/**
 * The graph's outputs as a session would describe them. An output without a
 * declared shape (some converters drop it) is taken as `[batch, labels]`: the
 * classifier's validator checks the real shape on the first batch.
 */
function outputInfo(v: Pick<ValueInfoProto, "name" | "type">): TensorInfo {
  const t = v.type?.tensorType;
  const declared = t?.shape?.dim;
  const dims =
    declared === undefined ? ["batch", "labels"] : declared.map((d) => d.dimValue ?? d.dimParam ?? "?");
  return { name: v.name, type: ELEMENT_TYPES.get(t?.elemType ?? DataType.UNDEFINED) ?? "other", dims };
}

/** A model's graph outputs: a decoded model's, or its outline's (onnx/graph-outline.ts). */
export type ModelOutputs = { graph: { output: readonly Pick<ValueInfoProto, "name" | "type">[] } };

/**
 * The task of an fp32 model about to be quantized (or of a served one), from its graph outputs and files.
 *
 * @throws as {@link detectTask}
 */
export function taskOfModel(model: ModelOutputs, files: ModelFiles, override: TaskOverride = {}): TaskSpec {
  const taskFiles = {
    model: files.model,
    tokenizerDir: files.tokenizerDir,
    ...(files.configPath === undefined ? {} : { configPath: files.configPath }),
  };
  return detectTask(model.graph.output.map(outputInfo), taskFiles, override);
}

/** A sample as the task takes it: a text, or a pair when the sample has a second text. */
function sampleInput(s: QuantSample): TextInput {
  return s.pair === undefined ? s.text : [s.text, s.pair];
}

/**
 * Refuses samples the served model would refuse (a pair for a single-text
 * classifier, one text for a pair classifier) before anything is calibrated
 * on them: a gate measured on inputs the model never gets proves nothing.
 *
 * @throws DATA_MISMATCH naming the first such sample's origin (`calib.tsv:12`, `store#42`)
 */
export function checkSampleInputs(task: TaskSpec, samples: readonly QuantSample[], model: string): void {
  if (samples.length === 0) return;
  try {
    checkTaskInputs(task, samples.map(sampleInput), model);
  } catch (err) {
    if (!isQuantdError(err, "DATA_MISMATCH")) throw err;
    const index = err.details?.["index"];
    if (typeof index !== "number") throw err;
    const origin = samples[index]?.origin ?? String(index);
    // checkTaskInputs numbers inputs; a sample is known by its file and line (or store id).
    throw new QuantdError("DATA_MISMATCH", err.message.replace(`input ${index} `, `sample ${origin} `), {
      details: { ...err.details, origin },
    });
  }
}

/**
 * The cache key of a task's fp32 outputs: the model's SHA-256 alone does not
 * say how its outputs became rows (which output, pooled how, normalized or
 * not, cut at which length), so those are hashed in with it.
 */
export function referenceKey(fp32Sha256: string, task: TaskSpec, maxLength: number): string {
  const shape = [task.kind, task.output, task.pooling ?? "", task.normalize === true, maxLength];
  return createHash("sha256")
    .update(`${fp32Sha256}\n${JSON.stringify(shape)}`)
    .digest("hex");
}

/**
 * Trials a sample holds, counted from its encoding before anything runs:
 * its non-special tokens (token classification), its labels (multi-label), else one.
 */
function trialsIn(task: TaskSpec, encoding: Encoding, tokenizer: Tokenizer): number {
  if (task.kind === "multi-label") return Math.max(1, task.labels.length);
  if (task.kind !== "token-classification") return 1;
  const s = tokenizer.specialIds;
  return encoding.inputIds.filter((id) => id !== s.cls && id !== s.sep && id !== s.pad).length;
}

/** Options of {@link createTaskValidator}. */
export interface TaskValidatorOptions extends ValidatorOptions {
  task: TaskSpec;
  thresholds?: Partial<TaskThresholds>;
}

/** One look's worth of samples, sorted by token length, with its fp32 outputs once computed. */
interface Chunk {
  samples: QuantSample[];
  inputs: TextInput[];
  /** Trials of each sample ({@link trialsIn}). */
  trials: number[];
  /** Token count of each sample. */
  lengths: number[];
  truncated: number;
  reference?: Float32Array[];
}

/** What one candidate's run has gathered so far, in run order. */
interface Run {
  reference: Float32Array[];
  candidate: Float32Array[];
  labels: (number | undefined)[];
  tally: TrialTally;
  /** Trials of the samples not yet run. */
  left: number;
  /** Dynamic int8: each sample also runs alone, and each form's flips are counted here. */
  dynamic: boolean;
  forms?: ServingForms;
}

/** Encodes the samples of each look (the looks' prefixes of the hash order), each sorted by length. */
function chunksOf(opts: TaskValidatorOptions, looks: readonly number[]): Chunk[] {
  const ordered = hashOrder(opts.samples).map((i) => opts.samples[i]!);
  const chunks: Chunk[] = [];
  for (let start = 0, k = 0; k < looks.length; start = looks[k]!, k++) {
    const encoded = ordered.slice(start, looks[k]).map((s) => ({
      s,
      e: opts.tokenizer.encode(s.text, s.pair, { maxLength: opts.maxLength }),
    }));
    encoded.sort((a, b) => a.e.inputIds.length - b.e.inputIds.length);
    chunks.push({
      samples: encoded.map((x) => x.s),
      inputs: encoded.map((x) => sampleInput(x.s)),
      trials: encoded.map((x) => trialsIn(opts.task, x.e, opts.tokenizer)),
      lengths: encoded.map((x) => x.e.inputIds.length),
      truncated: encoded.filter((x) => x.e.truncated).length,
    });
  }
  return chunks;
}

/**
 * A validator of `opts.task` over `opts.samples` (see the module comment).
 *
 * @throws DATA_MISMATCH (when validating) for samples the task cannot take, e.g. single texts for a pair classifier
 * @throws INFERENCE_FAILED / MODEL_LOAD_FAILED from onnxruntime (when validating)
 */
export function createTaskValidator(opts: TaskValidatorOptions): Validator {
  return new TaskValidator(opts);
}

class TaskValidator implements Validator {
  readonly looks: readonly number[];
  readonly truncated: number;
  readonly lengths: readonly number[];
  readonly trials: { count: number; unit: string };
  readonly #opts: TaskValidatorOptions;
  readonly #task: TaskSpec;
  readonly #confidence: number;
  readonly #batchSize: number;
  readonly #earlyStop: boolean;
  readonly #levels: { interim: number; final: number };
  readonly #thresholds: TaskThresholds;
  readonly #chunks: Chunk[];
  /** Trials of the whole set. */
  readonly #planned: number;
  /** Cache key of the fp32 outputs ({@link referenceKey}). */
  readonly #key: string;
  readonly #stats: ValidationSummary;

  constructor(opts: TaskValidatorOptions) {
    this.#opts = opts;
    this.#task = opts.task;
    this.#confidence = opts.gate.confidence ?? DEFAULT_CONFIDENCE;
    this.#batchSize = opts.batchSize ?? VALIDATION_BATCH;
    this.#earlyStop = opts.earlyStop ?? true;
    this.looks = planLooks(opts.samples.length, opts.gate, this.#earlyStop);
    this.#levels = lookLevels(this.#confidence, this.looks.length);
    this.#thresholds = { ...DEFAULT_TASK_THRESHOLDS, ...opts.thresholds };
    this.#chunks = chunksOf(opts, this.looks);
    this.#planned = this.#chunks.reduce((s, c) => s + c.trials.reduce((a, b) => a + b, 0), 0);
    this.#key = referenceKey(opts.fp32.sha256, opts.task, opts.maxLength);
    this.truncated = this.#chunks.reduce((s, c) => s + c.truncated, 0);
    this.lengths = this.#chunks.flatMap((c) => c.lengths);
    this.trials = { count: this.#planned, unit: TRIAL_UNIT[opts.task.kind] };
    this.#stats = {
      samples: opts.samples.length,
      batchSize: this.#batchSize,
      looks: [...this.looks],
      lookLevels: this.#levels,
      reference: { fromCache: 0, computed: 0, ms: 0 },
      candidateSamples: 0,
      candidateMs: 0,
      earlyStops: { passed: 0, failed: 0 },
    };
  }

  summary(): ValidationSummary {
    return structuredClone(this.#stats);
  }

  /**
   * Validates one candidate. Every candidate runs in batches of one token
   * length, unpadded, as serving forms them (`TaskModel.outputs`), so a static
   * one gives the outputs it has padded or not; a dynamic one
   * (`dynamicRanges`: ranges taken per batch) also runs each sample alone, as
   * an idle server does, and a trial agrees only when it agrees in both forms
   * (one trial, one bound for both: see `validate.ts`).
   */
  async validate(model: ModelProto, dynamicRanges: boolean): Promise<CandidateValidation> {
    const t0 = performance.now();
    const run: Run = {
      reference: [],
      candidate: [],
      labels: [],
      tally: { n: 0, agree: 0 },
      left: this.#planned,
      dynamic: dynamicRanges,
    };
    let stopped: EarlyStop | undefined;
    let metrics: GateMetrics | undefined;
    const session = await createOrtSession(encodeModel(model), this.#opts.session);
    try {
      const runner = new TaskModel("the int8 candidate", session, this.#opts.tokenizer, this.#task);
      for (let k = 0; k < this.#chunks.length && stopped === undefined; k++) {
        stopped = await this.#runChunk(runner, k, run);
        if (stopped === undefined && this.#earlyStop && k < this.#chunks.length - 1) {
          metrics = this.#passedAt(run);
          if (metrics !== undefined) stopped = "passed";
        }
      }
    } finally {
      await session.release();
    }
    metrics ??= this.#metricsOf(run, this.#levels.final);
    if (run.forms !== undefined) metrics.servingForms = run.forms;
    return recordValidation(this.#stats, metrics, {
      planned: this.#planned,
      samples: run.reference.length,
      stopped,
      ms: performance.now() - t0,
    });
  }

  /** Runs one chunk on the candidate, step by step; `failed` as soon as it can no longer pass. */
  async #runChunk(runner: TaskModel, k: number, run: Run): Promise<EarlyStop | undefined> {
    const chunk = this.#chunks[k]!;
    const reference = await this.#referenceOf(chunk);
    const rule = this.#ruleFor(k);
    const batchSize = this.#batchSize;
    for (let at = 0; at < chunk.inputs.length; at += TASK_VALIDATION_STEP) {
      const step = chunk.inputs.slice(at, at + TASK_VALIDATION_STEP);
      const out = await runner.outputs(step, { maxLength: this.#opts.maxLength, batchSize });
      const rows = run.dynamic
        ? await this.#withAlone(
            runner,
            step,
            { batched: out.data, reference: reference.slice(at), rule },
            run,
          )
        : out.data;
      for (const [j, row] of rows.entries()) {
        const i = at + j;
        const trials = sampleTrials(this.#task, reference[i]!, row, rule);
        run.reference.push(reference[i]!);
        run.candidate.push(row);
        run.labels.push(chunk.samples[i]!.label);
        run.tally.n += trials.n;
        run.tally.agree += trials.agree;
        run.left -= chunk.trials[i]!;
      }
      if (this.#earlyStop && cannotPass(this.#opts.gate, run.tally, run.left, this.#levels.final)) {
        return "failed";
      }
    }
    return undefined;
  }

  /**
   * A dynamic candidate's step run again one sample at a time: each sample's
   * flips counted per form, and the rows the gate judges (`worseOfForms`).
   */
  async #withAlone(
    runner: TaskModel,
    step: readonly TextInput[],
    forms: { batched: Float32Array[]; reference: Float32Array[]; rule: TrialRule },
    run: Run,
  ): Promise<Float32Array[]> {
    const alone = (await runner.outputs(step, { maxLength: this.#opts.maxLength, batchSize: 1 })).data;
    this.#stats.aloneSamples = (this.#stats.aloneSamples ?? 0) + step.length;
    run.forms ??= { batchedFlips: 0, aloneFlips: 0 };
    const flips = run.forms;
    return forms.batched.map((batched, j) => {
      const reference = forms.reference[j]!;
      const differs = (row: Float32Array): boolean => {
        const t = sampleTrials(this.#task, reference, row, forms.rule);
        return t.agree < t.n;
      };
      if (differs(batched)) flips.batchedFlips++;
      if (differs(alone[j]!)) flips.aloneFlips++;
      return worseOfForms(this.#task, reference, { batched, alone: alone[j]! });
    });
  }

  /** The judge of one sample's trials, with regression's tolerance from the fp32 outputs computed so far. */
  #ruleFor(k: number): TrialRule {
    if (this.#task.kind !== "regression") return { thresholds: this.#thresholds, tolerance: 0 };
    const known = this.#chunks.slice(0, k + 1).flatMap((c) => c.reference ?? []);
    return { thresholds: this.#thresholds, tolerance: regressionTolerance(known, this.#thresholds) };
  }

  /** The task's metrics of what a run compared, with the bound at `level`. */
  #metricsOf(run: Run, level: number): GateMetrics {
    return compareTaskOutputs(
      this.#task,
      { rows: run.reference.length, data: run.reference },
      { rows: run.candidate.length, data: run.candidate },
      { confidence: this.#confidence, boundLevel: level, labels: run.labels, thresholds: this.#thresholds },
    );
  }

  /** Passed at an earlier look: the bound at the interim level clears the gate, and so do the task's checks. */
  #passedAt(run: Run): GateMetrics | undefined {
    const interim = this.#levels.interim;
    if (!passesAtLook(this.#opts.gate, run.tally, interim)) return undefined;
    const metrics = this.#metricsOf(run, interim);
    const seen = { n: metrics.gateN, agree: metrics.gateAgreements };
    const checks = metrics.task?.checks ?? [];
    return passesAtLook(this.#opts.gate, seen, interim) && checks.every((c) => c.passed)
      ? metrics
      : undefined;
  }

  /** fp32 outputs of a chunk: cached rows where the store has them, the rest computed and stored. */
  async #referenceOf(chunk: Chunk): Promise<Float32Array[]> {
    if (chunk.reference !== undefined) return chunk.reference;
    const t0 = performance.now();
    const rows = this.#cachedRows(chunk);
    const missing = rows.flatMap((r, i) => (r === undefined ? [i] : []));
    if (missing.length > 0) {
      const computed = await this.#fp32Outputs(missing.map((i) => chunk.inputs[i]!));
      for (const [k, i] of missing.entries()) rows[i] = computed[k]!;
      const fresh = missing.flatMap((i) => {
        const id = chunk.samples[i]!.id;
        return id === undefined ? [] : [{ id, logits: rows[i]! }];
      });
      writeCache(this.#opts.cache, this.#key, fresh);
    }
    const stats = this.#stats.reference;
    stats.computed += missing.length;
    stats.fromCache += rows.length - missing.length;
    stats.ms += performance.now() - t0;
    chunk.reference = rows as Float32Array[];
    return chunk.reference;
  }

  /** The chunk's rows the cache holds, in chunk order (undefined where it holds none, or one that does not fit). */
  #cachedRows(chunk: Chunk): (Float32Array | undefined)[] {
    const ids = chunk.samples.flatMap((s) => (s.id === undefined ? [] : [s.id]));
    const cached = readCache(this.#opts.cache, this.#key, ids);
    return chunk.samples.map((s, i) => {
      const row = s.id === undefined ? undefined : cached.get(s.id);
      return row !== undefined && this.#fits(chunk, i, row) ? row : undefined;
    });
  }

  /** A cached row fits when it has the length this sample's output has (a stale or damaged row does not). */
  #fits(chunk: Chunk, i: number, row: Float32Array): boolean {
    const labels = this.#task.labels.length;
    if (this.#task.kind === "embedding" || labels === 0) return row.length > 0;
    return row.length === (this.#task.kind === "token-classification" ? chunk.trials[i]! * labels : labels);
  }

  /** fp32's task outputs of `inputs`, on a session opened for them. */
  async #fp32Outputs(inputs: readonly TextInput[]): Promise<Float32Array[]> {
    const session = await createOrtSession(this.#opts.fp32.path, this.#opts.session);
    try {
      const runner = new TaskModel(this.#opts.fp32.path, session, this.#opts.tokenizer, this.#task);
      const out = await runner.outputs(inputs, {
        maxLength: this.#opts.maxLength,
        batchSize: this.#batchSize,
      });
      return out.data;
    } finally {
      await session.release();
    }
  }
}
