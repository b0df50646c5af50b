/**
 * What a model is for, derived from the model and the files beside it: the
 * names and ranks of its outputs, `config.json` (`id2label`, `problem_type`,
 * `architectures`) and a sentence-transformers layout (`modules.json`,
 * `1_Pooling/config.json`, `2_Normalize`). A user overrides it in config or by
 * flag; an override the model contradicts is an error naming both, never a
 * model served as something it is not.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import type { TensorInfo } from "./types.ts";

/** The tasks quantd runs end to end. */
export const TASK_KINDS = [
  "classification",
  "pair-classification",
  "multi-label",
  "regression",
  "token-classification",
  "embedding",
] as const;

/** One of {@link TASK_KINDS}. */
export type TaskKind = (typeof TASK_KINDS)[number];

/** How token vectors become one sentence vector (sentence-transformers' Pooling modes). */
export type PoolingMode = "mean" | "cls" | "max" | "mean-sqrt-len";

/** Pooling modes a user may name. */
export const POOLING_MODES: readonly PoolingMode[] = ["mean", "cls", "max", "mean-sqrt-len"];

/** The task of a model, with everything its outputs need to become results. */
export interface TaskSpec {
  kind: TaskKind;
  /** The model output read. */
  output: string;
  /** Label names (index = id); empty for embeddings; `["value"]`-like for regression. */
  labels: string[];
  /** Embeddings: how token vectors are pooled; `undefined` when the model outputs a pooled `sentence_embedding`. */
  pooling?: PoolingMode;
  /** Embeddings: L2-normalize the pooled vector. */
  normalize?: boolean;
  /** Multi-label: the sigmoid probability at or above which each label is on (default 0.5 each). */
  thresholds?: number[];
  /** What decided the task, for messages and `--json` (e.g. `config.json problem_type`). */
  source: string;
}

/** What a user may set over detection (agent config `model.task…`, `--task`, `--pooling`, …). */
export interface TaskOverride {
  kind?: TaskKind;
  pooling?: PoolingMode;
  normalize?: boolean;
  /** One threshold for every label, or one per label. */
  thresholds?: number | number[];
}

/** What detection reads from the files beside the model. */
export interface TaskFiles {
  /** The model's `config.json`, when there is one. */
  configPath?: string;
  /** The model file (its directory, and that directory's parent, are searched for `modules.json`). */
  model: string;
  /**
   * The tokenizer's directory, searched for `modules.json` too: an agent serves a copy of the
   * model from its state directory, with the files of the directory it was started from.
   */
  tokenizerDir?: string;
}

/** Output names that carry per-token hidden states, in the order they are preferred. */
const HIDDEN_OUTPUTS = ["last_hidden_state", "token_embeddings"];
/** transformers' label names of natural-language inference and paraphrase heads: their input is a pair. */
const PAIR_LABELS =
  /^(entailment|contradiction|neutral|not_entailment|not_duplicate|duplicate|paraphrase|not_paraphrase|equivalent|not_equivalent)$/i;

interface ModelConfigTask {
  labels?: string[];
  problemType?: string;
  architectures: string[];
  crossEncoder: boolean;
  quantdTask?: TaskKind;
}

function readConfigTask(path: string | undefined): ModelConfigTask {
  const out: ModelConfigTask = { architectures: [], crossEncoder: false };
  if (path === undefined) return out;
  const config = readJsonFile(path);
  if (!isRecord(config)) throw new QuantdError("CONFIG_INVALID", `${path} is not a JSON object`);
  if (isRecord(config["id2label"])) {
    const id2label = config["id2label"];
    out.labels = Object.keys(id2label)
      .map(Number)
      .sort((a, b) => a - b)
      .map((k) => String(id2label[String(k)]));
  }
  if (typeof config["problem_type"] === "string") out.problemType = config["problem_type"];
  if (Array.isArray(config["architectures"])) out.architectures = config["architectures"].map(String);
  // sentence-transformers CrossEncoder writes one of these into the model's config.
  out.crossEncoder =
    "sbert_ce_default_activation_function" in config ||
    (isRecord(config["sentence_transformers"]) && "activation_fn" in config["sentence_transformers"]);
  const task = config["quantd_task"];
  if (typeof task === "string") out.quantdTask = parseTaskKind(task, `${path} quantd_task`);
  return out;
}

function readJsonFile(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", `${path} is not readable JSON`, { cause: err });
  }
}

/**
 * Checks a task name.
 * @throws USAGE naming the tasks there are
 */
export function parseTaskKind(value: string, what = "--task"): TaskKind {
  if ((TASK_KINDS as readonly string[]).includes(value)) return value as TaskKind;
  throw new QuantdError(
    "USAGE",
    `${what} must be one of ${TASK_KINDS.join(", ")}; got ${JSON.stringify(value)}`,
  );
}

/**
 * Checks a pooling mode name.
 * @throws USAGE naming the modes there are
 */
export function parsePoolingMode(value: string, what = "--pooling"): PoolingMode {
  if ((POOLING_MODES as readonly string[]).includes(value)) return value as PoolingMode;
  throw new QuantdError(
    "USAGE",
    `${what} must be one of ${POOLING_MODES.join(", ")}; got ${JSON.stringify(value)}`,
  );
}

/** A sentence-transformers layout next to the model: its pooling and whether it normalizes. */
export interface SentenceTransformersLayout {
  dir: string;
  pooling: PoolingMode;
  normalize: boolean;
}

/**
 * Reads a sentence-transformers directory (`modules.json` with a Pooling module
 * and optionally a Normalize one) in the model's directory or its parent (ONNX
 * exports often sit in `onnx/` under the sentence-transformers root).
 *
 * @throws CONFIG_INVALID for an unreadable `modules.json` or pooling config, or a pooling mode quantd does not run
 */
export function readSentenceTransformers(
  model: string,
  tokenizerDir?: string,
): SentenceTransformersLayout | undefined {
  const here = dirname(model);
  for (const dir of [here, dirname(here), ...(tokenizerDir !== undefined ? [tokenizerDir] : [])]) {
    const modulesPath = join(dir, "modules.json");
    if (!existsSync(modulesPath)) continue;
    const modules = readJsonFile(modulesPath);
    if (!Array.isArray(modules))
      throw new QuantdError("CONFIG_INVALID", `${modulesPath} is not a list of modules`);
    const typeOf = (m: unknown): string => (isRecord(m) && typeof m["type"] === "string" ? m["type"] : "");
    const pathOf = (m: unknown): string => (isRecord(m) && typeof m["path"] === "string" ? m["path"] : "");
    const poolingModule = modules.find((m) => typeOf(m).endsWith(".Pooling"));
    const normalize = modules.some((m) => typeOf(m).endsWith(".Normalize"));
    let pooling: PoolingMode = "mean";
    if (poolingModule !== undefined) {
      const configPath = join(dir, pathOf(poolingModule), "config.json");
      if (existsSync(configPath)) pooling = poolingOfConfig(readJsonFile(configPath), configPath);
    }
    return { dir, pooling, normalize };
  }
  return undefined;
}

function poolingOfConfig(config: unknown, path: string): PoolingMode {
  if (!isRecord(config)) throw new QuantdError("CONFIG_INVALID", `${path} is not a JSON object`);
  const on = (key: string): boolean => config[key] === true;
  const modes: PoolingMode[] = [];
  if (on("pooling_mode_cls_token")) modes.push("cls");
  if (on("pooling_mode_mean_tokens")) modes.push("mean");
  if (on("pooling_mode_max_tokens")) modes.push("max");
  if (on("pooling_mode_mean_sqrt_len_tokens")) modes.push("mean-sqrt-len");
  const unsupported = ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"].filter(on);
  if (unsupported.length > 0 || modes.length > 1) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `${path}: quantd pools with exactly one of mean, CLS, max or mean-sqrt-len tokens; ` +
        `this config sets ${[...modes, ...unsupported].join(", ")}`,
    );
  }
  return modes[0] ?? "mean";
}

/** A float output of the model with its rank. */
function floatOutputs(outputs: readonly TensorInfo[]): TensorInfo[] {
  return outputs.filter((o) => o.type === "float32");
}

function describeOutputs(outputs: readonly TensorInfo[]): string {
  return outputs.map((o) => `${o.name} ${o.type} [${o.dims.join(", ")}]`).join(", ") || "none";
}

/** The task the outputs alone imply, before config refines it. */
interface OutputTask {
  family: "sequence" | "token" | "embedding";
  output: TensorInfo;
  pooled: boolean;
}

function taskFromOutputs(
  outputs: readonly TensorInfo[],
  config: ModelConfigTask,
  st: boolean,
): OutputTask | undefined {
  const floats = floatOutputs(outputs);
  const named = (name: string) => floats.find((o) => o.name === name);
  const logits = named("logits");
  if (logits !== undefined && logits.dims.length === 2)
    return { family: "sequence", output: logits, pooled: true };
  if (logits !== undefined && logits.dims.length === 3)
    return { family: "token", output: logits, pooled: false };
  const sentence = named("sentence_embedding");
  if (sentence !== undefined && sentence.dims.length === 2) {
    return { family: "embedding", output: sentence, pooled: true };
  }
  for (const name of HIDDEN_OUTPUTS) {
    const hidden = named(name);
    if (hidden !== undefined && hidden.dims.length === 3)
      return { family: "embedding", output: hidden, pooled: false };
  }
  // Unnamed outputs: rank 2 is a sequence head; rank 3 is per-token, a token head by its config or else hidden states.
  const first = floats[0];
  if (first === undefined) return undefined;
  if (first.dims.length === 2) return { family: st ? "embedding" : "sequence", output: first, pooled: true };
  if (first.dims.length === 3) {
    const tokenHead = config.architectures.some((a) => a.endsWith("ForTokenClassification"));
    return tokenHead || (!st && config.labels !== undefined && config.problemType === undefined)
      ? { family: "token", output: first, pooled: false }
      : { family: "embedding", output: first, pooled: false };
  }
  return undefined;
}

/** The sequence-head task config.json implies, with what decided it. */
function sequenceKind(config: ModelConfigTask, numLabels: number | undefined): [TaskKind, string] {
  switch (config.problemType) {
    case "multi_label_classification":
      return ["multi-label", "config.json problem_type"];
    case "regression":
      return ["regression", "config.json problem_type"];
    case "single_label_classification":
      break;
    default:
      // transformers treats a one-label head without a problem_type as regression.
      if (numLabels === 1) return ["regression", "one output label"];
  }
  if (config.crossEncoder) return ["pair-classification", "sentence-transformers CrossEncoder config"];
  if (config.labels?.some((l) => PAIR_LABELS.test(l))) {
    return ["pair-classification", "config.json id2label (inference/paraphrase labels)"];
  }
  return [
    "classification",
    config.problemType !== undefined ? "config.json problem_type" : "logits [batch, labels]",
  ];
}

/** Which output families each task can run on. */
const FAMILY_OF: Readonly<Record<TaskKind, OutputTask["family"]>> = {
  classification: "sequence",
  "pair-classification": "sequence",
  "multi-label": "sequence",
  regression: "sequence",
  "token-classification": "token",
  embedding: "embedding",
};

function labelCount(output: TensorInfo): number | undefined {
  const last = output.dims[output.dims.length - 1];
  return typeof last === "number" ? last : undefined;
}

/**
 * Derives a model's task from its outputs and files, then applies `override`.
 *
 * @throws MODEL_TASK_MISMATCH when no output matches any task, or the override asks for a task the outputs cannot give
 * @throws DATA_MISMATCH when config.json names a different number of labels than the model outputs
 * @throws CONFIG_INVALID for an unreadable config.json or sentence-transformers file
 */
export function detectTask(
  outputs: readonly TensorInfo[],
  files: TaskFiles,
  override: TaskOverride = {},
): TaskSpec {
  const config = readConfigTask(files.configPath);
  const st = readSentenceTransformers(files.model, files.tokenizerDir);
  const found = taskFromOutputs(outputs, config, st !== undefined);
  if (found === undefined) {
    // A float16 export has the right names and shapes; without this the list below reads as a contradiction.
    const half = outputs.some((o) => o.type === "float16")
      ? "; quantd runs float32 models (and the int8 ones it makes from them): use the fp32 export"
      : "";
    throw new QuantdError(
      "MODEL_TASK_MISMATCH",
      `${files.model} has no output quantd can read as a task: it has ${describeOutputs(outputs)}; expected ` +
        "float32 logits [batch, labels] (classification, pairs, multi-label, regression), logits [batch, sequence, labels] " +
        "(token classification), last_hidden_state / token_embeddings [batch, sequence, hidden] or " +
        `sentence_embedding [batch, hidden] (embeddings)${half}`,
      { details: { outputs: outputs.map((o) => ({ name: o.name, type: o.type, dims: o.dims })) } },
    );
  }
  const numLabels = labelCount(found.output);
  let kind: TaskKind;
  let source: string;
  if (found.family === "sequence") [kind, source] = sequenceKind(config, numLabels);
  else if (found.family === "token")
    [kind, source] = ["token-classification", `${found.output.name} [batch, sequence, labels]`];
  else
    [kind, source] = [
      "embedding",
      st !== undefined ? `sentence-transformers ${st.dir}` : `${found.output.name} output`,
    ];
  if (config.quantdTask !== undefined) [kind, source] = [config.quantdTask, "config.json quantd_task"];
  if (override.kind !== undefined) [kind, source] = [override.kind, "the task setting (--task, model.task)"];
  if (FAMILY_OF[kind] !== found.family) {
    throw new QuantdError(
      "MODEL_TASK_MISMATCH",
      `${files.model} cannot run as ${kind} (asked by ${source}): that needs ${expectedFor(kind)}, ` +
        `and the model has ${describeOutputs(outputs)}`,
      { details: { task: kind, outputs: outputs.map((o) => ({ name: o.name, dims: o.dims })) } },
    );
  }
  const spec: TaskSpec = { kind, output: found.output.name, labels: [], source };
  if (kind === "embedding") return embeddingSpec(spec, found, st, override);
  spec.labels = labelsFor(config, numLabels, kind, files);
  if (kind === "multi-label") spec.thresholds = resolveThresholds(override.thresholds, spec.labels);
  else if (override.thresholds !== undefined) {
    throw new QuantdError("USAGE", `thresholds apply to multi-label models; this one is ${kind}`);
  }
  if (override.pooling !== undefined || override.normalize !== undefined) {
    throw new QuantdError(
      "USAGE",
      `pooling and normalization apply to embedding models; this one is ${kind}`,
    );
  }
  return spec;
}

function expectedFor(kind: TaskKind): string {
  switch (FAMILY_OF[kind]) {
    case "sequence":
      return "logits [batch, labels]";
    case "token":
      return "logits [batch, sequence, labels]";
    case "embedding":
      return "last_hidden_state [batch, sequence, hidden] or sentence_embedding [batch, hidden]";
  }
}

function embeddingSpec(
  spec: TaskSpec,
  found: OutputTask,
  st: SentenceTransformersLayout | undefined,
  override: TaskOverride,
): TaskSpec {
  if (override.thresholds !== undefined) {
    throw new QuantdError("USAGE", "thresholds apply to multi-label models; this one is embedding");
  }
  if (!found.pooled) spec.pooling = override.pooling ?? st?.pooling ?? "mean";
  else if (override.pooling !== undefined) {
    throw new QuantdError(
      "USAGE",
      `${spec.output} is already pooled by the model: --pooling needs an output of token vectors (last_hidden_state)`,
    );
  }
  spec.normalize = override.normalize ?? st?.normalize ?? false;
  return spec;
}

function labelsFor(
  config: ModelConfigTask,
  numLabels: number | undefined,
  kind: TaskKind,
  files: TaskFiles,
): string[] {
  if (config.labels !== undefined) {
    if (numLabels !== undefined && config.labels.length !== numLabels) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `${files.configPath} names ${config.labels.length} labels but ${files.model} outputs ${numLabels}`,
      );
    }
    return config.labels;
  }
  if (numLabels === undefined) return [];
  if (kind === "regression" && numLabels === 1) return ["score"];
  return Array.from({ length: numLabels }, (_, i) => `LABEL_${i}`);
}

/**
 * Per-label thresholds from what a user gave (one for all, or one per label; 0.5 each by default).
 * @throws USAGE for a count that matches no label list, or a threshold outside (0, 1)
 */
export function resolveThresholds(given: number | number[] | undefined, labels: readonly string[]): number[] {
  const list = given === undefined ? 0.5 : given;
  const out = typeof list === "number" ? labels.map(() => list) : list;
  if (out.length !== labels.length && labels.length > 0) {
    throw new QuantdError(
      "USAGE",
      `thresholds: ${out.length} given for ${labels.length} labels (${labels.join(", ")}); give one, or one per label`,
    );
  }
  for (const t of out) {
    if (!Number.isFinite(t) || t <= 0 || t >= 1) {
      throw new QuantdError("USAGE", `a threshold is a probability strictly between 0 and 1, got ${t}`);
    }
  }
  return out;
}

/** `a token-classification model`, `an embedding model`: the task as messages name it. */
export function taskModelNoun(kind: TaskKind): string {
  return `${/^[aeiou]/.test(kind) ? "an" : "a"} ${kind} model`;
}

/**
 * Said after "each input is one text" to a pair sent to a single-text
 * classifier: detection may have missed that a model was trained on pairs.
 */
export function pairOnTextHint(kind: TaskKind): string {
  return kind === "classification"
    ? " (a model trained on pairs is run as one with --task pair-classification)"
    : "";
}

/**
 * What a task takes as one input: a pair of texts (a pair classifier), one text
 * (a single-text classifier: task detection makes a model trained on pairs a
 * pair classifier, and an input `token_type_ids` alone does not, as every BERT
 * export has one; token classification and embeddings, whose outputs belong
 * to one text), or either (a multi-label or regression head may be trained on
 * both, as a cross-encoder regressor is).
 */
export function inputsOf(kind: TaskKind): "pair" | "text" | "either" {
  switch (kind) {
    case "pair-classification":
      return "pair";
    case "classification":
    case "token-classification":
    case "embedding":
      return "text";
    default:
      return "either";
  }
}
