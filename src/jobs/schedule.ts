/**
 * Jobs the engine queues by itself: every so often, after so many new
 * samples, or when something else says one is due (live inputs drifting out
 * of what the serving model was calibrated on). Never a second one while one
 * of the type is queued or running.
 */
import type { Job, JobStore, NewJob } from "../store/jobs.ts";

/** When the engine queues jobs by itself. */
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

/** Decides, at each of the engine's polls, whether the scheduled job is due, and queues it. */
export class JobScheduler {
  readonly #s: JobSchedule;
  readonly #jobs: JobStore;
  readonly #now: () => number;
  #lastScheduled: number;
  #seenBaseline: number | undefined;

  constructor(schedule: JobSchedule, jobs: JobStore, now: () => number) {
    this.#s = schedule;
    this.#jobs = jobs;
    this.#now = now;
    this.#lastScheduled = now();
  }

  /** Counts new samples from what the last scheduled job recorded (or from now): call once, at start. */
  start(): void {
    const s = this.#s;
    if (s.afterNewSamples === undefined || s.samplesSeen === undefined) return;
    const last = this.#jobs.list({ limit: 100 }).find((j) => j.type === s.job.type);
    const recorded = last?.params["samplesSeen"];
    this.#seenBaseline = typeof recorded === "number" ? recorded : s.samplesSeen();
  }

  /** Why a job is due now, or undefined. */
  #why(seen: number | undefined): string | undefined {
    const s = this.#s;
    if (s.everyMs !== undefined && this.#now() - this.#lastScheduled >= s.everyMs) return "schedule";
    if (
      s.afterNewSamples !== undefined &&
      seen !== undefined &&
      this.#seenBaseline !== undefined &&
      seen - this.#seenBaseline >= s.afterNewSamples
    ) {
      return `${seen - this.#seenBaseline} new samples`;
    }
    return s.due?.();
  }

  /** Queues the job when it is due and none of its type is pending; returns it with the reason. */
  poll(): { job: Job; why: string } | undefined {
    const s = this.#s;
    const pending = [
      ...this.#jobs.list({ state: "QUEUED", limit: 1000 }),
      ...this.#jobs.list({ state: "IN_PROGRESS", limit: 10 }),
    ];
    if (pending.some((j) => j.type === s.job.type)) return undefined;
    const seen = s.samplesSeen?.();
    const why = this.#why(seen);
    if (why === undefined) return undefined;
    const params = {
      ...(s.job.params ?? {}),
      trigger: why,
      ...(seen !== undefined ? { samplesSeen: seen } : {}),
    };
    const job = this.#jobs.create({ type: s.job.type, params });
    this.#lastScheduled = this.#now();
    if (seen !== undefined) this.#seenBaseline = seen;
    return { job, why };
  }
}
