import { describe, expect, test } from "bun:test";
import { normalizeSampleText, sampleContentHash } from "../../src/store/samples.ts";

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

describe("sample duplicate key", () => {
  test("whitespace runs, ends and Unicode composition do not make a new sample", () => {
    expect(normalizeSampleText("  a \t fine\n\nfilm ")).toBe("a fine film");
    // "é" precomposed vs "e" + combining acute.
    expect(hex(sampleContentHash("caf\u00e9"))).toBe(hex(sampleContentHash("cafe\u0301")));
    expect(hex(sampleContentHash("a  b"))).toBe(hex(sampleContentHash("a b")));
  });

  test("case and punctuation do: the model may read them differently", () => {
    expect(hex(sampleContentHash("Good"))).not.toBe(hex(sampleContentHash("good")));
    expect(hex(sampleContentHash("good."))).not.toBe(hex(sampleContentHash("good")));
  });

  test("is the SHA-256 of the normalized text", () => {
    // sha256("a fine film"), computed independently with `printf 'a fine film' | sha256sum`.
    expect(hex(sampleContentHash(" a fine  film"))).toBe(
      "bac6d0ff1e0a93ed1890d00d18479b7ca26fefcab488c7cfef4e56b233b94595",
    );
  });
});
