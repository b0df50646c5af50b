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
import type { FleetController } from "./controller.ts";
import {
  createDashboardAuth,
  type DashboardAuth,
  type DashboardCredentials,
  type Principal,
} from "./dashboard-auth.ts";
import type { DashboardCommands } from "./dashboard-commands.ts";
import { LiveUpdates } from "./dashboard-live.ts";
import { loginPage } from "./dashboard-page.ts";
import { errorResponse, html, json, notFound } from "./dashboard-responses.ts";
import { DashboardHandlers, matchRoute } from "./dashboard-routes.ts";
import { serveRelease } from "./release-routes.ts";

/** A running dashboard. */
export interface Dashboard {
  /** `http://host:port/` with the port actually bound. */
  readonly url: string;
  readonly port: number;
  stop(): void;
}

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

/** The API paths whose writes lead to signed commands, so they need the operator key. */
const ACTING = new Set(["actions", "rollouts"]);

/**
 * One dashboard's request handling, in order: the login page, release files
 * for devices (no login), then an authenticated principal for everything
 * else, whose writes carry its CSRF token, dispatched by the route table.
 */
class DashboardSite {
  private readonly handlers: DashboardHandlers;
  private readonly log: (line: string) => void;
  private readonly disabledReason: string;

  constructor(
    private readonly controller: FleetController,
    private readonly auth: DashboardAuth,
    live: LiveUpdates,
    private readonly options: DashboardOptions,
  ) {
    this.log = options.log ?? (() => {});
    this.disabledReason = options.commandsDisabledReason ?? NO_OPERATOR_KEY;
    this.handlers = new DashboardHandlers({
      controller,
      auth,
      live,
      commands: options.commands,
      commandsDisabledReason: this.disabledReason,
      log: this.log,
    });
  }

  async fetch(req: Request): Promise<Response> {
    const url = new URL(req.url);
    try {
      const parts = url.pathname
        .split("/")
        .filter((p) => p !== "")
        .map(decodeURIComponent);
      if (parts.length === 1 && parts[0] === "login") {
        if (req.method === "POST") return await this.login(req);
        return html(loginPage(this.auth.methods));
      }
      // Signed, content-addressed release files for devices, which have no dashboard login
      // (see release-routes.ts): served before the operator's authentication.
      const release =
        req.method === "GET"
          ? await serveRelease(this.controller.store, this.options.releasesDir, parts, req)
          : undefined;
      if (release !== undefined) return release;
      const who = this.auth.identify(req);
      if (who === undefined) return this.unauthenticated(req, parts);
      if (req.method === "POST") return await this.post(req, url, who, parts);
      if (req.method !== "GET")
        return json({ error: { code: "REQUEST_INVALID", message: "GET or POST only" } }, 405);
      return await this.dispatch(req, url, who, parts, url.pathname);
    } catch (err) {
      if (err instanceof URIError) return notFound(url.pathname);
      return errorResponse(err);
    }
  }

  private async login(req: Request): Promise<Response> {
    if (!sameOrigin(req))
      return json({ error: { code: "REQUEST_INVALID", message: "cross-origin login" } }, 403);
    const form = new URLSearchParams(await req.text());
    const ok = await this.auth.login(form);
    if (ok === undefined) {
      return html(loginPage(this.auth.methods, "wrong credentials"), 401);
    }
    this.log(`dashboard: ${ok.name} logged in`);
    return new Response(null, { status: 303, headers: { location: "/", "set-cookie": ok.cookie } });
  }

  private unauthenticated(req: Request, parts: string[]): Response {
    const required = this.auth.required;
    if (req.method === "GET" && parts[0] !== "api" && required) {
      return new Response(null, { status: 303, headers: { location: "/login" } });
    }
    const message = required
      ? "log in first (/login) or send Authorization: Bearer TOKEN"
      : "this dashboard answers loopback host names only";
    return json({ error: new QuantdError("COMMAND_UNAUTHORIZED", message).toJSON() }, required ? 401 : 403);
  }

  // Writes: the principal's CSRF token (cookie sessions and the open loopback mode) in a header.
  private async post(req: Request, url: URL, who: Principal, parts: string[]): Promise<Response> {
    if (who.csrf !== null && req.headers.get("x-quantd-csrf") !== who.csrf) {
      return json(
        { error: new QuantdError("REQUEST_INVALID", "missing or wrong x-quantd-csrf header").toJSON() },
        403,
      );
    }
    // Actions and rollouts need the operator key: without it nothing signs the commands they lead to.
    if (parts[0] === "api" && ACTING.has(parts[1] ?? "") && this.options.commands === undefined) {
      return json({ error: new QuantdError("COMMAND_UNAUTHORIZED", this.disabledReason).toJSON() }, 409);
    }
    return await this.dispatch(req, url, who, parts, `/${parts.join("/")}`);
  }

  private async dispatch(
    req: Request,
    url: URL,
    who: Principal,
    parts: string[],
    path: string,
  ): Promise<Response> {
    const found = matchRoute(req.method, parts);
    if (found === undefined) return notFound(path);
    return await this.handlers[found.route.handler]({ req, url, who, path, params: found.params });
  }
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
  const live = new LiveUpdates(controller);
  const site = new DashboardSite(controller, auth, live, options);
  const server = Bun.serve({
    hostname: host,
    port,
    idleTimeout: 0,
    ...(tls === undefined ? {} : { tls }),
    fetch: (req) => site.fetch(req),
  });
  const bound = server.port ?? port;
  return {
    url: `${tls === undefined ? "http" : "https"}://${host.includes(":") ? `[${host}]` : host}:${bound}/`,
    port: bound,
    stop() {
      live.stop();
      server.stop(true);
    },
  };
}
