/**
 * A listener for a Prometheus scraper on another host: it serves `GET
 * /metrics` and nothing else, so it may bind any address without widening
 * access to the inference or admin API (those stay on the Unix socket and
 * the loopback TCP port).
 */
import { QuantdError } from "../errors.ts";
import type { TcpAddress } from "./listen.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";

/** A running metrics listener. */
export interface MetricsListener {
  /** The bound address (the port resolved when 0 was asked). */
  address: TcpAddress;
  stop(): Promise<void>;
}

function errorResponse(status: number, err: QuantdError, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify({ error: err.toJSON() }), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/**
 * Starts serving `render()` on `GET /metrics` at `address`.
 *
 * @throws FILE_WRITE_FAILED when the address cannot be bound
 */
export function startMetricsListener(address: TcpAddress, render: () => string): MetricsListener {
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
      hostname: address.host,
      port: address.port,
      // A scrape sends no body; anything larger is not a scraper.
      maxRequestBodySize: 1024,
      fetch(req) {
        const path = new URL(req.url).pathname;
        if (path !== "/metrics")
          return errorResponse(
            404,
            new QuantdError("NOT_FOUND", `only /metrics is served here, not ${path}`),
          );
        if (req.method !== "GET" && req.method !== "HEAD") {
          return errorResponse(
            405,
            new QuantdError("REQUEST_INVALID", `/metrics is read-only: ${req.method} is not allowed`),
            { allow: "GET, HEAD" },
          );
        }
        return new Response(req.method === "HEAD" ? null : render(), {
          headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
        });
      },
      error: (err) => errorResponse(500, QuantdError.from(err)),
    });
  } catch (err) {
    throw new QuantdError(
      "FILE_WRITE_FAILED",
      `cannot listen on ${address.host}:${address.port} for /metrics`,
      {
        cause: err,
        details: { key: "metrics.listen" },
      },
    );
  }
  return {
    address: { host: address.host, port: server.port ?? address.port },
    async stop() {
      await server.stop();
    },
  };
}
