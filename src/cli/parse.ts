/**
 * Flag parsing and help text for `quantd` commands, driven by each command's
 * {@link FlagSpec} list so that what is accepted and what `--help` shows cannot
 * drift apart. Parsing errors are USAGE errors; `main.ts` adds the
 * `see quantd <cmd> --help` hint and exits with code 2.
 */
import { QuantdError } from "../errors.ts";
import type { Command, FlagSpec, ParsedFlags } from "./command.ts";

/** Flags and positionals of one invocation. */
export interface ParsedArgs {
  flags: ParsedFlags;
  positionals: string[];
  /** `--help` / `-h` was given. */
  help: boolean;
}

/** Every command accepts `--help`; it is not listed in each command's flags. */
export const HELP_FLAG: FlagSpec = {
  name: "help",
  short: "h",
  type: "boolean",
  description: "show this help",
};

/** A USAGE error (exit code 2 from the CLI). */
export function usageError(message: string, details?: Record<string, unknown>): QuantdError {
  return new QuantdError("USAGE", message, details === undefined ? {} : { details });
}

/**
 * Parses `argv` (the words after the command name) against `specs`.
 *
 * Accepts `--name value`, `--name=value`, `-x value`, boolean `--name`, repeated
 * flags for `multiple` specs and `--` to end flags. A value may start with `-`
 * (a negative number, or `-` for stdin) but not with `--`, so `--model --json`
 * reports the missing value instead of swallowing the next flag.
 *
 * @throws USAGE on an unknown flag, a missing value, a value given to a boolean
 *   flag, or a non-`multiple` flag given twice
 */
export function parseArgs(specs: readonly FlagSpec[], argv: readonly string[]): ParsedArgs {
  const byName = new Map<string, FlagSpec>();
  const byShort = new Map<string, FlagSpec>();
  for (const spec of [...specs, HELP_FLAG]) {
    byName.set(spec.name, spec);
    if (spec.short !== undefined) byShort.set(spec.short, spec);
  }
  const flags: ParsedFlags = {};
  const positionals: string[] = [];
  let help = false;

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-" || /^-\d/.test(arg)) {
      positionals.push(arg);
      continue;
    }
    let spec: FlagSpec | undefined;
    let inline: string | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
      if (eq !== -1) inline = arg.slice(eq + 1);
      spec = byName.get(name);
    } else {
      spec = arg.length === 2 ? byShort.get(arg.slice(1)) : undefined;
    }
    const shown = arg.includes("=") ? arg.slice(0, arg.indexOf("=")) : arg;
    if (spec === undefined) {
      const near = closest(shown.replace(/^-+/, ""), [...byName.keys()]);
      const hint = near === undefined ? "" : ` (did you mean --${near}?)`;
      throw usageError(`unknown flag ${shown}${hint}`, { flag: shown });
    }

    if (spec.name === HELP_FLAG.name) {
      help = true;
      continue;
    }
    if (spec.type === "boolean") {
      if (inline !== undefined) throw usageError(`flag --${spec.name} takes no value`, { flag: spec.name });
      flags[spec.name] = true;
      continue;
    }
    let value = inline;
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) {
        throw usageError(`flag --${spec.name} needs a value (${spec.value ?? "VALUE"})`, { flag: spec.name });
      }
      value = next;
      i++;
    }
    const prev = flags[spec.name];
    if (spec.multiple === true) {
      flags[spec.name] = Array.isArray(prev) ? [...prev, value] : [value];
    } else if (prev !== undefined) {
      throw usageError(`flag --${spec.name} given more than once`, { flag: spec.name });
    } else {
      flags[spec.name] = value;
    }
  }
  return { flags, positionals, help };
}

/** Levenshtein distance, for "did you mean" hints. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The candidate nearest to `word` when it is a likely typo (at most 2 edits,
 * and fewer than half its length), else undefined.
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return bestD <= 2 && bestD * 2 < word.length ? best : undefined;
}

/**
 * A string flag's value (the last one for a `multiple` flag).
 * @returns the value, `fallback`, or undefined
 */
export function flagString(flags: ParsedFlags, name: string, fallback?: string): string | undefined {
  const v = flags[name];
  if (typeof v === "string") return v;
  if (Array.isArray(v)) return v.at(-1) ?? fallback;
  return fallback;
}

/**
 * A string flag that must be present.
 * @throws USAGE when it is missing or empty
 */
export function flagRequired(flags: ParsedFlags, name: string): string {
  const v = flagString(flags, name);
  if (v === undefined || v === "") throw usageError(`missing required flag --${name}`, { flag: name });
  return v;
}

/** True when a boolean flag was given. */
export function flagBool(flags: ParsedFlags, name: string): boolean {
  return flags[name] === true;
}

/** Bounds and default for {@link flagInt} and {@link flagNumber}. */
export interface NumberFlagOptions {
  /** Smallest accepted value (inclusive). */
  min?: number;
  /** Largest accepted value (inclusive). */
  max?: number;
}

function checkRange(name: string, raw: string, n: number, opts: NumberFlagOptions, what: string): number {
  if (opts.min !== undefined && n < opts.min) {
    throw usageError(`--${name} must be ${what} >= ${opts.min}, got ${raw}`, { flag: name, value: raw });
  }
  if (opts.max !== undefined && n > opts.max) {
    throw usageError(`--${name} must be ${what} <= ${opts.max}, got ${raw}`, { flag: name, value: raw });
  }
  return n;
}

/** Parses one integer word, for flags and for list items. @throws USAGE */
export function parseIntValue(name: string, raw: string, opts: NumberFlagOptions = {}): number {
  const s = raw.trim();
  if (!/^[+-]?\d+$/.test(s) || !Number.isSafeInteger(Number(s))) {
    throw usageError(`--${name} must be an integer, got "${raw}"`, { flag: name, value: raw });
  }
  return checkRange(name, raw, Number(s), opts, "an integer");
}

/** Parses one finite number word. @throws USAGE */
export function parseNumberValue(name: string, raw: string, opts: NumberFlagOptions = {}): number {
  const s = raw.trim();
  const n = s === "" ? Number.NaN : Number(s);
  if (!Number.isFinite(n))
    throw usageError(`--${name} must be a number, got "${raw}"`, { flag: name, value: raw });
  return checkRange(name, raw, n, opts, "a number");
}

/**
 * An integer flag, e.g. `--batch 32`.
 * @returns the value, or `fallback` when the flag is absent
 * @throws USAGE when it is not an integer or outside `[min, max]`
 */
export function flagInt(flags: ParsedFlags, name: string, opts?: NumberFlagOptions): number | undefined;
export function flagInt(flags: ParsedFlags, name: string, opts: NumberFlagOptions, fallback: number): number;
export function flagInt(
  flags: ParsedFlags,
  name: string,
  opts: NumberFlagOptions = {},
  fallback?: number,
): number | undefined {
  return parsedFlag(flags, name, fallback, (raw) => parseIntValue(name, raw, opts));
}

/**
 * A number flag, e.g. `--max-drop 0.01`.
 * @returns the value, or `fallback` when the flag is absent
 * @throws USAGE when it is not a finite number or outside `[min, max]`
 */
export function flagNumber(flags: ParsedFlags, name: string, opts?: NumberFlagOptions): number | undefined;
export function flagNumber(
  flags: ParsedFlags,
  name: string,
  opts: NumberFlagOptions,
  fallback: number,
): number;
export function flagNumber(
  flags: ParsedFlags,
  name: string,
  opts: NumberFlagOptions = {},
  fallback?: number,
): number | undefined {
  return parsedFlag(flags, name, fallback, (raw) => parseNumberValue(name, raw, opts));
}

/** A flag's value through `parse`, or `fallback` when the flag is absent. */
function parsedFlag<T>(
  flags: ParsedFlags,
  name: string,
  fallback: T | undefined,
  parse: (raw: string) => T,
): T | undefined {
  const raw = flagString(flags, name);
  return raw === undefined ? fallback : parse(raw);
}

/**
 * A list flag: every occurrence, each split on commas, empty items dropped
 * (`--seq 32,128 --seq 256` → `["32", "128", "256"]`).
 * @returns the items, or `fallback` (default `[]`) when the flag is absent
 */
export function flagList(flags: ParsedFlags, name: string, fallback: readonly string[] = []): string[] {
  const v = flags[name];
  const words = typeof v === "string" ? [v] : Array.isArray(v) ? v : undefined;
  if (words === undefined) return [...fallback];
  return words
    .flatMap((w) => w.split(","))
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/**
 * An integer list flag (`--seq 32,128`).
 * @throws USAGE when an item is not an integer or outside `[min, max]`
 */
export function flagIntList(
  flags: ParsedFlags,
  name: string,
  opts: NumberFlagOptions = {},
  fallback: readonly number[] = [],
): number[] {
  if (flags[name] === undefined) return [...fallback];
  const items = flagList(flags, name);
  if (items.length === 0) throw usageError(`--${name} needs at least one value`, { flag: name });
  return items.map((s) => parseIntValue(name, s, opts));
}

/**
 * A flag restricted to a set of words (`--mode static|dynamic`).
 * @throws USAGE when the value is not one of `choices`
 */
export function flagChoice<T extends string>(
  flags: ParsedFlags,
  name: string,
  choices: readonly T[],
  fallback: T,
): T {
  const raw = flagString(flags, name);
  if (raw === undefined) return fallback;
  const hit = choices.find((c) => c === raw);
  if (hit === undefined) {
    throw usageError(`--${name} must be one of ${choices.join(", ")}, got "${raw}"`, {
      flag: name,
      value: raw,
    });
  }
  return hit;
}

/**
 * Rejects positional arguments for commands that take none.
 * @throws USAGE naming the first unexpected word
 */
export function expectNoPositionals(positionals: readonly string[]): void {
  const first = positionals[0];
  if (first !== undefined) throw usageError(`unexpected argument "${first}"`, { argument: first });
}

function flagLabel(spec: FlagSpec): string {
  const short = spec.short !== undefined ? `-${spec.short}, ` : "    ";
  const value = spec.type === "string" ? ` ${spec.value ?? "VALUE"}` : "";
  return `${short}--${spec.name}${value}`;
}

function flagText(spec: FlagSpec): string {
  const extra: string[] = [];
  if (spec.multiple === true) extra.push("repeatable");
  if (spec.default !== undefined) extra.push(`default: ${spec.default}`);
  return extra.length > 0 ? `${spec.description} (${extra.join("; ")})` : spec.description;
}

/** Two aligned columns, the second wrapped at `width`. */
function columns(rows: readonly (readonly [string, string])[], indent = 2, width = 100): string[] {
  const left = Math.max(0, ...rows.map(([a]) => a.length));
  const lines: string[] = [];
  for (const [a, b] of rows) {
    const pad = " ".repeat(indent) + a.padEnd(left + 2);
    const room = Math.max(30, width - pad.length);
    const wrapped = wrap(b, room);
    lines.push(pad + (wrapped[0] ?? ""));
    for (const rest of wrapped.slice(1)) lines.push(" ".repeat(pad.length) + rest);
  }
  return lines;
}

/** Greedy word wrap; words longer than `width` stay whole. */
export function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  for (const para of text.split("\n")) {
    let line = "";
    for (const word of para.split(/\s+/).filter((w) => w !== "")) {
      if (line === "") line = word;
      else if (line.length + 1 + word.length <= width) line += ` ${word}`;
      else {
        out.push(line);
        line = word;
      }
    }
    out.push(line);
  }
  return out;
}

/** `quantd <cmd> --help`: usage, summary, description and every flag with its placeholder and default. */
export function renderCommandHelp(cmd: Command): string {
  const lines = [
    `quantd ${cmd.name}: ${cmd.summary}`,
    "",
    `Usage: quantd ${cmd.name} ${cmd.usage}`.trimEnd(),
  ];
  if (cmd.description !== undefined && cmd.description.trim() !== "") {
    lines.push("");
    for (const para of cmd.description.trim().split(/\n\s*\n/)) {
      lines.push(...wrap(para.replace(/\s*\n\s*/g, " "), 100), "");
    }
    lines.pop();
  }
  lines.push("", "Flags:");
  lines.push(...columns([...cmd.flags, HELP_FLAG].map((f) => [flagLabel(f), flagText(f)] as const)));
  return `${lines.join("\n")}\n`;
}

/** `quantd --help`: every command with its summary. */
export function renderMainHelp(commands: readonly Command[], version: string): string {
  const rows: [string, string][] = commands.map((c) => [c.name, c.summary]);
  rows.push(["help", "show help for a command (quantd help <command>)"]);
  const lines = [
    `quantd ${version}: on-device int8 quantization of BERT models in ONNX, for embedded Linux boards`,
    "",
    "Usage: quantd <command> [flags] [arguments]",
    "",
    "Commands:",
    ...columns(rows),
    "",
    "Global flags:",
    ...columns([
      ["-h, --help", "show this help"],
      ["-V, --version", "print the version"],
    ]),
    "",
    "Run `quantd <command> --help` (or `quantd help <command>`) for a command's flags.",
    "Errors print one line `error CODE: message` on stderr; exit code 1, or 2 for usage errors.",
    "Set QUANTD_DEBUG=1 to see stack traces of internal errors.",
  ];
  return `${lines.join("\n")}\n`;
}
