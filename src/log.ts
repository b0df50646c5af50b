/**
 * Log lines of the long-running commands (`quantd agent`, `quantd fleet
 * serve`): levels, a threshold (`--log-level`), journald priority prefixes when
 * systemd reads stderr, optional JSON lines, and back-off for an error that
 * repeats (a broker that is down would otherwise fill the journal once a
 * second). A leaf module like `errors.ts`: the layers keep logging plain lines
 * through a `(line) => void` callback; this module gives those lines a level.
 */
import { fstatSync } from "node:fs";

/** Levels, most severe first. */
export const LOG_LEVELS = ["error", "warn", "info", "debug"] as const;
/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number];
/** Output formats: plain lines, or one JSON object per line. */
export const LOG_FORMATS = ["text", "json"] as const;
/** One of {@link LOG_FORMATS}. */
export type LogFormat = (typeof LOG_FORMATS)[number];

/** syslog priorities journald reads from a `<N>` prefix (sd-daemon(3)). */
const JOURNALD_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

/** A leveled logger. */
export interface Logger {
  /** The threshold: messages below it are dropped. */
  readonly level: LogLevel;
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  /**
   * A plain line from a component that logs through a callback; its level is
   * read from its words ({@link levelOf}).
   */
  line(text: string): void;
}

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** @defaultValue "info" */
  level?: LogLevel;
  /** @defaultValue "text" */
  format?: LogFormat;
  /** Prefix each line with its journald priority (`<3>` …). @defaultValue false */
  journald?: boolean;
  /** Where lines go (without the newline). */
  write: (line: string) => void;
  /** @defaultValue Date.now */
  now?: () => number;
  /** First and longest interval between two lines of a repeating error or warning. @defaultValue 2 s and 5 min */
  backoff?: { firstMs: number; maxMs: number };
}

/**
 * The level of a plain line: a QuantdError's rendering (`error CODE: …`, as
 * `QuantdError.toLine()` writes it) is an error, a line that says `warning` a
 * warning, anything else information.
 */
export function levelOf(text: string): LogLevel {
  if (/(^|\s)error [A-Z][A-Z0-9_]*:/.test(text)) return "error";
  if (/(^|[\s:])warn(ing)?\b/i.test(text)) return "warn";
  return "info";
}

/** Whether `level` passes the threshold `threshold`. */
function passes(level: LogLevel, threshold: LogLevel): boolean {
  return LOG_LEVELS.indexOf(level) <= LOG_LEVELS.indexOf(threshold);
}

/** State of one repeating line. */
interface Repeat {
  nextAt: number;
  intervalMs: number;
  suppressed: number;
  lastAt: number;
}

/** How many distinct repeating lines are tracked; beyond it the oldest is forgotten. */
const MAX_TRACKED = 64;

/**
 * Lets a repeating line through at growing intervals (first, then after
 * `firstMs`, `2·firstMs`, … up to `maxMs`), telling how many were left out.
 * A line not seen for `maxMs` starts over.
 */
function createRepeatLimiter(firstMs: number, maxMs: number, now: () => number) {
  const seen = new Map<string, Repeat>();
  return (text: string): string | undefined => {
    const t = now();
    const r = seen.get(text);
    if (r === undefined || t - r.lastAt > maxMs) {
      if (seen.size >= MAX_TRACKED) seen.delete(seen.keys().next().value!);
      seen.set(text, { nextAt: t + firstMs, intervalMs: firstMs, suppressed: 0, lastAt: t });
      return text;
    }
    r.lastAt = t;
    if (t < r.nextAt) {
      r.suppressed++;
      return undefined;
    }
    const left = r.suppressed;
    r.suppressed = 0;
    r.intervalMs = Math.min(maxMs, r.intervalMs * 2);
    r.nextAt = t + r.intervalMs;
    const next = Math.round(r.intervalMs / 1000);
    return left === 0 ? text : `${text} (${left} more like it left out; next in ${next} s at the earliest)`;
  };
}

/** A logger writing through `opts.write`. */
export function createLogger(opts: LoggerOptions): Logger {
  const threshold = opts.level ?? "info";
  const now = opts.now ?? Date.now;
  const limit = createRepeatLimiter(opts.backoff?.firstMs ?? 2000, opts.backoff?.maxMs ?? 300_000, now);
  const emit = (level: LogLevel, message: string): void => {
    if (!passes(level, threshold)) return;
    // Information is never held back; only an error or warning that comes again and again is.
    const text = level === "error" || level === "warn" ? limit(message) : message;
    if (text === undefined) return;
    const body =
      opts.format === "json"
        ? JSON.stringify({ time: new Date(now()).toISOString(), level, msg: text, ...codeOf(text) })
        : text;
    opts.write(opts.journald === true ? `<${JOURNALD_PRIORITY[level]}>${body}` : body);
  };
  return {
    level: threshold,
    error: (m) => emit("error", m),
    warn: (m) => emit("warn", m),
    info: (m) => emit("info", m),
    debug: (m) => emit("debug", m),
    line: (text) => emit(levelOf(text), text),
  };
}

/** The error code a line carries, as a JSON field. */
function codeOf(text: string): { code?: string } {
  const m = /(?:^|\s)error ([A-Z][A-Z0-9_]*):/.exec(text);
  return m === null ? {} : { code: m[1]! };
}

/**
 * Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM`
 * to the `device:inode` of the stream it gave the service, and a redirected
 * stderr no longer matches it (systemd.exec(5)).
 */
export function stderrIsJournal(env: Record<string, string | undefined> = process.env): boolean {
  const stream = env["JOURNAL_STREAM"];
  if (stream === undefined || stream === "") return false;
  try {
    const st = fstatSync(2);
    return stream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}
