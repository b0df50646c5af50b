/**
 * The inference boundary. Everything in quantd talks to these interfaces; only
 * `ort-session.ts` imports onnxruntime-node (as onnxruntime's `js/common`
 * interfaces sit in front of its `js/node` binding).
 */

/** Element types quantd feeds and reads. */
export type TensorElementType = "float32" | "float16" | "int64" | "int32" | "int8" | "uint8" | "bool";

/** Typed-array storage for each element type. */
export interface TensorDataMap {
  float32: Float32Array;
  float16: Uint16Array;
  int64: BigInt64Array;
  int32: Int32Array;
  int8: Int8Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}

/** A dense tensor on the CPU. */
export interface Tensor<T extends TensorElementType = TensorElementType> {
  readonly type: T;
  readonly data: TensorDataMap[T];
  readonly dims: readonly number[];
}

/** Graph optimization level, as onnxruntime names them. */
export type GraphOptimizationLevel = "disabled" | "basic" | "extended" | "all";

/** Options of a session factory (`createOrtSession` in ort-session.ts). */
export interface SessionOptions {
  /** Intra-op threads. @defaultValue the board profile's choice, else 1 */
  intraOpThreads?: number;
  /** Inter-op threads. @defaultValue 1 */
  interOpThreads?: number;
  /** @defaultValue "all" */
  graphOptimizationLevel?: GraphOptimizationLevel;
  /** CPU memory arena. @defaultValue true */
  enableCpuMemArena?: boolean;
  /** Memory pattern optimization. @defaultValue true */
  enableMemPattern?: boolean;
  /** Write the optimized graph here (to check which kernels ORT fused). */
  optimizedModelFilePath?: string;
}

/** Metadata of one model input or output. */
export interface TensorInfo {
  name: string;
  type: TensorElementType | "other";
  /** Dimension sizes; symbolic or unknown dimensions are strings. */
  dims: (number | string)[];
}

/** A loaded model ready to run. */
export interface InferenceSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputs: readonly TensorInfo[];
  readonly outputs: readonly TensorInfo[];
  /** Runs the model. `fetches` limits the outputs computed (default: all). @throws INFERENCE_FAILED */
  run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>>;
  /** Frees native memory. The session must not be used afterwards. */
  release(): Promise<void>;
}
