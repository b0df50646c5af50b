/**
 * The one table from error code to HTTP status. It is a `Record` over every
 * {@link QuantdErrorCode}, so a new code does not compile until it is given a
 * status here. The rule: what the client sent or asked for is a 4xx (it can
 * fix it); only faults of the agent, its disk or its configuration are 5xx.
 */
import type { QuantdErrorCode } from "../errors.ts";

/** HTTP status of every error code. */
export const STATUS_BY_CODE: Readonly<Record<QuantdErrorCode, number>> = {
  // What the client sent: a path it names, a body, a text.
  USAGE: 400,
  FILE_NOT_FOUND: 400,
  FILE_UNREADABLE: 400,
  REQUEST_INVALID: 400,
  TEXT_EMPTY: 400,
  TEXT_NOT_STRING: 400,
  TEXT_INVALID_UTF8: 400,
  DATA_MALFORMED: 400,
  DATA_EMPTY: 400,
  DATA_MISMATCH: 400,
  COMMAND_INVALID: 400,
  // A candidate model the client asked to promote: readable, but not one this agent can serve.
  MODEL_NOT_ONNX: 400,
  MODEL_TRUNCATED: 400,
  MODEL_INVALID: 400,
  MODEL_INPUTS_MISMATCH: 400,
  MODEL_LOAD_FAILED: 400,
  MODEL_ALREADY_QUANTIZED: 422,
  MODEL_TASK_MISMATCH: 422,
  MODEL_PROBE_FAILED: 422,
  QUANT_UNSUPPORTED: 422,
  GATE_NOT_MET: 422,
  NOT_FOUND: 404,
  JOB_NOT_FOUND: 404,
  STATE_CONFLICT: 409,
  CALIB_EMPTY: 409,
  JOB_CANCELLED: 409,
  COMMAND_EXPIRED: 410,
  COMMAND_UNAUTHORIZED: 403,
  REQUEST_TOO_LARGE: 413,
  TEXT_TOO_LARGE: 413,
  MODEL_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  // Try again later: the agent is busy, starting, stopping, or its store is locked.
  OVERLOADED: 503,
  NOT_READY: 503,
  STORE_BUSY: 503,
  JOB_INTERRUPTED: 503,
  FLEET_UNAVAILABLE: 503,
  JOB_TIMED_OUT: 504,
  DISK_FULL: 507,
  // Faults of the agent itself.
  FILE_WRITE_FAILED: 500,
  INFERENCE_FAILED: 500,
  TOKENIZER_NOT_FOUND: 500,
  TOKENIZER_INVALID: 500,
  CALIB_FAILED: 500,
  QUANT_FAILED: 500,
  BENCH_FAILED: 500,
  STORE_FAILED: 500,
  STORE_SCHEMA_TOO_NEW: 500,
  STORE_CORRUPT: 500,
  CONFIG_INVALID: 500,
  DEVICE_UNSUPPORTED: 500,
  INTERNAL: 500,
};

/** The HTTP status for an error code. */
export function statusFor(code: QuantdErrorCode): number {
  return STATUS_BY_CODE[code] ?? 500;
}
