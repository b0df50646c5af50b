/**
 * The HTTP API: Open Inference Protocol v2 (health, model metadata, infer),
 * quantd's `/v1/classify`, `/v1/embed` and `/v1/tokens`, Prometheus
 * `/metrics`, and registry admin routes that only the Unix socket serves (its
 * file mode is the access control; the loopback TCP listener gets inference
 * only).
 *
 * One table, {@link ROUTES}, names every route: its path, the methods it
 * allows, its handler and (from its path) its metrics label. Dispatch and the
 * request metrics both read it, so a new route is one row and one handler.
 *
 * Every failure is a JSON body `{"error": QuantdError.toJSON()}` with a 4xx or
 * 5xx status chosen from the error code; nothing a client sends can crash the
 * process or leak a stack trace.
 */
import { isQuantdError, QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import { AGGREGATIONS, type Aggregation, groupEntities } from "../runtime/entities.ts";
import type { TaskKind, TaskSpec } from "../runtime/task.ts";
import { checkTaskInputs, publicResult, type TaskResult } from "../runtime/task-model.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type { MicroBatcher } from "./batcher.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";
import { oipMetadata, oipOutput, parseInfer } from "./oip.ts";
import { checkPairs, checkTexts, type RequestLimits, readJsonBody } from "./request-body.ts";
import type { ServerMetrics } from "./server-metrics.ts";
import { statusFor } from "./status.ts";
import type { BatchResult, InferenceBackend, RegistryAdmin } from "./types.ts";

export type { RequestLimits } from "./request-body.ts";

/** Which listener a request came in on. */
export type Listener = "unix" | "tcp";

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

/** A request a route matched, as its handler sees it. */
interface RouteRequest {
  req: Request;
  /** The `{name}` segment of a model route, %-decoded. */
  name: string;
}

/** Answers one route's requests. */
type Handler = (s: Serving, r: RouteRequest) => Response | Promise<Response>;

/** One row of the route table. */
interface Route {
  /** The documented path; `{name}` stands for the model name (and an optional `/versions/{version}`). */
  path: string;
  methods: readonly string[];
  handler: Handler;
  /** Served on the Unix socket only, and only when the agent has a registry (admin routes). */
  admin?: true;
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

/** A JSON reply with the batch's inference time as `Server-Timing`. */
function timed(body: unknown, out: BatchResult): Response {
  return json(body, 200, serverTiming(out));
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

/**
 * What the handlers share: the options, and the checks and the inference call
 * every inference route makes the same way.
 */
class Serving {
  constructor(readonly opts: RoutesOptions) {}

  /** @throws NOT_READY while shutting down or before a model is loaded */
  requireReady(): void {
    // A stopping agent says so to health checks (load balancers, systemd) but still finishes requests that
    // reached it: the listener has stopped accepting connections by then.
    if (this.opts.accepting !== undefined && !this.opts.accepting()) {
      throw new QuantdError("NOT_READY", "the agent is shutting down");
    }
    this.activeTask();
  }

  /** The serving model's task. @throws NOT_READY before a model is loaded */
  activeTask(): TaskSpec {
    const m = this.opts.backend.active();
    if (m === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
    return m.task;
  }

  /** Refuses a route the serving model's task does not answer, naming the one it does. */
  requireRoute(route: string): TaskSpec {
    const task = this.activeTask();
    if (ROUTE_OF_TASK[task.kind] !== route) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `this agent's model does ${task.kind}: use POST ${ROUTE_OF_TASK[task.kind]} (or /v2/models/${this.opts.modelName}/infer), not ${route}`,
        { details: { task: task.kind, route: ROUTE_OF_TASK[task.kind] } },
      );
    }
    return task;
  }

  /** The registry admin. Dispatch serves admin routes only when there is one. */
  admin(): RegistryAdmin {
    if (this.opts.admin === undefined) throw new QuantdError("INTERNAL", "admin route without a registry");
    return this.opts.admin;
  }

  /** The request's JSON body within the size limit. */
  body(req: Request): Promise<unknown> {
    return readJsonBody(req, this.opts.limits.maxBodyBytes);
  }

  /** A body of the shape `{"texts": [...], ...}`. @throws REQUEST_INVALID naming `usage` otherwise */
  async textsBody(req: Request, usage: string): Promise<Record<string, unknown>> {
    const body = await this.body(req);
    if (!isRecord(body) || !("texts" in body))
      throw new QuantdError("REQUEST_INVALID", `body must be an object ${usage}`);
    return body;
  }

  /** Runs inputs through the batcher on the serving model. */
  async classify(inputs: TextInput[]): Promise<BatchResult> {
    // Inputs are checked against the task here, per request: in a batch, one request's bad input would fail the others.
    checkTaskInputs(this.activeTask(), inputs, this.opts.modelName);
    const texts = inputs.flatMap((x) => (typeof x === "string" ? [x] : [x[0], x[1]]));
    const tokenCounts = await this.checkTokenBudget(texts);
    const out = await this.opts.batcher.submit(inputs);
    this.opts.onClassified?.(inputs, tokenCounts);
    return out;
  }

  // A request within the byte limits can still cost minutes of inference (hundreds of texts at the model's
  // sequence limit): refuse it before it holds the model.
  private async checkTokenBudget(texts: readonly string[]): Promise<readonly number[] | undefined> {
    const max = this.opts.limits.maxRequestTokens;
    if (max === undefined || this.opts.countTokens === undefined) return undefined;
    const counts = await this.opts.countTokens(texts);
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
  }
}

// ---- Handlers, in the order of the table.

function healthLive(): Response {
  return json({ live: true });
}

function healthReady(s: Serving): Response {
  s.requireReady();
  // Ready, but not with the model the agent was started with: say so (the status stays 200, it serves).
  const rejected = s.opts.backend.active()?.rejectedAtStart;
  return json(
    rejected === undefined ? { ready: true } : { ready: true, degraded: { rejectedAtStart: rejected } },
  );
}

function serverMetadata(): Response {
  return json({ name: "quantd", version: "0.1.0", extensions: [] });
}

function prometheusMetrics(s: Serving): Response {
  return new Response(s.opts.metrics.registry.render(), {
    headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
  });
}

function modelMetadata(s: Serving): Response {
  return json(oipMetadata(s.opts.modelName, s.opts.backend.active()));
}

function modelReady(s: Serving, { name }: RouteRequest): Response {
  s.requireReady();
  return json({ name, ready: true });
}

async function modelInfer(s: Serving, { req, name }: RouteRequest): Promise<Response> {
  const task = s.activeTask();
  const request = parseInfer(await s.body(req), s.opts.limits, task);
  const out = await s.classify(request.inputs);
  const body: Record<string, unknown> = {
    model_name: name,
    model_version: String(out.model.version),
    parameters: { kind: out.model.kind, task: task.kind },
    outputs: request.outputs.map((o) => oipOutput(o, out.results, task)),
  };
  if (request.id !== undefined) body["id"] = request.id;
  return timed(body, out);
}

async function classifyTexts(s: Serving, { req }: RouteRequest): Promise<Response> {
  const body = await s.body(req);
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
  s.requireRoute("/v1/classify");
  const limits = s.opts.limits;
  const inputs: TextInput[] =
    "pairs" in body ? checkPairs(body["pairs"], limits) : checkTexts(body["texts"], limits);
  const out = await s.classify(inputs);
  return timed({ results: out.results.map(classifyResult), model: out.model }, out);
}

async function embedTexts(s: Serving, { req }: RouteRequest): Promise<Response> {
  const body = await s.textsBody(req, '{"texts": [...], "encoding"?: "float|base64"}');
  const encoding = body["encoding"] ?? "float";
  if (encoding !== "float" && encoding !== "base64") {
    throw new QuantdError(
      "REQUEST_INVALID",
      `encoding must be float or base64, got ${JSON.stringify(encoding)}`,
    );
  }
  const task = s.requireRoute("/v1/embed");
  const out = await s.classify(checkTexts(body["texts"], s.opts.limits));
  const vectors = out.results.map((r) => (r.task === "embedding" ? r.embedding : []));
  // Printing floats as JSON numbers costs more than the model for a short text (~1 µs each); base64 of
  // little-endian float32 is what clients that handle many vectors ask for.
  const embeddings =
    encoding === "float"
      ? vectors
      : vectors.map((v) => Buffer.from(Float32Array.from(v).buffer).toString("base64"));
  return timed(
    {
      embeddings,
      encoding,
      dimensions: vectors[0]?.length ?? 0,
      normalized: task.normalize === true,
      ...(task.pooling !== undefined ? { pooling: task.pooling } : {}),
      model: out.model,
    },
    out,
  );
}

async function tokenEntities(s: Serving, { req }: RouteRequest): Promise<Response> {
  const body = await s.textsBody(req, '{"texts": [...], "aggregation"?: "none|simple|first|average|max"}');
  const aggregation = aggregationOf(body["aggregation"]);
  const task = s.requireRoute("/v1/tokens");
  const out = await s.classify(checkTexts(body["texts"], s.opts.limits));
  const results = out.results.map((r) =>
    r.task === "token-classification"
      ? {
          entities:
            aggregation === "simple" ? r.entities : groupEntities(r.text, r.infos, task.labels, aggregation),
          tokens: r.tokens,
        }
      : {},
  );
  return timed({ results, aggregation, model: out.model }, out);
}

function listModels(s: Serving): Response {
  const active = s.opts.backend.active();
  return json({
    active: active?.version ?? null,
    versions: s.admin().list(),
    ...(active?.rejectedAtStart === undefined ? {} : { rejectedAtStart: active.rejectedAtStart }),
  });
}

async function promoteModel(s: Serving, { req }: RouteRequest): Promise<Response> {
  const body = await s.body(req);
  if (!isRecord(body) || typeof body["path"] !== "string" || body["path"] === "") {
    throw new QuantdError("REQUEST_INVALID", 'body must be {"path": "/abs/model.onnx", "metrics"?: {...}}');
  }
  const m = body["metrics"];
  if (m !== undefined && !isRecord(m)) throw new QuantdError("REQUEST_INVALID", "metrics must be an object");
  const version = await s.admin().promote(body["path"], m === undefined ? {} : { metrics: m });
  return json({ version });
}

async function rollbackModel(s: Serving, { req }: RouteRequest): Promise<Response> {
  let reason = "requested over the socket";
  // The body is optional: a bare POST rolls back with the default reason.
  if (req.headers.get("content-length") !== "0" && req.body !== null) {
    const body = await s.body(req);
    if (isRecord(body) && typeof body["reason"] === "string") reason = body["reason"];
  }
  const version = await s.admin().rollback(reason);
  return json({ version });
}

/** Every route the agent serves. */
const ROUTES: readonly Route[] = [
  { path: "/v2/health/live", methods: ["GET", "HEAD"], handler: healthLive },
  { path: "/v2/health/ready", methods: ["GET", "HEAD"], handler: healthReady },
  { path: "/v2", methods: ["GET"], handler: serverMetadata },
  { path: "/metrics", methods: ["GET"], handler: prometheusMetrics },
  { path: "/v2/models/{name}", methods: ["GET"], handler: modelMetadata },
  { path: "/v2/models/{name}/ready", methods: ["GET"], handler: modelReady },
  { path: "/v2/models/{name}/infer", methods: ["POST"], handler: modelInfer },
  { path: "/v1/classify", methods: ["POST"], handler: classifyTexts },
  { path: "/v1/embed", methods: ["POST"], handler: embedTexts },
  { path: "/v1/tokens", methods: ["POST"], handler: tokenEntities },
  { path: "/v1/models", methods: ["GET"], handler: listModels, admin: true },
  { path: "/v1/models/promote", methods: ["POST"], handler: promoteModel, admin: true },
  { path: "/v1/models/rollback", methods: ["POST"], handler: rollbackModel, admin: true },
];

/** A route's path matcher: `{name}` is one segment, optionally followed by `/versions/{version}`. */
function patternOf(path: string): RegExp | undefined {
  if (!path.includes("{name}")) return undefined;
  return new RegExp(`^${path.replace("{name}", "([^/]+)(?:/versions/([^/]+))?")}$`);
}

const MATCHERS = ROUTES.map((route) => ({ route, pattern: patternOf(route.path) }));

/** The route a path names, with its pattern's match (templated routes only). */
interface Found {
  route: Route;
  segments?: RegExpExecArray;
}

function findRoute(path: string): Found | undefined {
  for (const { route, pattern } of MATCHERS) {
    if (pattern === undefined) {
      if (route.path === path) return { route };
      continue;
    }
    const segments = pattern.exec(path);
    if (segments !== null) return { route, segments };
  }
  return undefined;
}

/**
 * The metrics label of a request (bounded cardinality): `METHOD path` for a fixed path, the template for a
 * model route (whose name and version would be unbounded), `other` for a path no route serves.
 */
function metricsLabel(method: string, found: Found | undefined): string {
  if (found === undefined) return "other";
  return found.segments === undefined ? `${method} ${found.route.path}` : found.route.path;
}

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

/**
 * The model a model route names, checked before its method: this agent's model, and the serving version
 * when the path names one.
 *
 * @throws REQUEST_INVALID on a malformed name; NOT_FOUND on another model or version
 */
function servedModelName(s: Serving, segments: RegExpExecArray): string {
  const { modelName, backend } = s.opts;
  const name = decodePathSegment(segments[1]!);
  if (name !== modelName) {
    throw new QuantdError(
      "NOT_FOUND",
      `no model named ${JSON.stringify(name)}; this agent serves ${modelName}`,
      {
        details: { models: [modelName] },
      },
    );
  }
  const version = segments[2];
  const active = backend.active();
  if (version !== undefined && (active === undefined || String(active.version) !== version)) {
    throw new QuantdError("NOT_FOUND", `version ${version} of ${name} is not the serving version`, {
      details: { serving: active?.version },
    });
  }
  return name;
}

/** @throws REQUEST_INVALID with status 405 when the route does not take `method` */
function allowMethod(route: Route, method: string, path: string): void {
  if (!route.methods.includes(method)) {
    throw new QuantdError(
      "REQUEST_INVALID",
      `${method} is not allowed on ${path}; use ${route.methods.join(" or ")}`,
      {
        details: { status: 405 },
      },
    );
  }
}

/** Runs the route's handler after the checks every route shares. @throws NOT_FOUND when no route serves the path here */
function dispatch(
  s: Serving,
  req: Request,
  path: string,
  found: Found | undefined,
  listener: Listener,
): Response | Promise<Response> {
  const served =
    found !== undefined &&
    (found.route.admin !== true || (s.opts.admin !== undefined && listener === "unix"));
  if (!served) throw new QuantdError("NOT_FOUND", `no route ${req.method} ${path}`);
  const name = found.segments === undefined ? "" : servedModelName(s, found.segments);
  allowMethod(found.route, req.method, path);
  return found.route.handler(s, { req, name });
}

/** The JSON error reply of a failed request, its status from the error code. */
function errorResponse(err: unknown, metrics: ServerMetrics): Response {
  const qe = isQuantdError(err) ? err : QuantdError.from(err, "INTERNAL");
  const status = qe.details?.["status"] === 405 ? 405 : statusFor(qe.code);
  const headers: Record<string, string> = {};
  if (status === 503) {
    const retry = qe.details?.["retryAfterSeconds"];
    headers["retry-after"] = String(typeof retry === "number" ? retry : 1);
  }
  metrics.errors.inc({ code: qe.code });
  return json({ error: qe.toJSON() }, status, headers);
}

/** Builds the request handler: dispatch by {@link ROUTES}, errors as JSON, every request counted and timed. */
export function createRoutes(opts: RoutesOptions): (req: Request, listener: Listener) => Promise<Response> {
  const serving = new Serving(opts);
  const { metrics } = opts;
  return async (req, listener) => {
    const t0 = performance.now();
    let path = "/";
    try {
      path = new URL(req.url).pathname;
    } catch {
      // A URL Bun accepted but URL cannot parse is no route's path: it counts as `other` and gets a 404.
    }
    const found = findRoute(path);
    const route = metricsLabel(req.method, found);
    let res: Response;
    try {
      res = await dispatch(serving, req, path, found, listener);
    } catch (err) {
      res = errorResponse(err, metrics);
    }
    metrics.requests.inc({ route, status: String(res.status) });
    metrics.latency.observe((performance.now() - t0) / 1000, { route });
    return res;
  };
}
