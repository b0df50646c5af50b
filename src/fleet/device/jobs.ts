/**
 * Job commands on the device: a job command (recalibrate, quantize-dynamic,
 * bench, rollback, release) queues a job of its own name in the store's job
 * table — the idempotency record that survives restarts — and the job engine
 * runs it. This file holds the three pieces the link and the agent share: the
 * command-to-job rule, the report hook that queues a finished job's `report`
 * message, and engine handlers made from a {@link FleetCommandHandler}'s job
 * methods for a link that runs jobs without an agent.
 */
import { isQuantdError, QuantdError } from "../../errors.ts";
import type { JobHandler } from "../../jobs/handler.ts";
import type { Job, NewJob } from "../../store/jobs.ts";
import {
  type DeviceTopics,
  deviceTopics,
  encodeReport,
  type FleetCommand,
  jobReport,
  parseCommand,
} from "../protocol.ts";
import type { FleetCommandHandler, FleetJobContext } from "./handler.ts";

/** The fleet and device a device's messages name. */
export interface FleetIdentity {
  fleet: string;
  device: string;
}

/** The job a job command queues, under the command's id: a job of the command's name with its parameters. */
export function jobOfCommand(cmd: FleetCommand, id: string): NewJob {
  return { id, type: cmd.name, params: { ...cmd.params } };
}

/**
 * The engine's `report` hook for a device: each ended job's `report` message
 * (within the fleet's size cap) on the device's report topic, through
 * `enqueue` (the outbox, so a report outlives a process without a link).
 *
 * @throws CONFIG_INVALID on a bad fleet or device name
 */
export function jobReporter(
  identity: FleetIdentity,
  enqueue: (topic: string, body: Uint8Array) => void,
): (job: Job) => void {
  const topics: DeviceTopics = deviceTopics(identity.fleet, identity.device);
  return (job) => enqueue(topics.report, encodeReport(jobReport(job, identity.device)));
}

type JobMethod = (cmd: FleetCommand, ctx: FleetJobContext) => Promise<unknown> | undefined;

/** Calls the handler's method for a job command, or returns undefined when it has none. */
function callJobMethod(
  h: FleetCommandHandler,
  cmd: FleetCommand,
  ctx: FleetJobContext,
): Promise<unknown> | undefined {
  switch (cmd.name) {
    case "recalibrate":
      return h.recalibrate?.(cmd.params, ctx);
    case "quantize-dynamic":
      return h.quantizeDynamic?.(cmd.params, ctx);
    case "bench":
      return h.bench?.(cmd.params, ctx);
    case "rollback":
      return h.rollback?.(cmd.params, ctx);
    default:
      // release runs only in an agent's engine (it downloads and recalibrates); the rest are not jobs.
      return undefined;
  }
}

/**
 * One engine handler from a job method: the job's parameters parsed as its
 * command's, stages recorded as progress, `GATE_NOT_MET` ends it REJECTED,
 * and a method that does not watch its signal still ends on cancel, timeout
 * or shutdown.
 */
function methodHandler(run: JobMethod): JobHandler {
  return {
    async run(ctx) {
      const cmd = parseCommand(ctx.job.type, ctx.job.params);
      const fleetCtx: FleetJobContext = {
        jobId: ctx.job.id,
        signal: ctx.signal,
        progress: (stage, fraction) => {
          // Progress is information: a stop shows on the signal, which ends the race below.
          if (!ctx.signal.aborted) ctx.stage(stage, fraction);
        },
      };
      const aborted = new Promise<never>((_, reject) => {
        ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason), { once: true });
      });
      aborted.catch(() => {});
      try {
        const work = run(cmd, fleetCtx);
        if (work === undefined)
          throw new QuantdError("INTERNAL", `no ${ctx.job.type} method on this handler`);
        return { state: "SUCCEEDED", result: (await Promise.race([work, aborted])) ?? null };
      } catch (err) {
        if (!isQuantdError(err, "GATE_NOT_MET") || ctx.signal.aborted) throw err;
        return { state: "REJECTED", result: null, error: err };
      }
    },
  };
}

/** Engine handlers for the job methods `handler` has (a link's own jobs, without an agent's engine). */
export function commandJobHandlers(handler: FleetCommandHandler): Record<string, JobHandler> {
  const methods: Readonly<Record<string, unknown>> = {
    recalibrate: handler.recalibrate,
    "quantize-dynamic": handler.quantizeDynamic,
    bench: handler.bench,
    rollback: handler.rollback,
  };
  const out: Record<string, JobHandler> = {};
  for (const [type, method] of Object.entries(methods)) {
    if (method !== undefined) out[type] = methodHandler((cmd, ctx) => callJobMethod(handler, cmd, ctx));
  }
  return out;
}
