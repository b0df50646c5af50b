/**
 * What a job handler is and what it may use: the contract between the job
 * engine (`engine.ts`) and the code that does one type of job. A handler sees
 * only its job, a work directory, a signal and a few calls into the engine, so
 * it can do its work in this process or hand it to a child process (the
 * recalibration runs its quantizer and benchmark in `agent/job-child.ts`)
 * without the engine knowing.
 */
import type { QuantdError } from "../errors.ts";
import { FINAL_JOB_STATES, type Job } from "../store/jobs.ts";

/** How a handler's job ended when it did not throw. */
export type JobVerdict =
  | { state: "SUCCEEDED"; result: unknown }
  | { state: "REJECTED"; result: unknown; error: QuantdError };

/** What a running job may use. */
export interface JobContext {
  /** The job as claimed (its `attempts` is above 1 when resumed after an interruption). */
  readonly job: Job;
  /**
   * The job's own directory for artefacts; created, and removed when the job
   * ends. @throws INTERNAL from an engine without a work root (one that runs
   * only jobs with no artefacts, as a fleet link's own engine does)
   */
  readonly workDir: string;
  /** Aborted on cancel, timeout or shutdown: pass it on to long operations that accept one. */
  readonly signal: AbortSignal;
  /**
   * Records the stage (persisted with its progress, 0…1) and is a cancellation
   * point.
   *
   * @throws JOB_CANCELLED | JOB_TIMED_OUT | JOB_INTERRUPTED (engine stopping) — let it propagate
   * @throws STORE_BUSY | DISK_FULL | STORE_FAILED when the stage cannot be recorded
   */
  stage(name: string, progress?: number): void;
  /** A cancellation point without a stage change. @throws JOB_CANCELLED | JOB_TIMED_OUT | JOB_INTERRUPTED */
  check(): void;
  /** The checkpoint written by an earlier attempt (or this one), or `undefined`. */
  readCheckpoint(): Record<string, unknown> | undefined;
  /** Replaces the checkpoint atomically and durably. @throws DISK_FULL | FILE_WRITE_FAILED */
  writeCheckpoint(value: Record<string, unknown>): void;
  /** A log line, prefixed with the job id. */
  log(line: string): void;
}

/** Runs jobs of one type. */
export interface JobHandler {
  /**
   * Does the job. Throws a QuantdError to fail it; returns REJECTED when the
   * job ran but its outcome was refused (a gate not met, a slower model).
   */
  run(ctx: JobContext): Promise<JobVerdict>;
  /** Longest run of this type's jobs, ms. @defaultValue the engine's `timeoutMs` */
  readonly timeoutMs?: number;
  /**
   * The part of a result that goes into the job's report message (the result
   * stays whole in the store), e.g. without bulky per-tensor tables. Not
   * asked for a job that ended without a result.
   * @defaultValue the whole result
   */
  reportResult?(result: unknown): unknown;
}

/** Whether a job has ended. */
export function isFinished(job: Job): boolean {
  return FINAL_JOB_STATES.includes(job.state);
}
