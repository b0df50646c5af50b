/**
 * Durable file writes for every layer: a temporary sibling, fsync, rename,
 * fsync of the directory, so after a power cut a reader finds the old file or
 * the new one, never half of one; and the one mapping from a failed write's
 * errno to quantd's codes (a full disk and an exhausted quota are both
 * `DISK_FULL`: the user's remedy is the same).
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  fsyncSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { QuantdError } from "../errors.ts";

/** The errno code of a Node error, if it has one. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * The error for a failed write: `DISK_FULL` for ENOSPC and EDQUOT, else
 * `FILE_WRITE_FAILED`; a `QuantdError` (say, from a writer callback) is kept.
 *
 * @param message - what could not be done, e.g. `cannot write /var/lib/quantd/x`
 */
export function writeFailure(err: unknown, message: string, details?: Record<string, unknown>): QuantdError {
  if (err instanceof QuantdError) return err;
  const code = errnoOf(err);
  return new QuantdError(
    code === "ENOSPC" || code === "EDQUOT" ? "DISK_FULL" : "FILE_WRITE_FAILED",
    message,
    {
      cause: err,
      ...(details === undefined ? {} : { details }),
    },
  );
}

/** A unique temporary name beside `path`, hidden, so a directory listing does not show it as a result. */
function tempBeside(path: string): string {
  return join(
    dirname(resolve(path)),
    `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`,
  );
}

/**
 * Makes a rename in `dir` durable. Best effort: not every filesystem lets a
 * directory be opened and fsynced, and the file itself is already synced.
 */
export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, "r");
    await d.sync().finally(() => d.close());
  } catch {
    // best effort
  }
}

/** {@link syncDir}, synchronously. */
export function syncDirSync(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // best effort
  }
}

/**
 * Removes a temporary file, if any. Cleanup must not replace the write's own
 * error: Bun's rmSync throws EFAULT, not ENOENT, under a path that is a file.
 */
function removeQuietly(path: string): void {
  try {
    rmSync(path, { force: true });
  } catch {
    // nothing was created there
  }
}

/** What to put in the file: its bytes or text, or a function writing them through the handle. */
export type FileContent = string | Uint8Array | ((fh: FileHandle) => Promise<void>);

/**
 * Replaces `path` atomically and durably: writes a temporary sibling, fsyncs
 * it, renames it over `path`, then fsyncs the directory. On failure the
 * temporary file is removed and `path` is untouched.
 *
 * @param mode - permission bits of a new file @defaultValue 0o644
 * @throws DISK_FULL when the disk or quota is full
 * @throws FILE_WRITE_FAILED when the file cannot be written otherwise
 */
export async function writeFileDurable(path: string, content: FileContent, mode = 0o644): Promise<void> {
  const tmp = tempBeside(path);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, "wx", mode);
    if (typeof content === "function") await content(fh);
    else await fh.writeFile(content);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (err) {
    await fh?.close().catch(() => undefined);
    await rm(tmp, { force: true }).catch(() => undefined);
    throw writeFailure(err, `cannot write ${path}: ${(err as Error).message}`, { path });
  }
  await syncDir(dirname(resolve(path)));
}

/**
 * {@link writeFileDurable} for text or bytes, synchronously: for small state
 * files (checkpoints, locks, keys) written where nothing may run in between.
 *
 * @param mode - permission bits of a new file @defaultValue 0o644
 * @throws DISK_FULL | FILE_WRITE_FAILED
 */
export function writeFileDurableSync(path: string, content: string | Uint8Array, mode = 0o644): void {
  const tmp = tempBeside(path);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, "wx", mode);
    const bytes = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    let done = 0;
    while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (err) {
    if (fd !== undefined) closeSync(fd);
    removeQuietly(tmp);
    throw writeFailure(err, `cannot write ${path}: ${(err as Error).message}`, { path });
  }
  syncDirSync(dirname(resolve(path)));
}

/**
 * Copies `source` over `dest` atomically and durably: a temporary sibling of
 * `dest`, fsync, rename, fsync of the directory.
 *
 * @param message - the failure's message @defaultValue `cannot copy SOURCE to DEST`
 * @throws DISK_FULL | FILE_WRITE_FAILED (a missing or unreadable source too)
 */
export function copyFileDurableSync(source: string, dest: string, message?: string): void {
  const tmp = tempBeside(dest);
  try {
    copyFileSync(source, tmp);
    // copyFileSync keeps the source's mode: a read-only source (a package's model directory) would give
    // a copy its owner cannot write, which a user without root could then neither fsync here nor edit.
    chmodSync(tmp, (statSync(tmp).mode & 0o7777) | 0o200);
    const fd = openSync(tmp, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, dest);
  } catch (err) {
    removeQuietly(tmp);
    throw writeFailure(err, message ?? `cannot copy ${source} to ${dest}`, { path: dest });
  }
  syncDirSync(dirname(resolve(dest)));
}
