/**
 * The shape of a CLI command. Each command lives in `src/cli/commands/<name>.ts`
 * and exports one {@link Command}; `main.ts` lists them. Commands are thin: they
 * parse flags and call library code in the other layers.
 */

/** One flag of a command, for parsing and for `--help`. */
export interface FlagSpec {
  name: string;
  type: "string" | "boolean";
  /** Accepts the flag several times (`--model a --model b`). */
  multiple?: boolean;
  short?: string;
  /** Placeholder shown in help, e.g. `FILE`. */
  value?: string;
  description: string;
  /** Shown in help; the command applies it. */
  default?: string;
}

/** Parsed flags: strings, booleans, or string lists for `multiple` flags. */
export type ParsedFlags = Record<string, string | boolean | string[] | undefined>;

/** What a command receives. */
export interface CommandContext {
  flags: ParsedFlags;
  positionals: string[];
  /** Writes a line to stdout. */
  out: (line: string) => void;
  /** Writes a line to stderr (progress, warnings). */
  err: (line: string) => void;
}

/** A `quantd <name>` command. */
export interface Command {
  name: string;
  /** One line for `quantd --help`. */
  summary: string;
  /** Usage line after `quantd <name>`, e.g. `--model FILE --data FILE.tsv [--json]`. */
  usage: string;
  /** Longer description for `quantd <name> --help`. */
  description?: string;
  /** The words its first argument may be (`agent models`, `job list`), for shell completion. */
  actions?: readonly string[];
  flags: FlagSpec[];
  /** Returns the process exit code. Throws QuantdError for user-facing failures. */
  run(ctx: CommandContext): Promise<number>;
}
