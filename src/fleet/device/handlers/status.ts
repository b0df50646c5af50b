/**
 * `status`: the retained status's figures now, what the device's handler
 * adds (serving model, queue depth…), the running job and the last one.
 */
import type { CommandFamilyHandler } from "./context.ts";

/** Answers `status`. */
export const handleStatusCommand: CommandFamilyHandler = async (_cmd, ctx) => ({
  ...ctx.status(),
  ...(await ctx.handler.status()),
  running: ctx.engine.current?.id ?? null,
  lastJob: ctx.jobs.list({ limit: 1 })[0] ?? null,
});
