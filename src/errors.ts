/**
 * The one error type of quantd. Every failure a user can cause or meet carries a
 * stable string code (for scripts, the socket API and the fleet controller) and,
 * where there was one, the underlying cause. The CLI, the Unix-socket server and
 * the MQTT replies all render it through {@link QuantdError.toJSON}.
 */

/** Stable error codes. Add new codes here; never rename or reuse one. */
export type QuantdErrorCode =
  // input files and arguments
  | "USAGE"
  | "FILE_NOT_FOUND"
  | "FILE_UNREADABLE"
  | "FILE_WRITE_FAILED"
  // models
  | "MODEL_NOT_ONNX"
  | "MODEL_TRUNCATED"
  | "MODEL_INVALID"
  | "MODEL_INPUTS_MISMATCH"
  | "MODEL_ALREADY_QUANTIZED"
  | "MODEL_LOAD_FAILED"
  | "MODEL_TOO_LARGE"
  | "MODEL_TASK_MISMATCH"
  | "MODEL_PROBE_FAILED"
  | "INFERENCE_FAILED"
  // tokenizer and text
  | "TOKENIZER_NOT_FOUND"
  | "TOKENIZER_INVALID"
  | "TEXT_EMPTY"
  | "TEXT_TOO_LARGE"
  | "TEXT_INVALID_UTF8"
  | "TEXT_NOT_STRING"
  // data files
  | "DATA_MALFORMED"
  | "DATA_EMPTY"
  | "DATA_MISMATCH"
  // calibration and quantization
  | "CALIB_EMPTY"
  | "CALIB_FAILED"
  | "QUANT_UNSUPPORTED"
  | "QUANT_FAILED"
  | "GATE_NOT_MET"
  // benchmarking
  | "BENCH_FAILED"
  // store, agent, server, fleet
  | "STORE_FAILED"
  | "STORE_BUSY"
  | "STORE_SCHEMA_TOO_NEW"
  | "STORE_CORRUPT"
  | "STATE_CONFLICT"
  | "DISK_FULL"
  | "CONFIG_INVALID"
  | "JOB_NOT_FOUND"
  | "JOB_CANCELLED"
  | "JOB_TIMED_OUT"
  | "JOB_INTERRUPTED"
  | "REQUEST_INVALID"
  | "REQUEST_TOO_LARGE"
  | "UNSUPPORTED_MEDIA_TYPE"
  | "NOT_FOUND"
  | "OVERLOADED"
  | "NOT_READY"
  | "COMMAND_INVALID"
  | "COMMAND_EXPIRED"
  | "COMMAND_UNAUTHORIZED"
  | "FLEET_UNAVAILABLE"
  | "DEVICE_UNSUPPORTED"
  | "INTERNAL";

/** The JSON form of an error, identical on the socket, over MQTT and in `--json` CLI output. */
export interface QuantdErrorJSON {
  code: QuantdErrorCode;
  message: string;
  details?: Record<string, unknown>;
  causes?: string[];
}

/** Options for {@link QuantdError}. */
export interface QuantdErrorOptions {
  /** The underlying error, kept for logs and for `causes` in the JSON form. */
  cause?: unknown;
  /** Machine-readable context (file, line, node name, figures). */
  details?: Record<string, unknown>;
}

/**
 * An error with a stable {@link QuantdErrorCode}.
 *
 * @example
 * throw new QuantdError("MODEL_NOT_ONNX", `${path} is not an ONNX model`, { cause: err });
 */
export class QuantdError extends Error {
  /** Stable code; part of the public interface. */
  readonly code: QuantdErrorCode;
  /** Machine-readable context. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: QuantdErrorCode, message: string, options: QuantdErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "QuantdError";
    this.code = code;
    this.details = options.details;
  }

  /** The messages of the cause chain, outermost first (an AggregateError lists each). */
  causeMessages(): string[] {
    const out: string[] = [];
    const seen = new Set<unknown>();
    const walk = (c: unknown): void => {
      if (c === undefined || c === null || seen.has(c) || out.length >= 16) return;
      seen.add(c);
      if (c instanceof AggregateError) {
        for (const e of c.errors) walk(e);
        return;
      }
      if (c instanceof Error) {
        out.push(c instanceof QuantdError ? `${c.code}: ${c.message}` : c.message);
        walk(c.cause);
        return;
      }
      out.push(String(c));
    };
    walk(this.cause);
    return out;
  }

  /** One line for a terminal: `error CODE: message (cause: …)`. */
  toLine(): string {
    const causes = this.causeMessages();
    const tail = causes.length > 0 ? ` (cause: ${causes.join("; ")})` : "";
    return `error ${this.code}: ${this.message}${tail}`.replace(/\s*\n\s*/g, " ");
  }

  /** The wire form used by every interface of quantd. */
  toJSON(): QuantdErrorJSON {
    const json: QuantdErrorJSON = { code: this.code, message: this.message };
    if (this.details !== undefined) json.details = this.details;
    const causes = this.causeMessages();
    if (causes.length > 0) json.causes = causes;
    return json;
  }

  /**
   * The error again from its wire form (a worker's, a child process's or the agent's answer):
   * code, message and details as sent, the sent causes as this error's cause, so that
   * {@link toLine} and {@link toJSON} show them as the sender would have.
   */
  static fromJSON(json: QuantdErrorJSON): QuantdError {
    const causes = json.causes ?? [];
    return new QuantdError(json.code, json.message, {
      ...(json.details === undefined ? {} : { details: json.details }),
      ...(causes.length === 0 ? {} : { cause: new AggregateError(causes.map((c) => new Error(c))) }),
    });
  }

  /** Wraps anything thrown into a QuantdError, keeping a QuantdError as is. */
  static from(err: unknown, code: QuantdErrorCode = "INTERNAL", message?: string): QuantdError {
    if (err instanceof QuantdError) return err;
    const text = message ?? (err instanceof Error ? err.message : String(err));
    return new QuantdError(code, text, { cause: err });
  }
}

/** Type guard for {@link QuantdError}, optionally for one code. */
export function isQuantdError(err: unknown, code?: QuantdErrorCode): err is QuantdError {
  return err instanceof QuantdError && (code === undefined || err.code === code);
}

/** Exhaustiveness check for discriminated unions. @throws INTERNAL always. */
export function assertNever(value: never, what = "value"): never {
  throw new QuantdError("INTERNAL", `unexpected ${what}: ${JSON.stringify(value)}`);
}
