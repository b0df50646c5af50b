/**
 * Validation of user text before it reaches the tokenizer. Every text that
 * enters quantd (CLI arguments, socket requests, sample files, the store)
 * passes through {@link validateText}, so a bad input becomes a stable error
 * code instead of a slow tokenization or a model fed with garbage.
 */
import { QuantdError } from "../errors.ts";

/** Default upper bound on one text, in UTF-8 bytes (64 KiB). */
export const DEFAULT_MAX_TEXT_BYTES = 64 * 1024;

/** Options for {@link validateText}. */
export interface ValidateTextOptions {
  /** Largest accepted text in UTF-8 bytes. @defaultValue {@link DEFAULT_MAX_TEXT_BYTES} (64 KiB) */
  maxBytes?: number;
  /** What the text is, for error messages (e.g. `samples.tsv:12`). @defaultValue "text" */
  what?: string;
}

// In `u` mode a well-formed surrogate pair is one code point, so this matches lone surrogates only.
const LONE_SURROGATE = /\p{Cs}/u;
const NOT_BLANK = /\S/u;

/**
 * Returns `value` as a string if it is usable model input.
 *
 * The size check runs before anything that scans the whole text, so a huge input
 * fails in microseconds rather than after a long tokenization.
 *
 * @throws TEXT_NOT_STRING when `value` is not a string
 * @throws TEXT_TOO_LARGE when its UTF-8 encoding exceeds `maxBytes`
 * @throws TEXT_INVALID_UTF8 when it holds a lone UTF-16 surrogate (not encodable as UTF-8)
 * @throws TEXT_EMPTY when it is empty or whitespace only
 */
export function validateText(value: unknown, opts: ValidateTextOptions = {}): string {
  const what = opts.what ?? "text";
  if (typeof value !== "string") {
    const got = value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
    throw new QuantdError("TEXT_NOT_STRING", `${what} must be a string, got ${got}`, { details: { got } });
  }
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_TEXT_BYTES;
  // UTF-8 needs at least one byte per UTF-16 unit and at most three, so most texts skip the exact count.
  if (value.length * 3 > maxBytes) {
    const bytes = value.length > maxBytes ? value.length : Buffer.byteLength(value, "utf8");
    if (bytes > maxBytes) {
      const shown = value.length > maxBytes ? `at least ${bytes}` : `${bytes}`;
      throw new QuantdError(
        "TEXT_TOO_LARGE",
        `${what} is ${shown} bytes of UTF-8, more than the limit of ${maxBytes} bytes`,
        { details: { bytes, maxBytes } },
      );
    }
  }
  if (LONE_SURROGATE.test(value)) {
    throw new QuantdError(
      "TEXT_INVALID_UTF8",
      `${what} holds a lone UTF-16 surrogate and is not valid Unicode`,
    );
  }
  if (!NOT_BLANK.test(value)) {
    throw new QuantdError(
      "TEXT_EMPTY",
      value.length === 0 ? `${what} is empty` : `${what} holds only whitespace`,
    );
  }
  return value;
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/**
 * Decodes bytes as UTF-8, refusing invalid sequences instead of replacing them
 * with U+FFFD (a replaced character would silently change what the model sees).
 * A leading byte-order mark is dropped.
 *
 * @param what - what the bytes are, for the error message (e.g. a file name)
 * @throws TEXT_INVALID_UTF8 when the bytes are not valid UTF-8; `details.offset` is
 * the byte offset of the first bad sequence
 */
export function decodeUtf8Strict(bytes: Uint8Array, what: string): string {
  try {
    return STRICT_UTF8.decode(bytes);
  } catch (err) {
    const offset = firstInvalidUtf8Offset(bytes);
    throw new QuantdError(
      "TEXT_INVALID_UTF8",
      `${what} is not valid UTF-8 (first bad byte at offset ${offset})`,
      {
        cause: err,
        details: { offset },
      },
    );
  }
}

/**
 * Byte offset of the first invalid UTF-8 sequence in `bytes`, or -1 if all are
 * valid. Follows the well-formed table of Unicode 15 §3.9 (no overlongs, no
 * surrogates, nothing above U+10FFFF).
 */
export function firstInvalidUtf8Offset(bytes: Uint8Array): number {
  let i = 0;
  const n = bytes.length;
  while (i < n) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    if (i + need >= n) return i;
    const second = bytes[i + 1]!;
    if (second < lo || second > hi) return i;
    for (let k = 2; k <= need; k++) {
      const c = bytes[i + k]!;
      if (c < 0x80 || c > 0xbf) return i;
    }
    i += need + 1;
  }
  return -1;
}
