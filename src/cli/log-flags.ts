/**
 * `--log-level` and `--log-format` of the long-running commands (`quantd
 * agent`, `quantd fleet serve`), and the logger they build: journald priority
 * prefixes when stderr is the journal, JSON lines on request.
 */
import { createLogger, LOG_FORMATS, LOG_LEVELS, type Logger, stderrIsJournal } from "../log.ts";
import type { FlagSpec, ParsedFlags } from "./command.ts";
import { flagChoice } from "./parse.ts";

/** The two log flags. */
export const LOG_FLAGS: readonly FlagSpec[] = [
  {
    name: "log-level",
    type: "string",
    value: "LEVEL",
    description: `least severe messages logged: ${LOG_LEVELS.join(", ")}`,
    default: "$QUANTD_LOG_LEVEL, else info",
  },
  {
    name: "log-format",
    type: "string",
    value: "FORMAT",
    description:
      "text (one line per message; under systemd with journald priority prefixes <3> error … <7> debug), or json (one object per line: time, level, msg, code)",
    default: "$QUANTD_LOG_FORMAT, else text",
  },
];

/**
 * The logger for these flags (falling back to their environment variables), writing to `write`.
 * @throws USAGE for a level or format that does not exist
 */
export function loggerFromFlags(
  flags: ParsedFlags,
  write: (line: string) => void,
  env: Record<string, string | undefined> = process.env,
): Logger {
  const withEnv: ParsedFlags = { ...flags };
  for (const [flag, name] of [
    ["log-level", "QUANTD_LOG_LEVEL"],
    ["log-format", "QUANTD_LOG_FORMAT"],
  ] as const) {
    const v = env[name];
    if (withEnv[flag] === undefined && v !== undefined && v !== "") withEnv[flag] = v;
  }
  return createLogger({
    level: flagChoice(withEnv, "log-level", LOG_LEVELS, "info"),
    format: flagChoice(withEnv, "log-format", LOG_FORMATS, "text"),
    journald: stderrIsJournal(env),
    write,
  });
}
