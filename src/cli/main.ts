/**
 * The `quantd` entry point: dispatches to a command, and is the one place that
 * turns failures into output. A QuantdError becomes exactly one line
 * `error CODE: message` on stderr (or its JSON form on stdout under `--json`);
 * anything else becomes `error INTERNAL: …`. Stack traces only with
 * `QUANTD_DEBUG=1`, never for errors a user caused.
 */
import pkg from "../../package.json" with { type: "json" };
import { JOB_CHILD_ENV, runJobChild } from "../agent/job-child.ts";
import { MEMORY_PROBE_ENV, runMemoryProbe } from "../bench/child.ts";
import { QuantdError } from "../errors.ts";
import type { Command, CommandContext } from "./command.ts";
import { closest, parseArgs, renderCommandHelp, renderMainHelp, usageError } from "./parse.ts";

/** The package version, printed by `quantd --version`. */
export const VERSION: string = pkg.version;

/** Where the CLI writes; tests may capture it, the real CLI uses the process streams. */
export interface CliIo {
  /** Writes raw text to stdout. */
  stdout: (text: string) => void;
  /** Writes raw text to stderr. */
  stderr: (text: string) => void;
}

const processIo: CliIo = {
  stdout: (text) => {
    process.stdout.write(text);
  },
  stderr: (text) => {
    process.stderr.write(text);
  },
};

function debugEnabled(): boolean {
  return process.env["QUANTD_DEBUG"] === "1";
}

/** Exit code for an error: 2 for usage errors, 1 for everything else. */
export function exitCodeFor(err: QuantdError): number {
  return err.code === "USAGE" ? 2 : 1;
}

/**
 * Normalizes anything thrown into a QuantdError. A foreign error keeps its
 * type name (a `TypeError` is a bug worth reporting as such) but not itself as
 * a cause, which would print its message twice; its stack is shown under
 * QUANTD_DEBUG by {@link reportError}.
 */
function toQuantdError(err: unknown): QuantdError {
  if (err instanceof QuantdError) return err;
  if (err instanceof Error) {
    const name = err.name !== "" && err.name !== "Error" ? `${err.name}: ` : "";
    const message = err.message === "" ? "unexpected failure" : err.message;
    return new QuantdError(
      "INTERNAL",
      `${name}${message}`,
      err.cause === undefined ? {} : { cause: err.cause },
    );
  }
  return new QuantdError("INTERNAL", String(err));
}

/** Adds the `see quantd <cmd> --help` hint to a USAGE error. */
function withHint(err: QuantdError, commandName: string | undefined): QuantdError {
  if (err.code !== "USAGE") return err;
  const hint = commandName === undefined ? "quantd --help" : `quantd ${commandName} --help`;
  if (err.message.includes(hint)) return err;
  return new QuantdError("USAGE", `${err.message}; see ${hint}`, { details: { ...err.details, hint } });
}

function reportError(err: unknown, io: CliIo, json: boolean, commandName: string | undefined): number {
  const qe = withHint(toQuantdError(err), commandName);
  if (json) io.stdout(`${JSON.stringify(qe.toJSON())}\n`);
  else io.stderr(`${qe.toLine()}\n`);
  if (debugEnabled()) {
    const original = err instanceof Error ? err : qe;
    if (original.stack !== undefined) io.stderr(`${original.stack}\n`);
    const cause = original.cause;
    if (cause instanceof Error && cause.stack !== undefined) io.stderr(`caused by: ${cause.stack}\n`);
  }
  return exitCodeFor(qe);
}

/** True when `--json` appears among the flags (before `--`) of a command that declares it. */
function wantsJson(cmd: Command, argv: readonly string[]): boolean {
  if (!cmd.flags.some((f) => f.name === "json" && f.type === "boolean")) return false;
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).includes("--json");
}

async function loadCommands(first: string | undefined): Promise<readonly Command[]> {
  // Loaded lazily so that a command module that fails to load (a missing native
  // library, say) is reported as one INTERNAL line instead of a crash. The
  // service loads only its own command: the others' modules (the quantizer,
  // the bench library, the fleet controller) would stay in its memory for good.
  if (first === "agent") return [(await import("./commands/agent.ts")).agentCommand];
  const mod = await import("./commands/index.ts");
  return mod.commands;
}

/** Options of {@link runCli}. */
export interface RunCliOptions {
  /** @defaultValue the process's stdout and stderr */
  io?: CliIo;
  /** @defaultValue every command of `commands/index.ts` */
  commands?: readonly Command[];
}

/**
 * Runs `quantd` with `argv` (the words after `quantd`). Never throws: every
 * failure is rendered and turned into an exit code.
 *
 * @returns the process exit code: 0 success, 1 failure, 2 usage error
 */
export async function runCli(argv: readonly string[], options: RunCliOptions = {}): Promise<number> {
  const io = options.io ?? processIo;
  const first = argv[0];
  if (first === "--version" || first === "-V") {
    io.stdout(`quantd ${VERSION}\n`);
    return 0;
  }
  let commands: readonly Command[];
  try {
    commands = options.commands ?? (await loadCommands(first));
  } catch (err) {
    return reportError(err, io, false, undefined);
  }
  const find = (name: string): Command | undefined => commands.find((c) => c.name === name);

  if (first === undefined) {
    io.stderr(renderMainHelp(commands, VERSION));
    return 2;
  }
  if (first === "--help" || first === "-h") {
    io.stdout(renderMainHelp(commands, VERSION));
    return 0;
  }
  if (first === "help") {
    const target = argv[1];
    if (target === undefined) {
      io.stdout(renderMainHelp(commands, VERSION));
      return 0;
    }
    const cmd = find(target);
    if (cmd === undefined)
      return reportError(usageError(`unknown command "${target}"`), io, false, undefined);
    io.stdout(renderCommandHelp(cmd));
    return 0;
  }
  if (first.startsWith("-")) {
    return reportError(
      usageError(`unknown flag ${first} (flags go after the command)`),
      io,
      false,
      undefined,
    );
  }
  const cmd = find(first);
  if (cmd === undefined) {
    const near = closest(
      first,
      commands.map((c) => c.name),
    );
    const hint = near === undefined ? "" : ` (did you mean ${near}?)`;
    return reportError(usageError(`unknown command "${first}"${hint}`), io, false, undefined);
  }

  const rest = argv.slice(1);
  const json = wantsJson(cmd, rest);
  try {
    const parsed = parseArgs(cmd.flags, rest);
    if (parsed.help) {
      io.stdout(renderCommandHelp(cmd));
      return 0;
    }
    const ctx: CommandContext = {
      flags: parsed.flags,
      positionals: parsed.positionals,
      out: (line) => io.stdout(`${line}\n`),
      err: (line) => io.stderr(`${line}\n`),
    };
    return await cmd.run(ctx);
  } catch (err) {
    return reportError(err, io, json, cmd.name);
  }
}

/** Resolves once stdout has flushed what was written, so `process.exit` loses nothing. */
function drainStdout(): Promise<void> {
  if (process.stdout.writableLength === 0) return Promise.resolve();
  return new Promise((resolve) => {
    process.stdout.once("drain", () => resolve());
    process.stdout.once("error", () => resolve());
  });
}

/** Runs the CLI on `process.argv` and exits the process with its code. */
export async function main(): Promise<never> {
  // A reader that goes away (`quantd classify … | head -1`) is not an error.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
    process.stderr.write(`error INTERNAL: cannot write to stdout: ${err.message}\n`);
    process.exit(1);
  });
  const onStray = (err: unknown): void => {
    // Something failed outside the awaited chain (a callback of a native addon):
    // still one line, never a raw trace.
    process.exitCode = reportError(err, processIo, false, undefined);
    process.exit();
  };
  process.on("uncaughtException", onStray);
  process.on("unhandledRejection", onStray);

  const code = await runCli(process.argv.slice(2));
  await drainStdout();
  // Exit explicitly: native thread pools may otherwise keep the process alive.
  process.exit(code);
}

if (import.meta.main) {
  // A compiled quantd spawns itself as `quantd bench`'s memory probe: one model in a fresh process.
  if (process.env[MEMORY_PROBE_ENV] === "1") process.exit(await runMemoryProbe(process.argv[2]));
  // …and as a job's child process (calibration, quantization, benchmark): see agent/job-child.ts.
  if (process.env[JOB_CHILD_ENV] === "1") process.exit(await runJobChild());
  await main();
}
