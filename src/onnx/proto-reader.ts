/**
 * Positioned reads of a protobuf file, for the readers that walk a model's
 * framing without holding the file (file-scan.ts, graph-outline.ts): one
 * window of bytes at a time, so walking many small fields costs few system
 * calls and a field's large value is skipped over unread.
 */
import type { FileHandle } from "node:fs/promises";

/** Bytes read at a time: nodes and tensor headers come from one window, tensor data is skipped over. */
const WINDOW = 64 * 1024;

/** Framing that is not a message's: a read past the end of the file, or a varint over 10 bytes. */
export class MalformedProto extends Error {}

/** Positioned reads through one window of the file open in `fh`, `size` bytes long. */
export class ProtoFileReader {
  #buf = Buffer.alloc(0);
  #at = 0;

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  /** The `len` bytes at `pos`. @throws MalformedProto past the end of the file */
  async bytes(pos: number, len: number): Promise<Buffer> {
    if (pos + len > this.size) throw new MalformedProto();
    if (pos < this.#at || pos + len > this.#at + this.#buf.length) {
      const buf = Buffer.alloc(Math.max(len, Math.min(WINDOW, this.size - pos)));
      const { bytesRead } = await this.fh.read(buf, 0, buf.length, pos);
      if (bytesRead < len) throw new MalformedProto();
      this.#buf = buf.subarray(0, bytesRead);
      this.#at = pos;
    }
    return this.#buf.subarray(pos - this.#at, pos - this.#at + len);
  }

  /** The varint at `pos` and the bytes it takes. @throws MalformedProto past the end or over 10 bytes */
  async varint(pos: number): Promise<[number, number]> {
    const b = await this.bytes(pos, Math.min(10, this.size - pos));
    let value = 0;
    let scale = 1;
    for (let i = 0; i < b.length; i++) {
      value += (b[i]! & 0x7f) * scale;
      scale *= 128;
      if ((b[i]! & 0x80) === 0) return [value, i + 1];
    }
    throw new MalformedProto();
  }
}
