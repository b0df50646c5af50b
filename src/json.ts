/**
 * Narrowing of parsed JSON (and TOML), shared by every layer that reads it:
 * tokenizer and config files, socket requests, fleet messages. A leaf module
 * like `errors.ts`: it imports nothing of quantd.
 */

/** Whether a parsed value is a plain object (not null, not an array). */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
