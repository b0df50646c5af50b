/**
 * The job commands (recalibrate, quantize-dynamic, bench, rollback,
 * release): each queues a job of its name under the command id and wakes the
 * engine; the reply says the job is queued, its report comes when it ends.
 */
import { QuantdError } from "../../../errors.ts";
import { jobOfCommand } from "../jobs.ts";
import type { CommandFamilyHandler } from "./context.ts";

/** Queues the command's job. @throws COMMAND_INVALID when this device runs no such jobs */
export const handleJobCommand: CommandFamilyHandler = async (cmd, ctx) => {
  const job = jobOfCommand(cmd, ctx.id);
  if (!ctx.engine.handles(job.type)) {
    throw new QuantdError("COMMAND_INVALID", `this device does not run ${job.type} jobs`, {
      details: { command: cmd.name },
    });
  }
  const queued = ctx.jobs.create(job);
  ctx.publishJob(queued);
  ctx.engine.wake();
  return { jobId: queued.id, state: queued.state };
};
