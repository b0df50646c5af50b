/**
 * The job engine: the one place that runs the store's jobs, whatever their
 * type. Handlers are registered by type (the agent's recalibrate,
 * quantize-dynamic, release, bench and rollback); the engine claims only
 * queued jobs of those types (`claimNext(types)`), one at a time across the
 * whole table, persists each stage, stops a job cooperatively on cancel
 * (asked here or by another process), timeout or shutdown, and after a crash
 * or power cut either puts an interrupted job back in the queue — its handler
 * then resumes from the last stage whose artefacts are intact — or fails it
 * with `JOB_INTERRUPTED` once it has been interrupted too often.
 *
 * Every job it ends, and every job it fails in recovery, goes once to the
 * `report` hook (the agent queues the fleet's report message there) before
 * `onUpdate` hears of it.
 *
 * With a work root, each job gets `<workRoot>/<id>/` for its artefacts and a
 * checkpoint written atomically there, removed when the job ends, and the
 * engine holds the work root's runner lock while it runs (one engine per state
 * directory; see runner-lock.ts).
 */
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { writeFailure } from "../core/files.ts";
import { QuantdError } from "../errors.ts";
import type { Job, JobStore } from "../store/jobs.ts";
import { isFinished, type JobHandler, type JobVerdict } from "./handler.ts";
import { acquireRunnerLock, removeStaleTempFiles } from "./runner-lock.ts";
import { RunningJob } from "./running-job.ts";
import { type JobSchedule, JobScheduler } from "./schedule.ts";

/** Default time a job may run before it is stopped as TIMED_OUT (1 hour: a Pi 4 calibrating a BERT-base takes minutes, not hours). */
export const DEFAULT_JOB_TIMEOUT_MS = 60 * 60 * 1000;
/** Default number of claims (first run plus resumes) before an interrupted job fails with `JOB_INTERRUPTED`. */
export const DEFAULT_MAX_ATTEMPTS = 3;
/** Default interval at which the engine looks for queued jobs (jobs queued by another process). */
export const DEFAULT_POLL_MS = 1000;
/** Default wait in {@link JobEngine.stop} for a running job to reach its next stage boundary. */
export const DEFAULT_STOP_WAIT_MS = 20_000;
/** First wait before taking a refused runner lock again; doubled up to {@link LOCK_RETRY_MAX_MS}. */
export const LOCK_RETRY_FIRST_MS = 1000;
/** Longest wait between two attempts at the runner lock. */
export const LOCK_RETRY_MAX_MS = 60_000;
/** How long the end of a job waits for a locked store before it is left to the next start's recovery. */
const FINISH_RETRY_MS = 120_000;
/** Job ids remembered as reported, so a second announcement of one end queues no second report. */
const REPORTED_MEMORY = 256;

/** Options of {@link JobEngine}. */
export interface JobEngineOptions {
  jobs: JobStore;
  /**
   * Parent of the jobs' work directories and of the runner lock
   * (`<stateDir>/jobs`). Without one, jobs get no work directory and the
   * engine takes no lock (a fleet link's own engine, whose jobs keep nothing).
   */
  workRoot?: string;
  /** A handler per job type (more with {@link JobEngine.register}); jobs of other types are left alone. */
  handlers?: Readonly<Record<string, JobHandler>>;
  /** @defaultValue {@link DEFAULT_JOB_TIMEOUT_MS} */
  timeoutMs?: number;
  /** @defaultValue {@link DEFAULT_MAX_ATTEMPTS} */
  maxAttempts?: number;
  /** @defaultValue {@link DEFAULT_POLL_MS} */
  pollMs?: number;
  /** Directories where stale temporary files of dead processes are removed at start (the registry's models dir). */
  tempDirs?: readonly string[];
  /** Jobs the engine queues by itself (none when absent). */
  schedule?: JobSchedule;
  /** The engine's log lines (dropped when absent). */
  log?: (line: string) => void;
  /** Once per job this engine ends, before `onUpdate`: queue its report (the result as the handler's `reportResult` gives it). */
  report?: (job: Job) => void;
  /** Every persisted change of a job (queued by the schedule, claim, stage, end). */
  onUpdate?: (job: Job) => void;
  /** Clock, ms since the epoch. @defaultValue Date.now */
  now?: () => number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Runs the store's jobs. Use {@link JobEngine.start} in a long-lived process
 * (the agent, a fleet link), or {@link JobEngine.recover} +
 * {@link JobEngine.runNext} to run queued jobs in the foreground
 * (`quantd job recalibrate --wait`).
 */
export class JobEngine {
  readonly #o: JobEngineOptions;
  readonly #handlers = new Map<string, JobHandler>();
  readonly #timeoutMs: number;
  readonly #maxAttempts: number;
  readonly #now: () => number;
  readonly #scheduler: JobScheduler | undefined;
  readonly #reported = new Set<string>();
  #running: RunningJob | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #release: (() => void) | undefined;
  #started = false;
  #stopped = false;

  /** @throws CONFIG_INVALID when `timeoutMs` is not positive */
  constructor(options: JobEngineOptions) {
    this.#o = options;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_JOB_TIMEOUT_MS;
    this.#maxAttempts = options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
    this.#now = options.now ?? Date.now;
    if (!(this.#timeoutMs > 0)) throw new QuantdError("CONFIG_INVALID", "job timeout must be positive");
    for (const [type, handler] of Object.entries(options.handlers ?? {})) this.register(type, handler);
    this.#scheduler =
      options.schedule === undefined
        ? undefined
        : new JobScheduler(options.schedule, options.jobs, this.#now);
  }

  /**
   * Runs `type`'s jobs with `handler` from now on.
   * @throws INTERNAL when the type has a handler already
   */
  register(type: string, handler: JobHandler): void {
    if (this.#handlers.has(type)) throw new QuantdError("INTERNAL", `job type ${type} has a handler already`);
    this.#handlers.set(type, handler);
  }

  /** Whether this engine runs `type`'s jobs. */
  handles(type: string): boolean {
    return this.#handlers.has(type);
  }

  /** The job types this engine runs. */
  get types(): readonly string[] {
    return [...this.#handlers.keys()];
  }

  /** The job running now, as claimed. */
  get current(): Job | undefined {
    return this.#running?.job;
  }

  /** Whether this engine runs jobs (false before start, while it waits for the lock, and after stop). */
  get running(): boolean {
    return this.#started && !this.#stopped;
  }

  #log(line: string): void {
    this.#o.log?.(line);
  }

  /** Tells `report` (once per ended job of ours) and `onUpdate` of a job's change. */
  #emit(job: Job): Job {
    const handler = this.#handlers.get(job.type);
    if (
      this.#o.report !== undefined &&
      handler !== undefined &&
      isFinished(job) &&
      !this.#reported.has(job.id)
    ) {
      this.#reported.add(job.id);
      if (this.#reported.size > REPORTED_MEMORY)
        this.#reported.delete(this.#reported.values().next().value ?? "");
      try {
        const result =
          handler.reportResult === undefined || job.result === null
            ? job.result
            : handler.reportResult(job.result);
        this.#o.report({ ...job, result });
      } catch (err) {
        this.#log(`job ${job.id}: report not queued: ${QuantdError.from(err).toLine()}`);
      }
    }
    try {
      this.#o.onUpdate?.(job);
    } catch (err) {
      this.#log(`jobs: update listener failed: ${QuantdError.from(err).toLine()}`);
    }
    return job;
  }

  #workDir(id: string): string | undefined {
    return this.#o.workRoot === undefined ? undefined : join(this.#o.workRoot, id);
  }

  /**
   * Deals with jobs a previous process left IN_PROGRESS (call once, before
   * claiming): each of a type this engine runs goes back to the queue to
   * resume, unless it was already claimed `maxAttempts` times — then it fails
   * with `JOB_INTERRUPTED`, its work directory removed. Stale temporary files
   * are removed first. Returns the jobs it changed.
   */
  recover(): Job[] {
    for (const dir of this.#o.tempDirs ?? []) {
      for (const name of removeStaleTempFiles(dir)) this.#log(`jobs: removed stale temporary file ${name}`);
    }
    const changed: Job[] = [];
    for (const job of this.#o.jobs.interrupted()) {
      if (!this.#handlers.has(job.type) || this.#running?.job.id === job.id) continue;
      const workDir = this.#workDir(job.id);
      if (workDir !== undefined) removeStaleTempFiles(workDir);
      if (job.attempts >= this.#maxAttempts) {
        const error = new QuantdError(
          "JOB_INTERRUPTED",
          `job ${job.id} was interrupted ${job.attempts} time(s) (last at stage ${job.stage ?? "start"}); not resumed again`,
          { details: { stage: job.stage, attempts: job.attempts } },
        );
        changed.push(this.#emit(this.#o.jobs.finish(job.id, "FAILED", { error: error.toJSON() })));
        if (workDir !== undefined) rmSync(workDir, { recursive: true, force: true });
        this.#log(`jobs: ${error.toLine()}`);
      } else {
        changed.push(this.#emit(this.#o.jobs.requeue(job.id)));
        this.#log(`jobs: job ${job.id} was interrupted at stage ${job.stage ?? "start"}; queued to resume`);
      }
    }
    return changed;
  }

  /**
   * Claims the oldest queued job of a type this engine runs and runs it to its
   * end. Resolves with the finished job, or `undefined` when nothing was
   * claimed (none queued, a job of any type already running, or the job was
   * left to resume after a shutdown).
   */
  async runNext(): Promise<Job | undefined> {
    if (this.#running !== undefined || this.#stopped || this.#handlers.size === 0) return undefined;
    const job = this.#o.jobs.claimNext(this.types);
    if (job === undefined) return undefined;
    const handler = this.#handlers.get(job.type);
    const running = new RunningJob(job, {
      jobs: this.#o.jobs,
      workDir: this.#workDir(job.id),
      timeoutMs: handler?.timeoutMs ?? this.#timeoutMs,
      now: this.#now,
      log: (line) => this.#log(line),
      emit: (j) => this.#emit(j),
    });
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
    if (this.#running?.job.id === id) this.#running.stop("cancel");
    return job;
  }

  /**
   * Starts the polling loop (and the schedule), after taking the runner lock
   * and recovering interrupted jobs. With `retryLock`, a lock that cannot be
   * taken (another engine holds it, a full disk) is retried with back-off
   * until it can, instead of throwing: the agent then runs jobs as soon as the
   * other engine ends or space is freed, without a restart.
   *
   * @throws STATE_CONFLICT when another engine holds the lock (without `retryLock`)
   * @throws DISK_FULL | FILE_WRITE_FAILED when the lock cannot be written (without `retryLock`)
   */
  start(options: { retryLock?: boolean } = {}): void {
    if (this.#started || this.#stopped) return;
    try {
      if (this.#o.workRoot !== undefined) this.#release = acquireRunnerLock(this.#o.workRoot);
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
    this.#scheduler?.start();
    this.#tick();
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
      const queued = this.#scheduler?.poll();
      if (queued !== undefined) {
        this.#log(`jobs: queued ${queued.job.type} job ${queued.job.id} (${queued.why})`);
        this.#emit(queued.job);
      }
    } catch (err) {
      this.#log(`jobs: schedule: ${QuantdError.from(err).toLine()}`);
    }
    // Whether a job ended: then the next one is looked for at once, not a poll later.
    const ran =
      this.#running === undefined
        ? this.runNext().then((done) => done !== undefined)
        : Promise.resolve(false);
    void ran
      .catch((err: unknown) => {
        // A busy database: try again at the next poll.
        this.#log(`jobs: ${QuantdError.from(err).toLine()}`);
        return false;
      })
      .then((again) => {
        if (this.#stopped || this.#running !== undefined) return;
        if (this.#timer !== undefined) clearTimeout(this.#timer);
        this.#timer = setTimeout(
          () => {
            this.#timer = undefined;
            this.#tick();
          },
          again ? 0 : (this.#o.pollMs ?? DEFAULT_POLL_MS),
        );
      });
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
      r.stop("shutdown");
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

  /** Runs the handler: its verdict, or the error it ends with. */
  async #runHandler(r: RunningJob): Promise<{ verdict?: JobVerdict; error?: QuantdError }> {
    const handler = this.#handlers.get(r.job.type);
    r.watch();
    try {
      if (handler === undefined) throw new QuantdError("INTERNAL", `no handler for ${r.job.type} jobs`);
      const workDir = this.#workDir(r.job.id);
      if (workDir !== undefined) {
        try {
          mkdirSync(workDir, { recursive: true, mode: 0o750 });
        } catch (err) {
          throw writeFailure(err, `cannot create ${workDir}: ${(err as Error).message}`);
        }
      }
      const verdict = await handler.run(r.context());
      // The last stage boundary: a cancel or timeout that arrived during the last stage still wins.
      r.check();
      return { verdict };
    } catch (err) {
      return { error: r.failure(err) };
    } finally {
      r.unwatch();
    }
  }

  /**
   * Records the end; a locked database frees up sooner or later, so it is
   * waited for (asynchronously, with back-off, for about FINISH_RETRY_MS);
   * if it does not, recovery at the next start ends the job.
   */
  async #recordEnd(r: RunningJob, verdict?: JobVerdict, error?: QuantdError): Promise<Job | undefined> {
    for (let attempt = 0, waited = 0; ; attempt++) {
      try {
        return r.finish(verdict, error);
      } catch (err) {
        const qe = QuantdError.from(err);
        if (qe.code !== "STORE_BUSY" || waited >= FINISH_RETRY_MS) {
          this.#log(`jobs: cannot record the end of job ${r.job.id}: ${qe.toLine()}`);
          return undefined;
        }
        const ms = Math.min(5000, 200 * 2 ** attempt);
        await sleep(ms);
        waited += ms;
      }
    }
  }

  async #run(r: RunningJob): Promise<Job | undefined> {
    const { job } = r;
    this.#emit(job);
    this.#log(
      `jobs: running ${job.type} job ${job.id}${job.attempts > 1 ? ` (attempt ${job.attempts}, resuming after ${job.stage ?? "start"})` : ""}`,
    );
    const { verdict, error } = await this.#runHandler(r);
    if (error?.code === "JOB_INTERRUPTED" && r.stopReason === "shutdown") {
      // Not an end: the next start resumes it from its checkpoint.
      try {
        this.#emit(this.#o.jobs.requeue(job.id));
      } catch (err) {
        this.#log(`jobs: job ${job.id} left IN_PROGRESS: ${QuantdError.from(err).toLine()}`);
      }
      this.#log(
        `jobs: job ${job.id} stopped at stage ${this.#o.jobs.get(job.id)?.stage ?? "?"}; it resumes at the next start`,
      );
      return undefined;
    }
    const done = await this.#recordEnd(r, verdict, error);
    if (done === undefined) return undefined;
    const workDir = this.#workDir(job.id);
    if (workDir !== undefined) rmSync(workDir, { recursive: true, force: true });
    this.#emit(done);
    this.#log(
      `jobs: ${done.type} job ${done.id} ${done.state}${done.error !== null ? `: ${done.error.code}: ${done.error.message}` : ""}`,
    );
    return done;
  }
}
