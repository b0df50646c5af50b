/**
 * An {@link InferenceSession} whose onnxruntime session lives in a worker
 * thread. onnxruntime-node runs a session synchronously on the thread that
 * calls it, so a server calling it on its own thread stops reading requests,
 * answering health checks and writing responses for as long as a batch runs.
 * Here the caller's thread only posts the input tensors (copied: a few kB) and
 * is free until the outputs come back; runs are queued in the worker in the
 * order they were posted. {@link createSessionPool} opens several such
 * sessions as one, so that concurrent runs proceed side by side.
 *
 * The worker ({@link ./session-thread.ts}) opens the session through
 * `ort-session.ts`, still the one file that imports onnxruntime-node.
 */
import { QuantdError, type QuantdErrorCode, type QuantdErrorJSON } from "../errors.ts";
import { isCompiledBinary } from "./native-path.ts";
import type { InferenceSession, SessionOptions, Tensor, TensorInfo } from "./types.ts";

/** Messages to the worker. */
export type ToSessionThread =
  | { type: "open"; model: string; options: SessionOptions }
  | { type: "run"; id: number; feeds: Record<string, Tensor>; fetches: readonly string[] | undefined }
  | { type: "release" };

/** Messages from the worker. */
export type FromSessionThread =
  | {
      type: "opened";
      inputNames: string[];
      outputNames: string[];
      inputs: TensorInfo[];
      outputs: TensorInfo[];
    }
  | { type: "open-failed"; error: QuantdErrorJSON }
  | { type: "result"; id: number; outputs: Record<string, Tensor> }
  | { type: "failed"; id: number; error: QuantdErrorJSON }
  | { type: "released" };

/** A QuantdError again from its wire form (the worker's causes become this error's cause). */
function errorFromThread(json: QuantdErrorJSON, fallback: QuantdErrorCode): QuantdError {
  return QuantdError.fromJSON({ ...json, code: typeof json.code === "string" ? json.code : fallback });
}

interface Waiter {
  resolve: (out: Record<string, Tensor>) => void;
  reject: (err: QuantdError) => void;
}

class ThreadedSession implements InferenceSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputs: readonly TensorInfo[];
  readonly outputs: readonly TensorInfo[];
  readonly #worker: Worker;
  readonly #waiting = new Map<number, Waiter>();
  #nextId = 1;
  #dead: QuantdError | undefined;
  #released: Promise<void> | undefined;

  constructor(worker: Worker, opened: Extract<FromSessionThread, { type: "opened" }>) {
    this.#worker = worker;
    this.inputNames = opened.inputNames;
    this.outputNames = opened.outputNames;
    this.inputs = opened.inputs;
    this.outputs = opened.outputs;
    worker.addEventListener("message", (e: MessageEvent<FromSessionThread>) => this.#onMessage(e.data));
    worker.addEventListener("error", (e: ErrorEvent) =>
      this.#fail(new QuantdError("INFERENCE_FAILED", `the inference thread failed: ${e.message}`)),
    );
    worker.addEventListener("close", () =>
      this.#fail(new QuantdError("INFERENCE_FAILED", "the inference thread ended")),
    );
  }

  #onMessage(m: FromSessionThread): void {
    if (m.type !== "result" && m.type !== "failed") return;
    const w = this.#waiting.get(m.id);
    if (w === undefined) return;
    this.#waiting.delete(m.id);
    if (m.type === "result") w.resolve(m.outputs);
    else w.reject(errorFromThread(m.error, "INFERENCE_FAILED"));
    if (this.#waiting.size === 0) this.#worker.unref();
  }

  #fail(err: QuantdError): void {
    this.#dead ??= err;
    for (const w of this.#waiting.values()) w.reject(err);
    this.#waiting.clear();
  }

  run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>> {
    if (this.#released !== undefined) {
      return Promise.reject(new QuantdError("INFERENCE_FAILED", "session was released"));
    }
    if (this.#dead !== undefined) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      // A run in flight keeps the process alive, as an awaited promise would in the calling thread.
      this.#worker.ref();
      const message: ToSessionThread = { type: "run", id, feeds, fetches };
      this.#worker.postMessage(message);
    });
  }

  release(): Promise<void> {
    this.#released ??= new Promise<void>((resolve) => {
      if (this.#dead !== undefined) {
        this.#worker.terminate();
        resolve();
        return;
      }
      const done = (): void => {
        this.#worker.terminate();
        resolve();
      };
      this.#worker.addEventListener("message", (e: MessageEvent<FromSessionThread>) => {
        if (e.data.type === "released") done();
      });
      this.#worker.addEventListener("close", done);
      this.#worker.ref();
      // Posted after every run already queued: those finish first.
      const message: ToSessionThread = { type: "release" };
      this.#worker.postMessage(message);
    });
    return this.#released;
  }
}

/**
 * The worker's entry: beside this file when run from source; in an executable
 * built by `scripts/build.ts` (which bundles it as a second entry point, under
 * the folder it has in `src/`), relative to the executable's virtual root.
 */
function workerEntry(): string {
  const entry = isCompiledBinary() ? "./runtime/session-thread.ts" : "./session-thread.ts";
  return new URL(entry, import.meta.url).href;
}

/**
 * Opens an onnxruntime CPU session on a model file in a new worker thread.
 *
 * @throws MODEL_LOAD_FAILED when ORT rejects the model (the worker is ended)
 * @throws INFERENCE_FAILED when the thread cannot start
 */
export function createThreadedSession(
  model: string,
  options: SessionOptions = {},
): Promise<InferenceSession> {
  let worker: Worker;
  try {
    worker = new Worker(workerEntry());
  } catch (err) {
    return Promise.reject(
      new QuantdError("INFERENCE_FAILED", `cannot start an inference thread: ${(err as Error).message}`, {
        cause: err,
      }),
    );
  }
  return new Promise<InferenceSession>((resolve, reject) => {
    const onMessage = (e: MessageEvent<FromSessionThread>): void => {
      const m = e.data;
      if (m.type === "opened") {
        cleanup();
        worker.unref();
        resolve(new ThreadedSession(worker, m));
      } else if (m.type === "open-failed") {
        cleanup();
        worker.terminate();
        reject(errorFromThread(m.error, "MODEL_LOAD_FAILED"));
      }
    };
    const onError = (e: ErrorEvent): void => {
      cleanup();
      worker.terminate();
      reject(new QuantdError("INFERENCE_FAILED", `the inference thread failed to start: ${e.message}`));
    };
    const cleanup = (): void => {
      worker.removeEventListener("message", onMessage);
      worker.removeEventListener("error", onError);
    };
    worker.addEventListener("message", onMessage);
    worker.addEventListener("error", onError);
    const message: ToSessionThread = { type: "open", model, options };
    worker.postMessage(message);
  });
}

/** Sessions on one model in several worker threads; each run goes to the one with the fewest runs queued. */
class SessionPool implements InferenceSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputs: readonly TensorInfo[];
  readonly outputs: readonly TensorInfo[];
  readonly #sessions: readonly InferenceSession[];
  readonly #queued: number[];

  constructor(sessions: readonly InferenceSession[]) {
    const first = sessions[0]!;
    this.#sessions = sessions;
    this.#queued = sessions.map(() => 0);
    this.inputNames = first.inputNames;
    this.outputNames = first.outputNames;
    this.inputs = first.inputs;
    this.outputs = first.outputs;
  }

  async run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>> {
    let pick = 0;
    for (let i = 1; i < this.#queued.length; i++) if (this.#queued[i]! < this.#queued[pick]!) pick = i;
    this.#queued[pick]!++;
    try {
      return await this.#sessions[pick]!.run(feeds, fetches);
    } finally {
      this.#queued[pick]!--;
    }
  }

  async release(): Promise<void> {
    await Promise.all(this.#sessions.map((s) => s.release()));
  }
}

/**
 * Opens `size` sessions on a model file, each in its own worker thread, as one
 * {@link InferenceSession}: concurrent runs (a server's batches) go to
 * different threads and so run at once, each on its own onnxruntime session
 * (weights are not shared: memory grows with `size`). One thread when `size`
 * is 1.
 *
 * @throws MODEL_LOAD_FAILED when ORT rejects the model (every thread is ended)
 * @throws INFERENCE_FAILED when a thread cannot start
 */
export async function createSessionPool(
  model: string,
  options: SessionOptions,
  size: number,
): Promise<InferenceSession> {
  if (!Number.isInteger(size) || size < 1) {
    throw new QuantdError("USAGE", `a session pool needs a whole number of threads ≥ 1, got ${size}`);
  }
  if (size === 1) return createThreadedSession(model, options);
  const opened = await Promise.allSettled(
    Array.from({ length: size }, () => createThreadedSession(model, options)),
  );
  const sessions = opened.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const failed = opened.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed !== undefined) {
    await Promise.all(sessions.map((s) => s.release()));
    throw failed.reason;
  }
  return new SessionPool(sessions);
}
