/**
 * Flags and loading shared by the commands that run a text classifier
 * (`classify`, `eval`, `demo`): the same flag names, placeholders and defaults
 * everywhere, and one place that turns onnxruntime's opaque "could not load"
 * into the codec's precise reason.
 */
import { detectDevice } from "../device/detect.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { loadModel } from "../onnx/codec.ts";
import { type Classifier, classifierOfParts, loadClassifier } from "../runtime/classifier.ts";
import { findModelFiles } from "../runtime/model-files.ts";
import {
  POOLING_MODES,
  parsePoolingMode,
  parseTaskKind,
  TASK_KINDS,
  type TaskOverride,
} from "../runtime/task.ts";
import { loadTaskModel, type TaskModel } from "../runtime/task-model.ts";
import type { FlagSpec, ParsedFlags } from "./command.ts";
import { flagInt, flagList, flagString, parseNumberValue, usageError } from "./parse.ts";

/** `--tokenizer DIR`. */
export const TOKENIZER_FLAG: FlagSpec = {
  name: "tokenizer",
  type: "string",
  value: "DIR",
  description: "directory with tokenizer.json (and tokenizer_config.json)",
  default: "the model's directory",
};

/**
 * The one default of every `--threads` (and of the agent's `threads`): the
 * `QUANTD_THREADS` environment variable, else the board profile's threads
 * (`quantd device`: the cores less one for the agent's own work on a board).
 */
export const THREADS_DEFAULT_TEXT = "$QUANTD_THREADS, else the board profile's threads (quantd device)";

/** `--threads N`: onnxruntime intra-op threads. */
export const THREADS_FLAG: FlagSpec = {
  name: "threads",
  type: "string",
  value: "N",
  description: "onnxruntime intra-op threads",
  default: THREADS_DEFAULT_TEXT,
};

/**
 * Threads when `--threads` is not given: see {@link THREADS_DEFAULT_TEXT}. An
 * unsupported board (detection refuses it) falls back to 1.
 *
 * @throws CONFIG_INVALID when QUANTD_THREADS is not an integer in 1…256
 */
export function defaultCliThreads(env: Record<string, string | undefined> = process.env): number {
  const fromEnv = env["QUANTD_THREADS"];
  if (fromEnv !== undefined && fromEnv !== "") {
    const n = Number(fromEnv.trim());
    if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS) {
      throw new QuantdError(
        "CONFIG_INVALID",
        `QUANTD_THREADS must be an integer in 1…${MAX_THREADS}, got "${fromEnv}"`,
        {
          details: { key: "QUANTD_THREADS", value: fromEnv },
        },
      );
    }
    return n;
  }
  try {
    return detectDevice().profile.threads;
  } catch {
    return 1;
  }
}

/** `--threads`, else {@link defaultCliThreads}. @throws USAGE */
export function threadsFlag(flags: ParsedFlags): number {
  return flagInt(flags, "threads", { min: 1, max: MAX_THREADS }) ?? defaultCliThreads();
}

/** `--batch N`: texts per inference call. */
export const BATCH_FLAG: FlagSpec = {
  name: "batch",
  type: "string",
  value: "N",
  description: "texts per inference call",
  default: "32",
};

/** `--json`: one JSON object on stdout (errors too). */
export const JSON_FLAG: FlagSpec = {
  name: "json",
  type: "boolean",
  description: "print one JSON object on stdout (errors too, as {code, message})",
};

/** `--tokenizer`, `--threads`, `--batch`: how every command that runs a model over texts loads and feeds it. */
export const INFERENCE_FLAGS: readonly FlagSpec[] = [TOKENIZER_FLAG, THREADS_FLAG, BATCH_FLAG];

/** Largest accepted `--threads` and `--batch`; beyond this is a typo, not a setting. */
const MAX_THREADS = 256;
const MAX_BATCH = 4096;

/** `--batch` (default 32). @throws USAGE */
export function batchFlag(flags: ParsedFlags): number {
  return flagInt(flags, "batch", { min: 1, max: MAX_BATCH }, 32);
}

/**
 * Opens a classifier with the `--tokenizer` and `--threads` flags.
 *
 * onnxruntime reports any unreadable file as "Protobuf parsing failed"; when it
 * refuses a model, the file is decoded with quantd's own codec to say whether it
 * is truncated or not ONNX at all, and that error is thrown instead.
 *
 * @throws FILE_NOT_FOUND, MODEL_NOT_ONNX, MODEL_TRUNCATED, MODEL_INVALID, MODEL_LOAD_FAILED,
 *   MODEL_INPUTS_MISMATCH, TOKENIZER_NOT_FOUND, TOKENIZER_INVALID, CONFIG_INVALID
 * @throws USAGE for a bad `--threads`
 */
export async function openClassifier(modelPath: string, flags: ParsedFlags): Promise<Classifier> {
  const threads = threadsFlag(flags);
  const tokenizerDir = flagString(flags, "tokenizer");
  try {
    return await loadClassifier(
      modelPath,
      tokenizerDir === undefined
        ? { session: { intraOpThreads: threads } }
        : { tokenizerDir, session: { intraOpThreads: threads } },
    );
  } catch (err) {
    if (isQuantdError(err, "MODEL_LOAD_FAILED")) {
      await explainLoadFailure(findModelFiles(modelPath, tokenizerDir).model);
    }
    throw err;
  }
}

/** `--task`, `--pooling`, `--normalize`, `--threshold`: what a user sets over task detection. */
export const TASK_FLAGS: FlagSpec[] = [
  {
    name: "task",
    type: "string",
    value: "TASK",
    description: `what the model does, over what quantd derives from its outputs and files (${TASK_KINDS.join(", ")}); one the model's outputs contradict is an error`,
    default: "detected",
  },
  {
    name: "pooling",
    type: "string",
    value: "MODE",
    description: `embeddings: how token vectors are pooled (${POOLING_MODES.join(", ")})`,
    default: "1_Pooling/config.json, else mean",
  },
  {
    name: "normalize",
    type: "string",
    value: "on|off",
    description: "embeddings: L2-normalize the pooled vector",
    default: "on when the model directory has a Normalize module",
  },
  {
    name: "threshold",
    type: "string",
    value: "P[,P…]",
    description: "multi-label: the sigmoid probability at which a label is on, one for all or one per label",
    default: "0.5",
  },
];

/** The {@link TASK_FLAGS} as a {@link TaskOverride}. @throws USAGE */
export function taskOverrideFlags(flags: ParsedFlags): TaskOverride {
  const out: TaskOverride = {};
  const task = flagString(flags, "task");
  if (task !== undefined) out.kind = parseTaskKind(task);
  const pooling = flagString(flags, "pooling");
  if (pooling !== undefined) out.pooling = parsePoolingMode(pooling);
  const normalize = flagString(flags, "normalize");
  if (normalize !== undefined) {
    if (normalize !== "on" && normalize !== "off")
      throw usageError(`--normalize must be on or off, got "${normalize}"`);
    out.normalize = normalize === "on";
  }
  const thresholds = flagList(flags, "threshold").flatMap((v) => v.split(","));
  if (thresholds.length > 0) {
    const values = thresholds.map((t) => parseNumberValue("threshold", t.trim(), { min: 0, max: 1 }));
    out.thresholds = values.length === 1 ? values[0]! : values;
  }
  return out;
}

/**
 * Opens a model of any task with the `--tokenizer`, `--threads` and task flags.
 *
 * @throws as {@link openClassifier}; MODEL_TASK_MISMATCH when the outputs match no task or contradict `--task`
 */
export async function openTaskModel(modelPath: string, flags: ParsedFlags): Promise<TaskModel> {
  const threads = threadsFlag(flags);
  const tokenizerDir = flagString(flags, "tokenizer");
  const task = taskOverrideFlags(flags);
  try {
    return await loadTaskModel(modelPath, {
      ...(tokenizerDir === undefined ? {} : { tokenizerDir }),
      session: { intraOpThreads: threads },
      task,
    });
  } catch (err) {
    if (isQuantdError(err, "MODEL_LOAD_FAILED")) {
      await explainLoadFailure(findModelFiles(modelPath, tokenizerDir).model);
    }
    throw err;
  }
}

/**
 * The single-text classifier of a model {@link openTaskModel} opened with the same flags, on its
 * session: a command that checked the task first does not load the model twice. The classifier takes
 * the session over (release it, not the task model).
 *
 * @throws as {@link openClassifier} for the output and its labels
 */
export async function classifierOfTaskModel(
  modelPath: string,
  model: TaskModel,
  flags: ParsedFlags,
): Promise<Classifier> {
  const files = findModelFiles(modelPath, flagString(flags, "tokenizer"));
  return classifierOfParts({ files, tokenizer: model.tokenizer, session: model.session });
}

/** Throws the codec's error for a file onnxruntime refused, if the codec finds one. */
async function explainLoadFailure(modelPath: string): Promise<void> {
  try {
    await loadModel(modelPath);
  } catch (err) {
    if (isQuantdError(err) && err.code.startsWith("MODEL_")) throw err;
  }
}
