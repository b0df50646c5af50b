/**
 * Runs quantd (or any command) as a real process and collects what a user
 * would see: exit code, stdout and stderr. CLI tests share it so each one
 * spawns quantd the same way (`bun src/cli/main.ts`, from the repository root).
 */
import { join } from "node:path";
import { repoRoot } from "./paths.ts";

/** What a finished process left behind. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** How to start the process. */
export interface CliRunOptions {
  /** Text written to stdin; stdin is closed (`ignore`) when absent. */
  stdin?: string;
  /** Working directory. @defaultValue {@link repoRoot} */
  cwd?: string;
  /** The whole environment of the child (not merged). @defaultValue `process.env` */
  env?: Record<string, string | undefined>;
}

/** The entry point a source checkout runs. */
export const cliMain: string = join(repoRoot, "src/cli/main.ts");

/** Runs `cmd` to completion and returns its exit code and output. */
export async function runCommand(cmd: string[], opts: CliRunOptions = {}): Promise<CliRun> {
  const proc = Bun.spawn(cmd, {
    cwd: opts.cwd ?? repoRoot,
    env: opts.env ?? process.env,
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr };
}

/** Runs `bun src/cli/main.ts ...args`. */
export function runQuantd(args: string[], opts: CliRunOptions = {}): Promise<CliRun> {
  return runCommand(["bun", cliMain, ...args], opts);
}

/** `process.env` without any `QUANTD_*` variable, so the developer's own settings cannot leak into a test. */
export function envWithoutQuantd(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && !k.startsWith("QUANTD_")) env[k] = v;
  return env;
}
