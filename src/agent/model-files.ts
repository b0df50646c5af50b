/**
 * The registry's model files: a candidate is copied durably into
 * `<stateDir>/models/` (a regular file within the size limit, read in chunks
 * while its SHA-256 and kind are computed, written to a temporary name,
 * fsynced, renamed under its hash, the directory fsynced), the active
 * version is named in a marker file, and after a lost database the files on
 * disk are registered again from their names and contents.
 */
import { createHash, randomBytes } from "node:crypto";
import { constants, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { chmod, type FileHandle, mkdir, open, rename, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { writeFailure } from "../core/files.ts";
import { QuantdError } from "../errors.ts";
import { externalDataFiles, inlineExternalData, PROTOBUF_LIMIT } from "../onnx/codec.ts";
import type { ModelKind, ModelRegistryStore, ModelVersion } from "../store/models.ts";
import { kindOf, MARKER_OVERLAP, scanKindMarkers } from "./model-kind.ts";
import { notedModelTokenizer, TOKENIZER_METRIC } from "./version-tokenizer.ts";

/** Default bound on a candidate model file: ONNX's protobuf limit is 2 GiB, a board's memory far less. */
export const DEFAULT_MAX_MODEL_BYTES = 1024 * 1024 * 1024;

/** A model file copied into the registry's directory under a temporary name. */
export interface StagedCopy {
  tmpPath: string;
  sha256: string;
  kind: ModelKind;
}

/**
 * The `location` key of a tensor's external data entry as a serialized
 * StringStringEntry holds it (field 1, tag 0x0a, length 8): a model whose
 * bytes lack it has no external data, so only those that have it are decoded
 * to find out (its graph file is small: the weights are in the side files).
 */
const EXTERNAL_DATA_MARKER = Buffer.from("\x0a\x08location", "latin1");
/** Bytes a chunk keeps of the previous one, so a marker split across two reads is found. */
const OVERLAP = Math.max(MARKER_OVERLAP, EXTERNAL_DATA_MARKER.length);

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
 * @param what - what the file is, for the error (an external data file names its model)
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE (not a regular file) | MODEL_TOO_LARGE
 */
async function openRegularFile(src: string, maxBytes: number, what = "candidate model"): Promise<FileHandle> {
  let input: FileHandle;
  try {
    input = await open(src, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new QuantdError(
      code === "ENOENT" ? "FILE_NOT_FOUND" : "FILE_UNREADABLE",
      `cannot read ${what} ${src}: ${(err as Error).message}`,
      { cause: err, details: { path: src } },
    );
  }
  try {
    const st = await input.stat();
    if (!st.isFile()) {
      const kind = st.isFIFO()
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
        `${what} ${src} is ${kind}; only a regular file can be promoted`,
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
 */
async function copyToTemp(
  src: string,
  dir: string,
  maxBytes: number,
): Promise<StagedCopy & { mayReferExternalData: boolean }> {
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
 * Stages `src` for the registry as one file in `dir`: a byte copy (see
 * copyToTemp), or, for a model that keeps its weights in external data files
 * (`model.onnx` + `model.onnx_data`), a self-contained copy with the weights
 * inlined, since the registry keeps each version as one file named by its
 * hash, where the side file's relative location would name nothing.
 *
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE when `src` (or a side file) cannot be read or is not a regular file
 * @throws MODEL_TOO_LARGE when it (with its side files) holds more than `maxBytes`, or, inlined, more than protobuf's 2 GiB
 * @throws MODEL_NOT_ONNX | MODEL_TRUNCATED | MODEL_INVALID when a model referring to external data cannot be
 *   decoded or a reference is bad (a location outside its directory), naming `src`
 * @throws DISK_FULL | FILE_WRITE_FAILED when the copy cannot be written (nothing is left behind)
 */
export async function stageCopy(
  src: string,
  dir: string,
  maxBytes = DEFAULT_MAX_MODEL_BYTES,
): Promise<StagedCopy> {
  const { mayReferExternalData, ...staged } = await copyToTemp(src, dir, maxBytes);
  if (!mayReferExternalData) return staged;
  let sideFiles: string[];
  try {
    // quantd's own error names the user's file and the bad reference; a byte copy staged anyway would
    // fail later in onnxruntime, naming the registry's copy instead.
    sideFiles = await externalDataFiles(src);
  } catch (err) {
    await unlink(staged.tmpPath).catch(() => undefined);
    throw err;
  }
  if (sideFiles.length === 0) return staged;
  await unlink(staged.tmpPath).catch(() => undefined);
  return stageInlined(src, sideFiles, dir, maxBytes);
}

/**
 * Bytes of `src` and its external data files, each opened and checked as the
 * model file is (a regular file: a FIFO named as a side file would block the
 * read forever, a device fill memory), symlinks followed as for the model.
 * The side files are then read again by path when the model is loaded: the
 * check guards against a wrong file, not against one swapped in between by
 * someone who can write the model's directory (who could change the model).
 *
 * @throws FILE_NOT_FOUND | FILE_UNREADABLE naming the side file; MODEL_TOO_LARGE past `maxBytes`
 */
async function bytesWithSideFiles(src: string, sideFiles: string[], maxBytes: number): Promise<number> {
  let total = 0;
  for (const [i, f] of [src, ...sideFiles].entries()) {
    const what = i === 0 ? "candidate model" : `external data file of ${src}:`;
    const input = await openRegularFile(f, Number.POSITIVE_INFINITY, what);
    try {
      total += (await input.stat()).size;
    } finally {
      await input.close().catch(() => undefined);
    }
  }
  if (total > maxBytes) throw tooLarge(src, total, maxBytes);
  if (total > PROTOBUF_LIMIT) {
    throw new QuantdError(
      "MODEL_TOO_LARGE",
      `candidate model ${src} is ${total} bytes with its external data files; the registry keeps a version ` +
        `as one self-contained file, which protobuf limits to ${PROTOBUF_LIMIT} bytes`,
      { details: { path: src, bytes: total, maxBytes: PROTOBUF_LIMIT } },
    );
  }
  return total;
}

/**
 * An external-data model written to a temporary file in `dir` with its
 * weights inlined, then hashed. The weights are copied from the side files in
 * 1 MiB reads (inlineExternalData), so, as for a self-contained file's byte
 * copy, the model is never held in memory whole.
 */
async function stageInlined(
  src: string,
  sideFiles: string[],
  dir: string,
  maxBytes: number,
): Promise<StagedCopy> {
  await bytesWithSideFiles(src, sideFiles, maxBytes);
  const tmpPath = join(dir, `.candidate.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  try {
    // A missing or short side file fails here, naming it (FILE_NOT_FOUND, MODEL_TRUNCATED).
    await inlineExternalData(src, tmpPath);
    await chmod(tmpPath, 0o640); // as the byte copies are: no access for others
    const input = await openRegularFile(tmpPath, Number.POSITIVE_INFINITY);
    try {
      const { sha256, kind } = await fingerprint(input, tmpPath, Number.POSITIVE_INFINITY);
      return { tmpPath, sha256, kind };
    } finally {
      await input.close().catch(() => undefined);
    }
  } catch (err) {
    await unlink(tmpPath).catch(() => undefined);
    throw err;
  }
}

/** What one pass over a model file's bytes finds. */
interface Fingerprint {
  sha256: string;
  kind: ModelKind;
  /** The bytes hold an external data `location` key: the model may keep its weights in side files. */
  mayReferExternalData: boolean;
}

/**
 * Reads an open model file in 1 MiB chunks, hashing it and looking for the
 * operator names of its kind and for external data references, passing each
 * chunk on to `onChunk`.
 *
 * @throws FILE_UNREADABLE when a read fails; MODEL_TOO_LARGE past `maxBytes`
 */
async function fingerprint(
  input: FileHandle,
  src: string,
  maxBytes: number,
  onChunk: (chunk: Buffer) => Promise<void> = async () => undefined,
): Promise<Fingerprint> {
  const hash = createHash("sha256");
  const found = new Set<ModelKind>();
  let mayReferExternalData = false;
  const buf = Buffer.allocUnsafe(OVERLAP + COPY_CHUNK);
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
    const seen = buf.subarray(0, carry + n);
    scanKindMarkers(seen, found);
    mayReferExternalData ||= seen.includes(EXTERNAL_DATA_MARKER);
    await onChunk(chunk);
    const keep = Math.min(OVERLAP, carry + n);
    buf.copyWithin(0, carry + n - keep, carry + n);
    carry = keep;
  }
  return { sha256: hash.digest("hex"), kind: kindOf(found), mayReferExternalData };
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
export function writeActiveMarker(modelsDir: string, sha256: string): void {
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
 * named by `<stateDir>/active-model` (else the newest) ends active. Each is
 * recorded with the tokenizer copy noted for it at its registration.
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
    const tokenizer = notedModelTokenizer(modelsDir, f.sha256);
    const metrics = {
      reregistered: true,
      ...(tokenizer === undefined ? {} : { [TOKENIZER_METRIC]: tokenizer }),
    };
    const v = models.add({ sha256: f.sha256, path: f.path, kind: f.kind, metrics });
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
export async function commitCopy(staged: StagedCopy, target: string): Promise<string> {
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
