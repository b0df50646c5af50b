/**
 * Text classification with a BERT-like ONNX model: tokenize, feed the inputs
 * the model declares, read the logits, softmax. The same class runs the fp32
 * model and any int8 model quantd or ONNX Runtime's tool produces, since they
 * keep the fp32 model's inputs and outputs.
 */
import { readFileSync } from "node:fs";
import { assertNever, QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import { positionTable, type TokenTable, tokenEmbeddingTable } from "../onnx/graph.ts";
import { type GraphOutline, readGraphOutline } from "../onnx/graph-outline.ts";
import { findModelFiles, type ModelFiles } from "./model-files.ts";
import { createOrtSession } from "./ort-session.ts";
import { createSessionPool } from "./threaded-session.ts";
import { validateText } from "./text.ts";
import {
  type BatchEncoding,
  type BatchingMode,
  type EncodeBatchOptions,
  type LoadTokenizerOptions,
  loadTokenizer,
  planBatches,
  type TextInput,
  type Tokenizer,
} from "./tokenizer.ts";
import type { InferenceSession, SessionOptions, Tensor } from "./types.ts";

/**
 * The inputs a BERT-like classifier may declare; `input_ids` is required. Exporters
 * drop the ones a model does not read (DistilBERT, RoBERTa: no `token_type_ids`)
 * and some keep `position_ids` as an input.
 */
export const BERT_INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids", "position_ids"] as const;

/** One of {@link BERT_INPUT_NAMES}. */
export type BertInputName = (typeof BERT_INPUT_NAMES)[number];

/** The result of classifying one input. */
export interface Classification {
  /** Name of the most probable label. */
  label: string;
  /** Its index. */
  labelId: number;
  /** Its probability. */
  score: number;
  /** Softmax over all labels. */
  probabilities: number[];
  /** Raw model outputs. */
  logits: number[];
}

/** Logits of a batch, row-major `[batch, numLabels]`. */
export interface BatchLogits {
  data: Float32Array;
  batch: number;
  numLabels: number;
}

/** {@link BatchLogits} with the encoding that produced them. */
export interface EncodedLogits extends BatchLogits {
  encoding: BatchEncoding;
}

/** Options for {@link loadClassifier}. */
export interface LoadClassifierOptions {
  /** Directory with `tokenizer.json`. @defaultValue the model's directory */
  tokenizerDir?: string;
  /** onnxruntime session options. */
  session?: SessionOptions;
  /**
   * Worker threads to run the model in, each with its own session; runs go
   * to the least busy, so concurrent runs proceed at once and the calling
   * thread (a server's) stays free meanwhile. 0 runs it in the calling
   * thread. @defaultValue 0
   */
  workers?: number;
  /** Upper bound on the sequence length. @defaultValue the tokenizer's and model's limit (512) */
  maxLength?: number;
}

/** Options for {@link Classifier.classify}. */
export interface ClassifyOptions extends EncodeBatchOptions {
  /** Most inputs per inference call. @defaultValue 32 */
  batchSize?: number;
  /**
   * How inputs are grouped into batches; by default without padding, so an
   * input's result does not depend on what else is classified with it.
   * @defaultValue "unpadded"
   */
  batching?: BatchingMode;
}

function isBertInput(name: string): name is BertInputName {
  return (BERT_INPUT_NAMES as readonly string[]).includes(name);
}

/**
 * Checks that a session takes BERT inputs: `input_ids` plus optionally
 * `attention_mask`, `token_type_ids` and `position_ids`, each int64 or int32
 * (some exporters and converters write int32 ids), and nothing else.
 *
 * @throws MODEL_INPUTS_MISMATCH naming the inputs the model has
 */
export function checkBertInputs(session: InferenceSession, what = "model"): void {
  const has = session.inputs.map((i) => `${i.name} (${i.type})`).join(", ") || "none";
  const unknown = session.inputs.filter((i) => !isBertInput(i.name)).map((i) => i.name);
  const problems: string[] = [];
  if (!session.inputNames.includes("input_ids")) problems.push("it has no input_ids input");
  if (unknown.length > 0) problems.push(`quantd cannot feed ${unknown.join(", ")}`);
  const notInt = session.inputs
    .filter((i) => isBertInput(i.name) && i.type !== "int64" && i.type !== "int32")
    .map((i) => i.name);
  if (notInt.length > 0) problems.push(`${notInt.join(", ")} must be int64 or int32`);
  if (problems.length > 0) {
    throw new QuantdError(
      "MODEL_INPUTS_MISMATCH",
      `${what} is not a BERT-like classifier: ${problems.join("; ")}. It has inputs: ${has}; ` +
        `expected input_ids and optionally attention_mask, token_type_ids, position_ids (int64 or int32 [batch, sequence])`,
      { details: { inputs: session.inputs.map((i) => ({ name: i.name, type: i.type })) } },
    );
  }
}

/**
 * `position_ids` of a batch as the model's embeddings would compute them
 * (see {@link PositionStyle}): `arange` on every row, or, after the padding
 * index, the running count of real tokens plus `paddingIdx` with padding at `paddingIdx`.
 */
export function positionIdsOf(enc: BatchEncoding): BigInt64Array {
  const { batchSize, seqLen, attentionMask } = enc;
  const style = enc.positions ?? { kind: "arange" };
  const out = new BigInt64Array(batchSize * seqLen);
  for (let r = 0; r < batchSize; r++) {
    const base = r * seqLen;
    let seen = 0n;
    for (let j = 0; j < seqLen; j++) {
      if (style.kind === "arange") out[base + j] = BigInt(j);
      else {
        const real = attentionMask[base + j] !== 0n;
        if (real) seen++;
        out[base + j] = BigInt(style.paddingIdx) + (real ? seen : 0n);
      }
    }
  }
  return out;
}

/** An int64 tensor, converted to int32 when the model declares that type. */
function idsTensor(data: BigInt64Array, dims: number[], type: string | undefined): Tensor {
  if (type !== "int32") return { type: "int64", data, dims };
  return { type: "int32", data: Int32Array.from(data, (x) => Number(x)), dims };
}

/**
 * Builds the feeds for a batch, with only the inputs `session` declares, so it
 * serves any BERT-like model (with or without `token_type_ids`, with
 * `position_ids`, with int32 ids), including the instrumented copies the
 * calibration runner makes.
 *
 * @throws MODEL_INPUTS_MISMATCH when the session declares an input that is not a BERT input
 */
export function feedsForEncoding(session: InferenceSession, enc: BatchEncoding): Record<string, Tensor> {
  const dims = [enc.batchSize, enc.seqLen];
  const feeds: Record<string, Tensor> = {};
  for (const name of session.inputNames) {
    if (!isBertInput(name)) {
      checkBertInputs(session); // throws, naming every input
      continue;
    }
    const type = session.inputs.find((i) => i.name === name)?.type;
    switch (name) {
      case "input_ids":
        feeds[name] = idsTensor(enc.inputIds, dims, type);
        break;
      case "attention_mask":
        feeds[name] = idsTensor(enc.attentionMask, dims, type);
        break;
      case "token_type_ids":
        feeds[name] = idsTensor(enc.tokenTypeIds, dims, type);
        break;
      case "position_ids":
        feeds[name] = idsTensor(positionIdsOf(enc), dims, type);
        break;
      default:
        assertNever(name, "BERT input");
    }
  }
  return feeds;
}

/**
 * Numerically stable softmax (subtracts the maximum so `exp` cannot overflow).
 * Returns float64 probabilities summing to 1.
 */
export function softmax(logits: ArrayLike<number>): number[] {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  const out = new Array<number>(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    const e = Math.exp(logits[i]! - max);
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < out.length; i++) out[i] = out[i]! / sum;
  return out;
}

/**
 * Index of the largest of `data[offset .. offset+n)`. Ties go to the lowest index
 * (as numpy's argmax, and as the quantization gate counts agreement); NaN never
 * wins, and a row of NaN gives -1.
 */
export function argmax(data: ArrayLike<number>, offset = 0, n: number = data.length - offset): number {
  let best = -1;
  let bestValue = Number.NEGATIVE_INFINITY;
  for (let j = 0; j < n; j++) {
    const v = data[offset + j]!;
    if (v > bestValue || (best === -1 && v === bestValue)) {
      bestValue = v;
      best = j;
    }
  }
  return best;
}

/**
 * Row `row` of a `[batch, labels]` logits output as a {@link Classification}.
 * @throws INFERENCE_FAILED when the row holds NaN (a broken model, never a user's input)
 */
export function classificationOfRow(
  out: { data: Float32Array; numLabels: number },
  row: number,
  labels: readonly string[],
  what: string,
): Classification {
  const logits = Array.from(out.data.subarray(row * out.numLabels, (row + 1) * out.numLabels));
  const labelId = argmax(logits);
  if (labelId < 0 || logits.some(Number.isNaN)) {
    throw new QuantdError("INFERENCE_FAILED", `${what}: the model produced NaN logits`);
  }
  const probabilities = softmax(logits);
  return { label: labels[labelId]!, labelId, score: probabilities[labelId]!, probabilities, logits };
}

/**
 * Validates a batch of inputs, naming the index of the first bad one.
 *
 * @throws USAGE for an empty batch; TEXT_* for a bad text
 */
function checkInputs(inputs: readonly TextInput[]): void {
  if (!Array.isArray(inputs) || inputs.length === 0) {
    throw new QuantdError("USAGE", "classify needs at least one input text");
  }
  for (const [i, input] of inputs.entries()) validateInput(input, i);
}

/**
 * Validates one input, a text or a pair, naming its index.
 *
 * @throws TEXT_NOT_STRING, TEXT_EMPTY, TEXT_TOO_LARGE, TEXT_INVALID_UTF8
 */
export function validateInput(input: TextInput, i: number): void {
  if (Array.isArray(input)) {
    if (input.length !== 2) {
      throw new QuantdError("TEXT_NOT_STRING", `input ${i} must be a text or a pair of texts`, {
        details: { index: i },
      });
    }
    validateText(input[0], { what: `input ${i} (first text)` });
    validateText(input[1], { what: `input ${i} (second text)` });
  } else validateText(input, { what: `input ${i}` });
}

/** A loaded text classifier. Create with {@link loadClassifier}; call {@link Classifier.release} when done. */
export class Classifier {
  /** Label names, index = class id. */
  readonly labels: string[];
  readonly tokenizer: Tokenizer;
  readonly session: InferenceSession;
  /** Absolute path of the model file. */
  readonly modelPath: string;
  /** The output read as logits. */
  readonly outputName: string;

  /** @internal use {@link loadClassifier} */
  constructor(
    modelPath: string,
    session: InferenceSession,
    tokenizer: Tokenizer,
    labels: string[],
    outputName: string,
  ) {
    this.modelPath = modelPath;
    this.session = session;
    this.tokenizer = tokenizer;
    this.labels = labels;
    this.outputName = outputName;
  }

  /** Number of classes. */
  get numLabels(): number {
    return this.labels.length;
  }

  /**
   * Logits for a batch of texts (or pairs), padded to the batch's longest row.
   * Every text is checked with {@link validateText} first.
   *
   * @throws TEXT_NOT_STRING, TEXT_EMPTY, TEXT_TOO_LARGE, TEXT_INVALID_UTF8 for a bad input (message names its index)
   * @throws USAGE for an empty batch
   * @throws INFERENCE_FAILED when onnxruntime fails
   */
  async logits(inputs: readonly TextInput[], opts: EncodeBatchOptions = {}): Promise<EncodedLogits> {
    checkInputs(inputs);
    const encoding = this.tokenizer.encodeBatch(inputs, opts);
    const result = await this.runEncoded(encoding);
    return { ...result, encoding };
  }

  /**
   * Runs the model on an already encoded batch.
   *
   * @throws INFERENCE_FAILED when onnxruntime fails or the output has an unexpected shape
   */
  async runEncoded(enc: BatchEncoding): Promise<BatchLogits> {
    const out = await this.session.run(feedsForEncoding(this.session, enc), [this.outputName]);
    const t = out[this.outputName];
    if (t === undefined || t.type !== "float32") {
      throw new QuantdError("INFERENCE_FAILED", `model returned no float32 ${this.outputName}`);
    }
    const numLabels = this.labels.length;
    if (t.data.length !== enc.batchSize * numLabels) {
      throw new QuantdError(
        "INFERENCE_FAILED",
        `${this.outputName} has shape [${t.dims.join(", ")}], expected [${enc.batchSize}, ${numLabels}]`,
      );
    }
    // Copy: the output buffer belongs to the runtime binding.
    return { data: Float32Array.from(t.data as Float32Array), batch: enc.batchSize, numLabels };
  }

  /**
   * Classifies texts (or pairs), in batches of at most `batchSize` planned by
   * {@link planBatches}; results are in input order.
   *
   * @throws as {@link Classifier.logits}
   */
  async classify(inputs: readonly TextInput[], opts: ClassifyOptions = {}): Promise<Classification[]> {
    const batchSize = opts.batchSize ?? 32;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new QuantdError("USAGE", `batchSize must be a positive integer, got ${batchSize}`);
    }
    checkInputs(inputs);
    const encodings = inputs.map((input) =>
      typeof input === "string"
        ? this.tokenizer.encode(input, undefined, opts)
        : this.tokenizer.encode(input[0], input[1], opts),
    );
    const plan = planBatches(
      encodings.map((e) => e.inputIds.length),
      batchSize,
      opts.batching ?? "unpadded",
    );
    const results = new Array<Classification>(inputs.length);
    for (const rows of plan) {
      const out = await this.runEncoded(
        this.tokenizer.pad(
          rows.map((i) => encodings[i]!),
          opts,
        ),
      );
      for (const [r, i] of rows.entries()) {
        results[i] = classificationOfRow(out, r, this.labels, `${this.modelPath}, input ${i}`);
      }
    }
    return results;
  }

  /** Frees the native session. The classifier must not be used afterwards. */
  async release(): Promise<void> {
    await this.session.release();
  }
}

interface ModelConfig {
  labels?: string[];
  vocabSize?: number;
}

function readModelConfig(configPath: string | undefined): ModelConfig {
  if (configPath === undefined) return {};
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(configPath, "utf8"));
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", `${configPath} is not valid JSON`, { cause: err });
  }
  if (!isRecord(config)) throw new QuantdError("CONFIG_INVALID", `${configPath} is not a JSON object`);
  const out: ModelConfig = {};
  if (typeof config["vocab_size"] === "number") out.vocabSize = config["vocab_size"];
  if (!isRecord(config["id2label"])) return out;
  const id2label = config["id2label"];
  const n = Object.keys(id2label).length;
  const labels: string[] = [];
  for (let i = 0; i < n; i++) {
    const name = id2label[String(i)];
    if (typeof name !== "string") {
      throw new QuantdError("CONFIG_INVALID", `${configPath}: id2label must map 0..${n - 1} to names`);
    }
    labels.push(name);
  }
  out.labels = labels;
  return out;
}

/**
 * Refuses a tokenizer from another model: its ids would run past the model's
 * token-embedding table, and onnxruntime would fail later, on the first input
 * holding such an id, with an index error that names neither file. Checked
 * against the `vocab_size` of the model's `config.json` and, when the caller
 * has read the graph, against the table's rows.
 *
 * @throws TOKENIZER_INVALID naming both sizes and where each comes from
 * @throws CONFIG_INVALID for an unreadable `config.json`
 */
function assertTokenizerFitsModel(tokenizer: Tokenizer, files: ModelFiles, table?: TokenTable): void {
  const config = readModelConfig(files.configPath);
  const limits: [number, string][] = [];
  if (config.vocabSize !== undefined)
    limits.push([config.vocabSize, `${files.configPath} has vocab_size ${config.vocabSize}`]);
  if (table !== undefined)
    limits.push([table.rows, `token-embedding table ${table.name} has ${table.rows} rows`]);
  for (const [size, what] of limits) {
    if (tokenizer.vocabSize <= size) continue;
    throw new QuantdError(
      "TOKENIZER_INVALID",
      `the tokenizer in ${files.tokenizerDir} has ${tokenizer.vocabSize} tokens but the model's ${what}: ` +
        "is it the model's own tokenizer?",
      { details: { tokenizer: files.tokenizerDir, tokens: tokenizer.vocabSize, modelVocab: size } },
    );
  }
}

/**
 * Loads a model's tokenizer, bounded by what the model says of itself: its
 * `config.json` (`max_position_embeddings`, `vocab_size`) and, when `graph` is
 * given, its tables. The position table caps the length (a tokenizer allowing
 * 512 tokens on a 128-position model fails at run time on long texts) and the
 * token-embedding table must hold every id the tokenizer can give.
 *
 * @throws TOKENIZER_NOT_FOUND | TOKENIZER_INVALID as {@link loadTokenizer}, and TOKENIZER_INVALID
 *   for a tokenizer with more tokens than the model's vocabulary
 * @throws CONFIG_INVALID for an unreadable `config.json`
 */
export async function loadModelTokenizer(
  files: ModelFiles,
  graph: GraphOutline | undefined,
  maxLength?: number,
): Promise<Tokenizer> {
  const tokOpts: LoadTokenizerOptions = {};
  const positionRows = graph === undefined ? undefined : positionTable(graph)?.rows;
  if (positionRows !== undefined) tokOpts.positionRows = positionRows;
  if (maxLength !== undefined) tokOpts.maxLength = maxLength;
  if (files.configPath !== undefined) tokOpts.configPath = files.configPath;
  const tokenizer = await loadTokenizer(files.tokenizerDir, tokOpts);
  // Before any text is encoded: another model's tokenizer fails later with an index error naming neither file.
  const table = graph === undefined ? undefined : tokenEmbeddingTable(graph, new Set(["input_ids"]));
  assertTokenizerFitsModel(tokenizer, files, table);
  return tokenizer;
}

/**
 * The graph's outline, read to bound the tokenizer when no `config.json` says
 * what the model takes: positioned reads of its nodes and its initializers'
 * dims, never its weights, so a model of any size costs little memory here. A
 * file whose framing is not a model's is left for onnxruntime to judge, which
 * names the problem.
 */
async function graphForBounds(files: ModelFiles): Promise<GraphOutline | undefined> {
  return files.configPath === undefined ? readGraphOutline(files.model) : undefined;
}

/** The parts every model runner opens: its files, tokenizer and session (inputs checked). */
export interface ModelParts {
  files: ModelFiles;
  tokenizer: Tokenizer;
  session: InferenceSession;
}

/**
 * Finds a model's files, loads its tokenizer (bounded by the model's
 * `config.json`, else by its graph's tables: {@link loadModelTokenizer}) and
 * opens its session, checking that it takes BERT inputs.
 *
 * @throws as {@link loadClassifier}, except for the output checks
 */
export async function openModelParts(
  modelPath: string,
  opts: LoadClassifierOptions = {},
): Promise<ModelParts> {
  const files = findModelFiles(modelPath, opts.tokenizerDir);
  const tokenizer = await loadModelTokenizer(files, await graphForBounds(files), opts.maxLength);
  const session = await openSession(files.model, opts);
  try {
    checkBertInputs(session, files.model);
  } catch (err) {
    await session.release();
    throw err;
  }
  return { files, tokenizer, session };
}

/** One session, or a pool of `opts.workers` sessions in worker threads. */
function openSession(model: string, opts: LoadClassifierOptions): Promise<InferenceSession> {
  const workers = opts.workers ?? 0;
  return workers > 0
    ? createSessionPool(model, opts.session ?? {}, workers)
    : createOrtSession(model, opts.session ?? {});
}

/**
 * Loads a classifier: finds the model's tokenizer and config, opens an
 * onnxruntime session and checks the model's inputs and output.
 *
 * Labels come from `config.json`'s `id2label`; without one they are
 * `LABEL_0 … LABEL_{n-1}` (as transformers names them), `n` read from the
 * output shape or, when that is symbolic, from one probe inference.
 *
 * @throws FILE_NOT_FOUND when the model does not exist
 * @throws TOKENIZER_NOT_FOUND / TOKENIZER_INVALID for a missing or bad tokenizer, or one
 * with more tokens than the model's `vocab_size` or token-embedding table
 * @throws MODEL_LOAD_FAILED when onnxruntime rejects the model
 * @throws MODEL_INPUTS_MISMATCH when the model is not a BERT-like classifier
 * @throws CONFIG_INVALID for an unreadable `config.json`
 * @throws DATA_MISMATCH when `config.json` names a different number of labels than the model outputs
 */
export async function loadClassifier(
  modelPath: string,
  opts: LoadClassifierOptions = {},
): Promise<Classifier> {
  return classifierOfParts(await openModelParts(modelPath, opts));
}

/**
 * A classifier on parts already open (a task model's, once its task is known), with
 * {@link loadClassifier}'s output checks. The classifier owns the session; on error it is released.
 *
 * @throws as {@link loadClassifier} for the output and its labels
 */
export async function classifierOfParts({ files, tokenizer, session }: ModelParts): Promise<Classifier> {
  const configLabels = readModelConfig(files.configPath).labels;
  try {
    const outputName = session.outputNames.includes("logits") ? "logits" : session.outputNames[0];
    const output = session.outputs.find((o) => o.name === outputName);
    if (outputName === undefined || output === undefined) {
      throw new QuantdError("MODEL_INPUTS_MISMATCH", `${files.model} has no outputs`);
    }
    if (output.type !== "float32") {
      throw new QuantdError(
        "MODEL_INPUTS_MISMATCH",
        `${files.model}: output ${outputName} is ${output.type}, expected float32 logits [batch, labels]`,
      );
    }
    let numLabels: number | undefined;
    const last = output.dims[output.dims.length - 1];
    if (output.dims.length === 2 && typeof last === "number") numLabels = last;
    else {
      // Symbolic label dimension: one tiny inference tells.
      const probe = tokenizer.encodeBatch(["a"]);
      const out = await session.run(feedsForEncoding(session, probe), [outputName]);
      const t = out[outputName];
      if (t === undefined || t.dims.length !== 2 || t.dims[0] !== 1) {
        throw new QuantdError(
          "MODEL_INPUTS_MISMATCH",
          `${files.model}: output ${outputName} has shape [${t?.dims.join(", ")}], expected [batch, labels]`,
        );
      }
      numLabels = t.dims[1]!;
    }
    let labels: string[];
    if (configLabels !== undefined) {
      if (configLabels.length !== numLabels) {
        throw new QuantdError(
          "DATA_MISMATCH",
          `${files.configPath} names ${configLabels.length} labels but ${files.model} outputs ${numLabels}`,
        );
      }
      labels = configLabels;
    } else labels = Array.from({ length: numLabels }, (_, i) => `LABEL_${i}`);
    return new Classifier(files.model, session, tokenizer, labels, outputName);
  } catch (err) {
    await session.release();
    throw err;
  }
}
