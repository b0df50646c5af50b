/**
 * The commands that change how the running device behaves: `set-config`
 * (allow-listed live settings) and `collect` (live sample capture on or off),
 * both answered by the device's handler.
 */
import { QuantdError } from "../../../errors.ts";
import type { CommandFamilyHandler } from "./context.ts";

/** Answers `set-config` and `collect`. */
export const handleSettingsCommand: CommandFamilyHandler = async (cmd, ctx) => {
  switch (cmd.name) {
    case "set-config":
      return await ctx.handler.setConfig(cmd.params);
    case "collect":
      return await ctx.handler.collect(cmd.params);
    default:
      throw new QuantdError("INTERNAL", `${cmd.name} is not a settings command`);
  }
};
