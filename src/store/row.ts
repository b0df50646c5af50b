/**
 * Typed reads of result rows. A column with an unexpected type means the file
 * was altered outside quantd (or a bug), so it is a `STORE_FAILED`, never a
 * silently wrong value.
 */
import { QuantdError } from "../errors.ts";
import type { SqlRow, SqlValue } from "./sql.ts";

function bad(col: string, v: SqlValue | undefined, want: string): QuantdError {
  const got = v === undefined ? "missing" : v === null ? "null" : v instanceof Uint8Array ? "blob" : typeof v;
  return new QuantdError("STORE_FAILED", `column ${col}: expected ${want}, found ${got}`, {
    details: { column: col },
  });
}

/** An integer or real column. @throws STORE_FAILED */
export function num(row: SqlRow, col: string): number {
  const v = row[col];
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  throw bad(col, v, "a number");
}

/** A nullable number column. @throws STORE_FAILED */
export function numOrNull(row: SqlRow, col: string): number | null {
  return row[col] === null ? null : num(row, col);
}

/** A text column. @throws STORE_FAILED */
export function str(row: SqlRow, col: string): string {
  const v = row[col];
  if (typeof v === "string") return v;
  throw bad(col, v, "text");
}

/** A nullable text column. @throws STORE_FAILED */
export function strOrNull(row: SqlRow, col: string): string | null {
  return row[col] === null ? null : str(row, col);
}

/** A blob column. @throws STORE_FAILED */
export function blob(row: SqlRow, col: string): Uint8Array {
  const v = row[col];
  if (v instanceof Uint8Array) return v;
  throw bad(col, v, "a blob");
}

/** A JSON text column, parsed. @throws STORE_FAILED */
export function json(row: SqlRow, col: string): unknown {
  const text = str(row, col);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new QuantdError("STORE_FAILED", `column ${col} does not hold valid JSON`, { cause: err });
  }
}

/** A nullable JSON text column, parsed. @throws STORE_FAILED */
export function jsonOrNull(row: SqlRow, col: string): unknown {
  return row[col] === null ? null : json(row, col);
}

/** A JSON object column (metrics, params). @throws STORE_FAILED */
export function jsonObject(row: SqlRow, col: string): Record<string, unknown> {
  const v = json(row, col);
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new QuantdError("STORE_FAILED", `column ${col} does not hold a JSON object`);
  }
  return v as Record<string, unknown>;
}

/**
 * Serializes a value for a JSON column.
 *
 * @throws INTERNAL when it cannot be serialized (a cycle, a bigint)
 */
export function toJsonText(value: unknown, what: string): string {
  try {
    const text = JSON.stringify(value);
    if (text === undefined) throw new Error("not serializable");
    return text;
  } catch (err) {
    throw new QuantdError("INTERNAL", `${what} cannot be stored as JSON`, { cause: err });
  }
}
