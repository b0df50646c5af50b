/**
 * The model registry: which model version serves, and the atomic hot swap.
 *
 * Promotion copies the candidate into `<stateDir>/models/` (temporary file,
 * fsync, rename, fsync of the directory), records it in the store as a
 * candidate, opens a session on the copy and verifies it with a probe batch
 * (fixed texts and a few stored samples) — a file that is not a regular file
 * within `limits.maxModelBytes`, does not decode or load, has another label
 * set than the serving model, or gives NaN or input-independent logits is
 * rejected and never serves — then marks it active in the store (one durable transaction)
 * and swaps the pointer the server reads. Batches already running keep a
 * reference to the old session, which is released only when the last of them
 * ends, so no request fails because of a swap.
 *
 * After a swap the new version is watched for `swap.window` batches; an error
 * rate above `swap.errorRate`, or a p95 batch latency above `swap.p95Ratio`
 * times the old version's, rolls back automatically. A job (or the admin
 * route, or the fleet link) calls {@link ModelRegistry.promote}.
 */
import { createHash, randomBytes } from "node:crypto";
import { constants, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { type FileHandle, mkdir, open, rename, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { writeFailure } from "../core/files.ts";
import { nearestRankPercentile } from "../core/stats.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { inputsOf, type TaskKind, type TaskOverride } from "../runtime/task.ts";
import { loadTaskModel, type TaskModel, type TaskResult } from "../runtime/task-model.ts";
import type { Encoding, TextInput } from "../runtime/tokenizer.ts";
import type {
  ActiveModelInfo,
  BatchResult,
  InferenceBackend,
  ModelVersionView,
  RegistryAdmin,
} from "../server/types.ts";
import type { ModelKind, ModelRegistryStore, ModelVersion } from "../store/models.ts";
import type { SwapChecksConfig } from "./config.ts";

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
  | { type: "rolled-back"; from: number; to: ModelVersion; trigger: "command" | "auto"; reason: string }
  | { type: "checks-passed"; version: ModelVersion; figures: PostSwapFigures };

/** What the post-swap checks measured. */
export interface PostSwapFigures {
  batches: number;
  failed: number;
  errorRate: number;
  p95Ms: number;
  /** The previous version's p95 batch latency, when it had enough batches to tell. */
  baselineP95Ms: number | undefined;
}

/** Options of {@link ModelRegistry}. */
export interface RegistryOptions {
  models: ModelRegistryStore;
  /** Where model files are kept (`<stateDir>/models`). */
  modelsDir: string;
  /** Directory with tokenizer.json and config.json, shared by every version. */
  tokenizerDir: string;
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

/** Default bound on a candidate model file: ONNX's protobuf limit is 2 GiB, a board's memory far less. */
export const DEFAULT_MAX_MODEL_BYTES = 1024 * 1024 * 1024;
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

/** A loaded version and the batches using it. */
class Loaded {
  refs = 0;
  retired = false;
  #released: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;
  /** Recent batch latencies (ms), newest last, at most `window` long. */
  readonly latencies: number[] = [];
  batches = 0;
  failed = 0;

  constructor(
    readonly version: ModelVersion,
    readonly model: TaskModel,
    readonly window: number,
  ) {}

  record(ms: number, ok: boolean): void {
    this.batches++;
    if (!ok) this.failed++;
    else {
      this.latencies.push(ms);
      if (this.latencies.length > this.window) this.latencies.shift();
    }
  }

  /** Releases the session once no batch uses it. */
  retire(): Promise<void> {
    this.retired = true;
    this.#released ??= new Promise<void>((resolve) => {
      this.#onIdle = resolve;
      if (this.refs === 0) resolve();
    }).then(() => this.model.release());
    return this.#released;
  }

  unref(): void {
    this.refs--;
    if (this.refs === 0 && this.retired) this.#onIdle?.();
  }
}

/** Largest share of padding tokens a length bucket may hold before the next, longer text starts another. */
export const MAX_PADDING_WASTE = 0.25;

/**
 * Splits encodings sorted by length into runs whose padded size
 * (`rows × longest`) exceeds their real token count by at most `maxWaste`.
 * The agent now plans runs with {@link planRuns}, which also counts the cost
 * of each extra run (paired on the same micro-batches: 1–10 % less CPU per
 * text, most on short texts where a run's fixed cost dominates).
 * A batch of mixed lengths padded to its longest row can cost twice the
 * compute of its real tokens, which would eat the whole gain of batching
 * (BERT-Mini on two cores: 2–3 × less time per text at batch 16 with equal
 * lengths, next to nothing with SST-2's mixed lengths).
 */
export function lengthBuckets(sortedLengths: readonly number[], maxWaste = MAX_PADDING_WASTE): number[][] {
  const buckets: number[][] = [];
  let current: number[] = [];
  let sum = 0;
  for (const [i, len] of sortedLengths.entries()) {
    if (current.length > 0 && (current.length + 1) * len > (1 + maxWaste) * (sum + len)) {
      buckets.push(current);
      current = [];
      sum = 0;
    }
    current.push(i);
    sum += len;
  }
  if (current.length > 0) buckets.push(current);
  return buckets;
}

/**
 * onnxruntime's fixed cost of one run, in padded tokens of compute. BERT-Mini
 * on one core costs ~0.85 ms per run plus ~0.04 ms per padded token (fitted
 * on batches 1–32 of 25 and 128 tokens: `a + b × rows × length`), so a run
 * costs about as much as 20 more tokens of padding.
 */
export const RUN_COST_TOKENS = 20;

/**
 * Splits encodings sorted by length into consecutive runs that minimise the
 * estimated cost `Σ (runCost + rows × longest)`: padding a few short texts to
 * their neighbour's length is cheaper than another run, while a text much
 * longer than the rest still gets a run of its own. Exact dynamic programme,
 * O(n²) in the batch size (the batcher's `maxBatch`).
 */
export function planRuns(sortedLengths: readonly number[], runCost = RUN_COST_TOKENS): number[][] {
  const n = sortedLengths.length;
  // best[i]: least cost of the first i texts; from[i]: where the last run of that plan starts.
  const best = new Float64Array(n + 1);
  const from = new Int32Array(n + 1);
  for (let i = 1; i <= n; i++) {
    const longest = sortedLengths[i - 1]!;
    best[i] = Number.POSITIVE_INFINITY;
    for (let j = i - 1; j >= 0; j--) {
      const cost = best[j]! + runCost + (i - j) * longest;
      if (cost < best[i]!) {
        best[i] = cost;
        from[i] = j;
      }
    }
  }
  const runs: number[][] = [];
  for (let i = n; i > 0; i = from[i]!)
    runs.push(Array.from({ length: i - from[i]! }, (_, k) => from[i]! + k));
  return runs.reverse();
}

/** Most padded tokens (rows × longest row) in one onnxruntime run: bounds a run's working memory. */
export const MAX_RUN_TOKENS = 4096;

/**
 * Splits planned runs (indices into the sorted lengths) whose padded size
 * exceeds `maxTokens`, so that one run's activations stay bounded whatever a
 * batch holds (at least one row per run).
 */
export function capRuns(
  runs: readonly number[][],
  lengthOf: (k: number) => number,
  maxTokens = MAX_RUN_TOKENS,
): number[][] {
  const out: number[][] = [];
  for (const run of runs) {
    const longest = Math.max(...run.map(lengthOf));
    const rows = Math.max(1, Math.floor(maxTokens / Math.max(1, longest)));
    for (let i = 0; i < run.length; i += rows) out.push(run.slice(i, i + rows));
  }
  return out;
}

/**
 * Runs inputs (texts or pairs, already checked against the task) in runs of
 * similar length planned by `plan` (on the token counts sorted ascending);
 * results in input order.
 *
 * @throws INFERENCE_FAILED when the runtime fails or returns NaN
 */
export async function classifyBucketed(
  model: TaskModel,
  inputs: readonly TextInput[],
  plan: (sortedLengths: readonly number[]) => number[][] = planRuns,
): Promise<TaskResult[]> {
  const encodings = await encodeYielding(model, inputs);
  const order = Array.from({ length: inputs.length }, (_, i) => i);
  order.sort((a, b) => encodings[a]!.inputIds.length - encodings[b]!.inputIds.length);
  const results = new Array<TaskResult>(inputs.length);
  for (const bucket of capRuns(
    plan(order.map((i) => encodings[i]!.inputIds.length)),
    (k) => encodings[order[k]!]!.inputIds.length,
  )) {
    const rows = bucket.map((k) => order[k]!);
    const enc = model.tokenizer.pad(rows.map((i) => encodings[i]!));
    const out = await model.runEncoded(enc);
    for (const [r, i] of rows.entries())
      results[i] = model.resultOf(out, r, enc, inputs[i]!, encodings[i]!, i);
  }
  return results;
}

/** Longest stretch of tokenizing on the server's thread before it lets other requests (health checks) in, in ms. */
const TOKENIZE_SLICE_MS = 4;

/**
 * Tokenizes on the server's thread in slices of {@link TOKENIZE_SLICE_MS},
 * yielding to the event loop between them: a batch of long texts takes tens
 * of ms to tokenize, and health checks must not wait that long.
 */
async function encodeYielding(model: TaskModel, inputs: readonly TextInput[]): Promise<Encoding[]> {
  const encodings: Encoding[] = [];
  const pause = slicer(TOKENIZE_SLICE_MS);
  for (const x of inputs) {
    encodings.push(model.encode(x));
    await pause();
  }
  return encodings;
}

/** A function that yields to the event loop once `ms` have passed since it last did (else resolves at once). */
function slicer(ms: number): () => Promise<void> | undefined {
  let since = performance.now();
  return () => {
    if (performance.now() - since <= ms) return undefined;
    return new Promise<void>((r) => setImmediate(r)).then(() => {
      since = performance.now();
    });
  };
}

/** Characters per token below which a text prefix is sure to hold `maxLength` tokens (WordPiece tokens are rarely longer). */
const CHARS_PER_TOKEN_BOUND = 8;

/**
 * `min(maxLength, tokens(text) + specials)`, tokenizing only a prefix of a
 * long text when the prefix already reaches the limit. The prefix ends at a
 * space, so no word is cut into more pieces than it has whole.
 */
export function cappedTokenCount(
  text: string,
  maxLength: number,
  specials: number,
  count: (text: string) => number,
): number {
  const limit = maxLength * CHARS_PER_TOKEN_BOUND;
  if (text.length > limit) {
    const cut = text.lastIndexOf(" ", limit);
    if (cut > 0 && count(text.slice(0, cut)) + specials >= maxLength) return maxLength;
  }
  return Math.min(maxLength, count(text) + specials);
}

/** The mean of each label's logit over a token model's `[tokens, width]` row. */
function meanOverTokens(row: Float32Array, width: number): Float32Array {
  const out = new Float32Array(width);
  const tokens = row.length / width;
  for (let t = 0; t < tokens; t++) for (let j = 0; j < width; j++) out[j]! += row[t * width + j]! / tokens;
  return out;
}

/** SHA-256 of bytes, lower-case hex. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/**
 * An operator name as a serialized NodeProto holds it: field 4 (`op_type`,
 * tag 0x22), its length, the name. Matching the whole field, not the bare
 * name, keeps `MatMulIntegerToFloat` (a static model's fused kernel) from
 * reading as `MatMulInteger`, and `QuantizeLinear` from matching inside
 * `DynamicQuantizeLinear`.
 */
function opTypeField(name: string): Buffer {
  return Buffer.concat([Buffer.from([0x22, name.length]), Buffer.from(name, "latin1")]);
}

/** Operators that mark a model's kind, most specific first. */
const KIND_MARKERS: readonly (readonly [Buffer, ModelKind])[] = [
  [opTypeField("DynamicQuantizeLinear"), "int8-dynamic"],
  [opTypeField("MatMulInteger"), "int8-dynamic"],
  [opTypeField("QuantizeLinear"), "int8-static"],
  [opTypeField("QLinearMatMul"), "int8-static"],
];
/** Longest marker: a chunk keeps this many bytes of the previous one so a name split across reads is found. */
const MARKER_OVERLAP = Math.max(...KIND_MARKERS.map(([m]) => m.length));

/**
 * The kind of a serialized model, from the operator names its bytes hold
 * (decoding a model blocks the event loop for hundreds of ms on a board; a
 * byte search takes a few).
 */
export function detectModelKindFromBytes(bytes: Uint8Array): ModelKind {
  const found = new Set<ModelKind>();
  scanKindMarkers(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), found);
  return kindOf(found);
}

function scanKindMarkers(buf: Buffer, found: Set<ModelKind>): void {
  for (const [marker, kind] of KIND_MARKERS) if (!found.has(kind) && buf.includes(marker)) found.add(kind);
}

function kindOf(found: ReadonlySet<ModelKind>): ModelKind {
  if (found.has("int8-dynamic")) return "int8-dynamic";
  if (found.has("int8-static")) return "int8-static";
  return "fp32";
}

/** A model file copied into the registry's directory under a temporary name. */
interface StagedCopy {
  tmpPath: string;
  sha256: string;
  kind: ModelKind;
}

/** Bytes per read when copying a model: memory stays flat whatever the model's size. */
const COPY_CHUNK = 1024 * 1024;

function writeError(target: string, err: unknown): QuantdError {
  return writeFailure(err, `cannot write ${target}: ${(err as Error).message}`);
}

function tooLarge(src: string, bytes: number, maxBytes: number): QuantdError {
  return new QuantdError(
    "MODEL_TOO_LARGE",
    `candidate model ${src} is ${bytes} bytes or more, over the limit of ${maxBytes} (limits.maxModelBytes)`,
    { details: { path: src, bytes, maxBytes } },
  );
}

/**
 * Opens a candidate for reading, refusing anything but a regular file within
 * the size bound. The open itself never blocks (O_NONBLOCK: a FIFO would
 * otherwise wait for a writer forever, holding the registry's lock), and the
 * type is checked on the opened descriptor, so a path swapped after a check
 * cannot slip a device (`/dev/zero` copies until the disk is full) through.
 *
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE (not a regular file) | MODEL_TOO_LARGE
 */
async function openRegularFile(src: string, maxBytes: number): Promise<FileHandle> {
  let input: FileHandle;
  try {
    input = await open(src, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new QuantdError(
      code === "ENOENT" ? "FILE_NOT_FOUND" : "FILE_UNREADABLE",
      `cannot read candidate model ${src}: ${(err as Error).message}`,
      { cause: err, details: { path: src } },
    );
  }
  try {
    const st = await input.stat();
    if (!st.isFile()) {
      const what = st.isFIFO()
        ? "a FIFO"
        : st.isCharacterDevice() || st.isBlockDevice()
          ? "a device"
          : st.isSocket()
            ? "a socket"
            : st.isDirectory()
              ? "a directory"
              : "not a regular file";
      throw new QuantdError(
        "FILE_UNREADABLE",
        `candidate model ${src} is ${what}; only a regular file can be promoted`,
        { details: { path: src } },
      );
    }
    if (st.size > maxBytes) throw tooLarge(src, st.size, maxBytes);
    return input;
  } catch (err) {
    await input.close().catch(() => undefined);
    throw err;
  }
}

/**
 * Copies `src` to a temporary file in `dir` in 1 MiB reads, hashing it and
 * looking for the operator names of its kind on the way, then fsyncs it. The
 * model is never held in memory whole (a 30 MB fp32 model would stay in the
 * agent's resident set long after the copy), and the event loop is never
 * blocked for more than one chunk.
 *
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE when `src` cannot be read or is not a regular file
 * @throws MODEL_TOO_LARGE when it holds more than `maxBytes`
 * @throws DISK_FULL | FILE_WRITE_FAILED when the copy cannot be written (nothing is left behind)
 */
export async function stageCopy(
  src: string,
  dir: string,
  maxBytes = DEFAULT_MAX_MODEL_BYTES,
): Promise<StagedCopy> {
  const input = await openRegularFile(src, maxBytes);
  const tmpPath = join(dir, `.candidate.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  let out: FileHandle | undefined;
  try {
    try {
      await mkdir(dir, { recursive: true });
      out = await open(tmpPath, "wx", 0o640);
    } catch (err) {
      throw writeError(tmpPath, err);
    }
    const sink = out;
    const print = await fingerprint(input, src, maxBytes, async (chunk) => {
      try {
        let off = 0;
        while (off < chunk.length) off += (await sink.write(chunk, off, chunk.length - off)).bytesWritten;
      } catch (err) {
        throw writeError(tmpPath, err);
      }
    });
    try {
      await out.sync();
      await out.close();
      out = undefined;
    } catch (err) {
      throw writeError(tmpPath, err);
    }
    return { tmpPath, ...print };
  } catch (err) {
    await out?.close().catch(() => undefined);
    await unlink(tmpPath).catch(() => undefined);
    throw err;
  } finally {
    await input.close().catch(() => undefined);
  }
}

/**
 * Reads an open model file in 1 MiB chunks, hashing it and looking for the
 * operator names of its kind, passing each chunk on to `onChunk`.
 *
 * @throws FILE_UNREADABLE when a read fails; MODEL_TOO_LARGE past `maxBytes`
 */
async function fingerprint(
  input: FileHandle,
  src: string,
  maxBytes: number,
  onChunk: (chunk: Buffer) => Promise<void> = async () => undefined,
): Promise<{ sha256: string; kind: ModelKind }> {
  const hash = createHash("sha256");
  const found = new Set<ModelKind>();
  const buf = Buffer.allocUnsafe(MARKER_OVERLAP + COPY_CHUNK);
  let carry = 0;
  let copied = 0;
  for (;;) {
    let n: number;
    try {
      n = (await input.read(buf, carry, COPY_CHUNK, null)).bytesRead;
    } catch (err) {
      throw new QuantdError("FILE_UNREADABLE", `cannot read model ${src}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (n === 0) break;
    copied += n;
    // The file may grow while it is read: the bound holds for what is read, not only for its size at open.
    if (copied > maxBytes) throw tooLarge(src, copied, maxBytes);
    const chunk = buf.subarray(carry, carry + n);
    hash.update(chunk);
    scanKindMarkers(buf.subarray(0, carry + n), found);
    await onChunk(chunk);
    const keep = Math.min(MARKER_OVERLAP, carry + n);
    buf.copyWithin(0, carry + n - keep, carry + n);
    carry = keep;
  }
  return { sha256: hash.digest("hex"), kind: kindOf(found) };
}

/** The file naming the serving version's SHA-256, in the state directory (beside `models/`). */
export const ACTIVE_MODEL_FILE = "active-model";

/** `<stateDir>/active-model` for the registry's `<stateDir>/models`. */
function activeMarkerPath(modelsDir: string): string {
  return join(dirname(resolve(modelsDir)), ACTIVE_MODEL_FILE);
}

/**
 * Records which model serves in a plain file next to the models, so that a
 * store lost to corruption can be rebuilt with the same active version. Best
 * effort, and not atomic on purpose (a torn name matches no file, and the
 * newest file is taken): the store stays the authority while it is intact.
 */
function writeActiveMarker(modelsDir: string, sha256: string): void {
  try {
    writeFileSync(activeMarkerPath(modelsDir), `${sha256}\n`, { mode: 0o640 });
  } catch {
    // A full disk: the store still knows.
  }
}

/** What {@link reregisterModelFiles} rebuilt. */
export interface Reregistered {
  /** Versions registered, oldest first. */
  versions: ModelVersion[];
  /** The version made active (the one named by `active-model`, else the newest), if any. */
  active: ModelVersion | undefined;
  /** Files skipped: their content does not match their name. */
  skipped: string[];
}

/**
 * Registers the model files of `modelsDir` (`<sha256>.onnx`, as the registry
 * names its copies) in a fresh store after the old one was lost: each file's
 * content is hashed against its name, registered oldest first by modification
 * time and promoted in turn, so rollback goes to the one before; the version
 * named by `<stateDir>/active-model` (else the newest) ends active.
 *
 * @throws STORE_* when the store cannot be written
 */
export async function reregisterModelFiles(
  models: ModelRegistryStore,
  modelsDir: string,
): Promise<Reregistered> {
  let names: string[];
  try {
    names = readdirSync(modelsDir).filter((n) => /^[0-9a-f]{64}\.onnx$/.test(n));
  } catch {
    return { versions: [], active: undefined, skipped: [] };
  }
  let marked: string | undefined;
  try {
    marked = readFileSync(activeMarkerPath(modelsDir), "utf8").trim();
  } catch {
    // No marker: the newest file ends active.
  }
  const files = names
    .map((name) => ({ name, path: join(modelsDir, name), mtime: statSync(join(modelsDir, name)).mtimeMs }))
    .sort((a, b) => a.mtime - b.mtime);
  const found: { path: string; sha256: string; kind: ModelKind }[] = [];
  const skipped: string[] = [];
  for (const f of files) {
    let print: { sha256: string; kind: ModelKind };
    try {
      const input = await openRegularFile(f.path, Number.POSITIVE_INFINITY);
      try {
        print = await fingerprint(input, f.path, Number.POSITIVE_INFINITY);
      } finally {
        await input.close().catch(() => undefined);
      }
    } catch {
      skipped.push(f.name);
      continue;
    }
    if (`${print.sha256}.onnx` !== f.name) skipped.push(f.name);
    else found.push({ path: f.path, ...print });
  }
  const last = found.find((f) => f.sha256 === marked) ?? found.at(-1);
  const ordered = last === undefined ? found : [...found.filter((f) => f !== last), last];
  const versions: ModelVersion[] = [];
  for (const f of ordered) {
    const v = models.add({ sha256: f.sha256, path: f.path, kind: f.kind, metrics: { reregistered: true } });
    versions.push(models.promote(v.id));
  }
  return { versions, active: versions.at(-1), skipped };
}

/**
 * Gives a staged copy its final name durably: rename, then fsync of the
 * directory so the rename itself survives a power cut.
 *
 * @throws FILE_WRITE_FAILED (the temporary file is removed)
 */
async function commitCopy(staged: StagedCopy, target: string): Promise<string> {
  try {
    await rename(staged.tmpPath, target);
    const dh = await open(dirname(target), "r");
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
    return target;
  } catch (err) {
    await unlink(staged.tmpPath).catch(() => undefined);
    throw writeError(target, err);
  }
}

/**
 * onnxruntime says only that it could not load a file; the file's framing, and
 * for a model of ordinary size the codec, name what is wrong with it
 * (truncated, not ONNX). It runs only after a failure, and never holds a large
 * file in memory: beyond {@link FULL_DECODE_MAX_BYTES} only the top-level
 * framing is read.
 */
async function diagnoseLoadFailure(path: string, shownPath: string, err: QuantdError): Promise<QuantdError> {
  if (err.code !== "MODEL_LOAD_FAILED") return err;
  try {
    const { scanModelFile } = await import("../onnx/file-scan.ts");
    const scan = await scanModelFile(path);
    if (scan.bytes > FULL_DECODE_MAX_BYTES) return err;
    // The codec (and protobufjs) is loaded only then: an agent that only serves never needs it.
    const { decodeModel } = await import("../onnx/codec.ts");
    decodeModel(await Bun.file(path).bytes(), shownPath);
  } catch (decodeErr) {
    if (isQuantdError(decodeErr) && decodeErr.code.startsWith("MODEL_")) {
      // The staged copy's name means nothing to whoever asked to promote their file: name theirs.
      if (!decodeErr.message.includes(path)) return decodeErr;
      return new QuantdError(decodeErr.code, decodeErr.message.replaceAll(path, shownPath), {
        details: { ...decodeErr.details, path: shownPath },
      });
    }
  }
  return err;
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
  #watch: { from: number; baselineP95Ms: number | undefined } | undefined;
  /** Promotions and rollbacks run one at a time. */
  #lock: Promise<unknown> = Promise.resolve();
  readonly #retiring = new Set<Promise<void>>();
  #closed = false;

  constructor(opts: RegistryOptions) {
    this.#opts = opts;
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
   * registry and made active).
   *
   * @throws MODEL_* / FILE_NOT_FOUND / TOKENIZER_* when the model cannot serve
   */
  async start(initialPath: string, preferInitial: boolean): Promise<ModelVersion> {
    return this.#exclusive(async () => {
      const active = this.#opts.models.active();
      if (active !== undefined && !preferInitial) {
        try {
          this.#current = new Loaded(active, await this.#load(active), this.#opts.swap.window);
          writeActiveMarker(this.#opts.modelsDir, active.sha256);
          this.#opts.onEvent?.({ type: "loaded", version: active });
          return active;
        } catch (err) {
          // The active file is gone or damaged (a disk error): fall back to the initial model rather than not serve.
          this.#opts.onEvent?.({ type: "rejected", version: active, error: QuantdError.from(err) });
        }
      }
      const version = await this.#promoteLocked(initialPath, { kind: undefined }, "start");
      return version;
    });
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
    return this.#exclusive(async () => view(await this.#promoteLocked(candidatePath, options, "promote")));
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
  async #load(version: ModelVersion): Promise<TaskModel> {
    let model: TaskModel;
    try {
      model = await loadTaskModel(version.path, {
        tokenizerDir: this.#opts.tokenizerDir,
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
          `model ${sha256.slice(0, 12)} was rejected before: ${known.reason ?? "no reason"}`,
          {
            details: { version: known.id },
          },
        ),
      );
    }
    const kind: ModelKind = options.kind ?? staged.kind;
    const path = await commitCopy(staged, join(this.#opts.modelsDir, `${sha256}.onnx`));
    const metrics = { ...(options.metrics ?? {}), source: resolve(candidatePath) };
    const recorded = known ?? models.add({ sha256, path, kind, metrics });
    let classifier: TaskModel;
    try {
      classifier = await this.#load(recorded);
    } catch (err) {
      // The staged copy holds the same bytes; the error names the file the user gave.
      const qe = await diagnoseLoadFailure(
        path,
        resolve(candidatePath),
        QuantdError.from(err, "MODEL_LOAD_FAILED"),
      );
      let rejected: ModelVersion | undefined = recorded;
      if (recorded.state === "candidate") {
        rejected = models.reject(recorded.id, `${qe.code}: ${qe.message}`);
        // A copy left behind is harmless, and named in the rejected record.
        await unlink(path).catch(() => undefined);
      }
      throw reject(rejected, qe);
    }
    let active: ModelVersion;
    try {
      // Already active in the store (its file failed to load at start, then was copied again): nothing to switch.
      active = recorded.state === "active" ? recorded : models.promote(recorded.id);
    } catch (err) {
      await classifier.release();
      throw err;
    }
    this.#swapTo(new Loaded(active, classifier, this.#opts.swap.window), why === "promote");
    return active;
  }

  #swapTo(next: Loaded, watch: boolean): void {
    const prev = this.#current;
    this.#current = next;
    this.#watch =
      watch && prev !== undefined
        ? {
            from: prev.version.id,
            baselineP95Ms:
              prev.latencies.length >= Math.min(20, this.#opts.swap.window)
                ? nearestRankPercentile(prev.latencies, 95)
                : undefined,
          }
        : undefined;
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
    const classifier = await this.#load(target);
    let active: ModelVersion;
    try {
      active = models.rollback(reason);
    } catch (err) {
      await classifier.release();
      throw err;
    }
    this.#swapTo(new Loaded(active, classifier, this.#opts.swap.window), false);
    this.#opts.onEvent?.({ type: "rolled-back", from: from ?? -1, to: active, trigger, reason });
    return active;
  }

  /** Post-swap checks, run after each batch of the version under watch. */
  #checkAfterSwap(loaded: Loaded): void {
    const watch = this.#watch;
    if (watch === undefined) return;
    const { errorRate, p95Ratio, window } = this.#opts.swap;
    // Failures count early: waiting a whole window of errors would fail far more requests than the rule allows.
    const failedLimit = Math.floor(errorRate * window);
    const done = loaded.batches >= window;
    if (!done && loaded.failed <= failedLimit) return;
    this.#watch = undefined;
    const figures: PostSwapFigures = {
      batches: loaded.batches,
      failed: loaded.failed,
      errorRate: loaded.failed / Math.max(1, loaded.batches),
      p95Ms: nearestRankPercentile(loaded.latencies, 95),
      baselineP95Ms: watch.baselineP95Ms,
    };
    let why: string | undefined;
    if (loaded.failed > failedLimit) {
      why = `error rate ${(figures.errorRate * 100).toFixed(1)} % over ${loaded.batches} batches exceeds ${(errorRate * 100).toFixed(1)} %`;
    } else if (watch.baselineP95Ms !== undefined && figures.p95Ms > p95Ratio * watch.baselineP95Ms) {
      why = `p95 batch latency ${figures.p95Ms.toFixed(2)} ms exceeds ${p95Ratio} × the previous version's ${watch.baselineP95Ms.toFixed(2)} ms`;
    }
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
