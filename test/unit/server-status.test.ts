import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { QuantdErrorCode } from "../../src/errors.ts";
import { STATUS_BY_CODE, statusFor } from "../../src/server/status.ts";

const ROOT = join(import.meta.dir, "../..");

/** Every code the union in src/errors.ts declares, read from the source: the table must cover exactly these. */
function declaredCodes(): string[] {
  const src = readFileSync(join(ROOT, "src/errors.ts"), "utf8");
  const union = src.slice(src.indexOf("export type QuantdErrorCode"), src.indexOf("/** The JSON form"));
  return [...union.matchAll(/\|\s*"([A-Z0-9_]+)"/g)].map((m) => m[1]!);
}

/** The codes a client causes by what it sends or asks for: never a 5xx. */
const CLIENT_CODES: readonly QuantdErrorCode[] = [
  "USAGE",
  "FILE_NOT_FOUND",
  "FILE_UNREADABLE",
  "REQUEST_INVALID",
  "REQUEST_TOO_LARGE",
  "UNSUPPORTED_MEDIA_TYPE",
  "NOT_FOUND",
  "TEXT_EMPTY",
  "TEXT_NOT_STRING",
  "TEXT_INVALID_UTF8",
  "TEXT_TOO_LARGE",
  "DATA_MALFORMED",
  "DATA_EMPTY",
  "DATA_MISMATCH",
  "MODEL_NOT_ONNX",
  "MODEL_TRUNCATED",
  "MODEL_INVALID",
  "MODEL_INPUTS_MISMATCH",
  "MODEL_LOAD_FAILED",
  "MODEL_ALREADY_QUANTIZED",
  "MODEL_TOO_LARGE",
  "MODEL_TASK_MISMATCH",
  "MODEL_PROBE_FAILED",
  "QUANT_UNSUPPORTED",
  "GATE_NOT_MET",
  "JOB_NOT_FOUND",
  "JOB_CANCELLED",
  "STATE_CONFLICT",
  "CALIB_EMPTY",
  "COMMAND_INVALID",
  "COMMAND_EXPIRED",
  "COMMAND_UNAUTHORIZED",
];

/** Transient conditions: 503 (with Retry-After from the routes), so a client retries. */
const RETRY_CODES: readonly QuantdErrorCode[] = [
  "OVERLOADED",
  "NOT_READY",
  "STORE_BUSY",
  "JOB_INTERRUPTED",
  "FLEET_UNAVAILABLE",
];

describe("error code → HTTP status table", () => {
  test("maps exactly the codes src/errors.ts declares", () => {
    const declared = declaredCodes();
    expect(declared.length).toBeGreaterThan(40);
    expect(Object.keys(STATUS_BY_CODE).sort()).toEqual([...declared].sort());
  });

  test("every code has a 4xx or 5xx status", () => {
    for (const [code, status] of Object.entries(STATUS_BY_CODE)) {
      expect({ code, ok: Number.isInteger(status) && status >= 400 && status <= 599 }).toEqual({
        code,
        ok: true,
      });
    }
  });

  test("client mistakes are 4xx, transient conditions 503, and every other code is a 5xx", () => {
    for (const code of declaredCodes() as QuantdErrorCode[]) {
      const status = statusFor(code);
      if (CLIENT_CODES.includes(code))
        expect({ code, status: Math.floor(status / 100) }).toEqual({ code, status: 4 });
      else if (RETRY_CODES.includes(code)) expect({ code, status }).toEqual({ code, status: 503 });
      else expect({ code, status: Math.floor(status / 100) }).toEqual({ code, status: 5 });
    }
  });

  test("size limits are 413, a full disk 507, a job's timeout 504", () => {
    expect(statusFor("REQUEST_TOO_LARGE")).toBe(413);
    expect(statusFor("TEXT_TOO_LARGE")).toBe(413);
    expect(statusFor("MODEL_TOO_LARGE")).toBe(413);
    expect(statusFor("DISK_FULL")).toBe(507);
    expect(statusFor("JOB_TIMED_OUT")).toBe(504);
  });
});
