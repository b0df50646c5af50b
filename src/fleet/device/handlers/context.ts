/**
 * What a command family's handler may use of the link: the command's id,
 * the job table and engine, the device's own handler (for the commands that
 * are not jobs), its status, and the publishing of a job's change.
 */
import type { JobEngine } from "../../../jobs/engine.ts";
import type { Job, JobStore } from "../../../store/jobs.ts";
import type { FleetCommand, StatusMessage } from "../../protocol.ts";
import type { FleetCommandHandler } from "../handler.ts";

/** The link as a command handler sees it. */
export interface CommandContext {
  /** The command's id (a job command's job id). */
  readonly id: string;
  readonly jobs: JobStore;
  readonly engine: JobEngine;
  readonly handler: FleetCommandHandler;
  /** The `online` status now. */
  status(): StatusMessage;
  /** Queues a job's `jobs/{id}` message. */
  publishJob(job: Job): void;
}

/** Answers one family of commands; resolves with the reply's result. @throws QuantdError for an error reply */
export type CommandFamilyHandler = (cmd: FleetCommand, ctx: CommandContext) => Promise<unknown>;
