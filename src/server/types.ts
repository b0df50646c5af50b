/**
 * What the server needs from the layer that owns the models. The agent's
 * registry implements these; the server never loads or swaps a model itself,
 * so the HTTP code stays the same whether one model serves or a swap is under
 * way.
 */
import type { TaskSpec } from "../runtime/task.ts";
import type { TaskResult } from "../runtime/task-model.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type { QuantdErrorJSON } from "../errors.ts";

/**
 * The model the agent was started with (`--model`) that did not load, while a
 * stored version serves in its place: health, `GET /v1/models` and the fleet
 * status carry it so the operator sees the board is degraded, not just up.
 */
export interface StartupRejection {
  /** The file the agent was asked to serve (absolute). */
  path: string;
  /** Why it was not served (`MODEL_TRUNCATED`, `FILE_NOT_FOUND`, …). */
  error: QuantdErrorJSON;
  /** The stored version serving instead. */
  servingVersion: number;
}

/** The model serving requests. */
export interface ActiveModelInfo {
  /** Registry version id. */
  version: number;
  /** `fp32`, `int8-static` or `int8-dynamic`. */
  kind: string;
  sha256: string;
  /** Label names, index = class id (empty for embeddings). */
  labels: readonly string[];
  /** What the model does, and how its outputs are read. */
  task: TaskSpec;
  /** Set when the model the agent was started with did not load and this stored version serves instead. */
  rejectedAtStart?: StartupRejection;
}

/** The results of one inference batch and the model version that produced them. */
export interface BatchResult {
  results: TaskResult[];
  model: { version: number; kind: string };
  /** Time spent in the model (tokenize, run, softmax), in ms: summed over the batches a request spanned. */
  inferenceMs: number;
}

/** Runs inference on whatever model is active. */
export interface InferenceBackend {
  /** The active model, or `undefined` until one is loaded (the server is not ready). */
  active(): ActiveModelInfo | undefined;
  /**
   * Runs one batch of inputs (texts, or pairs for a pair classifier, already
   * checked against the task) on the active model. The model cannot be
   * released while the call runs, even if a swap happens meanwhile.
   *
   * @throws NOT_READY before a model is loaded; INFERENCE_FAILED when the runtime fails
   */
  classify(inputs: readonly TextInput[]): Promise<BatchResult>;
}

/** A registered model version as the admin routes show it. */
export interface ModelVersionView {
  id: number;
  sha256: string;
  path: string;
  /** `fp32`, `int8-static`, `int8-dynamic`, or `unknown` for a rejected file that never loaded and shows no int8 operator. */
  kind: string;
  state: string;
  metrics: Record<string, unknown>;
  reason: string | null;
}

/** Registry operations the admin routes expose (Unix socket only). */
export interface RegistryAdmin {
  /** Every registered version, newest first. */
  list(): ModelVersionView[];
  /**
   * Copies a candidate into the registry, verifies it and makes it active.
   * @throws MODEL_* when the candidate is corrupt or unusable (it is rejected, serving continues)
   */
  promote(candidatePath: string, options: { metrics?: Record<string, unknown> }): Promise<ModelVersionView>;
  /** Serves the previously active version again. @throws NOT_FOUND when there is none */
  rollback(reason: string): Promise<ModelVersionView>;
}
