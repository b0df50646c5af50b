/**
 * Any task a BERT-family model is exported for, run end to end: the task is
 * detected from the model and its files (see `task.ts`), inputs are checked
 * against it (a pair where a pair classifier expects one, a single text for
 * token classification and embeddings), and outputs become results the user
 * reads: a label (single text or pair), every label's sigmoid and decision
 * (multi-label), a raw value (regression), entities with character offsets
 * (token classification), a pooled and optionally normalized vector
 * (embeddings).
 */
import { QuantdError } from "../errors.ts";
import {
  type Classification,
  classificationOfRow,
  feedsForEncoding,
  type LoadClassifierOptions,
  openModelParts,
  validateInput,
} from "./classifier.ts";
import { type Aggregation, type Entity, groupEntities, type TokenInfo } from "./entities.ts";
import { l2Normalize, poolRow, sigmoid } from "./pooling.ts";
import {
  detectTask,
  inputsOf,
  pairOnTextHint,
  resolveThresholds,
  type TaskOverride,
  type TaskSpec,
  taskModelNoun,
} from "./task.ts";
import type { TokenSpan } from "./token-align.ts";
import {
  type BatchEncoding,
  type EncodeOptions,
  type Encoding,
  planBatches,
  type TextInput,
  type Tokenizer,
} from "./tokenizer.ts";
import type { InferenceSession } from "./types.ts";

/** The task output tensor of a batch (a copy of onnxruntime's). */
export interface RawOutput {
  data: Float32Array;
  dims: readonly number[];
}

/** Options for {@link loadTaskModel}. */
export interface LoadTaskModelOptions extends LoadClassifierOptions {
  /** What the user set over detection. */
  task?: TaskOverride;
}

/** Options for {@link TaskModel.infer}. */
export interface InferOptions extends EncodeOptions {
  /** Most inputs per inference call. @defaultValue 32 */
  batchSize?: number;
  /** Token classification: how tokens become entities. @defaultValue "simple" */
  aggregation?: Aggregation;
}

/** One label of a multi-label result. */
export interface LabelDecision {
  label: string;
  /** Sigmoid of the label's logit. */
  score: number;
  /** `score` is at or above the label's threshold. */
  on: boolean;
}

/** One token of a token-classification result. */
export interface TokenLabel {
  token: number;
  start: number;
  end: number;
  label: string;
  score: number;
}

/** The result for one input, by task. */
export type TaskResult =
  | ({ task: "classification" | "pair-classification" } & Classification)
  | { task: "multi-label"; labels: LabelDecision[]; active: string[]; logits: number[] }
  | { task: "regression"; value: number; values: number[] }
  | {
      task: "token-classification";
      entities: Entity[];
      tokens: TokenLabel[];
      /** The text and its tokens' logits and offsets, to group entities by another strategy ({@link groupEntities}). */
      text: string;
      infos: TokenInfo[];
    }
  | { task: "embedding"; embedding: number[] };

/** The raw outputs of a batch, per task, in the form validation compares them. */
export interface TaskOutputs {
  /** Rows in input order. */
  rows: number;
  /**
   * Sequence heads: `[rows, labels]` logits (regression: values); embeddings:
   * `[rows, width]` pooled (and normalized) vectors; token heads: per row, the
   * `[tokens, labels]` logits of its non-special tokens.
   */
  data: Float32Array[];
}

/**
 * Checks inputs against what the task takes.
 *
 * @throws DATA_MISMATCH for a text where a pair is expected, or a pair where one text is
 * @throws TEXT_* for a bad text; USAGE for no inputs
 */
export function checkTaskInputs(task: TaskSpec, inputs: readonly TextInput[], model: string): void {
  if (!Array.isArray(inputs) || inputs.length === 0) throw new QuantdError("USAGE", "no inputs to run");
  const wants = inputsOf(task.kind);
  for (const [i, input] of inputs.entries()) {
    const pair = Array.isArray(input);
    if (wants === "pair" && !pair) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `input ${i} is one text, but ${model} is ${taskModelNoun(task.kind)} (${task.source}): each input needs two texts ` +
          "(--pair A B, a TSV with two text columns, or [a, b] in a request)",
        { details: { index: i, task: task.kind } },
      );
    }
    if (wants === "text" && pair) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `input ${i} is a pair of texts, but ${model} is ${taskModelNoun(task.kind)} (${task.source}): each input is one text` +
          pairOnTextHint(task.kind),
        { details: { index: i, task: task.kind } },
      );
    }
    validateInput(input, i);
  }
}

/** A loaded model of any task. Create with {@link loadTaskModel}; call {@link TaskModel.release} when done. */
export class TaskModel {
  readonly task: TaskSpec;
  readonly tokenizer: Tokenizer;
  readonly session: InferenceSession;
  /** Absolute path of the model file. */
  readonly modelPath: string;

  /** @internal use {@link loadTaskModel} */
  constructor(modelPath: string, session: InferenceSession, tokenizer: Tokenizer, task: TaskSpec) {
    this.modelPath = modelPath;
    this.session = session;
    this.tokenizer = tokenizer;
    this.task = task;
  }

  /**
   * Results for texts (or pairs), in input order. Inputs of one token length
   * share a batch (no padding), so a result does not depend on what else runs with it.
   *
   * @throws DATA_MISMATCH, TEXT_*, USAGE for bad inputs (see {@link checkTaskInputs})
   * @throws INFERENCE_FAILED when onnxruntime fails or the model outputs NaN
   */
  async infer(inputs: readonly TextInput[], opts: InferOptions = {}): Promise<TaskResult[]> {
    const results = new Array<TaskResult>(inputs.length);
    const aggregation = opts.aggregation ?? "simple";
    await this.#runAll(inputs, opts, (out, r, enc, i, encoding) => {
      results[i] = this.resultOf(out, r, enc, inputs[i]!, encoding, i, aggregation);
    });
    return results;
  }

  /**
   * The task's raw outputs for texts (or pairs), in input order, as validation
   * compares an int8 model with its fp32 one (see {@link TaskOutputs}).
   *
   * @throws as {@link TaskModel.infer}
   */
  async outputs(inputs: readonly TextInput[], opts: InferOptions = {}): Promise<TaskOutputs> {
    const data = new Array<Float32Array>(inputs.length);
    await this.#runAll(inputs, opts, (out, r, enc, i) => {
      data[i] = this.#rawRow(out, r, enc);
    });
    return { rows: inputs.length, data };
  }

  /**
   * {@link TaskModel.infer}'s results and {@link TaskModel.outputs}' raw outputs of one run, for a
   * caller that scores the results and compares the outputs with another model's.
   *
   * @throws as {@link TaskModel.infer}
   */
  async inferWithOutputs(
    inputs: readonly TextInput[],
    opts: InferOptions = {},
  ): Promise<{ results: TaskResult[]; outputs: TaskOutputs }> {
    const results = new Array<TaskResult>(inputs.length);
    const data = new Array<Float32Array>(inputs.length);
    const aggregation = opts.aggregation ?? "simple";
    await this.#runAll(inputs, opts, (out, r, enc, i, encoding) => {
      results[i] = this.resultOf(out, r, enc, inputs[i]!, encoding, i, aggregation);
      data[i] = this.#rawRow(out, r, enc);
    });
    return { results, outputs: { rows: inputs.length, data } };
  }

  /** Checks and encodes inputs, runs them in unpadded batches and hands each row to `each`. */
  async #runAll(
    inputs: readonly TextInput[],
    opts: InferOptions,
    each: (out: RawOutput, row: number, enc: BatchEncoding, index: number, encoding: Encoding) => void,
  ): Promise<void> {
    checkTaskInputs(this.task, inputs, this.modelPath);
    const encodings = inputs.map((x) => this.encode(x, opts));
    const lengths = encodings.map((e) => e.inputIds.length);
    for (const rows of planBatches(lengths, opts.batchSize ?? 32, "unpadded")) {
      const enc = this.tokenizer.pad(rows.map((i) => encodings[i]!));
      const out = await this.runEncoded(enc);
      for (const [r, i] of rows.entries()) each(out, r, enc, i, encodings[i]!);
    }
  }

  /** Encodes one input (a text or a pair) as {@link TaskModel.infer} does. */
  encode(input: TextInput, opts: EncodeOptions = {}): Encoding {
    return typeof input === "string"
      ? this.tokenizer.encode(input, undefined, opts)
      : this.tokenizer.encode(input[0], input[1], opts);
  }

  /**
   * Runs the model on an encoded batch and returns the task's output tensor.
   *
   * @throws INFERENCE_FAILED when onnxruntime fails or the output has an unexpected shape
   */
  async runEncoded(enc: BatchEncoding): Promise<RawOutput> {
    const name = this.task.output;
    const out = await this.session.run(feedsForEncoding(this.session, enc), [name]);
    const t = out[name];
    if (t === undefined || t.type !== "float32") {
      throw new QuantdError("INFERENCE_FAILED", `${this.modelPath} returned no float32 ${name}`);
    }
    const perToken = this.task.kind === "token-classification" || this.task.pooling !== undefined;
    const rank = perToken ? 3 : 2;
    const ok =
      t.dims.length === rank &&
      t.dims[0] === enc.batchSize &&
      (!perToken || t.dims[1] === enc.seqLen) &&
      (this.task.labels.length === 0 || t.dims[rank - 1] === this.task.labels.length);
    if (!ok) {
      throw new QuantdError(
        "INFERENCE_FAILED",
        `${name} has shape [${t.dims.join(", ")}], expected [${enc.batchSize}${perToken ? `, ${enc.seqLen}` : ""}, ` +
          `${this.task.labels.length > 0 ? this.task.labels.length : "width"}]`,
      );
    }
    // Copy: the output buffer belongs to the runtime binding.
    return { data: Float32Array.from(t.data as Float32Array), dims: t.dims };
  }

  #rawRow(out: RawOutput, r: number, enc: BatchEncoding): Float32Array {
    const width = out.dims[out.dims.length - 1]!;
    switch (this.task.kind) {
      case "embedding":
        return this.#embedding(out, r, enc);
      case "token-classification": {
        // Non-special, real tokens only: [CLS]/[SEP] carry no label anyone reads.
        const rows: number[] = [];
        const n = enc.lengths[r]!;
        for (let j = 0; j < n; j++) if (!this.#isSpecial(enc, r, j)) rows.push(j);
        const o = new Float32Array(rows.length * width);
        for (const [k, j] of rows.entries()) {
          const at = (r * enc.seqLen + j) * width;
          o.set(out.data.subarray(at, at + width), k * width);
        }
        return o;
      }
      default:
        return out.data.slice(r * width, (r + 1) * width);
    }
  }

  #isSpecial(enc: BatchEncoding, r: number, j: number): boolean {
    const id = Number(enc.inputIds[r * enc.seqLen + j]);
    const s = this.tokenizer.specialIds;
    return id === s.cls || id === s.sep || id === s.pad;
  }

  #embedding(out: RawOutput, r: number, enc: BatchEncoding): Float32Array {
    const width = out.dims[out.dims.length - 1]!;
    const pooled =
      this.task.pooling === undefined
        ? out.data.slice(r * width, (r + 1) * width)
        : poolRow(out.data, r, enc.seqLen, width, enc.attentionMask, this.task.pooling);
    return this.task.normalize === true ? l2Normalize(pooled) : pooled;
  }

  /**
   * The result of row `r` of a batch's output, for the input `input` (encoded as `encoding`, at `index` in its request).
   *
   * @throws INFERENCE_FAILED when the row holds NaN
   */
  resultOf(
    out: RawOutput,
    r: number,
    enc: BatchEncoding,
    input: TextInput,
    encoding: Encoding,
    index: number,
    aggregation: Aggregation = "simple",
  ): TaskResult {
    const what = `${this.modelPath}, input ${index}`;
    const row = this.#rawRow(out, r, enc);
    if (row.some(Number.isNaN)) throw new QuantdError("INFERENCE_FAILED", `${what}: the model produced NaN`);
    const task = this.task;
    switch (task.kind) {
      case "classification":
      case "pair-classification":
        return {
          task: task.kind,
          ...classificationOfRow({ data: row, numLabels: row.length }, 0, task.labels, what),
        };
      case "multi-label": {
        const labels = task.labels.map((label, k) => {
          const score = sigmoid(row[k]!);
          return { label, score, on: score >= task.thresholds![k]! };
        });
        return {
          task: "multi-label",
          labels,
          active: labels.filter((l) => l.on).map((l) => l.label),
          logits: Array.from(row),
        };
      }
      case "regression":
        return { task: "regression", value: row[0]!, values: Array.from(row) };
      case "embedding":
        return { task: "embedding", embedding: Array.from(row) };
      case "token-classification":
        return this.#tokenResult(out, r, enc, input as string, encoding, aggregation);
    }
  }

  #tokenResult(
    out: RawOutput,
    r: number,
    enc: BatchEncoding,
    text: string,
    encoding: Encoding,
    aggregation: Aggregation,
  ): TaskResult {
    const width = out.dims[2]!;
    const spans = this.tokenizer.spans(text, encoding);
    const tokens: TokenInfo[] = spans.map((span: TokenSpan | undefined, j) => {
      const at = (r * enc.seqLen + j) * width;
      // A copy: the result outlives the batch's output (a server regroups entities per request).
      const logits = out.data.slice(at, at + width);
      if (span === undefined) return { special: true, subword: false, logits };
      return { special: false, subword: span.subword, start: span.start, end: span.end, logits };
    });
    const labels = groupEntities(text, tokens, this.task.labels, "none", []);
    return {
      task: "token-classification",
      entities: groupEntities(text, tokens, this.task.labels, aggregation),
      tokens: labels.map((e) => ({
        token: e.index!,
        start: e.start,
        end: e.end,
        label: e.entity,
        score: e.score,
      })),
      text,
      infos: tokens,
    };
  }

  /** Label names (index = id); empty for embeddings. */
  get labels(): readonly string[] {
    return this.task.labels;
  }

  /** Frees the native session. The model must not be used afterwards. */
  async release(): Promise<void> {
    await this.session.release();
  }
}

/**
 * Loads a model of any task: finds its tokenizer and config, opens a session,
 * checks its inputs and detects its task (a symbolic label count is read from
 * one probe inference).
 *
 * @throws as `loadClassifier` for files, tokenizer and inputs
 * @throws MODEL_TASK_MISMATCH when the outputs match no task or contradict `opts.task`
 */
export async function loadTaskModel(modelPath: string, opts: LoadTaskModelOptions = {}): Promise<TaskModel> {
  const { files, tokenizer, session } = await openModelParts(modelPath, opts);
  try {
    const taskFiles = {
      model: files.model,
      tokenizerDir: files.tokenizerDir,
      ...(files.configPath === undefined ? {} : { configPath: files.configPath }),
    };
    const task = detectTask(session.outputs, taskFiles, opts.task);
    if (task.kind !== "embedding" && task.labels.length === 0) {
      // Symbolic label dimension: one tiny inference tells.
      const out = await session.run(feedsForEncoding(session, tokenizer.encodeBatch(["a"])), [task.output]);
      const n = out[task.output]?.dims.at(-1) ?? 0;
      task.labels =
        task.kind === "regression" && n === 1 ? ["score"] : Array.from({ length: n }, (_, i) => `LABEL_${i}`);
      if (task.kind === "multi-label")
        task.thresholds = resolveThresholds(opts.task?.thresholds, task.labels);
    }
    return new TaskModel(files.model, session, tokenizer, task);
  } catch (err) {
    await session.release();
    throw err;
  }
}

/** A result as JSON shows it: without the per-token internals a server keeps for regrouping. */
export function publicResult(r: TaskResult): Record<string, unknown> {
  if (r.task !== "token-classification") return { ...r };
  const { infos: _infos, text: _text, ...rest } = r;
  return rest;
}
