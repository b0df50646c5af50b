/**
 * The job runner: runs the store's queued jobs one at a time (the store's
 * `claimNext` refuses a second IN_PROGRESS job), persists each stage, stops a
 * job cooperatively on cancel, timeout or shutdown, and after a crash or power
 * cut either puts an interrupted job back in the queue — its handler then
 * resumes from the last stage whose artefacts are intact — or fails it with
 * `JOB_INTERRUPTED` once it has been interrupted too often.
 *
 * Each job gets a work directory `<workRoot>/<id>/` for its artefacts and a
 * checkpoint file written atomically there; the directory is removed when the
 * job ends. Only one runner per state directory: a lock file holding the
 * runner's pid, taken over when that process is gone (a crash leaves it
 * behind), tells `quantd job … --wait` whether an agent will run its job.
 *
 * Wiring (see `createRecalibrationRunner` in recalibrate.ts): one runner per
 * state directory, `start()` when the agent starts, `stop()` before the store
 * closes.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { writeFailure, writeFileDurableSync } from "../core/files.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import type { Job, JobState, JobStore, NewJob } from "../store/jobs.ts";

/** Default time a job may run before it is stopped as TIMED_OUT (1 hour: a Pi 4 calibrating a BERT-base takes minutes, not hours). */
export const DEFAULT_JOB_TIMEOUT_MS = 60 * 60 * 1000;
/** Default number of claims (first run plus resumes) before an interrupted job fails with `JOB_INTERRUPTED`. */
export const DEFAULT_MAX_ATTEMPTS = 3;
/** Default interval at which the runner looks for queued jobs (jobs queued by another process). */
export const DEFAULT_POLL_MS = 1000;
/** Default wait in {@link JobRunner.stop} for a running job to reach its next stage boundary. */
export const DEFAULT_STOP_WAIT_MS = 20_000;
/** First wait before taking a refused runner lock again; doubled up to {@link LOCK_RETRY_MAX_MS}. */
export const LOCK_RETRY_FIRST_MS = 1000;
/** Longest wait between two attempts at the runner lock. */
export const LOCK_RETRY_MAX_MS = 60_000;
/** How long the end of a job waits for a locked store before it is left to the next start's recovery. */
const FINISH_RETRY_MS = 120_000;
/** The lock file's name inside the work root. */
export const RUNNER_LOCK_FILE = "runner.lock";
/** The checkpoint file's name inside a job's work directory. */
export const CHECKPOINT_FILE = "checkpoint.json";

/** How a handler's job ended when it did not throw. */
export type JobVerdict =
  | { state: "SUCCEEDED"; result: unknown }
  | { state: "REJECTED"; result: unknown; error: QuantdError };

/** What a running job may use. */
export interface JobContext {
  /** The job as claimed (its `attempts` is above 1 when resumed after an interruption). */
  readonly job: Job;
  /** The job's own directory for artefacts; created, and removed when the job ends. */
  readonly workDir: string;
  /** Aborted on cancel, timeout or shutdown: pass it on to long operations that accept one. */
  readonly signal: AbortSignal;
  /**
   * Records the stage (persisted with its progress, 0…1) and is a cancellation
   * point.
   *
   * @throws JOB_CANCELLED | JOB_TIMED_OUT | JOB_INTERRUPTED (runner stopping) — let it propagate
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
}

/** When the runner queues jobs by itself. */
export interface JobSchedule {
  /** The job to queue. */
  job: Omit<NewJob, "id">;
  /** Queue one every this many ms (none when undefined). */
  everyMs?: number;
  /** Queue one once this many new distinct samples reached the store since the last one (none when undefined). */
  afterNewSamples?: number;
  /** Distinct samples the store has seen so far (`samples.stats().seen`); needed by `afterNewSamples`. */
  samplesSeen?: () => number;
  /** Why a job is due now for another reason (live inputs drifting), or undefined; asked only when none is pending. */
  due?: () => string | undefined;
}

/** Options of {@link JobRunner}. */
export interface JobRunnerOptions {
  jobs: JobStore;
  /** Parent of the jobs' work directories and of the lock file (`<stateDir>/jobs`). */
  workRoot: string;
  /** A handler per job type; jobs of other types are left to whoever handles them. */
  handlers: Readonly<Record<string, JobHandler>>;
  /** @defaultValue {@link DEFAULT_JOB_TIMEOUT_MS} */
  timeoutMs?: number;
  /** @defaultValue {@link DEFAULT_MAX_ATTEMPTS} */
  maxAttempts?: number;
  /** @defaultValue {@link DEFAULT_POLL_MS} */
  pollMs?: number;
  /** Directories where stale temporary files of dead processes are removed at start (the registry's models dir). */
  tempDirs?: readonly string[];
  /** Jobs the runner queues by itself (none when absent). */
  schedule?: JobSchedule;
  /** The runner's log lines (dropped when absent). */
  log?: (line: string) => void;
  /** Every persisted change of a job (claim, stage, end): for the fleet link's progress messages. */
  onUpdate?: (job: Job) => void;
  /** Clock, ms since the epoch. @defaultValue Date.now */
  now?: () => number;
}

/** The states a job ends in. */
export const FINAL_JOB_STATES: readonly JobState[] = ["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"];

/** Whether a job has ended. */
export function isFinished(job: Job): boolean {
  return FINAL_JOB_STATES.includes(job.state);
}

/** True when a process with this pid exists (EPERM: it exists but belongs to someone else). */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** What a runner lock file says about its holder. */
interface LockOwner {
  pid: number;
  /** The holder's start time in clock ticks after boot (`/proc/PID/stat` field 22); absent off Linux. */
  start?: number;
  /** The boot the holder ran in (`/proc/sys/kernel/random/boot_id`). */
  boot?: string;
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** A process's start time in clock ticks after boot, or `undefined` off Linux or when it is gone. */
function processStartTicks(pid: number): number | undefined {
  const stat = readProc(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const start = Number(fields[19]);
  return Number.isSafeInteger(start) ? start : undefined;
}

function bootId(): string | undefined {
  return readProc("/proc/sys/kernel/random/boot_id")?.trim();
}

/** The identity this process writes into a lock it takes. */
function selfLockOwner(): LockOwner {
  const owner: LockOwner = { pid: process.pid };
  const start = processStartTicks(process.pid);
  const boot = bootId();
  if (start !== undefined) owner.start = start;
  if (boot !== undefined) owner.boot = boot;
  return owner;
}

/** Parses a lock file: JSON `{pid, start, boot}`, or the bare pid earlier versions wrote. */
function parseLockOwner(text: string): LockOwner | undefined {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return { pid: Number(trimmed) };
  try {
    const v: unknown = JSON.parse(trimmed);
    if (typeof v !== "object" || v === null) return undefined;
    const o = v as Record<string, unknown>;
    if (typeof o["pid"] !== "number") return undefined;
    const owner: LockOwner = { pid: o["pid"] };
    if (typeof o["start"] === "number") owner.start = o["start"];
    if (typeof o["boot"] === "string") owner.boot = o["boot"];
    return owner;
  } catch {
    return undefined;
  }
}

/**
 * Whether the process a lock names still holds it: alive, and the same
 * process — a pid is reused after a reboot or a wrap-around, so the holder's
 * boot and start time must match too. A bare-pid lock of an earlier version
 * counts only when its process runs quantd.
 */
function ownerHolds(owner: LockOwner): boolean {
  if (!processAlive(owner.pid)) return false;
  if (owner.start === undefined) {
    const cmdline = readProc(`/proc/${owner.pid}/cmdline`);
    return cmdline === undefined || cmdline.includes("quantd");
  }
  if (owner.boot !== undefined && bootId() !== undefined && owner.boot !== bootId()) return false;
  const start = processStartTicks(owner.pid);
  return start === undefined || start === owner.start;
}

/** The pid holding the runner lock of `workRoot`, when that process is alive and is the one that took it. */
export function runnerLockHolder(workRoot: string): number | undefined {
  const text = readProc(join(workRoot, RUNNER_LOCK_FILE));
  const owner = text === undefined ? undefined : parseLockOwner(text);
  return owner !== undefined && ownerHolds(owner) ? owner.pid : undefined;
}

/**
 * Takes the runner lock of `workRoot`; a lock left by a process that is gone
 * (or whose pid now names another process) is taken over. The lock is written
 * whole to a temporary file and linked into place, so a full disk never leaves
 * an empty lock behind. Returns the release function.
 *
 * @throws STATE_CONFLICT when a live process holds it
 * @throws FILE_WRITE_FAILED | DISK_FULL when the lock file cannot be written
 */
export function acquireRunnerLock(workRoot: string): () => void {
  const path = join(workRoot, RUNNER_LOCK_FILE);
  const tmp = join(workRoot, `.${RUNNER_LOCK_FILE}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  const writeFailed = (err: unknown): QuantdError =>
    writeFailure(err, `cannot write ${path}: ${(err as Error).message}`);

  const content = `${JSON.stringify(selfLockOwner())}\n`;
  try {
    mkdirSync(workRoot, { recursive: true, mode: 0o750 });
    const fd = openSync(tmp, "wx", 0o640);
    try {
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw writeFailed(err);
  }
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        linkSync(tmp, path);
        return () => {
          const owner = parseLockOwner(readProc(path) ?? "");
          if (owner?.pid === process.pid) rmSync(path, { force: true });
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw writeFailed(err);
        const holder = runnerLockHolder(workRoot);
        if (holder !== undefined) {
          throw new QuantdError("STATE_CONFLICT", `another job runner (pid ${holder}) uses ${workRoot}`, {
            details: { pid: holder },
          });
        }
        // Left by a process that died without releasing it, or naming a pid another process now has.
        rmSync(path, { force: true });
      }
    }
    throw new QuantdError("STATE_CONFLICT", `cannot take the job runner lock ${path}`);
  } finally {
    rmSync(tmp, { force: true });
  }
}

// The two temporary-file names our atomic writers use: core/files.ts's `.NAME.PID.HEX.tmp` and the registry's `.NAME.tmp-PID-HEX`.
const TEMP_NAMES = [/^\..+\.(\d+)\.[0-9a-f]+\.tmp$/, /^\..+\.tmp-(\d+)-[0-9a-f]+$/];

/**
 * Removes the temporary files of atomic writes whose writing process is gone
 * (a crash between create and rename leaves them). Returns the removed names.
 */
export function removeStaleTempFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    for (const re of TEMP_NAMES) {
      const m = re.exec(name);
      if (m === null) continue;
      if (!processAlive(Number(m[1]))) {
        rmSync(join(dir, name), { force: true });
        removed.push(name);
      }
      break;
    }
  }
  return removed;
}

/**
 * Writes JSON to `path` atomically and durably (temporary file, fsync, rename).
 *
 * @throws DISK_FULL | FILE_WRITE_FAILED
 */
export function writeJsonDurably(path: string, value: unknown): void {
  writeFileDurableSync(path, JSON.stringify(value), 0o640);
}

/** Why a running job is being stopped, set by the runner; checked at the job's next cancellation point. */
type StopReason = "cancel" | "timeout" | "shutdown";

interface Running {
  job: Job;
  abort: AbortController;
  stop: StopReason | undefined;
  done: Promise<Job | undefined>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Runs the store's jobs. Use {@link JobRunner.start} in a long-lived process
 * (the agent), or {@link JobRunner.recover} + {@link JobRunner.runNext} to run
 * queued jobs in the foreground (`quantd job recalibrate --wait`).
 */
export class JobRunner {
  readonly #o: JobRunnerOptions;
  readonly #timeoutMs: number;
  readonly #maxAttempts: number;
  readonly #now: () => number;
  #running: Running | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #release: (() => void) | undefined;
  #started = false;
  #stopped = false;
  #lastScheduled: number;
  #seenBaseline: number | undefined;

  /** @throws CONFIG_INVALID when `timeoutMs` is not positive */
  constructor(options: JobRunnerOptions) {
    this.#o = options;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_JOB_TIMEOUT_MS;
    this.#maxAttempts = options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    this.#now = options.now ?? Date.now;
    this.#lastScheduled = this.#now();
    if (!(this.#timeoutMs > 0)) throw new QuantdError("CONFIG_INVALID", "job timeout must be positive");
  }

  /** The job running now, as claimed. */
  get current(): Job | undefined {
    return this.#running?.job;
  }

  #log(line: string): void {
    this.#o.log?.(line);
  }

  #emit(job: Job): Job {
    try {
      this.#o.onUpdate?.(job);
    } catch (err) {
      this.#log(`jobs: update listener failed: ${QuantdError.from(err).toLine()}`);
    }
    return job;
  }

  /**
   * Deals with jobs a previous process left IN_PROGRESS (call once, before
   * claiming): each goes back to the queue to resume, unless it was already
   * claimed `maxAttempts` times — then it fails with `JOB_INTERRUPTED`, its
   * work directory removed. Stale temporary files are removed first.
   * Returns the jobs it changed.
   */
  recover(): Job[] {
    for (const dir of this.#o.tempDirs ?? []) {
      for (const name of removeStaleTempFiles(dir)) this.#log(`jobs: removed stale temporary file ${name}`);
    }
    const changed: Job[] = [];
    for (const job of this.#o.jobs.interrupted()) {
      if (this.#o.handlers[job.type] === undefined) continue;
      if (this.#running?.job.id === job.id) continue;
      const workDir = join(this.#o.workRoot, job.id);
      removeStaleTempFiles(workDir);
      if (job.attempts >= this.#maxAttempts) {
        const error = new QuantdError(
          "JOB_INTERRUPTED",
          `job ${job.id} was interrupted ${job.attempts} time(s) (last at stage ${job.stage ?? "start"}); not resumed again`,
          { details: { stage: job.stage, attempts: job.attempts } },
        );
        changed.push(this.#emit(this.#o.jobs.finish(job.id, "FAILED", { error: error.toJSON() })));
        rmSync(workDir, { recursive: true, force: true });
        this.#log(`jobs: ${error.toLine()}`);
      } else {
        changed.push(this.#emit(this.#o.jobs.requeue(job.id)));
        this.#log(`jobs: job ${job.id} was interrupted at stage ${job.stage ?? "start"}; queued to resume`);
      }
    }
    return changed;
  }

  /**
   * Claims the oldest queued job this runner handles and runs it to its end.
   * Resolves with the finished job, or `undefined` when nothing was claimed (none
   * queued, one already running, or the job was left to resume after a shutdown).
   */
  async runNext(): Promise<Job | undefined> {
    if (this.#running !== undefined || this.#stopped) return undefined;
    const next = this.#o.jobs.list({ state: "QUEUED", limit: 10_000 }).at(-1);
    // claimNext takes the oldest queued job of any type: leave the queue to its owner if that is not ours.
    if (next === undefined || this.#o.handlers[next.type] === undefined) return undefined;
    const job = this.#o.jobs.claimNext();
    if (job === undefined) return undefined;
    const running: Running = {
      job,
      abort: new AbortController(),
      stop: undefined,
      done: Promise.resolve(undefined),
    };
    this.#running = running;
    running.done = this.#run(running).finally(() => {
      this.#running = undefined;
    });
    return running.done;
  }

  /**
   * Cancels a job: a queued one fails at once (`JOB_CANCELLED`); a running one
   * stops at its next stage boundary and then fails with `JOB_CANCELLED`.
   *
   * @throws JOB_NOT_FOUND
   */
  cancel(id: string): Job {
    const job = this.#emit(this.#o.jobs.cancel(id));
    const r = this.#running;
    if (r !== undefined && r.job.id === id) {
      r.stop ??= "cancel";
      r.abort.abort(new QuantdError("JOB_CANCELLED", `job ${id} was cancelled`));
    }
    return job;
  }

  /**
   * Starts the polling loop (and the schedule), after taking the runner lock
   * and recovering interrupted jobs. With `retryLock`, a lock that cannot be
   * taken (another runner holds it, a full disk) is retried with back-off
   * until it can, instead of throwing: the agent then runs jobs as soon as the
   * other runner ends or space is freed, without a restart.
   *
   * @throws STATE_CONFLICT when another runner holds the lock (without `retryLock`)
   * @throws DISK_FULL | FILE_WRITE_FAILED when the lock cannot be written (without `retryLock`)
   */
  start(options: { retryLock?: boolean } = {}): void {
    if (this.#started || this.#stopped) return;
    try {
      this.#release = acquireRunnerLock(this.#o.workRoot);
    } catch (err) {
      if (!(options.retryLock ?? false)) throw err;
      this.#retryLock(QuantdError.from(err), LOCK_RETRY_FIRST_MS);
      return;
    }
    this.#started = true;
    try {
      this.recover();
    } catch (err) {
      this.#log(`jobs: recovery failed: ${QuantdError.from(err).toLine()}`);
    }
    const s = this.#o.schedule;
    if (s?.afterNewSamples !== undefined && s.samplesSeen !== undefined) {
      const last = this.#o.jobs.list({ limit: 100 }).find((j) => j.type === s.job.type);
      const recorded = last?.params["samplesSeen"];
      this.#seenBaseline = typeof recorded === "number" ? recorded : s.samplesSeen();
    }
    this.#tick();
  }

  /** Whether this runner holds the lock and runs jobs (false while it waits for the lock). */
  get running(): boolean {
    return this.#started && !this.#stopped;
  }

  #retryLock(err: QuantdError, delayMs: number): void {
    if (delayMs === LOCK_RETRY_FIRST_MS || delayMs >= LOCK_RETRY_MAX_MS) {
      this.#log(
        `jobs: cannot take the runner lock, retrying in ${Math.round(delayMs / 1000)} s: ${err.toLine()}`,
      );
    }
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#stopped) return;
      try {
        this.start();
        this.#log("jobs: took the runner lock; running jobs here");
      } catch (next) {
        this.#retryLock(QuantdError.from(next), Math.min(LOCK_RETRY_MAX_MS, delayMs * 2));
      }
    }, delayMs);
  }

  /** Looks for work now rather than at the next poll. */
  wake(): void {
    if (!this.#started || this.#stopped) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#tick();
  }

  #tick(): void {
    if (this.#stopped) return;
    try {
      this.#maybeSchedule();
    } catch (err) {
      this.#log(`jobs: schedule: ${QuantdError.from(err).toLine()}`);
    }
    let p: Promise<unknown> = Promise.resolve();
    if (this.#running === undefined) {
      try {
        p = this.runNext();
      } catch (err) {
        // A busy database: try again at the next poll.
        this.#log(`jobs: cannot claim a job: ${QuantdError.from(err).toLine()}`);
      }
    }
    void p
      .catch((err: unknown) => this.#log(`jobs: ${QuantdError.from(err).toLine()}`))
      .finally(() => {
        if (this.#stopped || this.#running !== undefined) return;
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          this.#tick();
        }, this.#o.pollMs ?? DEFAULT_POLL_MS);
      });
  }

  #maybeSchedule(): void {
    const s = this.#o.schedule;
    if (s === undefined) return;
    const pending = [
      ...this.#o.jobs.list({ state: "QUEUED", limit: 1000 }),
      ...this.#o.jobs.list({ state: "IN_PROGRESS", limit: 10 }),
    ];
    if (pending.some((j) => j.type === s.job.type)) return;
    const now = this.#now();
    const seen = s.samplesSeen?.();
    let why: string | undefined;
    if (s.everyMs !== undefined && now - this.#lastScheduled >= s.everyMs) why = "schedule";
    else if (
      s.afterNewSamples !== undefined &&
      seen !== undefined &&
      this.#seenBaseline !== undefined &&
      seen - this.#seenBaseline >= s.afterNewSamples
    ) {
      why = `${seen - this.#seenBaseline} new samples`;
    } else if (s.due !== undefined) why = s.due();
    if (why === undefined) return;
    const params = {
      ...(s.job.params ?? {}),
      trigger: why,
      ...(seen !== undefined ? { samplesSeen: seen } : {}),
    };
    const job = this.#o.jobs.create({ type: s.job.type, params });
    this.#lastScheduled = now;
    if (seen !== undefined) this.#seenBaseline = seen;
    this.#log(`jobs: queued ${job.type} job ${job.id} (${why})`);
    this.#emit(job);
  }

  /**
   * Stops polling; a running job stops at its next stage boundary and goes
   * back to the queue (it resumes at the next start). A stage that does not
   * reach its boundary within `waitMs` (a long calibration on a slow board) is
   * not waited for: the job stays IN_PROGRESS, and the next start resumes it
   * from its checkpoint as after a crash. Releases the lock.
   */
  async stop(options: { waitMs?: number } = {}): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const r = this.#running;
    if (r !== undefined) {
      r.stop ??= "shutdown";
      r.abort.abort(new QuantdError("JOB_INTERRUPTED", "the job runner is stopping"));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waited = await Promise.race([
        r.done.then(
          () => true,
          () => true,
        ),
        new Promise<false>((resolve) => {
          timer = setTimeout(() => resolve(false), options.waitMs ?? DEFAULT_STOP_WAIT_MS);
        }),
      ]);
      clearTimeout(timer);
      if (!waited) {
        this.#log(
          `jobs: job ${r.job.id} did not reach a stage boundary in time; it resumes at the next start`,
        );
      }
    }
    this.#release?.();
    this.#release = undefined;
  }

  async #run(r: Running): Promise<Job | undefined> {
    const { job } = r;
    const jobs = this.#o.jobs;
    const handler = this.#o.handlers[job.type];
    const workDir = join(this.#o.workRoot, job.id);
    const deadline = this.#now() + this.#timeoutMs;
    const timer = setTimeout(() => {
      r.stop ??= "timeout";
      r.abort.abort(new QuantdError("JOB_TIMED_OUT", `job ${job.id} ran past its timeout`));
    }, this.#timeoutMs);
    this.#emit(job);
    this.#log(
      `jobs: running ${job.type} job ${job.id}${job.attempts > 1 ? ` (attempt ${job.attempts}, resuming after ${job.stage ?? "start"})` : ""}`,
    );

    const check = (): void => {
      if (r.stop === undefined) {
        if (this.#now() >= deadline) r.stop = "timeout";
        else if (jobs.get(job.id)?.cancelRequested === true) r.stop = "cancel";
      }
      switch (r.stop) {
        case undefined:
          return;
        case "cancel":
          throw new QuantdError("JOB_CANCELLED", `job ${job.id} was cancelled`);
        case "timeout":
          throw new QuantdError("JOB_TIMED_OUT", `job ${job.id} ran longer than ${this.#timeoutMs} ms`, {
            details: { timeoutMs: this.#timeoutMs },
          });
        case "shutdown":
          throw new QuantdError("JOB_INTERRUPTED", "the job runner is stopping");
      }
    };
    const checkpointPath = join(workDir, CHECKPOINT_FILE);
    const ctx: JobContext = {
      job,
      workDir,
      signal: r.abort.signal,
      stage: (name, progress) => {
        check();
        const update: { stage: string; progress?: number } = { stage: name };
        if (progress !== undefined) update.progress = Math.min(1, Math.max(0, progress));
        try {
          this.#emit(jobs.update(job.id, update));
        } catch (err) {
          // A stage record is progress information (resuming goes by the checkpoint): when another process
          // holds the store's lock, go on without it rather than fail the job or wait on the lock.
          if (!isQuantdError(err, "STORE_BUSY")) throw err;
          this.#log(`jobs: job ${job.id} stage ${name} not recorded: the store is locked`);
        }
      },
      check,
      readCheckpoint: () => {
        try {
          const v: unknown = JSON.parse(readFileSync(checkpointPath, "utf8"));
          return typeof v === "object" && v !== null && !Array.isArray(v)
            ? (v as Record<string, unknown>)
            : undefined;
        } catch {
          // Absent or torn (it is written atomically, so torn means a disk fault): start over.
          return undefined;
        }
      },
      writeCheckpoint: (value) => writeJsonDurably(checkpointPath, value),
      log: (line) => this.#log(`job ${job.id}: ${line}`),
    };

    let verdict: JobVerdict | undefined;
    let error: QuantdError | undefined;
    try {
      if (handler === undefined) throw new QuantdError("INTERNAL", `no handler for ${job.type} jobs`);
      try {
        mkdirSync(workDir, { recursive: true, mode: 0o750 });
      } catch (err) {
        throw writeFailure(err, `cannot create ${workDir}: ${(err as Error).message}`);
      }
      verdict = await handler.run(ctx);
      // The last stage boundary: a cancel or timeout that arrived during the last stage still wins.
      check();
    } catch (err) {
      error = QuantdError.from(err, "INTERNAL");
    } finally {
      clearTimeout(timer);
    }

    if (error !== undefined && r.stop === "shutdown" && isQuantdError(error, "JOB_INTERRUPTED")) {
      // Not an end: the next start resumes it from its checkpoint.
      try {
        this.#emit(jobs.requeue(job.id));
      } catch (err) {
        this.#log(`jobs: job ${job.id} left IN_PROGRESS: ${QuantdError.from(err).toLine()}`);
      }
      this.#log(
        `jobs: job ${job.id} stopped at stage ${jobs.get(job.id)?.stage ?? "?"}; it resumes at the next start`,
      );
      return undefined;
    }
    let done: Job | undefined;
    const finish = (): Job => {
      if (verdict !== undefined && error === undefined) {
        return verdict.state === "SUCCEEDED"
          ? jobs.finish(job.id, "SUCCEEDED", { result: verdict.result ?? null })
          : jobs.finish(job.id, "REJECTED", {
              result: verdict.result ?? null,
              error: verdict.error.toJSON(),
            });
      }
      const e = error ?? new QuantdError("INTERNAL", "job ended without a verdict");
      return jobs.finish(job.id, e.code === "JOB_TIMED_OUT" ? "TIMED_OUT" : "FAILED", { error: e.toJSON() });
    };
    // A locked database frees up sooner or later: wait for it (asynchronously, with back-off, for about
    // FINISH_RETRY_MS); if it does not, recovery at the next start ends the job.
    for (let attempt = 0, waited = 0; done === undefined; attempt++) {
      try {
        done = finish();
      } catch (err) {
        const qe = QuantdError.from(err);
        if (qe.code !== "STORE_BUSY" || waited >= FINISH_RETRY_MS) {
          this.#log(`jobs: cannot record the end of job ${job.id}: ${qe.toLine()}`);
          return undefined;
        }
        const ms = Math.min(5000, 200 * 2 ** attempt);
        await sleep(ms);
        waited += ms;
      }
    }
    rmSync(workDir, { recursive: true, force: true });
    if (done !== undefined) {
      this.#emit(done);
      this.#log(
        `jobs: ${done.type} job ${done.id} ${done.state}${done.error !== null ? `: ${done.error.code}: ${done.error.message}` : ""}`,
      );
    }
    return done;
  }
}
