/**
 * The HTTP API: Open Inference Protocol v2 (health, model metadata, infer),
 * quantd's `/v1/classify`, Prometheus `/metrics`, and registry admin routes
 * that only the Unix socket serves (its file mode is the access control; the
 * loopback TCP listener gets inference only).
 *
 * Every failure is a JSON body `{"error": QuantdError.toJSON()}` with a 4xx or
 * 5xx status chosen from the error code; nothing a client sends can crash the
 * process or leak a stack trace.
 */
import { isQuantdError, QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import { AGGREGATIONS, type Aggregation, groupEntities, type TokenInfo } from "../runtime/entities.ts";
import { inputsOf, type TaskKind, type TaskSpec } from "../runtime/task.ts";
import { checkTaskInputs, publicResult, type TaskResult } from "../runtime/task-model.ts";
import { validateText } from "../runtime/text.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type { MicroBatcher } from "./batcher.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";
import type { ServerMetrics } from "./server-metrics.ts";
import { statusFor } from "./status.ts";
import type { BatchResult, InferenceBackend, RegistryAdmin } from "./types.ts";

/** Which listener a request came in on. */
export type Listener = "unix" | "tcp";

/** Request size limits. */
export interface RequestLimits {
  maxBodyBytes: number;
  maxTexts: number;
  maxTextBytes: number;
  /** Most tokens in one request, counted by {@link RoutesOptions.countTokens} (unchecked without it). */
  maxRequestTokens?: number;
}

/** Everything the routes need. */
export interface RoutesOptions {
  /** The OIP model name (`/v2/models/{name}`). */
  modelName: string;
  backend: InferenceBackend;
  batcher: MicroBatcher;
  limits: RequestLimits;
  metrics: ServerMetrics;
  /** Registry admin routes; absent: not served. */
  admin?: RegistryAdmin;
  /** Tokens each text costs the model (up to its sequence limit), for `limits.maxRequestTokens`. */
  countTokens?: (texts: readonly string[]) => readonly number[] | Promise<readonly number[]>;
  /**
   * Called with the inputs (texts or pairs) of every successful request (traffic capture, drift), and
   * each text's token count when the budget check counted them (aligned with the inputs' texts, a pair
   * giving two), so that nobody tokenizes the request again.
   */
  onClassified?: (inputs: readonly TextInput[], tokenCounts: readonly number[] | undefined) => void;
  /** False while shutting down: readiness checks fail, requests already received still complete. */
  accepting?: () => boolean;
}

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/**
 * `Server-Timing: inference;dur=…`: the model's share of the request, so a
 * client can tell transport and queueing from inference.
 */
function serverTiming(out: BatchResult): Record<string, string> {
  return { "server-timing": `inference;dur=${out.inferenceMs.toFixed(3)}` };
}

/** The route template of a path, for metric labels (bounded cardinality). */
function routeOf(method: string, path: string): string {
  if (path.startsWith("/v2/models/")) {
    if (path.endsWith("/infer")) return "/v2/models/{name}/infer";
    if (path.endsWith("/ready")) return "/v2/models/{name}/ready";
    return "/v2/models/{name}";
  }
  const known = [
    "/v2/health/live",
    "/v2/health/ready",
    "/v2",
    "/v1/classify",
    "/v1/embed",
    "/v1/tokens",
    "/v1/models",
    "/v1/models/promote",
    "/v1/models/rollback",
    "/metrics",
  ];
  return known.includes(path) ? `${method} ${path}` : "other";
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Reads a body of undeclared length (chunked), refusing it as soon as it passes `maxBytes`. */
async function readLimited(
  req: Request,
  maxBytes: number,
  tooLarge: (n: string) => QuantdError,
): Promise<Uint8Array> {
  if (req.body === null) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => undefined);
      throw tooLarge(`more than ${maxBytes}`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

/**
 * Reads a JSON body within the size limit.
 *
 * @throws UNSUPPORTED_MEDIA_TYPE unless the content type is application/json
 * @throws REQUEST_TOO_LARGE when the body exceeds `maxBytes` (checked on Content-Length first, then while reading)
 * @throws REQUEST_INVALID when the body is not valid UTF-8 JSON
 */
export async function readJsonBody(req: Request, maxBytes: number): Promise<unknown> {
  const type = (req.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json") {
    throw new QuantdError(
      "UNSUPPORTED_MEDIA_TYPE",
      `content type must be application/json, got ${type === "" ? "none" : type}`,
      { details: { contentType: type } },
    );
  }
  const declared = Number(req.headers.get("content-length") ?? Number.NaN);
  const tooLarge = (n: number | string): QuantdError =>
    new QuantdError("REQUEST_TOO_LARGE", `request body is ${n} bytes, more than the limit of ${maxBytes}`, {
      details: { maxBytes },
    });
  if (Number.isFinite(declared) && declared > maxBytes) throw tooLarge(declared);
  let bytes: Uint8Array;
  // A declared length within the limit is what the server reads at most: one buffer, no stream.
  if (Number.isFinite(declared)) bytes = new Uint8Array(await req.arrayBuffer());
  else bytes = await readLimited(req, maxBytes, tooLarge);
  let text: string;
  try {
    text = STRICT_UTF8.decode(bytes);
  } catch (err) {
    throw new QuantdError("REQUEST_INVALID", "request body is not valid UTF-8", { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new QuantdError("REQUEST_INVALID", `request body is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * Checks a request's texts against the limits.
 *
 * @throws REQUEST_INVALID when it is not a non-empty array or has more than `maxTexts`
 * @throws TEXT_NOT_STRING | TEXT_EMPTY | TEXT_TOO_LARGE | TEXT_INVALID_UTF8 naming the bad index
 */
export function checkTexts(value: unknown, limits: RequestLimits, what = "texts"): string[] {
  if (!Array.isArray(value)) throw new QuantdError("REQUEST_INVALID", `${what} must be an array of strings`);
  if (value.length === 0)
    throw new QuantdError("REQUEST_INVALID", `${what} is empty: give at least one text`);
  if (value.length > limits.maxTexts) {
    throw new QuantdError(
      "REQUEST_TOO_LARGE",
      `${what} has ${value.length} texts, more than the limit of ${limits.maxTexts}`,
      {
        details: { count: value.length, maxTexts: limits.maxTexts },
      },
    );
  }
  return value.map((t, i) => validateText(t, { maxBytes: limits.maxTextBytes, what: `${what}[${i}]` }));
}

/**
 * Pairs from a request's `pairs`: a list of `[a, b]` lists of two texts.
 *
 * @throws REQUEST_INVALID / REQUEST_TOO_LARGE / TEXT_* as {@link checkTexts}, naming the bad pair
 */
export function checkPairs(value: unknown, limits: RequestLimits, what = "pairs"): [string, string][] {
  if (!Array.isArray(value))
    throw new QuantdError("REQUEST_INVALID", `${what} must be a list of [text, text] pairs`);
  if (value.length === 0)
    throw new QuantdError("REQUEST_INVALID", `${what} is empty: give at least one pair`);
  // A pair is two texts: the text limit counts both.
  if (value.length * 2 > limits.maxTexts) {
    throw new QuantdError(
      "REQUEST_TOO_LARGE",
      `${what} has ${value.length} pairs (${value.length * 2} texts), more than the limit of ${limits.maxTexts} texts`,
      { details: { count: value.length * 2, maxTexts: limits.maxTexts } },
    );
  }
  return value.map((p, i) => {
    if (!Array.isArray(p) || p.length !== 2) {
      throw new QuantdError("REQUEST_INVALID", `${what}[${i}] must be a list of two texts [a, b]`, {
        details: { index: i },
      });
    }
    const text = (t: unknown, k: number) =>
      validateText(t, { maxBytes: limits.maxTextBytes, what: `${what}[${i}][${k}]` });
    return [text(p[0], 0), text(p[1], 1)];
  });
}

/** Parsed OIP v2 inference request. */
interface InferRequest {
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

function parseInfer(body: unknown, limits: RequestLimits, task: TaskSpec): InferRequest {
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
        ? `the model is a ${task.kind} model: its input is [n, 2] (a pair of texts per row), got shape [${shape.join(", ")}]`
        : `the model is a ${task.kind} model: its input is one text per row ([n] or [n, 1]), got shape [${shape.join(", ")}]`,
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
function oipOutput(name: string, results: readonly TaskResult[], task: TaskSpec): Record<string, unknown> {
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

/** The route serving each task's simple API. */
const ROUTE_OF_TASK: Readonly<Record<TaskKind, string>> = {
  classification: "/v1/classify",
  "pair-classification": "/v1/classify",
  "multi-label": "/v1/classify",
  regression: "/v1/classify",
  "token-classification": "/v1/tokens",
  embedding: "/v1/embed",
};

/**
 * A %-decoded path segment.
 *
 * @throws REQUEST_INVALID on a malformed escape (`%ZZ`, a lone `%`, bytes that are not UTF-8)
 */
function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new QuantdError("REQUEST_INVALID", `malformed %-escape in path segment ${JSON.stringify(segment)}`);
  }
}

/** A `/v1/classify` result: label, score and logits (classification, pairs), as the task has them otherwise. */
function classifyResult(r: TaskResult): Record<string, unknown> {
  if (r.task === "classification" || r.task === "pair-classification") {
    return { label: r.label, score: r.score, logits: r.logits };
  }
  const { task: _task, ...rest } = publicResult(r);
  return rest;
}

/** A request's `aggregation`, `simple` when absent. @throws REQUEST_INVALID */
function aggregationOf(value: unknown): Aggregation {
  if (value === undefined) return "simple";
  const hit = AGGREGATIONS.find((a) => a === value);
  if (hit === undefined) {
    throw new QuantdError(
      "REQUEST_INVALID",
      `aggregation must be one of ${AGGREGATIONS.join(", ")}, got ${JSON.stringify(value)}`,
    );
  }
  return hit;
}

/** Builds the request handler. */
export function createRoutes(opts: RoutesOptions): (req: Request, listener: Listener) => Promise<Response> {
  const { backend, batcher, limits, metrics, modelName } = opts;

  const requireLoaded = (): void => {
    if (backend.active() === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
  };
  // A stopping agent says so to health checks (load balancers, systemd) but still finishes requests that
  // reached it: the listener has stopped accepting connections by then.
  const requireReady = (): void => {
    if (opts.accepting !== undefined && !opts.accepting()) {
      throw new QuantdError("NOT_READY", "the agent is shutting down");
    }
    requireLoaded();
  };
  const requireModel = (name: string): void => {
    if (name !== modelName) {
      throw new QuantdError(
        "NOT_FOUND",
        `no model named ${JSON.stringify(name)}; this agent serves ${modelName}`,
        {
          details: { models: [modelName] },
        },
      );
    }
  };
  /** The serving model's task. @throws NOT_READY before a model is loaded */
  const activeTask = (): TaskSpec => {
    const m = backend.active();
    if (m === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
    return m.task;
  };
  /** Refuses a route the serving model's task does not answer, naming the one it does. */
  const requireRoute = (route: string): TaskSpec => {
    const task = activeTask();
    if (ROUTE_OF_TASK[task.kind] !== route) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `this agent's model does ${task.kind}: use POST ${ROUTE_OF_TASK[task.kind]} (or /v2/models/${modelName}/infer), not ${route}`,
        { details: { task: task.kind, route: ROUTE_OF_TASK[task.kind] } },
      );
    }
    return task;
  };
  // Inputs are checked against the task here, per request: in a batch, one request's bad input would fail the others.
  const classify = async (inputs: TextInput[]): Promise<BatchResult> => {
    checkTaskInputs(activeTask(), inputs, modelName);
    const texts = inputs.flatMap((x) => (typeof x === "string" ? [x] : [x[0], x[1]]));
    const tokenCounts = await checkTokenBudget(texts);
    const out = await batcher.submit(inputs);
    opts.onClassified?.(inputs, tokenCounts);
    return out;
  };

  // A request within the byte limits can still cost minutes of inference (hundreds of texts at the model's
  // sequence limit): refuse it before it holds the model.
  const checkTokenBudget = async (texts: readonly string[]): Promise<readonly number[] | undefined> => {
    const max = limits.maxRequestTokens;
    if (max === undefined || opts.countTokens === undefined) return undefined;
    const counts = await opts.countTokens(texts);
    let tokens = 0;
    for (const n of counts) tokens += n;
    if (tokens > max) {
      throw new QuantdError(
        "REQUEST_TOO_LARGE",
        `the texts hold ${tokens} tokens, more than the limit of ${max} per request (limits.maxRequestTokens); split the request`,
        { details: { tokens, maxRequestTokens: max } },
      );
    }
    return counts;
  };

  const metadata = (): Record<string, unknown> => {
    const m = backend.active();
    const pairs = m !== undefined && inputsOf(m.task.kind) === "pair";
    return {
      name: modelName,
      versions: m === undefined ? [] : [String(m.version)],
      platform: "onnxruntime_onnx",
      inputs: [{ name: "text", datatype: "BYTES", shape: pairs ? [-1, 2] : [-1] }],
      outputs: m === undefined ? [] : oipOutputsOf(m.task),
      parameters:
        m === undefined ? {} : { kind: m.kind, sha256: m.sha256, labels: [...m.labels], task: m.task.kind },
    };
  };

  async function dispatch(req: Request, url: URL, listener: Listener): Promise<Response> {
    const method = req.method;
    const path = url.pathname;
    const allow = (...methods: string[]): void => {
      if (!methods.includes(method)) {
        throw new QuantdError(
          "REQUEST_INVALID",
          `${method} is not allowed on ${path}; use ${methods.join(" or ")}`,
          {
            details: { status: 405 },
          },
        );
      }
    };

    if (path === "/v2/health/live") {
      allow("GET", "HEAD");
      return json({ live: true });
    }
    if (path === "/v2/health/ready") {
      allow("GET", "HEAD");
      requireReady();
      return json({ ready: true });
    }
    if (path === "/v2") {
      allow("GET");
      return json({ name: "quantd", version: "0.1.0", extensions: [] });
    }
    if (path === "/metrics") {
      allow("GET");
      return new Response(metrics.registry.render(), {
        headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
      });
    }
    const model = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(\/ready|\/infer)?$/.exec(path);
    if (model !== null) {
      const name = decodePathSegment(model[1]!);
      requireModel(name);
      const version = model[2];
      const active = backend.active();
      if (version !== undefined && (active === undefined || String(active.version) !== version)) {
        throw new QuantdError("NOT_FOUND", `version ${version} of ${name} is not the serving version`, {
          details: { serving: active?.version },
        });
      }
      switch (model[3]) {
        case undefined:
          allow("GET");
          return json(metadata());
        case "/ready":
          allow("GET");
          requireReady();
          return json({ name, ready: true });
        default: {
          allow("POST");
          const task = activeTask();
          const request = parseInfer(await readJsonBody(req, limits.maxBodyBytes), limits, task);
          const out = await classify(request.inputs);
          const body: Record<string, unknown> = {
            model_name: name,
            model_version: String(out.model.version),
            parameters: { kind: out.model.kind, task: task.kind },
            outputs: request.outputs.map((o) => oipOutput(o, out.results, task)),
          };
          if (request.id !== undefined) body["id"] = request.id;
          return json(body, 200, serverTiming(out));
        }
      }
    }
    if (path === "/v1/classify") {
      allow("POST");
      const body = await readJsonBody(req, limits.maxBodyBytes);
      if (!isRecord(body))
        throw new QuantdError(
          "REQUEST_INVALID",
          'body must be an object {"texts": [...]} or {"pairs": [[a, b], ...]}',
        );
      if ("texts" in body === "pairs" in body)
        throw new QuantdError(
          "REQUEST_INVALID",
          'body must have either "texts" (a list of strings) or "pairs" (a list of [a, b] lists)',
        );
      requireRoute(path);
      const inputs: TextInput[] =
        "pairs" in body ? checkPairs(body["pairs"], limits) : checkTexts(body["texts"], limits);
      const out = await classify(inputs);
      return json({ results: out.results.map(classifyResult), model: out.model }, 200, serverTiming(out));
    }
    if (path === "/v1/embed") {
      allow("POST");
      const body = await readJsonBody(req, limits.maxBodyBytes);
      if (!isRecord(body) || !("texts" in body))
        throw new QuantdError(
          "REQUEST_INVALID",
          'body must be an object {"texts": [...], "encoding"?: "float|base64"}',
        );
      const encoding = body["encoding"] ?? "float";
      if (encoding !== "float" && encoding !== "base64") {
        throw new QuantdError(
          "REQUEST_INVALID",
          `encoding must be float or base64, got ${JSON.stringify(encoding)}`,
        );
      }
      const task = requireRoute(path);
      const out = await classify(checkTexts(body["texts"], limits));
      const vectors = out.results.map((r) => (r.task === "embedding" ? r.embedding : []));
      // Printing floats as JSON numbers costs more than the model for a short text (~1 µs each); base64 of
      // little-endian float32 is what clients that handle many vectors ask for.
      const embeddings =
        encoding === "float"
          ? vectors
          : vectors.map((v) => Buffer.from(Float32Array.from(v).buffer).toString("base64"));
      return json(
        {
          embeddings,
          encoding,
          dimensions: vectors[0]?.length ?? 0,
          normalized: task.normalize === true,
          ...(task.pooling !== undefined ? { pooling: task.pooling } : {}),
          model: out.model,
        },
        200,
        serverTiming(out),
      );
    }
    if (path === "/v1/tokens") {
      allow("POST");
      const body = await readJsonBody(req, limits.maxBodyBytes);
      if (!isRecord(body) || !("texts" in body))
        throw new QuantdError(
          "REQUEST_INVALID",
          'body must be an object {"texts": [...], "aggregation"?: "none|simple|first|average|max"}',
        );
      const aggregation = aggregationOf(body["aggregation"]);
      const task = requireRoute(path);
      const out = await classify(checkTexts(body["texts"], limits));
      const results = out.results.map((r) =>
        r.task === "token-classification"
          ? {
              entities:
                aggregation === "simple"
                  ? r.entities
                  : groupEntities(r.text, r.infos, task.labels, aggregation),
              tokens: r.tokens,
            }
          : {},
      );
      return json({ results, aggregation, model: out.model }, 200, serverTiming(out));
    }
    if (path.startsWith("/v1/models") && opts.admin !== undefined && listener === "unix") {
      const admin = opts.admin;
      if (path === "/v1/models") {
        allow("GET");
        return json({ active: backend.active()?.version ?? null, versions: admin.list() });
      }
      if (path === "/v1/models/promote") {
        allow("POST");
        const body = await readJsonBody(req, limits.maxBodyBytes);
        if (!isRecord(body) || typeof body["path"] !== "string" || body["path"] === "") {
          throw new QuantdError(
            "REQUEST_INVALID",
            'body must be {"path": "/abs/model.onnx", "metrics"?: {...}}',
          );
        }
        const m = body["metrics"];
        if (m !== undefined && !isRecord(m))
          throw new QuantdError("REQUEST_INVALID", "metrics must be an object");
        const version = await admin.promote(body["path"], m === undefined ? {} : { metrics: m });
        return json({ version });
      }
      if (path === "/v1/models/rollback") {
        allow("POST");
        let reason = "requested over the socket";
        if (req.headers.get("content-length") !== "0" && req.body !== null) {
          const body = await readJsonBody(req, limits.maxBodyBytes);
          if (isRecord(body) && typeof body["reason"] === "string") reason = body["reason"];
        }
        const version = await admin.rollback(reason);
        return json({ version });
      }
    }
    throw new QuantdError("NOT_FOUND", `no route ${method} ${path}`);
  }

  return async (req, listener) => {
    const t0 = performance.now();
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      url = new URL("http://localhost/");
    }
    const route = routeOf(req.method, url.pathname);
    let res: Response;
    try {
      res = await dispatch(req, url, listener);
    } catch (err) {
      const qe = isQuantdError(err) ? err : QuantdError.from(err, "INTERNAL");
      let status = statusFor(qe.code);
      const headers: Record<string, string> = {};
      if (qe.details?.["status"] === 405) {
        status = 405;
      }
      if (status === 503) {
        const retry = qe.details?.["retryAfterSeconds"];
        headers["retry-after"] = String(typeof retry === "number" ? retry : 1);
      }
      metrics.errors.inc({ code: qe.code });
      res = json({ error: qe.toJSON() }, status, headers);
    }
    metrics.requests.inc({ route, status: String(res.status) });
    metrics.latency.observe((performance.now() - t0) / 1000, { route });
    return res;
  };
}
