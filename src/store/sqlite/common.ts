/**
 * What both SQLite adapters share: turning a driver error into a
 * {@link QuantdError}, and building pragma statements safely. Neither driver is
 * imported here; both report SQLite's result code as a string `code` property
 * (`SQLITE_BUSY`, `SQLITE_FULL_…`), which is all the mapping needs.
 */
import { QuantdError } from "../../errors.ts";

function sqliteCode(err: unknown): string | undefined {
  if (typeof err !== "object" || err === null || !("code" in err)) return undefined;
  const code = (err as { code: unknown }).code;
  return typeof code === "string" && code.startsWith("SQLITE_") ? code : undefined;
}

/**
 * Maps anything a driver threw to a QuantdError; a QuantdError (thrown by a
 * transaction body, say) passes through unchanged.
 *
 * `SQLITE_BUSY*` and `SQLITE_LOCKED*` → `STORE_BUSY` (retryable); `SQLITE_FULL` →
 * `DISK_FULL`; `SQLITE_NOTADB` and `SQLITE_CORRUPT*` → `STORE_CORRUPT`; everything else → `STORE_FAILED`.
 *
 * @param action - what was being done, e.g. `open /var/lib/quantd/quantd.db`
 */
export function toStoreError(err: unknown, path: string, action: string): QuantdError {
  if (err instanceof QuantdError) return err;
  const code = sqliteCode(err);
  const reason = err instanceof Error ? err.message : String(err);
  const details = { path, sqliteCode: code ?? null };
  if (code?.startsWith("SQLITE_BUSY") || code?.startsWith("SQLITE_LOCKED")) {
    return new QuantdError("STORE_BUSY", `database ${path} is locked by another connection (${action})`, {
      cause: err,
      details,
    });
  }
  if (code?.startsWith("SQLITE_FULL")) {
    return new QuantdError("DISK_FULL", `no space left to write database ${path} (${action})`, {
      cause: err,
      details,
    });
  }
  if (code?.startsWith("SQLITE_NOTADB") || code?.startsWith("SQLITE_CORRUPT")) {
    return new QuantdError(
      "STORE_CORRUPT",
      `${path} is not a valid SQLite database or is corrupt (${action})`,
      {
        cause: err,
        details,
      },
    );
  }
  return new QuantdError("STORE_FAILED", `database ${path}: ${action} failed: ${reason}`, {
    cause: err,
    details,
  });
}

const PRAGMA_NAME = /^[a-z_]+$/i;
const PRAGMA_VALUE = /^[\w.-]+$/;

/**
 * `PRAGMA name` or `PRAGMA name = value`. Pragmas take no bound parameters, so
 * the name and value are checked against a strict pattern instead.
 *
 * @throws INTERNAL when the name or value is not a plain word or number
 */
export function pragmaSql(name: string, value?: string | number): string {
  if (!PRAGMA_NAME.test(name))
    throw new QuantdError("INTERNAL", `invalid pragma name ${JSON.stringify(name)}`);
  if (value === undefined) return `PRAGMA ${name}`;
  const text = String(value);
  if (!PRAGMA_VALUE.test(text)) {
    throw new QuantdError("INTERNAL", `invalid value ${JSON.stringify(text)} for pragma ${name}`);
  }
  return `PRAGMA ${name} = ${text}`;
}

/** The error for any use of a closed connection. */
export function closedError(path: string): QuantdError {
  return new QuantdError("STORE_FAILED", `database ${path} is closed`, { details: { path } });
}
