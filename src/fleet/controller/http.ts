/**
 * The controller's dashboard and JSON API on a loopback HTTP address: the
 * device table (online, model version and kind, int8 vs fp32 latency,
 * agreement, memory, last report), per-device latency and accuracy charts,
 * and live updates over Server-Sent Events. No authentication: it binds to
 * loopback only; put an authenticating proxy in front to share it.
 */
import { QuantdError } from "../../errors.ts";
import type { ReportFigures, ReportMessage } from "../protocol.ts";
import type { FleetController } from "./controller.ts";
import { DASHBOARD_HTML } from "./dashboard-page.ts";
import { serveRelease } from "./release-routes.ts";
import type { DeviceRecord } from "./store.ts";

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
 * Parses `HOST:PORT` for the dashboard and refuses non-loopback hosts.
 *
 * @throws CONFIG_INVALID when malformed or not loopback
 */
export function parseHttpAddress(raw: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(raw.trim());
  const host = m?.[1]?.replace(/^\[|\]$/g, "");
  const port = Number(m?.[2]);
  if (m === null || host === undefined || !Number.isInteger(port) || port > 65535) {
    throw new QuantdError("CONFIG_INVALID", `--http expects HOST:PORT, got ${JSON.stringify(raw)}`, {
      details: { key: "http" },
    });
  }
  if (!LOOPBACK.test(host)) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `--http must be a loopback address (the dashboard has no authentication), got ${host}`,
      { details: { key: "http" } },
    );
  }
  return { host, port };
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
  });
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
  return out;
}

function deviceSummary(d: DeviceRecord): Omit<DeviceRecord, "lastReport"> & {
  lastReport: ReportSummary | null;
  figures: ReportFigures;
} {
  return {
    ...d,
    lastReport: d.lastReport === null ? null : summarizeReport(d.lastReport),
    figures: reportFigures(d.lastReport?.result),
  };
}

/** Options of {@link startDashboard}. */
export interface DashboardOptions {
  /** Where release files are kept: served under `/releases/{id}/files/{name}` for devices to download. */
  releasesDir?: string;
}

/**
 * Serves the dashboard for `controller` on `address` (`127.0.0.1:8080`; port 0 picks one).
 *
 * @throws CONFIG_INVALID when the address is malformed or not loopback
 */
export function startDashboard(
  controller: FleetController,
  address: string,
  options: DashboardOptions = {},
): Dashboard {
  const { host, port } = parseHttpAddress(address);
  const store = controller.store;
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

  // The one write: confirming a device key offered for trust on first use. The custom header
  // makes a browser preflight any cross-site attempt (which this server never approves).
  const post = async (req: Request, url: URL): Promise<Response> => {
    const parts = url.pathname.split("/").filter((p) => p !== "");
    if (parts.length !== 5 || parts[0] !== "api" || parts[1] !== "enrolments" || parts[4] !== "confirm") {
      return notFound(url.pathname);
    }
    if (req.headers.get("x-quantd-confirm") !== "1") {
      return json({ error: new QuantdError("REQUEST_INVALID", "missing x-quantd-confirm: 1").toJSON() }, 400);
    }
    try {
      const body = (await req.json()) as { publicKey?: unknown };
      if (typeof body.publicKey !== "string")
        throw new QuantdError("REQUEST_INVALID", "body needs publicKey");
      const [fleet, device] = [decodeURIComponent(parts[2]!), decodeURIComponent(parts[3]!)];
      await controller.confirmEnrolment(fleet, device, body.publicKey);
      return json({ fleet, device, state: "enrolled" });
    } catch (err) {
      const e = QuantdError.from(err, "REQUEST_INVALID");
      return json({ error: e.toJSON() }, e.code === "NOT_FOUND" ? 404 : 400);
    }
  };

  const server = Bun.serve({
    hostname: host,
    port,
    idleTimeout: 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (req.method === "POST") return await post(req, url);
      if (req.method !== "GET") return json({ error: { code: "REQUEST_INVALID", message: "GET only" } }, 405);
      try {
        const parts = url.pathname
          .split("/")
          .filter((p) => p !== "")
          .map(decodeURIComponent);
        if (parts.length === 0) {
          return new Response(DASHBOARD_HTML, { headers: { "content-type": "text/html; charset=utf-8" } });
        }
        const release = await serveRelease(store, options.releasesDir, parts, req);
        if (release !== undefined) return release;
        if (parts[0] !== "api") return notFound(url.pathname);
        if (parts[1] === "releases" && parts.length === 2) {
          // Listings without the manifests' bytes: those are on /releases/{id}.
          return json((await store.releases()).map(({ manifest: _m, ...r }) => r));
        }
        if (parts[1] === "stats" && parts.length === 2) return json(controller.stats());
        if (parts[1] === "enrolments" && parts.length === 2) {
          const state = url.searchParams.get("state");
          return json(
            await store.enrolments(state === "pending" || state === "enrolled" ? state : undefined),
          );
        }
        if (parts[1] === "events" && parts.length === 2) {
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
            headers: {
              "content-type": "text/event-stream",
              "cache-control": "no-store",
              connection: "keep-alive",
            },
          });
        }
        if (parts[1] !== "devices") return notFound(url.pathname);
        if (parts.length === 2) {
          const fleet = url.searchParams.get("fleet") ?? undefined;
          const devices = await store.devices(fleet);
          return json(devices.map(deviceSummary));
        }
        const [fleet, device] = [parts[2], parts[3]];
        if (fleet === undefined || device === undefined) return notFound(url.pathname);
        if (parts.length === 4) {
          const d = await store.device(fleet, device);
          if (d === undefined) return notFound(`device ${fleet}/${device}`);
          const [history, reports, jobs] = await Promise.all([
            store.statusHistory(fleet, device, 50),
            store.reports(fleet, device, 200),
            store.jobs(fleet, device, 50),
          ]);
          return json({
            device: deviceSummary(d),
            history,
            reports: reports.map(summarizeReport),
            // A job's result is its report's: served whole on the report's own route.
            jobs: jobs.map(({ result: _result, ...j }) => j),
          });
        }
        if (parts.length === 6 && parts[4] === "reports") {
          const r = await store.report(fleet, device, parts[5]!);
          if (r === undefined) return notFound(`report ${parts[5]} of ${fleet}/${device}`);
          return json({ ...r, figures: reportFigures(r.result) });
        }
        if (parts.length === 5 && parts[4] === "telemetry") {
          const since = Number(url.searchParams.get("since") ?? Date.now() - 3600_000);
          return json(await store.telemetry(fleet, device, Number.isFinite(since) ? since : 0, 5000));
        }
        return notFound(url.pathname);
      } catch (err) {
        if (err instanceof URIError) return notFound(url.pathname);
        return json({ error: QuantdError.from(err).toJSON() }, 500);
      }
    },
  });
  const bound = server.port ?? port;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${bound}/`,
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
