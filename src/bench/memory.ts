/**
 * Peak memory of a model, measured in a fresh child process (`child.ts`) so that
 * each figure covers exactly one model: the parent has other models loaded and
 * ORT arenas that never shrink, which would pollute an in-process measurement.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { QuantdError, type QuantdErrorJSON } from "../errors.ts";
import { isCompiledBinary } from "../runtime/native-path.ts";
import type { GraphOptimizationLevel } from "../runtime/types.ts";
import { MEMORY_PROBE_ENV } from "./child.ts";
import type { Shape } from "./inputs.ts";

/** What the child process is asked to do (passed as JSON in argv). */
export interface MemoryProbeRequest {
  model: string;
  shape: Shape;
  threads: number;
  vocabSize: number;
  /** Runs after loading; a few are enough to reach the steady-state peak. */
  runs: number;
  seed: number;
  graphOptimizationLevel?: GraphOptimizationLevel;
}

/** The child's one-line JSON answer. */
export type MemoryProbeReply =
  | {
      ok: true;
      /** `VmHWM`: peak resident memory of the child, runtime included. */
      peakRssBytes: number;
      /** `VmRSS` after the runs. */
      rssBytes: number;
      /** Peak resident memory of the child before onnxruntime was imported. */
      baselineRssBytes: number;
      /** Session creation time in the fresh process (a cold load, comparable across models). */
      loadMs: number;
      source: "proc-status" | "resource-usage";
    }
  | { ok: false; error: QuantdErrorJSON };

/** A successful memory measurement, in bytes. */
export interface MemoryFigure {
  peakRssBytes: number;
  rssBytes: number;
  baselineRssBytes: number;
  /** Session creation time in the fresh child process. */
  loadMs: number;
  source: "proc-status" | "resource-usage";
}

/** Options for {@link measurePeakMemory}. */
export interface MeasureMemoryOptions {
  /** Kill the child after this long. @defaultValue 300000 (5 min) */
  timeoutMs?: number;
  /** The runtime that runs `child.ts`. @defaultValue this process's Bun, else `bun` from PATH */
  runtime?: string;
}

const CHILD = join(import.meta.dir, "child.ts");

function defaultRuntime(): string {
  return process.versions["bun"] !== undefined ? process.execPath : "bun";
}

/**
 * Spawns a fresh process that loads `req.model`, runs it `req.runs` times at
 * `req.shape` and reports its peak resident memory.
 *
 * @throws the child's own error (e.g. MODEL_LOAD_FAILED, MODEL_INPUTS_MISMATCH) when it failed cleanly
 * @throws BENCH_FAILED when the child crashed, timed out or printed no answer
 */
export async function measurePeakMemory(
  req: MemoryProbeRequest,
  opts: MeasureMemoryOptions = {},
): Promise<MemoryFigure> {
  const timeoutMs = opts.timeoutMs ?? 300_000;
  // A compiled quantd is its own probe (see child.ts); from source, Bun runs child.ts.
  const child =
    isCompiledBinary() && opts.runtime === undefined
      ? spawn(process.execPath, [JSON.stringify(req)], {
          stdio: ["ignore", "pipe", "pipe"],
          env: { ...process.env, [MEMORY_PROBE_ENV]: "1" },
        })
      : spawn(opts.runtime ?? defaultRuntime(), [CHILD, JSON.stringify(req)], {
          stdio: ["ignore", "pipe", "pipe"],
        });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (s: string) => {
    stdout += s;
  });
  child.stderr.setEncoding("utf8").on("data", (s: string) => {
    stderr = (stderr + s).slice(-2000);
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
    (resolve, reject) => {
      child.on("error", reject);
      child.on("close", (c, s) => resolve({ code: c, signal: s }));
    },
  ).catch((err: unknown) => {
    throw new QuantdError("BENCH_FAILED", `could not start the memory probe for ${req.model}`, {
      cause: err,
    });
  });
  clearTimeout(timer);
  if (timedOut) {
    throw new QuantdError("BENCH_FAILED", `memory probe for ${req.model} timed out after ${timeoutMs} ms`);
  }
  const line = stdout.trim().split("\n").at(-1) ?? "";
  let reply: MemoryProbeReply;
  try {
    reply = JSON.parse(line) as MemoryProbeReply;
  } catch {
    const how = signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
    throw new QuantdError("BENCH_FAILED", `memory probe for ${req.model} ${how} without an answer`, {
      details: { stderr: stderr.trim() },
    });
  }
  if (!reply.ok) {
    const causes = reply.error.causes ?? [];
    throw new QuantdError(reply.error.code, reply.error.message, {
      ...(causes.length > 0 ? { cause: new Error(causes.join("; ")) } : {}),
      details: { ...(reply.error.details ?? {}), probe: "memory" },
    });
  }
  return {
    peakRssBytes: reply.peakRssBytes,
    rssBytes: reply.rssBytes,
    baselineRssBytes: reply.baselineRssBytes,
    loadMs: reply.loadMs,
    source: reply.source,
  };
}
