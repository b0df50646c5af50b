import { describe, expect, test } from "bun:test";
import { isQuantdError } from "../../src/errors.ts";
import {
  DEFAULT_MAX_TEXT_BYTES,
  decodeUtf8Strict,
  firstInvalidUtf8Offset,
  validateText,
} from "../../src/runtime/text.ts";
import { codeOf } from "../helpers/error-code.ts";

describe("validateText", () => {
  test("returns good text unchanged, including non-ASCII and emoji", () => {
    for (const t of ["a fine film .", "maelström", "  padded  ", "😀 ok", "日本語"])
      expect(validateText(t)).toBe(t);
  });

  test("rejects non-strings", () => {
    for (const v of [undefined, null, 42, {}, ["a"], Buffer.from("a")]) {
      expect(codeOf(() => validateText(v))).toBe("TEXT_NOT_STRING");
    }
  });

  test("rejects empty and whitespace-only text", () => {
    for (const v of ["", " ", "\t\n ", "\u00a0\u3000"])
      expect(codeOf(() => validateText(v))).toBe("TEXT_EMPTY");
  });

  test("rejects lone surrogates but not pairs", () => {
    expect(codeOf(() => validateText("bad \ud800 text"))).toBe("TEXT_INVALID_UTF8");
    expect(codeOf(() => validateText("bad \udc00"))).toBe("TEXT_INVALID_UTF8");
    expect(codeOf(() => validateText("\udc00\ud800"))).toBe("TEXT_INVALID_UTF8");
    expect(validateText("ok \ud83d\ude00")).toBe("ok 😀");
  });

  test("a 1 MB text fails with TEXT_TOO_LARGE naming the input and the limit", () => {
    const big = "a".repeat(1024 * 1024);
    let err: unknown;
    try {
      validateText(big, { what: "request.text" });
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, "TEXT_TOO_LARGE")).toBe(true);
    expect((err as Error).message).toContain("request.text");
    expect((err as Error).message).toContain(String(DEFAULT_MAX_TEXT_BYTES));
  });

  test("the limit counts UTF-8 bytes, not characters", () => {
    expect(validateText("é".repeat(50), { maxBytes: 100 })).toHaveLength(50);
    expect(codeOf(() => validateText("é".repeat(51), { maxBytes: 100 }))).toBe("TEXT_TOO_LARGE");
    expect(validateText("a".repeat(100), { maxBytes: 100 })).toHaveLength(100);
    expect(codeOf(() => validateText("a".repeat(101), { maxBytes: 100 }))).toBe("TEXT_TOO_LARGE");
    expect(codeOf(() => validateText("😀".repeat(26), { maxBytes: 100 }))).toBe("TEXT_TOO_LARGE");
    expect(validateText("a".repeat(DEFAULT_MAX_TEXT_BYTES))).toHaveLength(DEFAULT_MAX_TEXT_BYTES);
  });
});

describe("decodeUtf8Strict", () => {
  test("decodes valid UTF-8 and drops a BOM", () => {
    expect(decodeUtf8Strict(new TextEncoder().encode("maelström 😀"), "x")).toBe("maelström 😀");
    expect(decodeUtf8Strict(new Uint8Array([0xef, 0xbb, 0xbf, 0x61]), "x")).toBe("a");
  });

  test("invalid sequences fail with their offset", () => {
    const cases: [number[], number][] = [
      [[0x61, 0xff], 1], // never valid
      [[0x61, 0x62, 0xc3], 2], // truncated sequence
      [[0xc0, 0xaf], 0], // overlong
      [[0xe0, 0x80, 0xaf], 0], // overlong 3-byte
      [[0x61, 0xed, 0xa0, 0x80], 1], // UTF-16 surrogate encoded
      [[0xf4, 0x90, 0x80, 0x80], 0], // above U+10FFFF
      [[0x61, 0x80], 1], // lone continuation
    ];
    for (const [bytes, offset] of cases) {
      const u8 = new Uint8Array(bytes);
      expect(firstInvalidUtf8Offset(u8)).toBe(offset);
      let err: unknown;
      try {
        decodeUtf8Strict(u8, "samples.tsv");
      } catch (e) {
        err = e;
      }
      expect(isQuantdError(err, "TEXT_INVALID_UTF8")).toBe(true);
      expect((err as Error).message).toContain("samples.tsv");
      expect((err as { details: { offset: number } }).details.offset).toBe(offset);
    }
    expect(firstInvalidUtf8Offset(new TextEncoder().encode("ok é 😀 日本"))).toBe(-1);
  });
});
