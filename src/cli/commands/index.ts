/**
 * Every `quantd` command, in the order `quantd --help` lists them. To add a
 * command: one import and one entry here.
 */
import type { Command } from "../command.ts";
import { agentCommand } from "./agent.ts";
import { benchCommand } from "./bench.ts";
import { classifyCommand } from "./classify.ts";
import { collectCommand } from "./collect.ts";
import { completionCommand } from "./completion.ts";
import { demoCommand } from "./demo.ts";
import { deviceCommand } from "./device.ts";
import { evalCommand } from "./eval.ts";
import { fleetCommand } from "./fleet.ts";
import { inferCommand } from "./infer.ts";
import { jobCommand } from "./job.ts";
import { quantizeCommand } from "./quantize.ts";

/** The commands of the CLI. */
export const commands: readonly Command[] = [
  demoCommand,
  classifyCommand,
  inferCommand,
  evalCommand,
  quantizeCommand,
  benchCommand,
  collectCommand,
  deviceCommand,
  agentCommand,
  jobCommand,
  fleetCommand,
  completionCommand,
];
