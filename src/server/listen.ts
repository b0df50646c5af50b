/**
 * Listening: HTTP on a Unix socket (mode 0660: the owning user and group may
 * connect, nobody else), and optionally on a loopback TCP port. A socket file
 * left by a crashed agent is removed at start, but only when it is a socket and
 * nothing answers on it; a live agent on the same path makes the second one
 * refuse to start rather than steal its socket.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { createConnection } from "node:net";
import { dirname } from "node:path";
import { QuantdError } from "../errors.ts";
import type { Listener } from "./routes.ts";

/** A TCP address (host and port). */
export interface TcpAddress {
  host: string;
  port: number;
}

/** How long to wait for a live agent to accept a connection on an existing socket. */
const PROBE_TIMEOUT_MS = 1000;

/** Whether something accepts connections on the Unix socket at `path`. */
export function socketAnswers(path: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = createConnection({ path });
    const done = (live: boolean): void => {
      clearTimeout(timer);
      conn.destroy();
      resolve(live);
    };
    // A listener whose accept queue is full may not answer in time; treat that as live: never steal a socket.
    const timer = setTimeout(() => done(true), timeoutMs);
    conn.once("connect", () => done(true));
    conn.once("error", (err: NodeJS.ErrnoException) => {
      // ECONNREFUSED: a socket file nobody listens on (the owner died). Anything else: do not touch it.
      done(err.code !== "ECONNREFUSED" && err.code !== "ENOENT");
    });
  });
}

/**
 * Makes `path` free for a new socket: creates its directory, removes a stale
 * socket file.
 *
 * @throws STATE_CONFLICT when another process serves on it
 * @throws CONFIG_INVALID when the path exists and is not a socket (it is never removed)
 * @throws FILE_WRITE_FAILED when the directory cannot be created or the stale file removed
 */
export async function prepareSocketPath(path: string): Promise<void> {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  } catch (err) {
    throw new QuantdError("FILE_WRITE_FAILED", `cannot create the socket directory ${dirname(path)}`, {
      cause: err,
    });
  }
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new QuantdError("FILE_UNREADABLE", `cannot inspect ${path}`, { cause: err });
  }
  if (!isSocket) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `socket path ${path} exists and is not a socket; refusing to remove it`,
      {
        details: { key: "socketPath", path },
      },
    );
  }
  if (await socketAnswers(path)) {
    throw new QuantdError("STATE_CONFLICT", `another agent is already serving on ${path}`, {
      details: { path },
    });
  }
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new QuantdError("FILE_WRITE_FAILED", `cannot remove the stale socket ${path}`, { cause: err });
    }
  }
}

/** Options of {@link startListeners}. */
export interface ListenOptions {
  socketPath: string;
  tcp?: TcpAddress | undefined;
  /** Largest body Bun itself accepts (the routes enforce the real limit with a JSON error). */
  maxRequestBodySize: number;
  handler: (req: Request, listener: Listener) => Promise<Response>;
}

/** Running listeners. */
export interface Listeners {
  socketPath: string;
  /** The bound TCP address, when listening on TCP (port resolved when 0 was asked). */
  tcp: TcpAddress | undefined;
  /** Stops accepting, waits for in-flight requests, removes the socket file. */
  stop(): Promise<void>;
}

/**
 * Starts the Unix-socket server (and the TCP one, if configured).
 *
 * @throws STATE_CONFLICT | CONFIG_INVALID | FILE_WRITE_FAILED from {@link prepareSocketPath}
 * @throws FILE_WRITE_FAILED when the socket or the TCP port cannot be bound
 */
export async function startListeners(opts: ListenOptions): Promise<Listeners> {
  await prepareSocketPath(opts.socketPath);
  const fallback = (err: Error): Response =>
    new Response(JSON.stringify({ error: QuantdError.from(err).toJSON() }), {
      status: 500,
      headers: { "content-type": "application/json" },
    });
  let unix: ReturnType<typeof Bun.serve>;
  try {
    unix = Bun.serve({
      unix: opts.socketPath,
      maxRequestBodySize: opts.maxRequestBodySize,
      fetch: (req) => opts.handler(req, "unix"),
      error: fallback,
    });
  } catch (err) {
    throw new QuantdError("FILE_WRITE_FAILED", `cannot listen on ${opts.socketPath}`, { cause: err });
  }
  const inode = lstatSync(opts.socketPath).ino;
  chmodSync(opts.socketPath, 0o660);
  let tcp: ReturnType<typeof Bun.serve> | undefined;
  if (opts.tcp !== undefined) {
    try {
      tcp = Bun.serve({
        hostname: opts.tcp.host,
        port: opts.tcp.port,
        maxRequestBodySize: opts.maxRequestBodySize,
        fetch: (req) => opts.handler(req, "tcp"),
        error: fallback,
      });
    } catch (err) {
      await unix.stop(true);
      removeOwnSocket(opts.socketPath, inode);
      throw new QuantdError("FILE_WRITE_FAILED", `cannot listen on ${opts.tcp.host}:${opts.tcp.port}`, {
        cause: err,
      });
    }
  }
  let stopped: Promise<void> | undefined;
  return {
    socketPath: opts.socketPath,
    tcp: tcp === undefined ? undefined : { host: opts.tcp!.host, port: tcp.port ?? opts.tcp!.port },
    stop() {
      stopped ??= (async () => {
        await Promise.all([unix.stop(), tcp?.stop()]);
        removeOwnSocket(opts.socketPath, inode);
      })();
      return stopped;
    },
  };
}

/** Removes the socket file only if it is still the one this process bound (not a successor's). */
function removeOwnSocket(path: string, inode: number): void {
  try {
    if (lstatSync(path).ino === inode) unlinkSync(path);
  } catch {
    // Already gone.
  }
}
