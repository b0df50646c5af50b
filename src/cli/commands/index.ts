/**
 * Every `quantd` command, in the order `quantd --help` lists them. To add a
 * command: one import and one entry here.
 */
import type { Command } from "../command.ts";
import { deviceCommand } from "./device.ts";
import { benchCommand } from "./bench.ts";

/** The commands of the CLI. */
export const commands: readonly Command[] = [deviceCommand, benchCommand];
