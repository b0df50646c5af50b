import { existsSync, statSync } from "node:fs";
import { unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { sha256File } from "../core/hash.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { modelFileOf } from "../runtime/model-files.ts";
import { inputsOf, type TaskKind, type TaskOverride } from "../runtime/task.ts";
import { loadTaskModel, type TaskModel } from "../runtime/task-model.ts";
import type { TextInput } from "../runtime/tokenizer.ts";
import type {
  ActiveModelInfo,
  BatchResult,
  InferenceBackend,
  ModelVersionView,
  RegistryAdmin,
  StartupRejection,
} from "../server/types.ts";
import type { ModelKind, ModelRegistryStore, ModelVersion } from "../store/models.ts";
import type { SwapChecksConfig } from "./config.ts";
import { Loaded } from "./loaded-version.ts";
import { judgeSwap, type PostSwapFigures, type SwapWatch, watchAfter } from "./swap-checks.ts";
import {
  commitCopy,
  DEFAULT_MAX_MODEL_BYTES,
  type StagedCopy,
  stageCopy,
  writeActiveMarker,
} from "./model-files.ts";
import {
  cappedTokenCount,
  classifyBucketed,
  meanOverTokens,
  slicer,
  TOKENIZE_SLICE_MS,
} from "./run-planning.ts";
import {
  noteModelTokenizer,
  sameTokenizer,
  snapshotTokenizer,
  TOKENIZER_METRIC,
  tokenizersDir,
  versionTokenizerDir,
} from "./version-tokenizer.ts";

/** The metric naming the file a version was registered from (the user's path, not the registry's copy). */
export const SOURCE_METRIC = "source";

/** Retired int8 versions whose files are kept for rollback (the most recently active ones). */
export const KEEP_RETIRED = 2;

/** Texts of the verification batch: short and long, so padding and attention over padding run. */
export const PROBE_TEXTS: readonly string[] = [
  "a quiet probe",
  "the verification batch checks that a newly promoted model loads, runs and returns finite logits for every row.",
];

/** Probe texts as a model of `kind` takes them: as they are, or each paired with the next (a pair classifier). */
export function probeInputs(kind: TaskKind, texts: readonly string[]): TextInput[] {
  return inputsOf(kind) === "pair"
    ? texts.map((t, i) => [t, texts[(i + 1) % texts.length]!] as const)
    : [...texts];
}

/** Something the registry did, for logs, metrics and the fleet link. */
export type RegistryEvent =
  | { type: "loaded"; version: ModelVersion }
  | { type: "swapped"; from: number | undefined; to: ModelVersion }
  | { type: "rejected"; version: ModelVersion | undefined; error: QuantdError }
  /** The model the agent was started with did not load; a stored version serves instead. */
  | {
      type: "kept-serving";
      version: ModelVersion;
      path: string;
      error: QuantdError;
      /** The tokenizer the version serves with (its own), when it is not the configured one. */
      tokenizerDir: string | undefined;
    }
  | { type: "rolled-back"; from: number; to: ModelVersion; trigger: "command" | "auto"; reason: string }
  | { type: "checks-passed"; version: ModelVersion; figures: PostSwapFigures };

/** Options of {@link ModelRegistry}. */
export interface RegistryOptions {
  models: ModelRegistryStore;
  /** Where model files are kept (`<stateDir>/models`). */
  modelsDir: string;
  /**
   * Directory with tokenizer.json and config.json the start's model is
   * registered with (each version keeps a copy of its own: see version-tokenizer.ts).
   */
  tokenizerDir: string;
  /**
   * Whether the operator configured `tokenizerDir` (not only the model's directory): a stored version
   * registered with another tokenizer then does not start. @defaultValue false
   */
  tokenizerExplicit?: boolean;
  /** onnxruntime intra-op threads per session. */
  threads: number;
  /** Worker threads, each with a session, per version; 0 runs the model on the JS thread. @defaultValue 0 */
  workers?: number;
  swap: SwapChecksConfig;
  onEvent?: (event: RegistryEvent) => void;
  /** Largest candidate file accepted by a promotion, in bytes. @defaultValue {@link DEFAULT_MAX_MODEL_BYTES} */
  maxModelBytes?: number;
  /** Stored texts (the sample pool) added to the probe batch of a new version, so it is checked on real inputs. */
  probeTexts?: () => readonly string[];
  /** What the operator set over the model's detected task (agent config `task`). @defaultValue detected */
  task?: TaskOverride;
}

/** Smallest spread of a logit across the probe rows: below it the model answers the same whatever the input. */
const MIN_LOGIT_SPREAD = 1e-6;
/** Largest model the load-failure diagnosis decodes whole (beyond, it checks the file's framing only). */
const FULL_DECODE_MAX_BYTES = 64 * 1024 * 1024;

/** Options of {@link ModelRegistry.promote}. */
export interface PromoteOptions {
  /** Validation and benchmark figures to record with the version. */
  metrics?: Record<string, unknown>;
  /** The kind; detected from the graph's operators when absent. */
  kind?: ModelKind;
}

/**
 * A promoted version is verified and registered with the serving version's
 * tokenizer: a candidate with a different `tokenizer.json` of its own beside
 * it (another model's export) would get the wrong ids, and often still
 * answer. A candidate with none beside it (a recalibration's) or the same one
 * is taken.
 *
 * @throws MODEL_INPUTS_MISMATCH naming both tokenizer files
 */
async function assertServingTokenizer(candidate: string, tokenizerDir: string): Promise<void> {
  const own = join(dirname(resolve(candidate)), "tokenizer.json");
  const serving = join(tokenizerDir, "tokenizer.json");
  if (own === resolve(serving) || !existsSync(own) || !existsSync(serving)) return;
  // Hashed in streamed reads, as the rest of a promotion is done, so the server keeps answering
  // meanwhile (a multilingual tokenizer.json is tens of MB); files of different sizes differ.
  const same =
    statSync(own).size === statSync(serving).size && (await sha256File(own)) === (await sha256File(serving));
  if (same) return;
  throw new QuantdError(
    "MODEL_INPUTS_MISMATCH",
    `${resolve(candidate)} comes with its own tokenizer (${own}), not the one this agent serves every version ` +
      `with (${serving}); to serve that model, restart the agent with --model ${dirname(resolve(candidate))}`,
    { details: { path: resolve(candidate), tokenizer: own, servingTokenizer: serving } },
  );
}

/**
 * onnxruntime says only that it could not load a file; the file's framing, and
 * for a model of ordinary size the codec, name what is wrong with it
 * (truncated, not ONNX). It runs only after a failure, and never holds a large
 * file in memory: beyond {@link FULL_DECODE_MAX_BYTES} only the top-level
 * framing is read.
 */
async function diagnoseLoadFailure(path: string, err: QuantdError): Promise<QuantdError> {
  if (err.code !== "MODEL_LOAD_FAILED") return err;
  try {
    const { scanModelFile } = await import("../onnx/file-scan.ts");
    const scan = await scanModelFile(path);
    if (scan.bytes > FULL_DECODE_MAX_BYTES) return err;
    // The codec (and protobufjs) is loaded only then: an agent that only serves never needs it.
    const { decodeModel } = await import("../onnx/codec.ts");
    decodeModel(await Bun.file(path).bytes(), path);
  } catch (decodeErr) {
    if (isQuantdError(decodeErr) && decodeErr.code.startsWith("MODEL_")) return decodeErr;
  }
  return err;
}

/**
 * The error with the registry's copy of a candidate named as the file the
 * user gave (its message, details and causes: onnxruntime names the file it
 * opened): `<state-dir>/models/<sha>.onnx` means nothing to whoever promoted
 * their file.
 */
function namingUsersFile(err: QuantdError, copy: string, theirs: string): QuantdError {
  const escaped = (p: string) => JSON.stringify(p).slice(1, -1);
  const json = JSON.stringify(err.toJSON());
  if (!json.includes(escaped(copy))) return err;
  return QuantdError.fromJSON(JSON.parse(json.replaceAll(escaped(copy), escaped(theirs))));
}

/** A rejected version's recorded reason: code, message and causes (onnxruntime's own words), on one line. */
function rejectionReason(err: QuantdError): string {
  return err.toLine().replace(/^error /, "");
}

/** Errors of a candidate whose graph onnxruntime loaded: the kind its operators say stands. */
const AFTER_LOAD_CODES: ReadonlySet<string> = new Set(["MODEL_TASK_MISMATCH", "MODEL_PROBE_FAILED"]);

/** Records a candidate that failed its load or probe as rejected, its kind unknown when nothing shows it. */
function rejectCandidate(
  models: ModelRegistryStore,
  candidate: ModelVersion,
  err: QuantdError,
  kindGiven: boolean,
): ModelVersion {
  // The byte scan reads "no int8 operator" as fp32, which a truncated, float16 or non-ONNX file does not prove.
  const unknown = !kindGiven && candidate.kind === "fp32" && !AFTER_LOAD_CODES.has(err.code);
  return models.reject(candidate.id, rejectionReason(err), unknown ? "unknown" : undefined);
}

function view(v: ModelVersion): ModelVersionView {
  return {
    id: v.id,
    sha256: v.sha256,
    path: v.path,
    kind: v.kind,
    state: v.state,
    metrics: v.metrics,
    reason: v.reason,
  };
}

/** The serving model and its versions. Implements the server's backend and admin interfaces. */
export class ModelRegistry implements InferenceBackend, RegistryAdmin {
  readonly #opts: RegistryOptions;
  #current: Loaded | undefined;
  /** The version swapped from, with its p95, while the current one is under post-swap checks. */
  #watch: SwapWatch | undefined;
  /** Promotions and rollbacks run one at a time. */
  #lock: Promise<unknown> = Promise.resolve();
  readonly #retiring = new Set<Promise<void>>();
  #closed = false;
  #rejectedAtStart: StartupRejection | undefined;

  constructor(opts: RegistryOptions) {
    this.#opts = opts;
  }

  /**
   * The directory of the tokenizer and config.json the serving version was
   * registered with (its copy in the state directory); the configured one
   * before a version serves.
   */
  tokenizerDir(): string {
    return this.#current?.tokenizerDir ?? this.#opts.tokenizerDir;
  }

  /** The serving model, or `undefined` before {@link ModelRegistry.start}. */
  active(): ActiveModelInfo | undefined {
    const c = this.#current;
    if (c === undefined) return undefined;
    return {
      version: c.version.id,
      kind: c.version.kind,
      sha256: c.version.sha256,
      labels: c.model.labels,
      task: c.model.task,
      ...(this.#rejectedAtStart === undefined ? {} : { rejectedAtStart: this.#rejectedAtStart }),
    };
  }

  /** The serving version's record. */
  activeVersion(): ModelVersion | undefined {
    return this.#current?.version;
  }

  /**
   * Runs one batch on the active model. The session stays alive until the
   * batch ends even if a swap retires it meanwhile.
   *
   * @throws NOT_READY before a model is loaded; INFERENCE_FAILED from the runtime
   */
  async classify(texts: readonly TextInput[]): Promise<BatchResult> {
    const loaded = this.#current;
    if (loaded === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
    loaded.refs++;
    const t0 = performance.now();
    let ok = false;
    try {
      const results = await classifyBucketed(loaded.model, texts);
      ok = true;
      return {
        results,
        model: { version: loaded.version.id, kind: loaded.version.kind },
        inferenceMs: performance.now() - t0,
      };
    } finally {
      loaded.unref();
      loaded.record(performance.now() - t0, ok);
      if (loaded === this.#current) this.#checkAfterSwap(loaded);
    }
  }

  /**
   * Token count of a text with the serving model's tokenizer, special tokens
   * included (the sample store's length buckets).
   *
   * @throws NOT_READY before a model is loaded
   */
  countTokens(text: string, pair?: string): number {
    const c = this.#current?.model;
    if (c === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
    const t = c.tokenizer;
    if (pair !== undefined) return t.tokenIds(text).length + t.tokenIds(pair).length + t.specialsPair;
    return t.tokenIds(text).length + t.specialsSingle;
  }

  /**
   * Token count of a pair encoded together, from its texts' counts as
   * {@link ModelRegistry.requestTokens} gives them (each with a single text's
   * special tokens), up to the model's sequence limit.
   *
   * @throws NOT_READY before a model is loaded
   */
  pairTokens(first: number, second: number): number {
    const t = this.#current?.model.tokenizer;
    if (t === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
    return Math.min(t.maxLength, first + second - 2 * t.specialsSingle + t.specialsPair);
  }

  /**
   * Tokens each text of a request costs the serving model, special tokens
   * included, up to the model's sequence limit (the rest is truncated away).
   * A long text is tokenized only as far as the limit needs.
   *
   * @throws NOT_READY before a model is loaded
   */
  async requestTokens(texts: readonly string[]): Promise<number[]> {
    const c = this.#current?.model;
    if (c === undefined) throw new QuantdError("NOT_READY", "no model is loaded yet");
    const { maxLength, specialsSingle } = c.tokenizer;
    const counts: number[] = [];
    // As when tokenizing a batch: long texts are not counted in one stretch that health checks wait behind.
    const pause = slicer(TOKENIZE_SLICE_MS);
    for (const text of texts) {
      counts.push(cappedTokenCount(text, maxLength, specialsSingle, (t) => c.tokenizer.tokenIds(t).length));
      await pause();
    }
    return counts;
  }

  /** Every registered version, newest first. */
  list(): ModelVersionView[] {
    return this.#opts.models.list().map(view);
  }

  /**
   * Loads the model to serve at start: the store's active version when there is
   * one and `preferInitial` is false, else `initialPath` (copied into the
   * registry and made active). When `initialPath` does not load (missing,
   * truncated, an operator onnxruntime lacks, …) a stored version serves
   * instead: the active one, else the most recently active before it; the
   * failure is kept ({@link ModelRegistry.startupRejection}) and the store's
   * active version is left as it was.
   *
   * @throws MODEL_* / FILE_NOT_FOUND / TOKENIZER_* when no model can serve (the initial model's error)
   */
  async start(initialPath: string, preferInitial: boolean): Promise<ModelVersion> {
    return this.#exclusive(async () => {
      const tried = new Set<number>();
      const active = this.#opts.models.active();
      if (active !== undefined && !preferInitial) {
        tried.add(active.id);
        // Serving another model in its place would replace the operator's model behind their back.
        this.#assertStoredTokenizer(active);
        const served = await this.#serveStored(active);
        if (served !== undefined) return served;
      }
      try {
        return await this.#promoteLocked(initialPath, { kind: undefined }, "start");
      } catch (err) {
        const error = QuantdError.from(err);
        const fallback = await this.#serveFallback(tried);
        if (fallback === undefined) throw err;
        this.#rejectedAtStart = {
          path: resolve(initialPath),
          error: error.toJSON(),
          servingVersion: fallback.id,
        };
        const own = this.tokenizerDir();
        const tokenizerDir = own === this.#opts.tokenizerDir ? undefined : own;
        this.#opts.onEvent?.({
          type: "kept-serving",
          version: fallback,
          path: resolve(initialPath),
          error,
          tokenizerDir,
        });
        return fallback;
      }
    });
  }

  /** The model the agent was started with, when it did not load and a stored version serves instead. */
  startupRejection(): StartupRejection | undefined {
    return this.#rejectedAtStart;
  }

  /**
   * Serves a stored version as it is recorded, with the tokenizer and
   * config.json it was registered with; `undefined` (and a `rejected` event)
   * when its file or its tokenizer's copy is gone or damaged.
   */
  async #serveStored(version: ModelVersion): Promise<ModelVersion | undefined> {
    try {
      const dir = this.#tokenizerOf(version);
      const model = await this.#load(version, dir);
      this.#current = new Loaded(this.#keepTokenizerOf(version, dir), model, this.#opts.swap.window, dir);
    } catch (err) {
      this.#opts.onEvent?.({ type: "rejected", version, error: QuantdError.from(err) });
      return undefined;
    }
    writeActiveMarker(this.#opts.modelsDir, version.sha256);
    this.#opts.onEvent?.({ type: "loaded", version });
    return version;
  }

  /** {@link versionTokenizerDir} of `version`: its copy, else the tokenizer it was served with before copies. */
  #tokenizerOf(version: ModelVersion): string {
    return versionTokenizerDir(version, this.#opts);
  }

  /**
   * A version registered before tokenizer copies were kept, served now with
   * the tokenizer found for it: that one is copied and recorded, so it no
   * longer depends on where it was found. Best effort: it serves anyway.
   */
  #keepTokenizerOf(version: ModelVersion, dir: string): ModelVersion {
    if (typeof version.metrics[TOKENIZER_METRIC] === "string") return version;
    try {
      const { sha256 } = snapshotTokenizer(version.path, dir, this.#opts.modelsDir);
      noteModelTokenizer(this.#opts.modelsDir, version.sha256, sha256);
      return this.#opts.models.updateMetrics(version.id, { [TOKENIZER_METRIC]: sha256 });
    } catch {
      return version; // a full disk or a busy store: the next start tries again
    }
  }

  /**
   * The store's active version can serve as it was registered: its
   * tokenizer's copy is there, and it is the tokenizer the operator
   * configured, if they configured one.
   *
   * @throws TOKENIZER_NOT_FOUND naming the version and the missing file
   * @throws MODEL_INPUTS_MISMATCH when a configured tokenizer is not the version's
   */
  #assertStoredTokenizer(version: ModelVersion): void {
    const configured = this.#opts.tokenizerDir;
    const own = this.#tokenizerOf(version);
    if (this.#opts.tokenizerExplicit !== true || sameTokenizer(own, configured)) return;
    throw new QuantdError(
      "MODEL_INPUTS_MISMATCH",
      `model version ${version.id} (the store's active one) was registered with the tokenizer in ${own}, ` +
        `not the configured ${join(configured, "tokenizer.json")}; unset tokenizerDir to serve it, or start ` +
        "with --model DIR to serve the model that tokenizer belongs to",
      { details: { version: version.id, tokenizer: join(own, "tokenizer.json"), configured } },
    );
  }

  /**
   * After the initial model failed: the store's active version (unless it was
   * tried already), else the most recently active retired one, which then
   * becomes active (the active one does not load). `undefined` when none loads.
   */
  async #serveFallback(tried: ReadonlySet<number>): Promise<ModelVersion | undefined> {
    const models = this.#opts.models;
    const active = models.active();
    if (active !== undefined && !tried.has(active.id)) {
      const served = await this.#serveStored(active);
      if (served !== undefined) return served;
    }
    const earlier = models
      .list("retired")
      .filter((v) => v.activatedAt !== null && !tried.has(v.id))
      .sort((a, b) => b.activatedAt! - a.activatedAt! || b.id - a.id);
    for (const version of earlier) {
      if ((await this.#serveStored(version)) === undefined) continue;
      // What serves must be the store's active version: jobs, rollbacks and the next start read it there.
      const reactivated = models.promote(version.id);
      const { model, tokenizerDir } = this.#current!;
      this.#current = new Loaded(reactivated, model, this.#opts.swap.window, tokenizerDir);
      return reactivated;
    }
    return undefined;
  }

  /**
   * Promotes a candidate: copy, record, verify, swap. On failure the candidate
   * is recorded as rejected (when it could be recorded at all) and the serving
   * model is untouched.
   *
   * @throws FILE_NOT_FOUND | FILE_UNREADABLE when the candidate cannot be read
   * @throws MODEL_TRUNCATED | MODEL_NOT_ONNX | MODEL_LOAD_FAILED | MODEL_INPUTS_MISMATCH for a corrupt or unusable candidate
   * @throws MODEL_TASK_MISMATCH | MODEL_PROBE_FAILED for a candidate of another task, or NaN or constant logits
   * @throws MODEL_TOO_LARGE | FILE_UNREADABLE for a file over `maxModelBytes`, or not a regular file
   * @throws MODEL_INVALID when the same file was rejected before
   * @throws DISK_FULL | FILE_WRITE_FAILED when the copy cannot be written
   */
  promote(candidatePath: string, options: PromoteOptions = {}): Promise<ModelVersionView> {
    return this.#exclusive(async () => {
      // A model directory (what `quantize --out DIR` writes) promotes its model.onnx, as --model DIR serves it.
      const file = modelFileOf(candidatePath);
      await assertServingTokenizer(file, this.tokenizerDir());
      return view(await this.#promoteLocked(file, options, "promote"));
    });
  }

  /**
   * Serves the previously active version again.
   *
   * @throws NOT_FOUND when no version was active before the current one
   * @throws MODEL_* when its file no longer loads (the current version keeps serving)
   */
  rollback(reason: string): Promise<ModelVersionView> {
    return this.#exclusive(async () => view(await this.#rollbackLocked(reason, "command")));
  }

  /** Stops serving: waits for running batches, releases every session. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#lock.catch(() => undefined);
    const current = this.#current;
    this.#current = undefined;
    if (current !== undefined) this.#retire(current);
    await Promise.all(this.#retiring);
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(() => {
      if (this.#closed) throw new QuantdError("NOT_READY", "the registry is closed");
      return fn();
    });
    this.#lock = run.catch(() => undefined);
    return run;
  }

  #retire(loaded: Loaded): void {
    const p = loaded.retire().catch(() => undefined);
    this.#retiring.add(p);
    void p.then(() => this.#retiring.delete(p));
  }

  /**
   * Opens a session on a registered version and runs the probe batch: the
   * fixed probe texts and a few stored samples. A version must do the serving
   * model's task (the same labels), give finite logits, and not answer the
   * same whatever the input.
   *
   * @throws MODEL_TASK_MISMATCH | MODEL_PROBE_FAILED | MODEL_* from loading
   */
  async #load(version: ModelVersion, tokenizerDir: string): Promise<TaskModel> {
    let model: TaskModel;
    try {
      model = await loadTaskModel(version.path, {
        tokenizerDir,
        // onnxruntime's memory patterns are planned and kept per input shape, and served batches come in many
        // shapes: off, an agent under 16 clients of ~128-token texts held 139 MB instead of 157 MB, at the same speed.
        // Its arena too: kept, it holds the peak of the largest batch ever served (an agent went from 130 to
        // 430 MB after one long request and stayed there); off, that memory is freed after the run.
        session: { intraOpThreads: this.#opts.threads, enableMemPattern: false, enableCpuMemArena: false },
        workers: this.#opts.workers ?? 0,
        ...(this.#opts.task !== undefined ? { task: this.#opts.task } : {}),
      });
    } catch (err) {
      // config.json's labels are the task every version shares: another label count is another task.
      if (isQuantdError(err, "DATA_MISMATCH")) {
        throw new QuantdError("MODEL_TASK_MISMATCH", `version ${version.id}: ${err.message}`, { cause: err });
      }
      throw err;
    }
    try {
      const serving = this.#current?.model.task;
      const task = model.task;
      if (
        serving !== undefined &&
        (serving.kind !== task.kind || serving.labels.length !== task.labels.length)
      ) {
        const describe = (t: typeof task) =>
          t.kind === "embedding" ? "embedding" : `${t.kind} (${t.labels.length} labels)`;
        throw new QuantdError(
          "MODEL_TASK_MISMATCH",
          `version ${version.id} does ${describe(task)} but the serving model does ${describe(serving)}`,
          {
            details: {
              task: task.kind,
              labels: task.labels.length,
              serving: { task: serving.kind, labels: serving.labels.length },
            },
          },
        );
      }
      await this.#probe(version, model);
    } catch (err) {
      await model.release();
      throw err;
    }
    return model;
  }

  /**
   * The probe batch: finite outputs that depend on the input. A token model's
   * rows are compared by their mean over tokens (rows differ in length).
   *
   * @throws MODEL_PROBE_FAILED
   */
  async #probe(version: ModelVersion, model: TaskModel): Promise<void> {
    let stored: readonly string[] = [];
    try {
      stored = this.#opts.probeTexts?.() ?? [];
    } catch {
      // A busy store: the fixed probe texts still check the model.
    }
    const inputs = probeInputs(model.task.kind, [...PROBE_TEXTS, ...stored]);
    let rows: Float32Array[];
    try {
      rows = (await model.outputs(inputs, { batchSize: PROBE_TEXTS.length })).data;
    } catch (err) {
      if (!isQuantdError(err, "INFERENCE_FAILED")) throw err;
      throw new QuantdError(
        "MODEL_PROBE_FAILED",
        `version ${version.id} failed the probe batch: ${err.message}`,
        {
          cause: err,
        },
      );
    }
    if (rows.length !== inputs.length || rows.some((r) => !r.every(Number.isFinite))) {
      throw new QuantdError(
        "MODEL_PROBE_FAILED",
        `version ${version.id} produced non-finite outputs (NaN logits or ±∞) on the probe batch`,
      );
    }
    const width = model.task.kind === "token-classification" ? model.task.labels.length : 0;
    const summary = rows.map((r) => (width > 0 ? meanOverTokens(r, width) : r));
    const first = summary[0]!;
    const spread = Math.max(...summary.flatMap((r) => Array.from(r, (v, j) => Math.abs(v - first[j]!))));
    if (!(spread > MIN_LOGIT_SPREAD)) {
      throw new QuantdError(
        "MODEL_PROBE_FAILED",
        `version ${version.id} gives the same logits for all ${inputs.length} probe texts: it does not depend on its input`,
        { details: { probeTexts: inputs.length, spread } },
      );
    }
  }

  async #promoteLocked(
    candidatePath: string,
    options: PromoteOptions,
    why: "start" | "promote",
  ): Promise<ModelVersion> {
    const models = this.#opts.models;
    // Everything here is asynchronous or chunked: a promotion runs while the server keeps answering.
    // The bound is on promotions; the model the agent is configured to start with is the operator's choice.
    const maxBytes =
      why === "promote" ? (this.#opts.maxModelBytes ?? DEFAULT_MAX_MODEL_BYTES) : Number.POSITIVE_INFINITY;
    const staged = await stageCopy(resolve(candidatePath), this.#opts.modelsDir, maxBytes);
    const sha256 = staged.sha256;
    const reject = (version: ModelVersion | undefined, err: unknown): QuantdError => {
      const qe = QuantdError.from(err, "MODEL_INVALID");
      this.#opts.onEvent?.({ type: "rejected", version, error: qe });
      return qe;
    };
    const known = models.getBySha256(sha256);
    if (
      known?.state === "rejected" ||
      (known?.state === "active" && this.#current?.version.id === known.id)
    ) {
      await unlink(staged.tmpPath).catch(() => undefined);
    }
    if (known?.state === "active" && this.#current?.version.id === known.id) return known;
    if (known?.state === "rejected") {
      throw reject(
        known,
        new QuantdError(
          "MODEL_INVALID",
          `${resolve(candidatePath)} (model ${sha256.slice(0, 12)}, version ${known.id}) was rejected before: ${known.reason ?? "no reason recorded"}`,
          { details: { version: known.id, path: resolve(candidatePath) } },
        ),
      );
    }
    const kind: ModelKind = options.kind ?? staged.kind;
    // The start's model comes with the configured tokenizer; a promoted one is verified with the serving one's.
    const tokenizer = this.#snapshotTokenizer(
      staged,
      why === "start" ? this.#opts.tokenizerDir : this.#servingTokenizerCopy(),
    );
    const path = await commitCopy(staged, join(this.#opts.modelsDir, `${sha256}.onnx`));
    const metrics = {
      ...(options.metrics ?? {}),
      [SOURCE_METRIC]: resolve(candidatePath),
      [TOKENIZER_METRIC]: tokenizer.sha256,
    };
    const recorded = known ?? models.add({ sha256, path, kind, metrics });
    noteModelTokenizer(this.#opts.modelsDir, sha256, tokenizer.sha256);
    let classifier: TaskModel;
    try {
      classifier = await this.#load(recorded, tokenizer.dir);
    } catch (err) {
      // The staged copy holds the same bytes; the error names the file the user gave.
      const qe = namingUsersFile(
        await diagnoseLoadFailure(path, QuantdError.from(err, "MODEL_LOAD_FAILED")),
        path,
        resolve(candidatePath),
      );
      let rejected: ModelVersion | undefined = recorded;
      if (recorded.state === "candidate") {
        rejected = rejectCandidate(models, recorded, qe, options.kind !== undefined);
        // A copy left behind is harmless, and named in the rejected record.
        await unlink(path).catch(() => undefined);
      }
      throw reject(rejected, qe);
    }
    let active: ModelVersion;
    try {
      // A version registered again is served from now on with the tokenizer it was just verified with.
      if (recorded.metrics[TOKENIZER_METRIC] !== tokenizer.sha256) {
        models.updateMetrics(recorded.id, { [TOKENIZER_METRIC]: tokenizer.sha256 });
      }
      // Already active in the store (its file failed to load at start, then was copied again): nothing to switch.
      active = recorded.state === "active" ? models.get(recorded.id)! : models.promote(recorded.id);
    } catch (err) {
      await classifier.release();
      throw err;
    }
    this.#swapTo(new Loaded(active, classifier, this.#opts.swap.window, tokenizer.dir), why === "promote");
    return active;
  }

  /**
   * The serving version's tokenizer as its copy in the state directory when
   * it has one, which {@link snapshotTokenizer} takes as it is. A legacy
   * version serves from where its tokenizer was found, and got its copy at
   * start: without this, the first promotion after it would hash and copy
   * that tokenizer again, synchronously on the serving thread.
   */
  #servingTokenizerCopy(): string {
    const current = this.#current;
    const sha256 = current?.version.metrics[TOKENIZER_METRIC];
    if (current === undefined || typeof sha256 !== "string") return this.tokenizerDir();
    const copy = join(tokenizersDir(this.#opts.modelsDir), sha256);
    return existsSync(join(copy, "tokenizer.json")) ? copy : current.tokenizerDir;
  }

  /**
   * A copy of the tokenizer a staged candidate is registered with, in the
   * state directory; the staged file is removed when it cannot be made.
   *
   * @throws TOKENIZER_NOT_FOUND | DISK_FULL | FILE_WRITE_FAILED
   */
  #snapshotTokenizer(staged: StagedCopy, tokenizerDir: string): { sha256: string; dir: string } {
    try {
      return snapshotTokenizer(staged.tmpPath, tokenizerDir, this.#opts.modelsDir);
    } catch (err) {
      void unlink(staged.tmpPath).catch(() => undefined);
      const qe = QuantdError.from(err);
      this.#opts.onEvent?.({ type: "rejected", version: undefined, error: qe });
      throw qe;
    }
  }

  #swapTo(next: Loaded, watch: boolean): void {
    const prev = this.#current;
    this.#current = next;
    // Another version serves now, by someone's choice: the start's fallback is history (it stays in the log).
    this.#rejectedAtStart = undefined;
    this.#watch = watch && prev !== undefined ? watchAfter(prev, this.#opts.swap) : undefined;
    if (prev !== undefined) this.#retire(prev);
    writeActiveMarker(this.#opts.modelsDir, next.version.sha256);
    this.#opts.onEvent?.({ type: "swapped", from: prev?.version.id, to: next.version });
    void this.#prune(next.version.id);
  }

  /**
   * Deletes the files of retired versions beyond the {@link KEEP_RETIRED} most
   * recently active ones (a board recalibrating daily would otherwise fill its
   * disk); their records stay, with the file gone. fp32 versions are kept:
   * they are what a rollback to full precision needs.
   */
  async #prune(activeId: number): Promise<void> {
    let retired: ModelVersion[];
    try {
      retired = this.#opts.models
        .list("retired")
        .filter((v) => v.id !== activeId && v.kind !== "fp32")
        .sort((a, b) => (b.activatedAt ?? 0) - (a.activatedAt ?? 0) || b.id - a.id);
    } catch {
      return; // a busy store: prune at the next swap
    }
    const modelsDir = resolve(this.#opts.modelsDir);
    for (const v of retired.slice(KEEP_RETIRED)) {
      if (dirname(resolve(v.path)) !== modelsDir) continue; // never delete a file the registry did not write
      await unlink(v.path).catch(() => undefined);
    }
  }

  async #rollbackLocked(reason: string, trigger: "command" | "auto"): Promise<ModelVersion> {
    const models = this.#opts.models;
    const from = this.#current?.version.id;
    // The store's rollback target: the retired version most recently active.
    const target = models
      .list("retired")
      .filter((v) => v.activatedAt !== null)
      .sort((a, b) => b.activatedAt! - a.activatedAt! || b.id - a.id)[0];
    if (target === undefined)
      throw new QuantdError("NOT_FOUND", "no earlier active model version to roll back to");
    const dir = this.#tokenizerOf(target);
    const classifier = await this.#load(target, dir);
    let active: ModelVersion;
    try {
      active = models.rollback(reason);
    } catch (err) {
      await classifier.release();
      throw err;
    }
    this.#swapTo(new Loaded(active, classifier, this.#opts.swap.window, dir), false);
    this.#opts.onEvent?.({ type: "rolled-back", from: from ?? -1, to: active, trigger, reason });
    return active;
  }

  /** Post-swap checks, run after each batch of the version under watch. */
  #checkAfterSwap(loaded: Loaded): void {
    const watch = this.#watch;
    if (watch === undefined) return;
    const verdict = judgeSwap(loaded, watch, this.#opts.swap);
    if (verdict === undefined) return;
    this.#watch = undefined;
    const { figures, failure: why } = verdict;
    if (why === undefined) {
      try {
        const v = this.#opts.models.updateMetrics(loaded.version.id, { postSwap: figures });
        this.#opts.onEvent?.({ type: "checks-passed", version: v, figures });
      } catch {
        // Figures are informative; a busy store must not affect serving.
      }
      return;
    }
    const reason = `post-swap check failed: ${why}`;
    void this.#exclusive(async () => {
      // A promotion or rollback may have happened meanwhile; then this verdict is stale.
      if (this.#current !== loaded) return;
      try {
        this.#opts.models.updateMetrics(loaded.version.id, { postSwap: figures });
      } catch {
        // see above
      }
      await this.#rollbackLocked(reason, "auto");
    }).catch((err) => {
      if (!isQuantdError(err, "NOT_READY")) {
        this.#opts.onEvent?.({ type: "rejected", version: loaded.version, error: QuantdError.from(err) });
      }
    });
  }
}
