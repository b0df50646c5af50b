/**
 * Open Inference Protocol v2 in quantd's terms: the outputs each task answers
 * with, the model metadata, an inference request read into texts or pairs, and
 * a batch's results written back as OIP tensors.
 */
import { QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import type { TokenInfo } from "../runtime/entities.ts";
import { inputsOf, type TaskSpec, taskModelNoun } from "../runtime/task.ts";
import type { TaskResult } from "../runtime/task-model.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import { checkTexts, type RequestLimits } from "./request-body.ts";
import type { ActiveModelInfo } from "./types.ts";

/** Parsed OIP v2 inference request. */
export interface InferRequest {
  id?: string;
  inputs: TextInput[];
  /** Output names to return, in order. */
  outputs: string[];
}

/** The OIP outputs a task's model answers with, and their shapes (`-1`: the batch). */
export function oipOutputsOf(task: TaskSpec): { name: string; datatype: string; shape: number[] }[] {
  const n = task.labels.length;
  switch (task.kind) {
    case "classification":
    case "pair-classification":
      return [
        { name: "logits", datatype: "FP32", shape: [-1, n] },
        { name: "label", datatype: "BYTES", shape: [-1] },
        { name: "probabilities", datatype: "FP32", shape: [-1, n] },
      ];
    case "multi-label":
      return [
        { name: "logits", datatype: "FP32", shape: [-1, n] },
        { name: "probabilities", datatype: "FP32", shape: [-1, n] },
        { name: "active", datatype: "BOOL", shape: [-1, n] },
      ];
    case "regression":
      return [
        { name: "logits", datatype: "FP32", shape: [-1, n] },
        { name: "value", datatype: "FP32", shape: [-1] },
      ];
    case "token-classification":
      // Entities are records of varying count: one JSON text per input, as OIP carries structured data.
      // Per-token tensors are padded to the request's longest sequence: `token_count` says how many rows are real.
      return [
        { name: "entities", datatype: "BYTES", shape: [-1] },
        { name: "logits", datatype: "FP32", shape: [-1, -1, n] },
        { name: "offsets", datatype: "INT32", shape: [-1, -1, 2] },
        { name: "token_count", datatype: "INT32", shape: [-1] },
      ];
    case "embedding":
      return [{ name: "embedding", datatype: "FP32", shape: [-1, -1] }];
  }
}

/**
 * Reads an OIP v2 inference request for a model of `task`.
 *
 * @throws REQUEST_INVALID / REQUEST_TOO_LARGE / TEXT_* on a malformed request; DATA_MISMATCH on a shape the task does not take
 */
export function parseInfer(body: unknown, limits: RequestLimits, task: TaskSpec): InferRequest {
  if (!isRecord(body)) throw new QuantdError("REQUEST_INVALID", "inference request must be a JSON object");
  const inputs = body["inputs"];
  if (!Array.isArray(inputs) || inputs.length !== 1 || !isRecord(inputs[0])) {
    throw new QuantdError(
      "REQUEST_INVALID",
      "inputs must hold exactly one tensor: {name, shape, datatype: BYTES, data}",
    );
  }
  const input = inputs[0];
  if (input["datatype"] !== "BYTES") {
    throw new QuantdError(
      "REQUEST_INVALID",
      `input datatype must be BYTES (UTF-8 text), got ${JSON.stringify(input["datatype"])}`,
    );
  }
  const shape = input["shape"];
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new QuantdError("REQUEST_INVALID", "input shape must be a list of non-negative integers, e.g. [2]");
  }
  const pairs = inputsOf(task.kind) === "pair";
  if (pairs !== (shape.length === 2 && shape[1] === 2)) {
    throw new QuantdError(
      "DATA_MISMATCH",
      pairs
        ? `the model is ${taskModelNoun(task.kind)}: its input is [n, 2] (a pair of texts per row), got shape [${shape.join(", ")}]`
        : `the model is ${taskModelNoun(task.kind)}: its input is one text per row ([n] or [n, 1]), got shape [${shape.join(", ")}]`,
      { details: { task: task.kind, shape } },
    );
  }
  const raw = input["data"];
  // OIP allows nested row-major data; one level of nesting is what [n, 1] and [n, 2] shapes produce.
  const data = Array.isArray(raw) ? raw.flat() : raw;
  const texts = checkTexts(data, limits, "inputs[0].data");
  const elements = shape.reduce((a: number, d: number) => a * d, 1);
  if (elements !== texts.length) {
    throw new QuantdError(
      "REQUEST_INVALID",
      `input shape [${shape.join(", ")}] holds ${elements} elements but data has ${texts.length}`,
    );
  }
  const rows: TextInput[] = pairs
    ? Array.from({ length: texts.length / 2 }, (_, i) => [texts[2 * i]!, texts[2 * i + 1]!] as const)
    : texts;
  const names = oipOutputsOf(task).map((o) => o.name);
  let outputs = names;
  const requested = body["outputs"];
  if (requested !== undefined) {
    if (!Array.isArray(requested))
      throw new QuantdError("REQUEST_INVALID", "outputs must be a list of {name}");
    outputs = requested.map((o, i) => {
      const name = isRecord(o) ? o["name"] : undefined;
      const hit = names.find((n) => n === name);
      if (hit === undefined) {
        throw new QuantdError(
          "REQUEST_INVALID",
          `outputs[${i}]: unknown output ${JSON.stringify(name)}; the model has ${names.join(", ")}`,
        );
      }
      return hit;
    });
  }
  const out: InferRequest = { inputs: rows, outputs };
  if (body["id"] !== undefined) {
    if (typeof body["id"] !== "string") throw new QuantdError("REQUEST_INVALID", "id must be a string");
    out.id = body["id"];
  }
  return out;
}

/** One OIP output tensor of a batch's results. */
export function oipOutput(
  name: string,
  results: readonly TaskResult[],
  task: TaskSpec,
): Record<string, unknown> {
  const n = results.length;
  const cols = task.labels.length;
  const tensor = (datatype: string, shape: number[], data: unknown[]) => ({ name, datatype, shape, data });
  const pick = <T>(f: (r: TaskResult) => T[] | T): T[] => results.flatMap((r) => f(r));
  if (task.kind === "token-classification" && name !== "entities") return tokenTensor(name, results, cols);
  switch (name) {
    case "logits":
      return tensor(
        "FP32",
        [n, cols],
        pick((r) => ("logits" in r ? r.logits : "values" in r ? r.values : [])),
      );
    case "probabilities":
      return tensor(
        "FP32",
        [n, cols],
        pick((r) =>
          r.task === "multi-label"
            ? r.labels.map((l) => l.score)
            : "probabilities" in r
              ? r.probabilities
              : [],
        ),
      );
    case "label":
      return tensor(
        "BYTES",
        [n],
        pick((r) => ("label" in r ? r.label : "")),
      );
    case "active":
      return tensor(
        "BOOL",
        [n, cols],
        pick((r) => (r.task === "multi-label" ? r.labels.map((l) => l.on) : [])),
      );
    case "value":
      return tensor(
        "FP32",
        [n],
        pick((r) => (r.task === "regression" ? r.value : 0)),
      );
    case "entities":
      return tensor(
        "BYTES",
        [n],
        pick((r) => (r.task === "token-classification" ? JSON.stringify(r.entities) : "[]")),
      );
    case "embedding": {
      const width = results[0]?.task === "embedding" ? results[0].embedding.length : 0;
      return tensor(
        "FP32",
        [n, width],
        pick((r) => (r.task === "embedding" ? r.embedding : [])),
      );
    }
    default:
      throw new QuantdError("INTERNAL", `unknown output ${name}`);
  }
}

/**
 * A per-token output of a token classifier's results: `logits` [n, tokens, labels],
 * `offsets` [n, tokens, 2] (character span in the text, -1 for [CLS]/[SEP]) and
 * `token_count` [n]. Every token of the encoding is there, special ones included,
 * so row j is the model's position j; rows past an input's count are zeros (-1 offsets).
 */
function tokenTensor(name: string, results: readonly TaskResult[], cols: number): Record<string, unknown> {
  const infos = results.map((r) => (r.task === "token-classification" ? r.infos : []));
  const longest = Math.max(0, ...infos.map((t) => t.length));
  const padded = (row: (t: TokenInfo | undefined) => number[]): number[] =>
    infos.flatMap((t) => Array.from({ length: longest }, (_, j) => row(t[j])).flat());
  switch (name) {
    case "logits":
      return {
        name,
        datatype: "FP32",
        shape: [results.length, longest, cols],
        data: padded((t) => (t === undefined ? new Array<number>(cols).fill(0) : Array.from(t.logits))),
      };
    case "offsets":
      return {
        name,
        datatype: "INT32",
        shape: [results.length, longest, 2],
        data: padded((t) => [t?.start ?? -1, t?.end ?? -1]),
      };
    case "token_count":
      return { name, datatype: "INT32", shape: [results.length], data: infos.map((t) => t.length) };
    default:
      throw new QuantdError("INTERNAL", `unknown output ${name}`);
  }
}

/** The OIP model metadata of `name`, served by `active` (no versions, inputs or outputs before a model is loaded). */
export function oipMetadata(name: string, active: ActiveModelInfo | undefined): Record<string, unknown> {
  const pairs = active !== undefined && inputsOf(active.task.kind) === "pair";
  return {
    name,
    versions: active === undefined ? [] : [String(active.version)],
    platform: "onnxruntime_onnx",
    inputs: [{ name: "text", datatype: "BYTES", shape: pairs ? [-1, 2] : [-1] }],
    outputs: active === undefined ? [] : oipOutputsOf(active.task),
    parameters:
      active === undefined
        ? {}
        : { kind: active.kind, sha256: active.sha256, labels: [...active.labels], task: active.task.kind },
  };
}
