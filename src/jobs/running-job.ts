/**
 * One claimed job while it runs: why it is being stopped (cancel, timeout,
 * shutdown), the signal its handler watches, and the {@link JobContext} the
 * handler gets. The engine owns one at a time; this file holds the job's
 * state machine from IN_PROGRESS to its end.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileDurableSync } from "../core/files.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import type { Job, JobStore } from "../store/jobs.ts";
import type { JobContext, JobVerdict } from "./handler.ts";

/** The checkpoint file's name inside a job's work directory. */
export const CHECKPOINT_FILE = "checkpoint.json";
/** How often a running job looks for a cancel asked by another process (`quantd job cancel`). */
export const CANCEL_POLL_MS = 250;

/** Why a running job is being stopped; checked at the job's next cancellation point. */
export type StopReason = "cancel" | "timeout" | "shutdown";

/** What a {@link RunningJob} needs from its engine. */
export interface RunningJobDeps {
  jobs: JobStore;
  /** Its work directory, or undefined for an engine without a work root. */
  workDir: string | undefined;
  timeoutMs: number;
  now: () => number;
  log: (line: string) => void;
  /** Every persisted change of the job. */
  emit: (job: Job) => Job;
}

/**
 * Writes JSON to `path` atomically and durably (temporary file, fsync, rename).
 *
 * @throws DISK_FULL | FILE_WRITE_FAILED
 */
export function writeJsonDurably(path: string, value: unknown): void {
  writeFileDurableSync(path, JSON.stringify(value), 0o640);
}

function readJsonObject(path: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(readFileSync(path, "utf8"));
    return isRecord(v) ? v : undefined;
  } catch {
    // Absent or torn (it is written atomically, so torn means a disk fault): start over.
    return undefined;
  }
}

/** The error a stop reason ends a job with. */
function stopError(reason: StopReason, job: Job, timeoutMs: number): QuantdError {
  switch (reason) {
    case "cancel":
      return new QuantdError("JOB_CANCELLED", `job ${job.id} was cancelled`);
    case "timeout":
      return new QuantdError("JOB_TIMED_OUT", `job ${job.id} ran longer than ${timeoutMs} ms`, {
        details: { timeoutMs },
      });
    case "shutdown":
      return new QuantdError("JOB_INTERRUPTED", "the job engine is stopping");
  }
}

/** A claimed job on its way to an end. */
export class RunningJob {
  readonly job: Job;
  readonly abort = new AbortController();
  /** Settles when the job's end (or its requeue) is recorded. */
  done: Promise<Job | undefined> = Promise.resolve(undefined);
  #stop: StopReason | undefined;
  readonly #d: RunningJobDeps;
  readonly #deadline: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #cancelPoll: ReturnType<typeof setInterval> | undefined;

  constructor(job: Job, deps: RunningJobDeps) {
    this.job = job;
    this.#d = deps;
    this.#deadline = deps.now() + deps.timeoutMs;
  }

  /** Why it is being stopped, if it is. */
  get stopReason(): StopReason | undefined {
    return this.#stop;
  }

  /** Stops it (the first reason wins): its signal aborts, its next cancellation point throws. */
  stop(reason: StopReason): void {
    this.#stop ??= reason;
    if (!this.abort.signal.aborted) this.abort.abort(stopError(this.#stop, this.job, this.#d.timeoutMs));
  }

  /** Starts the timeout and the watch for a cancel asked by another process. */
  watch(): void {
    this.#timer = setTimeout(() => this.stop("timeout"), this.#d.timeoutMs);
    this.#cancelPoll = setInterval(() => {
      try {
        if (this.#d.jobs.get(this.job.id)?.cancelRequested === true) this.stop("cancel");
      } catch {
        // A locked store: look again at the next poll (or the next stage boundary).
      }
    }, CANCEL_POLL_MS);
    this.#cancelPoll.unref?.();
  }

  /** Stops the timers of {@link watch}. */
  unwatch(): void {
    clearTimeout(this.#timer);
    clearInterval(this.#cancelPoll);
  }

  /** A cancellation point. @throws JOB_CANCELLED | JOB_TIMED_OUT | JOB_INTERRUPTED */
  check(): void {
    if (this.#stop === undefined) {
      if (this.#d.now() >= this.#deadline) this.stop("timeout");
      else if (this.#d.jobs.get(this.job.id)?.cancelRequested === true) this.stop("cancel");
    }
    if (this.#stop !== undefined) throw stopError(this.#stop, this.job, this.#d.timeoutMs);
  }

  /** The error the job ends with: its stop's when it was stopped (the handler's is a consequence). */
  failure(err: unknown): QuantdError {
    if (this.#stop !== undefined && !isQuantdError(err, "JOB_INTERRUPTED")) {
      return stopError(this.#stop, this.job, this.#d.timeoutMs);
    }
    return QuantdError.from(err, "INTERNAL");
  }

  /** Records a stage; a locked store skips the record (progress information only), anything else throws. */
  #record(name: string, progress: number | undefined): void {
    const update: { stage: string; progress?: number } = { stage: name };
    if (progress !== undefined) update.progress = Math.min(1, Math.max(0, progress));
    try {
      this.#d.emit(this.#d.jobs.update(this.job.id, update));
    } catch (err) {
      // Resuming goes by the checkpoint: when another process holds the store's lock, go on without
      // the record rather than fail the job or wait on the lock.
      if (!isQuantdError(err, "STORE_BUSY")) throw err;
      this.#d.log(`jobs: job ${this.job.id} stage ${name} not recorded: the store is locked`);
    }
  }

  /** The handler's view of the job. */
  context(): JobContext {
    const { workDir } = this.#d;
    const dir = (): string => {
      if (workDir === undefined) {
        throw new QuantdError("INTERNAL", `job ${this.job.id}: this engine keeps no work directories`);
      }
      return workDir;
    };
    return {
      job: this.job,
      get workDir() {
        return dir();
      },
      signal: this.abort.signal,
      stage: (name, progress) => {
        this.check();
        this.#record(name, progress);
      },
      check: () => this.check(),
      readCheckpoint: () =>
        workDir === undefined ? undefined : readJsonObject(join(workDir, CHECKPOINT_FILE)),
      writeCheckpoint: (value) => writeJsonDurably(join(dir(), CHECKPOINT_FILE), value),
      log: (line) => this.#d.log(`job ${this.job.id}: ${line}`),
    };
  }

  /** Records how it ended. @throws what the store throws (STORE_BUSY: the engine retries) */
  finish(verdict: JobVerdict | undefined, error: QuantdError | undefined): Job {
    const { jobs } = this.#d;
    if (verdict !== undefined && error === undefined) {
      return verdict.state === "SUCCEEDED"
        ? jobs.finish(this.job.id, "SUCCEEDED", { result: verdict.result ?? null })
        : jobs.finish(this.job.id, "REJECTED", {
            result: verdict.result ?? null,
            error: verdict.error.toJSON(),
          });
    }
    const e = error ?? new QuantdError("INTERNAL", "job ended without a verdict");
    return jobs.finish(this.job.id, e.code === "JOB_TIMED_OUT" ? "TIMED_OUT" : "FAILED", {
      error: e.toJSON(),
    });
  }
}
