/**
 * Fleet agents as separate processes (`quantd agent`, so a test can
 * `kill -9` one), seeded with their own samples through `quantd collect`,
 * and a throttling HTTP proxy in front of a controller's release files: it
 * passes range requests through, paces the bytes (a download slow enough to
 * be interrupted) and counts the bytes it served per client.
 */
import { join } from "node:path";
import { repoRoot } from "./paths.ts";
import { cliMain, runQuantd } from "./run-cli.ts";

/** A running agent process. */
export interface AgentProcess {
  readonly name: string;
  readonly stateDir: string;
  readonly socket: string;
  proc: Bun.Subprocess<"ignore", "ignore", "pipe">;
}

/** What an agent process needs to join a fleet. */
export interface AgentProcessOptions {
  dir: string;
  name: string;
  broker: string;
  fleet: string;
  operatorKey: string;
  releaseKey: string;
  deviceKeyFile: string;
  /** Extra `QUANTD_*` variables. */
  env?: Record<string, string>;
}

/** Adds `rows` SST-2 training sentences to the agent's sample pool (before it starts). */
export async function seedSamples(stateDir: string, rows = 300): Promise<void> {
  const tsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");
  const r = await runQuantd(["collect", tsv, "--state-dir", stateDir, "--max-rows", String(rows)]);
  if (r.code !== 0) throw new Error(`quantd collect failed: ${r.stderr}`);
}

/** Starts `quantd agent` for a board of the fleet. */
export function spawnAgent(o: AgentProcessOptions): AgentProcess {
  const stateDir = join(o.dir, o.name, "state");
  const socket = join(o.dir, o.name, "q.sock");
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? o.dir,
    QUANTD_THREADS: "1",
    QUANTD_FLEET_BROKER: o.broker,
    QUANTD_FLEET_FLEET: o.fleet,
    QUANTD_FLEET_DEVICE: o.name,
    QUANTD_FLEET_OPERATOR_KEYS: o.operatorKey,
    QUANTD_FLEET_RELEASE_KEYS: o.releaseKey,
    QUANTD_FLEET_DEVICE_KEY_FILE: o.deviceKeyFile,
    QUANTD_FLEET_TELEMETRY_INTERVAL_MS: "100",
    ...o.env,
  };
  const proc = Bun.spawn(["bun", cliMain, "agent", "--state-dir", stateDir, "--socket", socket], {
    env,
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  return { name: o.name, stateDir, socket, proc };
}

/** A throttling proxy in front of a controller's `/releases/…` routes. */
export interface ReleaseProxy {
  readonly url: string;
  /** Bytes of release files sent so far, to every client. */
  readonly servedBytes: number;
  stop(): void;
}

/**
 * Forwards GET requests (with their Range header) to `target`, sending the
 * body in `chunkBytes` pieces at most `bytesPerSecond`.
 */
export function startReleaseProxy(
  target: string,
  bytesPerSecond: number,
  chunkBytes = 64 * 1024,
): ReleaseProxy {
  let served = 0;
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    async fetch(req) {
      const url = new URL(req.url);
      const headers: Record<string, string> = {};
      const range = req.headers.get("range");
      if (range !== null) headers.range = range;
      const upstream = await fetch(new URL(url.pathname, target), { headers });
      const isFile = url.pathname.includes("/files/");
      if (!isFile || upstream.body === null) return upstream;
      const reader = upstream.body.getReader();
      let pending: Uint8Array = new Uint8Array(0);
      const body = new ReadableStream<Uint8Array>({
        async pull(c) {
          while (pending.byteLength < chunkBytes) {
            const { done, value } = await reader.read();
            if (done) break;
            const next = new Uint8Array(pending.byteLength + value.byteLength);
            next.set(pending);
            next.set(value, pending.byteLength);
            pending = next;
          }
          if (pending.byteLength === 0) {
            c.close();
            return;
          }
          const piece = pending.subarray(0, chunkBytes);
          pending = pending.subarray(piece.byteLength);
          await Bun.sleep((piece.byteLength / bytesPerSecond) * 1000);
          served += piece.byteLength;
          c.enqueue(piece);
        },
        cancel() {
          void reader.cancel();
        },
      });
      const out = new Headers(upstream.headers);
      return new Response(body, { status: upstream.status, headers: out });
    },
  });
  return {
    url: `http://127.0.0.1:${server.port}/`,
    get servedBytes() {
      return served;
    },
    stop: () => server.stop(true),
  };
}
