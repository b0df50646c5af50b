/**
 * The one file that imports onnxruntime-node. It adapts ORT's session to the
 * {@link InferenceSession} interface so the rest of quantd never sees the native
 * binding (and a different backend could be dropped in here).
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import * as ort from "onnxruntime-node";
import { QuantdError } from "../errors.ts";
import type {
  InferenceSession,
  SessionOptions,
  Tensor,
  TensorDataMap,
  TensorElementType,
  TensorInfo,
} from "./types.ts";

const ELEMENT_TYPES: ReadonlySet<string> = new Set<TensorElementType>([
  "float32",
  "float16",
  "int64",
  "int32",
  "int8",
  "uint8",
  "bool",
]);

function toOrtTensor(t: Tensor): ort.Tensor {
  // ORT wants a plain array view for bool; Uint8Array is what it stores anyway.
  return new ort.Tensor(t.type, t.data, [...t.dims]);
}

function fromOrtValue(name: string, v: ort.OnnxValue): Tensor {
  const t = v as ort.Tensor;
  if (!ELEMENT_TYPES.has(t.type)) {
    throw new QuantdError("INFERENCE_FAILED", `output ${name} has unsupported element type ${t.type}`);
  }
  const type = t.type as TensorElementType;
  return { type, data: t.data as TensorDataMap[typeof type], dims: [...t.dims] };
}

function describe(meta: readonly ort.InferenceSession.ValueMetadata[]): TensorInfo[] {
  return meta.map((m) =>
    m.isTensor
      ? {
          name: m.name,
          type: ELEMENT_TYPES.has(m.type) ? (m.type as TensorElementType) : "other",
          dims: [...m.shape],
        }
      : { name: m.name, type: "other", dims: [] },
  );
}

class OrtSession implements InferenceSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputs: readonly TensorInfo[];
  readonly outputs: readonly TensorInfo[];
  #session: ort.InferenceSession | undefined;

  constructor(session: ort.InferenceSession) {
    this.#session = session;
    this.inputNames = [...session.inputNames];
    this.outputNames = [...session.outputNames];
    this.inputs = describe(session.inputMetadata);
    this.outputs = describe(session.outputMetadata);
  }

  async run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>> {
    const session = this.#session;
    if (session === undefined) throw new QuantdError("INFERENCE_FAILED", "session was released");
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(t);
    let result: ort.InferenceSession.ReturnType;
    try {
      result =
        fetches === undefined ? await session.run(ortFeeds) : await session.run(ortFeeds, [...fetches]);
    } catch (err) {
      // onnxruntime's words travel as the cause, shown once after this message (not repeated inside it).
      throw new QuantdError("INFERENCE_FAILED", "onnxruntime failed to run the model", { cause: err });
    }
    const out: Record<string, Tensor> = {};
    for (const [name, v] of Object.entries(result)) out[name] = fromOrtValue(name, v);
    return out;
  }

  async release(): Promise<void> {
    const session = this.#session;
    this.#session = undefined;
    if (session !== undefined) await session.release();
  }
}

let telemetryChecked = false;

/**
 * Turns off onnxruntime's telemetry unless the user set ORT_DISABLE_TELEMETRY.
 * ORT 1.30 otherwise writes a usage database under ~/.cache/Microsoft on every
 * run (and carries upload code): not what a board or a workstation expects of
 * a local tool, and under systemd's ProtectHome it cannot write there anyway.
 * ORT reads the variable with getenv() when its environment is created (the
 * first session), and Bun's `process.env` does not reach the C environment, so
 * it is set through libc.
 */
function disableOrtTelemetry(): void {
  if (telemetryChecked) return;
  telemetryChecked = true;
  if (process.env["ORT_DISABLE_TELEMETRY"] !== undefined) return;
  try {
    const libc = dlopen("libc.so.6", {
      setenv: { args: [FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
    });
    const name = Buffer.from("ORT_DISABLE_TELEMETRY\0", "utf8");
    const value = Buffer.from("1\0", "utf8");
    libc.symbols.setenv(ptr(name), ptr(value), 0);
    libc.close();
  } catch {
    // Not glibc (or no FFI): ORT keeps its default; nothing else depends on it.
  }
}

function toOrtOptions(o: SessionOptions): ort.InferenceSession.SessionOptions {
  const opts: ort.InferenceSession.SessionOptions = {
    executionProviders: ["cpu"],
    intraOpNumThreads: o.intraOpThreads ?? 1,
    interOpNumThreads: o.interOpThreads ?? 1,
    graphOptimizationLevel: o.graphOptimizationLevel ?? "all",
    enableCpuMemArena: o.enableCpuMemArena ?? true,
    enableMemPattern: o.enableMemPattern ?? true,
    executionMode: "sequential",
    // Fatal only: every error onnxruntime would log also reaches quantd as an exception, which it reports
    // once, in its own words with onnxruntime's as the cause (at 3 the same error was printed twice).
    logSeverityLevel: 4,
  };
  if (o.optimizedModelFilePath !== undefined) opts.optimizedModelFilePath = o.optimizedModelFilePath;
  return opts;
}

/**
 * Opens an onnxruntime CPU session on a model file or on model bytes.
 *
 * @param model - path of an `.onnx` file (external data is found beside it) or its bytes
 * @throws MODEL_LOAD_FAILED when ORT rejects the model
 */
export async function createOrtSession(
  model: string | Uint8Array,
  options: SessionOptions = {},
): Promise<InferenceSession> {
  disableOrtTelemetry();
  try {
    const session =
      typeof model === "string"
        ? await ort.InferenceSession.create(model, toOrtOptions(options))
        : await ort.InferenceSession.create(model, toOrtOptions(options));
    return new OrtSession(session);
  } catch (err) {
    const where = typeof model === "string" ? model : `${model.byteLength}-byte model`;
    const details = typeof model === "string" ? { path: model } : { bytes: model.byteLength };
    throw new QuantdError("MODEL_LOAD_FAILED", `onnxruntime could not load ${where}`, {
      cause: err,
      details,
    });
  }
}

/** The onnxruntime version this build links against. */
export const ORT_VERSION: string = ort.env.versions.common;
