/**
 * The dashboard's routes: one table of method, path and named handler, read
 * top to bottom, and the handlers behind it. Authentication happens before
 * (see `http.ts`); a write also needs the principal's CSRF token, and the
 * writes that lead to signed commands (actions, rollouts) the operator key.
 */
import { QuantdError } from "../../errors.ts";
import { isRecord } from "../../json.ts";
import type { FleetController } from "./controller.ts";
import type { DashboardAuth, Principal } from "./dashboard-auth.ts";
import { type ActionTarget, DASHBOARD_COMMANDS, type DashboardCommands } from "./dashboard-commands.ts";
import type { LiveUpdates } from "./dashboard-live.ts";
import { DASHBOARD_HTML } from "./dashboard-page.ts";
import { html, json, notFound, readJsonBody } from "./dashboard-responses.ts";
import {
  createFiguresCache,
  deviceSummary,
  fleetOverview,
  jobSummary,
  reportFigures,
  summarizeReport,
} from "./device-views.ts";
import { DEVICE_STATES, markModelChanges } from "./fleet-view.ts";
import { changeRollout, createRollout, findRelease, type Rollout, rolloutSpec } from "./rollout.ts";
import type { FleetStore } from "./store.ts";

/** What a handler gets: the request, who sent it, and the path's `:name` segments. */
export interface RouteContext {
  req: Request;
  url: URL;
  who: Principal;
  /** The decoded path, `/` + its segments. */
  path: string;
  params: Record<string, string>;
}

type Handler = (c: RouteContext) => Promise<Response> | Response;

/** What the handlers work with. */
export interface DashboardRouteDeps {
  controller: FleetController;
  auth: DashboardAuth;
  live: LiveUpdates;
  /** How actions are sent; absent when the controller has no operator key. */
  commands: DashboardCommands | undefined;
  /** Why actions are unavailable when `commands` is absent. */
  commandsDisabledReason: string;
  log: (line: string) => void;
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

/** The handlers the route table names, one per page, listing or action. */
export class DashboardHandlers {
  private readonly store: FleetStore;
  private readonly latestFigures: ReturnType<typeof createFiguresCache>;

  constructor(private readonly d: DashboardRouteDeps) {
    this.store = d.controller.store;
    this.latestFigures = createFiguresCache(this.store);
  }

  page: Handler = () => html(DASHBOARD_HTML);

  /** Who is logged in, their CSRF token, and whether actions are available (and why not). */
  session: Handler = ({ who }) => {
    const { commands, auth } = this.d;
    return json({
      user: who.name,
      csrf: who.csrf,
      authRequired: auth.required,
      actions: {
        enabled: commands !== undefined,
        commands: DASHBOARD_COMMANDS,
        ...(commands === undefined ? { reason: this.d.commandsDisabledReason } : { kid: commands.kid }),
      },
    });
  };

  stats: Handler = () => json(this.d.controller.stats());

  events: Handler = () => this.d.live.events();

  /** Listings without the manifests' bytes: those are on /releases/{id}. */
  releases: Handler = async () => json((await this.store.releases()).map(({ manifest: _m, ...r }) => r));

  enrolments: Handler = async ({ url }) => {
    const state = url.searchParams.get("state");
    return json(await this.store.enrolments(state === "pending" || state === "enrolled" ? state : undefined));
  };

  /** The newest rollouts whole: waves, devices, figures, halt reason and events. */
  rollouts: Handler = async () => json(await this.store.rollouts(undefined, 10));

  rollout: Handler = async ({ params }) => {
    const r = await this.store.rollout(params.id!);
    return r === undefined ? notFound(`rollout ${params.id}`) : json(r);
  };

  overview: Handler = async ({ url }) => json(await this.overviewOf(url));

  devices: Handler = async ({ url }) => json((await this.overviewOf(url)).devices);

  device: Handler = async ({ params }) => {
    const { fleet, device } = params as { fleet: string; device: string };
    const store = this.store;
    const d = await store.device(fleet, device);
    if (d === undefined) return notFound(`device ${fleet}/${device}`);
    const [history, reports, jobs, models] = await Promise.all([
      store.statusHistory(fleet, device, 50),
      store.reports(fleet, device, 200),
      store.jobs(fleet, device, 50),
      store.modelHistory(fleet, device, 50),
    ]);
    return json({
      device: deviceSummary(d, await this.latestFigures(d)),
      history,
      models: markModelChanges(models, reports),
      reports: reports.map(summarizeReport),
      jobs: jobs.map(jobSummary),
    });
  };

  report: Handler = async ({ params }) => {
    const { fleet, device, id } = params as { fleet: string; device: string; id: string };
    const r = await this.store.report(fleet, device, id);
    if (r === undefined) return notFound(`report ${id} of ${fleet}/${device}`);
    return json({ ...r, figures: reportFigures(r.result) });
  };

  telemetry: Handler = async ({ params, url }) => {
    const since = Number(url.searchParams.get("since") ?? Date.now() - 3600_000);
    const found = await this.store.telemetry(
      params.fleet!,
      params.device!,
      Number.isFinite(since) ? since : 0,
      5000,
    );
    return json(found);
  };

  logout: Handler = ({ req }) =>
    new Response(null, {
      status: 303,
      headers: { location: "/login", "set-cookie": this.d.auth.logout(req) },
    });

  startRollout: Handler = async ({ req, who }) => {
    const r = await startRolloutFrom(this.store, await readJsonBody(req));
    this.d.log(
      `dashboard: ${who.name} started rollout ${r.id} of ${r.body.releaseVersion} on fleet ${r.fleet}`,
    );
    return json(r);
  };

  changeRollout: Handler = async ({ params, who, path }) => {
    const change = params.change;
    if (change !== "pause" && change !== "resume" && change !== "abort") return notFound(path);
    const r = await changeRollout(this.store, params.id!, change);
    this.d.log(`dashboard: ${who.name} sent ${change} to rollout ${r.id}: now ${r.state}`);
    return json(r);
  };

  action: Handler = async ({ req, who }) => {
    const commands = this.d.commands;
    if (commands === undefined) throw new QuantdError("COMMAND_UNAUTHORIZED", this.d.commandsDisabledReason);
    const body = await readJsonBody(req);
    const targets = parseTargets(body.targets);
    const params = isRecord(body.params) ? body.params : {};
    const outcomes = await commands.send(String(body.action), targets, params);
    for (const o of outcomes) {
      this.d.log(
        `dashboard: ${who.name} sent ${String(body.action)} to ${o.fleet}/${o.device}: ${o.state} (job ${o.id})`,
      );
    }
    return json({ action: body.action, outcomes });
  };

  /** Confirming a device key offered for trust on first use. */
  confirmEnrolment: Handler = async ({ req, who, params }) => {
    const body = await readJsonBody(req);
    if (typeof body.publicKey !== "string") throw new QuantdError("REQUEST_INVALID", "body needs publicKey");
    const { fleet, device } = params as { fleet: string; device: string };
    await this.d.controller.confirmEnrolment(fleet, device, body.publicKey);
    this.d.log(`dashboard: ${who.name} enrolled ${fleet}/${device}`);
    return json({ fleet, device, state: "enrolled" });
  };

  /** Devices with figures, filtered by `?fleet=` and `?state=`, with the aggregates and alerts. */
  private async overviewOf(url: URL) {
    const state = url.searchParams.get("state");
    if (state !== null && !(DEVICE_STATES as readonly string[]).includes(state)) {
      throw new QuantdError("REQUEST_INVALID", `state must be one of ${DEVICE_STATES.join(", ")}`);
    }
    const fleet = url.searchParams.get("fleet") ?? undefined;
    return await fleetOverview(this.store, this.latestFigures, fleet, state, Date.now());
  }
}

type HandlerName = {
  [K in keyof DashboardHandlers]: DashboardHandlers[K] extends Handler ? K : never;
}[keyof DashboardHandlers];

/** One route: a method, a path whose `:name` segments are parameters, and its handler. */
export interface DashboardRoute {
  method: "GET" | "POST";
  path: string;
  handler: HandlerName;
}

/** Every route of the dashboard (the login page and release files are served before authentication, in `http.ts`). */
export const DASHBOARD_ROUTES: readonly DashboardRoute[] = [
  { method: "GET", path: "/", handler: "page" },
  { method: "GET", path: "/api/session", handler: "session" },
  { method: "GET", path: "/api/stats", handler: "stats" },
  { method: "GET", path: "/api/events", handler: "events" },
  { method: "GET", path: "/api/releases", handler: "releases" },
  { method: "GET", path: "/api/enrolments", handler: "enrolments" },
  { method: "GET", path: "/api/rollouts", handler: "rollouts" },
  { method: "GET", path: "/api/rollouts/:id", handler: "rollout" },
  { method: "GET", path: "/api/overview", handler: "overview" },
  { method: "GET", path: "/api/devices", handler: "devices" },
  { method: "GET", path: "/api/devices/:fleet/:device", handler: "device" },
  { method: "GET", path: "/api/devices/:fleet/:device/reports/:id", handler: "report" },
  { method: "GET", path: "/api/devices/:fleet/:device/telemetry", handler: "telemetry" },
  { method: "POST", path: "/logout", handler: "logout" },
  { method: "POST", path: "/api/rollouts", handler: "startRollout" },
  { method: "POST", path: "/api/rollouts/:id/:change", handler: "changeRollout" },
  { method: "POST", path: "/api/actions", handler: "action" },
  { method: "POST", path: "/api/enrolments/:fleet/:device/confirm", handler: "confirmEnrolment" },
];

/** The route for `method` and the decoded path segments `parts`, with its parameters; undefined when none. */
export function matchRoute(
  method: string,
  parts: readonly string[],
): { route: DashboardRoute; params: Record<string, string> } | undefined {
  for (const route of DASHBOARD_ROUTES) {
    if (route.method !== method) continue;
    const pattern = route.path.split("/").filter((p) => p !== "");
    if (pattern.length !== parts.length) continue;
    const params: Record<string, string> = {};
    const matches = pattern.every((p, i) => {
      const part = parts[i] as string;
      if (p.startsWith(":")) params[p.slice(1)] = part;
      return p.startsWith(":") || p === part;
    });
    if (matches) return { route, params };
  }
  return undefined;
}
