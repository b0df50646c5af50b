/**
 * A job's heavy work in a separate process: calibration, quantization and
 * validation (one `quantize` call), and the benchmark against the serving
 * model (one `compare` call). The agent serves from its own process; a child
 * that calibrates a BERT allocates hundreds of MB, and all of it goes back to
 * the operating system when the child exits, instead of staying in the
 * serving process's heap. The agent supervises it: cancelling the job signals
 * it (SIGTERM, then SIGKILL after a grace period), a timeout kills it, and a
 * child that dies without an answer fails the job with its exit reason.
 *
 * Protocol: the request is one JSON line on the child's stdin, which the
 * agent then keeps open (its end means the agent died: the child exits); the child
 * writes JSON lines on stdout — `{"progress": line}` for each progress line,
 * then one `{"ok": true, "value": …}` or `{"ok": false, "error": …}`. From the
 * source tree the child is `bun src/agent/job-child.ts`; a compiled quantd runs
 * itself with {@link JOB_CHILD_ENV} set (it has no source tree to spawn).
 */
import { spawn } from "node:child_process";
import type { CandidateComparison, CompareOptions } from "../bench/compare.ts";
import { isQuantdError, QuantdError, type QuantdErrorCode, type QuantdErrorJSON } from "../errors.ts";
import type {
  PoolSample,
  QuantizationResult,
  RunQuantizationOptions,
  SamplePool,
} from "../quant/pipeline.ts";
import { isCompiledBinary } from "../runtime/native-path.ts";
import { dieWithParent } from "./libc.ts";

/** Set to `1` in the environment of a compiled quantd to make it a job child instead of the CLI. */
export const JOB_CHILD_ENV = "QUANTD_JOB_CHILD";

/** The agent's pid, passed to its job child so the child can tell whether the agent died before it started. */
const JOB_PARENT_ENV = "QUANTD_JOB_PARENT_PID";

/** Grace between SIGTERM and SIGKILL when a job is cancelled or the agent stops. */
export const JOB_CHILD_GRACE_MS = 3000;

/**
 * Quantization options as they cross the process boundary: the pool as its two
 * fixed sets, and the fp32 logits cache as the path of the store that holds it
 * (the child opens it).
 */
export type ChildQuantizeOptions = Omit<RunQuantizationOptions, "calib" | "onProgress" | "referenceCache"> & {
  calib: { name: string; calibration: PoolSample[]; validation: PoolSample[] };
  referenceCacheDb?: string;
};

/** What the agent asks a job child to do. */
export type JobChildRequest =
  | { op: "quantize"; options: ChildQuantizeOptions }
  | { op: "compare"; active: string; candidate: string; options: CompareOptions };

type ChildLine = { progress: string } | { ok: true; value: unknown } | { ok: false; error: QuantdErrorJSON };

/** A pool that hands out exactly the given sets. */
function fixedSets(name: string, calibration: PoolSample[], validation: PoolSample[]): SamplePool {
  return {
    name,
    count: () => calibration.length + validation.length,
    pickDisjoint: () => ({ calibration, validation }),
  };
}

/**
 * Reads the request (the first line of stdin), then watches stdin for its
 * end: the agent keeps its end open for as long as it lives, so the end means
 * the agent died (kill -9, a crash) and this child must not go on calibrating
 * for nobody.
 */
function readRequestAndWatchParent(): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    let done = false;
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (s: string) => {
      if (done) return;
      text += s;
      const nl = text.indexOf("\n");
      if (nl >= 0) {
        done = true;
        resolve(text.slice(0, nl));
      }
    });
    process.stdin.on("end", () => {
      if (!done) return reject(new Error("stdin ended before a request line"));
      process.stderr.write("job child: the agent went away; stopping\n");
      process.exit(3);
    });
  });
}

function writeLine(line: ChildLine): Promise<void> {
  return new Promise((resolve) => {
    if (process.stdout.write(`${JSON.stringify(line)}\n`)) resolve();
    else process.stdout.once("drain", resolve);
  });
}

/** Calibration, quantization and validation: the quantizer's progress lines go to the parent as they come. */
async function quantizeOp(req: Extract<JobChildRequest, { op: "quantize" }>): Promise<unknown> {
  const { runQuantization } = await import("../quant/pipeline.ts");
  const { calib, referenceCacheDb, ...rest } = req.options;
  // The agent's store, for the fp32 logits cache only; without it validation just computes them.
  const store =
    referenceCacheDb === undefined
      ? undefined
      : await (await import("../store/store.ts"))
          .openStore(referenceCacheDb, { busyTimeoutMs: 2000 })
          .catch(() => undefined);
  try {
    // `auto` times the int8 forms worth trying on this board (its profile lists them and why).
    const auto =
      rest.mode === "auto" && rest.autoCandidates === undefined
        ? { autoCandidates: (await import("../device/detect.ts")).detectDevice().profile.auto }
        : {};
    return await runQuantization({
      ...rest,
      ...auto,
      calib: fixedSets(calib.name, calib.calibration, calib.validation),
      ...(store === undefined ? {} : { referenceCache: store.logits }),
      onProgress: (line) => {
        process.stdout.write(`${JSON.stringify({ progress: line })}\n`);
      },
    });
  } finally {
    store?.close();
  }
}

/** The candidate benchmarked against the serving model. */
async function compareOp(req: Extract<JobChildRequest, { op: "compare" }>): Promise<unknown> {
  const { compareCandidate } = await import("../bench/compare.ts");
  return await compareCandidate(req.active, req.candidate, req.options);
}

/**
 * What a job child can do, one entry per operation: a job type whose heavy
 * work should leave the serving process adds its operation here and calls
 * {@link runInJobChild} from its handler (the supervision, cancellation and
 * error transport are the same for all).
 */
const CHILD_OPS: {
  readonly [K in JobChildRequest["op"]]: (req: Extract<JobChildRequest, { op: K }>) => Promise<unknown>;
} = {
  quantize: quantizeOp,
  compare: compareOp,
};

/**
 * The child's side: reads the request from stdin, runs it, answers on stdout.
 *
 * @returns the exit code: 0 answered ok, 1 answered with an error, 2 a bad request
 */
export async function runJobChild(): Promise<number> {
  // Not inherited by what this child spawns (the benchmark's memory probes are quantd too).
  // The agent's pid as it spawned us: if it died before this line (a kill -9 right after the spawn), our
  // ppid already names init, and a ppid read here would not tell.
  const parent = Number(process.env[JOB_PARENT_ENV]) || process.ppid;
  delete process.env[JOB_CHILD_ENV];
  delete process.env[JOB_PARENT_ENV];
  // The kernel kills this child with the agent (kill -9, a crash), even in the middle of a synchronous
  // onnxruntime run; the end of stdin below covers the rest (no glibc) between runs.
  await dieWithParent();
  if (process.ppid !== parent) return 3;
  let req: JobChildRequest;
  try {
    req = JSON.parse(await readRequestAndWatchParent()) as JobChildRequest;
  } catch (err) {
    const error = new QuantdError("USAGE", "a job child needs a JSON request on stdin", { cause: err });
    await writeLine({ ok: false, error: error.toJSON() });
    return 2;
  }
  try {
    // Own keys only: a request naming `constructor` must not reach Object's.
    const op = Object.hasOwn(CHILD_OPS, req.op) ? CHILD_OPS[req.op] : undefined;
    if (op === undefined) {
      throw new QuantdError("USAGE", `unknown job child operation ${JSON.stringify(req.op)}`);
    }
    const value = await op(req as never);
    await writeLine({ ok: true, value });
    return 0;
  } catch (err) {
    await writeLine({ ok: false, error: QuantdError.from(err).toJSON() });
    return 1;
  }
}

/** Options of {@link runInJobChild}. */
export interface RunInChildOptions {
  /** Aborting it stops the child: SIGKILL when the reason is JOB_TIMED_OUT, else SIGTERM then SIGKILL. */
  signal?: AbortSignal;
  /** Each progress line; throwing from it stops the child and rejects with what it threw. */
  onProgress?: (line: string) => void;
  /** The error code of a child that died without an answer. */
  crashCode: QuantdErrorCode;
  /** Told the child's pid once it is started (logs, and the fault suite's kills). */
  onSpawn?: (pid: number) => void;
}

/**
 * Runs `req` in a fresh child process and resolves with its answer.
 *
 * @throws the child's own QuantdError when it answered with one
 * @throws the abort reason (JOB_CANCELLED, JOB_TIMED_OUT, JOB_INTERRUPTED) when stopped by the signal
 * @throws `crashCode` naming the exit code or signal when the child died without an answer
 */
export function runInJobChild<T>(req: JobChildRequest, options: RunInChildOptions): Promise<T> {
  const env = { ...process.env, [JOB_CHILD_ENV]: "1", [JOB_PARENT_ENV]: String(process.pid) };
  const child = isCompiledBinary()
    ? spawn(process.execPath, [], { stdio: ["pipe", "pipe", "pipe"], env })
    : spawn(process.execPath, [import.meta.path], { stdio: ["pipe", "pipe", "pipe"], env });
  if (child.pid !== undefined) options.onSpawn?.(child.pid);
  return new Promise<T>((resolve, reject) => {
    let answer: ChildLine | undefined;
    let stopped: unknown;
    let stderr = "";
    let buffered = "";
    let graceTimer: ReturnType<typeof setTimeout> | undefined;
    const stop = (reason: unknown, hard: boolean): void => {
      if (stopped !== undefined) return;
      stopped = reason;
      child.kill(hard ? "SIGKILL" : "SIGTERM");
      if (!hard) graceTimer = setTimeout(() => child.kill("SIGKILL"), JOB_CHILD_GRACE_MS);
    };
    const onAbort = (): void => {
      const reason = options.signal?.reason;
      stop(
        reason ?? new QuantdError("JOB_CANCELLED", "the job was stopped"),
        isQuantdError(reason, "JOB_TIMED_OUT"),
      );
    };
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener("abort", onAbort, { once: true });

    child.stdout.setEncoding("utf8").on("data", (s: string) => {
      buffered += s;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const text = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        let line: ChildLine;
        try {
          line = JSON.parse(text) as ChildLine;
        } catch {
          continue; // a stray print of a library: not part of the protocol
        }
        if ("progress" in line) {
          if (stopped !== undefined) continue;
          try {
            options.onProgress?.(line.progress);
          } catch (err) {
            stop(err, false);
          }
        } else answer = line;
      }
    });
    child.stderr.setEncoding("utf8").on("data", (s: string) => {
      stderr = (stderr + s).slice(-2000);
    });
    child.stdin.on("error", () => undefined); // a child that died early: reported by its exit
    // One line, and the pipe left open: its end tells the child that this process died.
    child.stdin.write(`${JSON.stringify(req)}\n`);
    child.on("error", (err) => {
      reject(
        new QuantdError(options.crashCode, `could not start the job's ${req.op} process`, { cause: err }),
      );
    });
    child.on("close", (code, signal) => {
      clearTimeout(graceTimer);
      child.stdin.destroy();
      options.signal?.removeEventListener("abort", onAbort);
      if (stopped !== undefined) return reject(stopped);
      if (answer !== undefined && "ok" in answer) {
        return answer.ok ? resolve(answer.value as T) : reject(QuantdError.fromJSON(answer.error));
      }
      const how =
        signal !== null
          ? `was killed by ${signal}${signal === "SIGKILL" ? " (out of memory?)" : ""}`
          : `exited with code ${code}`;
      reject(
        new QuantdError(options.crashCode, `the job's ${req.op} process ${how} without an answer`, {
          details: { exitCode: code, signal, stderr: stderr.trim().split("\n").slice(-5).join("\n") },
        }),
      );
    });
  });
}

/**
 * Quantizes in a child process: {@link runQuantization} with the same
 * options; the pool's two sets are picked here and sent along, and `signal`
 * stops the child.
 */
export function runQuantizationInChild(
  options: Omit<RunQuantizationOptions, "calib" | "referenceCache"> & {
    calib: SamplePool;
    signal?: AbortSignal;
    /** The store whose fp32 logits cache the child uses (its database path). */
    referenceCacheDb?: string;
  },
): Promise<QuantizationResult> {
  const { calib, onProgress, signal, ...rest } = options;
  const sets = calib.pickDisjoint(options.samples ?? 0, options.validationSamples ?? 0, options.seed ?? 1);
  return runInJobChild(
    {
      op: "quantize",
      options: {
        ...rest,
        calib: { name: calib.name, calibration: [...sets.calibration], validation: [...sets.validation] },
      },
    },
    {
      crashCode: "QUANT_FAILED",
      ...(signal === undefined ? {} : { signal }),
      ...(onProgress === undefined ? {} : { onProgress }),
    },
  );
}

/** Benchmarks the candidate against the active model in a child process ({@link compareCandidate}). */
export function compareCandidateInChild(
  activePath: string,
  candidatePath: string,
  options: CompareOptions & { signal?: AbortSignal },
): Promise<CandidateComparison> {
  const { signal, ...rest } = options;
  return runInJobChild(
    { op: "compare", active: activePath, candidate: candidatePath, options: rest },
    { crashCode: "BENCH_FAILED", ...(signal === undefined ? {} : { signal }) },
  );
}

if (import.meta.main) process.exit(await runJobChild());
