/**
 * SHA-256 of files, read in chunks: a model may be hundreds of MB and a board
 * has little memory, so no caller reads a whole file to hash it. And of bytes
 * already in memory.
 */
import { createHash } from "node:crypto";
import { closeSync, createReadStream, openSync, readSync } from "node:fs";

/** Bytes per read of {@link sha256FileSync}. */
const CHUNK = 1024 * 1024;

/**
 * SHA-256 of a file, lower-case hex, streamed.
 *
 * @throws the file system's error when the file cannot be read
 */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * {@link sha256File}, synchronously, one chunk of memory at a time.
 *
 * @throws the file system's error when the file cannot be read
 */
export function sha256FileSync(path: string): string {
  const hash = createHash("sha256");
  const buf = Buffer.allocUnsafe(CHUNK);
  const fd = openSync(path, "r");
  try {
    for (let n = readSync(fd, buf, 0, CHUNK, null); n > 0; n = readSync(fd, buf, 0, CHUNK, null)) {
      hash.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** SHA-256 of bytes, lower-case hex. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}
