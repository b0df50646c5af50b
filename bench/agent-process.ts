/**
 * A real `quantd agent` process for benchmarks: started on its own state
 * directory and socket, ready once its health route says so, with the
 * resident-memory figures of /proc. Shared by `serve.ts` and `tasks.ts`.
 */
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { readProcessMemory } from "../src/core/process-memory.ts";

const CLI = join(resolve(import.meta.dir, ".."), "src/cli/main.ts");

/** A started agent. */
export interface RunningAgent {
  socket: string;
  pid: number;
  stop(): Promise<void>;
}

/** Options of {@link startAgentProcess}. */
export interface AgentProcessOptions {
  /** Holds the agent's state directory (`dir/name`) and socket (`dir/name.sock`). */
  dir: string;
  name: string;
  /** The model to serve. @defaultValue the agent's default (the shipped model) */
  model?: string;
  /** onnxruntime threads (`QUANTD_THREADS`). */
  threads: number;
  /** More environment. */
  env?: Record<string, string>;
  /** Called with the process as soon as it is spawned (to kill it whatever happens). */
  onSpawn?: (p: Subprocess) => void;
}

/**
 * Starts an agent and waits (60 s at most) until it is ready.
 *
 * @throws Error when it exits first (with its stderr) or is not ready in time
 */
export async function startAgentProcess(opts: AgentProcessOptions): Promise<RunningAgent> {
  const socket = join(opts.dir, `${opts.name}.sock`);
  const args = ["bun", CLI, "agent", "--state-dir", join(opts.dir, opts.name), "--socket", socket];
  if (opts.model !== undefined) args.push("--model", opts.model);
  const proc = Bun.spawn(args, {
    env: { ...process.env, QUANTD_THREADS: String(opts.threads), QUANTD_CONFIG: "", ...opts.env },
    stdout: "ignore",
    stderr: "pipe",
  });
  opts.onSpawn?.(proc);
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null)
      throw new Error(`agent ${opts.name} exited: ${await new Response(proc.stderr).text()}`);
    try {
      const r = await fetch("http://localhost/v2/health/ready", { unix: socket });
      if (r.status === 200) break;
    } catch {
      // not up yet
    }
    if (Date.now() - t0 > 60_000) throw new Error(`agent ${opts.name} not ready`);
    await Bun.sleep(50);
  }
  return {
    socket,
    pid: proc.pid,
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** A process's resident set now and at its peak (VmRSS, VmHWM), in MB. */
export function rssOf(pid: number): { rssMb: number; peakMb: number } {
  const m = readProcessMemory(pid);
  return { rssMb: m.rssBytes / 1048576, peakMb: m.peakRssBytes / 1048576 };
}
