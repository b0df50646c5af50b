/**
 * The controller's dashboard and JSON API: fleet aggregates and alerts, the
 * device table with filters, per-device history (model versions with their
 * promotion and rollback markers, jobs with stages, figures and the reason of
 * a failure) and time charts, live updates over Server-Sent Events, and
 * actions (job commands signed with the operator key, see
 * `dashboard-commands.ts`). Who may use it is `dashboard-auth.ts`'s concern:
 * without credentials it binds to loopback only; on any other address it
 * needs credentials and TLS (a certificate here, or a reverse proxy in front).
 */

import { readFileSync } from "node:fs";
import { QuantdError } from "../../errors.ts";
import { isRecord } from "../../json.ts";
import type { ReportFigures, ReportMessage } from "../protocol.ts";
import type { FleetController } from "./controller.ts";
import { createDashboardAuth, type DashboardCredentials, type Principal } from "./dashboard-auth.ts";
import { type ActionTarget, DASHBOARD_COMMANDS, type DashboardCommands } from "./dashboard-commands.ts";
import { DASHBOARD_HTML, loginPage } from "./dashboard-page.ts";
import {
  DEVICE_STATES,
  failureReason,
  fleetAggregates,
  fleetAlerts,
  inState,
  markModelChanges,
  recentJobs,
} from "./fleet-view.ts";
import { serveRelease } from "./release-routes.ts";
import { changeRollout, createRollout, findRelease, type Rollout, rolloutSpec } from "./rollout.ts";
import type { DeviceRecord, FleetStore, JobRecord } from "./store.ts";

/** A running dashboard. */
export interface Dashboard {
  /** `http://host:port/` with the port actually bound. */
  readonly url: string;
  readonly port: number;
  stop(): void;
}

/** How often live updates are pushed at most: a fleet of 1,000 boards must not flood the browser. */
const PUSH_INTERVAL_MS = 500;

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|::1)$/;

/**
 * Parses `HOST:PORT` for the dashboard.
 *
 * @throws CONFIG_INVALID when malformed
 */
export function parseHttpAddress(raw: string): { host: string; port: number; loopback: boolean } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(raw.trim());
  const host = m?.[1]?.replace(/^\[|\]$/g, "");
  const port = Number(m?.[2]);
  if (m === null || host === undefined || !Number.isInteger(port) || port > 65535) {
    throw new QuantdError("CONFIG_INVALID", `--http expects HOST:PORT, got ${JSON.stringify(raw)}`, {
      details: { key: "http" },
    });
  }
  return { host, port, loopback: LOOPBACK.test(host) };
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
}

/**
 * Headers of the dashboard's pages: no framing (a page that acts must not be
 * clickjacked), nothing loaded from elsewhere, forms posted only here.
 */
const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "content-security-policy":
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  // same-origin, not no-referrer: with no-referrer a form post says `Origin: null` and the login check refuses it.
  "referrer-policy": "same-origin",
};

function html(body: string, status = 200): Response {
  return new Response(body, { status, headers: PAGE_HEADERS });
}

function notFound(what: string): Response {
  return json({ error: new QuantdError("NOT_FOUND", `${what} not found`).toJSON() }, 404);
}

/** The figures the device table shows, from a report's result. */
export function reportFigures(result: unknown): ReportFigures {
  if (typeof result !== "object" || result === null) return {};
  const r = result as Record<string, unknown>;
  const obj = (v: unknown): Record<string, unknown> =>
    typeof v === "object" && v !== null ? (v as Record<string, unknown>) : {};
  const num = (v: unknown): number | undefined =>
    typeof v === "number" && Number.isFinite(v) ? v : undefined;
  const out: ReportFigures = {};
  // The agent's recalibration result: figures of the active (before) and candidate models.
  const bench = obj(r.bench);
  const active = obj(r.active);
  const candidate = obj(r.candidate);
  const isInt8 = (kind: unknown): boolean => typeof kind === "string" && kind.startsWith("int8");
  const int8 =
    num(r.int8P50Ms) ??
    (isInt8(candidate.kind)
      ? num(bench.candidateP50Ms)
      : isInt8(active.kind)
        ? num(bench.activeP50Ms)
        : undefined);
  const fp32 =
    num(r.fp32P50Ms) ??
    (active.kind === "fp32"
      ? num(bench.activeP50Ms)
      : candidate.kind === "fp32"
        ? num(bench.candidateP50Ms)
        : undefined);
  const agreement = num(r.agreement) ?? num(obj(r.validation).agreement);
  const accuracy = num(r.accuracy);
  if (int8 !== undefined) out.int8P50Ms = int8;
  if (fp32 !== undefined) out.fp32P50Ms = fp32;
  if (agreement !== undefined) out.agreement = agreement;
  // Only beside its own agreement: a bound from another report would describe another model.
  const lower = num(r.agreement) === undefined ? num(obj(r.validation).agreementLower) : undefined;
  if (agreement !== undefined && lower !== undefined) out.agreementLower = lower;
  // What the agreement counted (tokens, label decisions, samples at cosine ≥ 0.98), for another task than a classifier.
  const task = obj(obj(r.validation).task);
  if (agreement !== undefined && num(r.agreement) === undefined && typeof task.kind === "string") {
    if (task.kind !== "classification") {
      out.task = `${task.kind}: ${typeof task.unit === "string" ? task.unit : "sample"}s`;
    }
  }
  if (accuracy !== undefined) out.accuracy = accuracy;
  if (typeof r.modelVersion === "string") out.modelVersion = r.modelVersion;
  else if (r.decision === "promoted" && typeof candidate.version === "number")
    out.modelVersion = String(candidate.version);
  return out;
}

/** What a listing says of a report: its outcome and figures, never its (possibly large) result. */
export interface ReportSummary {
  id: string;
  jobId: string;
  type: string;
  state: ReportMessage["state"];
  startedAt: number | null;
  finishedAt: number | null;
  /** The error's code and the start of its message, when the job failed. */
  error?: { code: string; message: string };
  /** Why it failed or was rejected, one line. */
  reason?: string;
  figures: ReportFigures;
}

/** A report's summary: `/api/devices` stays small however large the reports are. */
export function summarizeReport(r: ReportMessage): ReportSummary {
  const out: ReportSummary = {
    id: String(r.id),
    jobId: String(r.jobId),
    type: String(r.type),
    state: r.state,
    startedAt: typeof r.startedAt === "number" ? r.startedAt : null,
    finishedAt: typeof r.finishedAt === "number" ? r.finishedAt : null,
    figures: reportFigures(r.result),
  };
  if (r.error !== undefined && r.error !== null) {
    out.error = { code: String(r.error.code), message: String(r.error.message).slice(0, 200) };
  }
  const reason = failureReason(r.error, r.result);
  if (reason !== undefined) out.reason = reason.slice(0, 300);
  return out;
}

/** A job as the device history lists it: state, stage, figures, stage times and why it failed, not its result. */
function jobSummary(j: JobRecord): Omit<JobRecord, "result"> & {
  figures: ReportFigures;
  stageMs: Record<string, number> | null;
  reason?: string;
} {
  const { result, ...rest } = j;
  const stageMs =
    isRecord(result) && isRecord(result.stageMs) ? (result.stageMs as Record<string, number>) : null;
  const reason = failureReason(j.error, result);
  return { ...rest, figures: reportFigures(result), stageMs, ...(reason === undefined ? {} : { reason }) };
}

/** A device as listed: its last report summarized, and the figures of its latest report that had any. */
function deviceSummary(
  d: DeviceRecord,
  figures: ReportFigures = reportFigures(d.lastReport?.result),
): Omit<DeviceRecord, "lastReport"> & { lastReport: ReportSummary | null; figures: ReportFigures } {
  return { ...d, lastReport: d.lastReport === null ? null : summarizeReport(d.lastReport), figures };
}

/** How many of a device's reports are searched for its latest figures. */
const FIGURES_LOOKBACK = 20;

const FIGURE_KEYS = ["int8P50Ms", "fp32P50Ms", "agreement", "accuracy"] as const;

/**
 * Each figure from the device's latest report that had it: a bench or a
 * rollback after a recalibration must not blank the table's agreement (nor
 * a recalibration the bench's latency). Looked up once per device and last
 * report, then cached.
 */
function createFiguresCache(store: FleetStore): (d: DeviceRecord) => Promise<ReportFigures> {
  const cache = new Map<string, { reportId: string; figures: ReportFigures }>();
  return async (d) => {
    const own = reportFigures(d.lastReport?.result);
    if (d.lastReport === null || FIGURE_KEYS.every((k) => own[k] !== undefined)) return own;
    const key = `${d.fleet}/${d.device}`;
    const hit = cache.get(key);
    if (hit?.reportId === d.lastReport.id) return hit.figures;
    const figures: ReportFigures = { ...own };
    for (const r of await store.reports(d.fleet, d.device, FIGURES_LOOKBACK)) {
      const f = reportFigures(r.result);
      for (const k of FIGURE_KEYS) if (figures[k] === undefined && f[k] !== undefined) figures[k] = f[k];
      // The bound travels with the agreement of the same report.
      if (
        figures.agreement === f.agreement &&
        figures.agreementLower === undefined &&
        f.agreementLower !== undefined
      )
        figures.agreementLower = f.agreementLower;
      if (figures.agreement === f.agreement && figures.task === undefined && f.task !== undefined)
        figures.task = f.task;
    }
    cache.set(key, { reportId: d.lastReport.id, figures });
    return figures;
  };
}

/** Options of {@link startDashboard}. */
export interface DashboardOptions {
  /** Where release files are kept: served under `/releases/{id}/files/{name}` for devices to download. */
  releasesDir?: string;
  /** Who may use it; required on a non-loopback address. @defaultValue none (loopback only) */
  credentials?: DashboardCredentials;
  /** PEM certificate and key files: serve HTTPS. */
  tls?: { certFile: string; keyFile: string };
  /**
   * TLS is terminated by a reverse proxy in front (see docs/fleet.md): a
   * non-loopback address without a certificate is then allowed, and cookies
   * are marked Secure. @defaultValue false
   */
  behindProxy?: boolean;
  /** How actions are sent; absent when the controller has no operator key. */
  commands?: DashboardCommands;
  /** Why actions are unavailable, shown on the disabled buttons. @defaultValue says to start with --key */
  commandsDisabledReason?: string;
  /** Log lines (actions taken, with who took them). */
  log?: (line: string) => void;
}

/** Why actions are disabled when no operator key was given. */
export const NO_OPERATOR_KEY =
  "the controller has no operator key: start quantd fleet serve with --key FILE (quantd fleet keygen) or $QUANTD_FLEET_KEY_FILE";

/**
 * Checks where the dashboard would listen: off loopback it needs credentials
 * and TLS (a certificate, or a reverse proxy in front).
 *
 * @throws CONFIG_INVALID when the address is malformed or its requirements are not met
 */
export function checkDashboardAddress(address: string, options: DashboardOptions): void {
  const { host, loopback } = parseHttpAddress(address);
  if (!loopback) refuseAddress(host, options);
}

function refuseAddress(host: string, options: DashboardOptions): void {
  const c = options.credentials;
  if (c?.token === undefined && c?.user === undefined) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `--http on ${host} (not loopback) needs credentials: --http-token-env VAR or --http-user NAME with --http-password-env VAR`,
      { details: { key: "http" } },
    );
  }
  if (options.tls === undefined && options.behindProxy !== true) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `--http on ${host} (not loopback) needs TLS: --http-cert FILE with --http-key FILE, or --http-behind-proxy when a reverse proxy terminates TLS (docs/fleet.md)`,
      { details: { key: "http" } },
    );
  }
}

function readTls(tls: NonNullable<DashboardOptions["tls"]>): { cert: string; key: string } {
  const read = (path: string, flag: string): string => {
    try {
      return readFileSync(path, "utf8");
    } catch (err) {
      throw new QuantdError("FILE_NOT_FOUND", `${flag}: cannot read ${path}`, {
        cause: err,
        details: { path },
      });
    }
  };
  return { cert: read(tls.certFile, "--http-cert"), key: read(tls.keyFile, "--http-key") };
}

function errorResponse(err: unknown): Response {
  const e = QuantdError.from(err, "REQUEST_INVALID");
  const status =
    e.code === "NOT_FOUND"
      ? 404
      : e.code === "STATE_CONFLICT"
        ? 409
        : e.code === "REQUEST_INVALID" || e.code === "CONFIG_INVALID" || e.code === "USAGE"
          ? 400
          : 500;
  return json({ error: e.toJSON() }, status);
}

/** Whether a browser request comes from the dashboard's own origin (when the browser says). */
function sameOrigin(req: Request): boolean {
  const origin = req.headers.get("origin");
  if (origin === null) return true;
  try {
    return new URL(origin).host === req.headers.get("host");
  } catch {
    return false;
  }
}

async function readJsonBody(req: Request): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = await req.json();
  } catch (err) {
    throw new QuantdError("REQUEST_INVALID", "the body is not JSON", { cause: err });
  }
  if (!isRecord(body)) throw new QuantdError("REQUEST_INVALID", "the body must be a JSON object");
  return body;
}

function parseTargets(v: unknown): ActionTarget[] {
  if (!Array.isArray(v))
    throw new QuantdError("REQUEST_INVALID", "targets must be an array of {fleet, device}");
  return v.map((t) => {
    if (!isRecord(t) || typeof t.fleet !== "string" || typeof t.device !== "string") {
      throw new QuantdError("REQUEST_INVALID", "each target needs fleet and device strings");
    }
    return { fleet: t.fleet, device: t.device };
  });
}

/** The optional text fields of a rollout start: absent or empty takes the CLI's default. */
function optionalText(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string") throw new QuantdError("REQUEST_INVALID", `${key} must be a string`);
  return v;
}

/**
 * `POST /api/rollouts {release, fleet, waves?, gate?, soak?, pendingExpiry?}`:
 * the same checks and store write as `quantd fleet rollout start`.
 */
async function startRolloutFrom(store: FleetStore, body: Record<string, unknown>): Promise<Rollout> {
  const release = optionalText(body, "release");
  const fleet = optionalText(body, "fleet");
  if (release === undefined || fleet === undefined)
    throw new QuantdError("REQUEST_INVALID", "a rollout needs release and fleet");
  const spec = rolloutSpec({
    waves: optionalText(body, "waves"),
    gate: optionalText(body, "gate"),
    soak: optionalText(body, "soak"),
    pendingExpiry: optionalText(body, "pendingExpiry"),
  });
  return await createRollout(store, { ...spec, fleet, release: await findRelease(store, release) });
}

/** Devices with figures, filtered by fleet and state, with the fleet's aggregates and alerts. */
async function overview(
  store: FleetStore,
  latestFigures: (d: DeviceRecord) => Promise<ReportFigures>,
  fleet: string | undefined,
  state: string | null,
  now: number,
) {
  const all = await store.devices(fleet);
  const figures = new Map<DeviceRecord, ReportFigures>();
  for (const d of all) figures.set(d, await latestFigures(d));
  const jobs = await recentJobs(store, all);
  const alerts = fleetAlerts(all, jobs, now);
  const alerting = new Set(alerts.map((a) => `${a.fleet}/${a.device}`));
  const devices = all.filter((d) => inState(d, state, alerting));
  const fleets = fleet === undefined ? [...new Set(all.map((d) => d.fleet))] : [fleet];
  return {
    fleets,
    aggregates: fleetAggregates(all, (d) => figures.get(d) ?? {}),
    alerts,
    devices: devices.map((d) => deviceSummary(d, figures.get(d))),
  };
}

/**
 * Serves the dashboard for `controller` on `address` (`127.0.0.1:8080`; port 0 picks one).
 *
 * @throws CONFIG_INVALID when the address is malformed, or not loopback without credentials and TLS;
 *   FILE_NOT_FOUND when a TLS file cannot be read
 */
export function startDashboard(
  controller: FleetController,
  address: string,
  options: DashboardOptions = {},
): Dashboard {
  const { host, port, loopback } = parseHttpAddress(address);
  if (!loopback) refuseAddress(host, options);
  const tls = options.tls === undefined ? undefined : readTls(options.tls);
  const auth = createDashboardAuth({
    credentials: options.credentials ?? {},
    secureCookies: tls !== undefined || options.behindProxy === true,
  });
  const log = options.log ?? (() => {});
  const commands = options.commands;
  const store = controller.store;
  const latestFigures = createFiguresCache(store);
  const streams = new Set<ReadableStreamDefaultController<Uint8Array>>();
  const encoder = new TextEncoder();
  let changed = new Set<string>();
  const offEvents = controller.onEvent((e) => changed.add(`${e.fleet}/${e.device}`));
  const pushTimer = setInterval(() => {
    if (changed.size === 0 || streams.size === 0) {
      if (streams.size === 0) changed.clear();
      return;
    }
    const devices = [...changed];
    changed = new Set();
    const chunk = encoder.encode(`event: changed\ndata: ${JSON.stringify({ devices })}\n\n`);
    for (const s of streams) {
      try {
        s.enqueue(chunk);
      } catch {
        streams.delete(s);
      }
    }
  }, PUSH_INTERVAL_MS);

  const session = (who: Principal) => ({
    user: who.name,
    csrf: who.csrf,
    authRequired: auth.required,
    actions: {
      enabled: commands !== undefined,
      commands: DASHBOARD_COMMANDS,
      ...(commands === undefined
        ? { reason: options.commandsDisabledReason ?? NO_OPERATOR_KEY }
        : { kid: commands.kid }),
    },
  });

  const login = async (req: Request): Promise<Response> => {
    if (!sameOrigin(req))
      return json({ error: { code: "REQUEST_INVALID", message: "cross-origin login" } }, 403);
    const form = new URLSearchParams(await req.text());
    const ok = await auth.login(form);
    if (ok === undefined) {
      return html(loginPage(auth.methods, "wrong credentials"), 401);
    }
    log(`dashboard: ${ok.name} logged in`);
    return new Response(null, { status: 303, headers: { location: "/", "set-cookie": ok.cookie } });
  };

  // Writes: the principal's CSRF token (cookie sessions and the open loopback mode) in a header.
  const post = async (req: Request, who: Principal, parts: string[]): Promise<Response> => {
    if (who.csrf !== null && req.headers.get("x-quantd-csrf") !== who.csrf) {
      return json(
        { error: new QuantdError("REQUEST_INVALID", "missing or wrong x-quantd-csrf header").toJSON() },
        403,
      );
    }
    if (parts.length === 1 && parts[0] === "logout") {
      return new Response(null, {
        status: 303,
        headers: { location: "/login", "set-cookie": auth.logout(req) },
      });
    }
    if (parts[0] !== "api") return notFound(`/${parts.join("/")}`);
    // Actions and rollouts need the operator key: without it nothing signs the commands they lead to.
    const acting = parts[1] === "actions" || parts[1] === "rollouts";
    if (acting && commands === undefined) {
      return json(
        {
          error: new QuantdError(
            "COMMAND_UNAUTHORIZED",
            options.commandsDisabledReason ?? NO_OPERATOR_KEY,
          ).toJSON(),
        },
        409,
      );
    }
    if (parts.length === 2 && parts[1] === "rollouts") {
      const r = await startRolloutFrom(store, await readJsonBody(req));
      log(`dashboard: ${who.name} started rollout ${r.id} of ${r.body.releaseVersion} on fleet ${r.fleet}`);
      return json(r);
    }
    const change = parts[3];
    if (parts.length === 4 && parts[1] === "rollouts") {
      if (change !== "pause" && change !== "resume" && change !== "abort")
        return notFound(`/${parts.join("/")}`);
      const r = await changeRollout(store, parts[2]!, change);
      log(`dashboard: ${who.name} sent ${change} to rollout ${r.id}: now ${r.state}`);
      return json(r);
    }
    if (parts.length === 2 && parts[1] === "actions" && commands !== undefined) {
      const body = await readJsonBody(req);
      const targets = parseTargets(body.targets);
      const params = isRecord(body.params) ? body.params : {};
      const outcomes = await commands.send(String(body.action), targets, params);
      for (const o of outcomes) {
        log(
          `dashboard: ${who.name} sent ${String(body.action)} to ${o.fleet}/${o.device}: ${o.state} (job ${o.id})`,
        );
      }
      return json({ action: body.action, outcomes });
    }
    // Confirming a device key offered for trust on first use.
    if (parts.length === 5 && parts[1] === "enrolments" && parts[4] === "confirm") {
      const body = await readJsonBody(req);
      if (typeof body.publicKey !== "string")
        throw new QuantdError("REQUEST_INVALID", "body needs publicKey");
      const [fleet, device] = [parts[2]!, parts[3]!];
      await controller.confirmEnrolment(fleet, device, body.publicKey);
      log(`dashboard: ${who.name} enrolled ${fleet}/${device}`);
      return json({ fleet, device, state: "enrolled" });
    }
    return notFound(`/${parts.join("/")}`);
  };

  const events = (): Response => {
    let self: ReadableStreamDefaultController<Uint8Array> | undefined;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        self = c;
        streams.add(c);
        c.enqueue(encoder.encode(": connected\n\n"));
      },
      cancel() {
        if (self !== undefined) streams.delete(self);
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" },
    });
  };

  const deviceDetail = async (fleet: string, device: string): Promise<Response> => {
    const d = await store.device(fleet, device);
    if (d === undefined) return notFound(`device ${fleet}/${device}`);
    const [history, reports, jobs, models] = await Promise.all([
      store.statusHistory(fleet, device, 50),
      store.reports(fleet, device, 200),
      store.jobs(fleet, device, 50),
      store.modelHistory(fleet, device, 50),
    ]);
    return json({
      device: deviceSummary(d, await latestFigures(d)),
      history,
      models: markModelChanges(models, reports),
      reports: reports.map(summarizeReport),
      jobs: jobs.map(jobSummary),
    });
  };

  const get = async (url: URL, who: Principal, parts: string[]): Promise<Response> => {
    if (parts.length === 0) {
      return html(DASHBOARD_HTML);
    }
    if (parts[0] !== "api") return notFound(url.pathname);
    const [, what, fleet, device, sub, id] = parts;
    if (what === "rollouts" && parts.length === 3 && fleet !== undefined) {
      const r = await store.rollout(fleet);
      return r === undefined ? notFound(`rollout ${fleet}`) : json(r);
    }
    if (parts.length === 2) {
      switch (what) {
        case "rollouts":
          // The newest rollouts whole: waves, devices, figures, halt reason and events.
          return json(await store.rollouts(undefined, 10));
        case "session":
          return json(session(who));
        case "stats":
          return json(controller.stats());
        case "releases":
          // Listings without the manifests' bytes: those are on /releases/{id}.
          return json((await store.releases()).map(({ manifest: _m, ...r }) => r));
        case "events":
          return events();
        case "enrolments": {
          const state = url.searchParams.get("state");
          return json(
            await store.enrolments(state === "pending" || state === "enrolled" ? state : undefined),
          );
        }
        case "overview":
        case "devices": {
          const state = url.searchParams.get("state");
          if (state !== null && !(DEVICE_STATES as readonly string[]).includes(state)) {
            throw new QuantdError("REQUEST_INVALID", `state must be one of ${DEVICE_STATES.join(", ")}`);
          }
          const view = await overview(
            store,
            latestFigures,
            url.searchParams.get("fleet") ?? undefined,
            state,
            Date.now(),
          );
          return json(what === "devices" ? view.devices : view);
        }
      }
      return notFound(url.pathname);
    }
    if (what !== "devices" || fleet === undefined || device === undefined) return notFound(url.pathname);
    if (parts.length === 4) return await deviceDetail(fleet, device);
    if (parts.length === 6 && sub === "reports" && id !== undefined) {
      const r = await store.report(fleet, device, id);
      if (r === undefined) return notFound(`report ${id} of ${fleet}/${device}`);
      return json({ ...r, figures: reportFigures(r.result) });
    }
    if (parts.length === 5 && sub === "telemetry") {
      const since = Number(url.searchParams.get("since") ?? Date.now() - 3600_000);
      return json(await store.telemetry(fleet, device, Number.isFinite(since) ? since : 0, 5000));
    }
    return notFound(url.pathname);
  };

  const server = Bun.serve({
    hostname: host,
    port,
    idleTimeout: 0,
    ...(tls === undefined ? {} : { tls }),
    async fetch(req) {
      const url = new URL(req.url);
      try {
        const parts = url.pathname
          .split("/")
          .filter((p) => p !== "")
          .map(decodeURIComponent);
        if (parts.length === 1 && parts[0] === "login") {
          if (req.method === "POST") return await login(req);
          return html(loginPage(auth.methods));
        }
        // Signed, content-addressed release files for devices, which have no dashboard login
        // (see release-routes.ts): served before the operator's authentication.
        const release =
          req.method === "GET" ? await serveRelease(store, options.releasesDir, parts, req) : undefined;
        if (release !== undefined) return release;
        const who = auth.identify(req);
        if (who === undefined) {
          if (req.method === "GET" && parts[0] !== "api" && auth.required) {
            return new Response(null, { status: 303, headers: { location: "/login" } });
          }
          return json(
            {
              error: new QuantdError(
                "COMMAND_UNAUTHORIZED",
                auth.required
                  ? "log in first (/login) or send Authorization: Bearer TOKEN"
                  : "this dashboard answers loopback host names only",
              ).toJSON(),
            },
            auth.required ? 401 : 403,
          );
        }
        if (req.method === "POST") return await post(req, who, parts);
        if (req.method !== "GET")
          return json({ error: { code: "REQUEST_INVALID", message: "GET or POST only" } }, 405);
        return await get(url, who, parts);
      } catch (err) {
        if (err instanceof URIError) return notFound(url.pathname);
        return errorResponse(err);
      }
    },
  });
  const bound = server.port ?? port;
  return {
    url: `${tls === undefined ? "http" : "https"}://${host.includes(":") ? `[${host}]` : host}:${bound}/`,
    port: bound,
    stop() {
      clearInterval(pushTimer);
      offEvents();
      for (const s of streams) {
        try {
          s.close();
        } catch {
          // already closed by the client
        }
      }
      streams.clear();
      server.stop(true);
    },
  };
}
