/**
 * The leaf helpers in `src/core/`: both percentile definitions against values
 * computed by hand and with numpy, this process's memory figures, and durable
 * writes with the errno mapping every writer shares.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  copyFileDurableSync,
  writeFailure,
  writeFileDurable,
  writeFileDurableSync,
} from "../../src/core/files.ts";
import { sha256File, sha256FileSync } from "../../src/core/hash.ts";
import { QuantdError } from "../../src/errors.ts";
import { peakRssBytes, readProcessMemory } from "../../src/core/process-memory.ts";
import { median, nearestRankPercentile, percentile, percentileOfSorted } from "../../src/core/stats.ts";
import { expectClose } from "../helpers/expect-close.ts";

describe("percentiles", () => {
  test("linear interpolation matches numpy.percentile(method='linear') on unsorted input, which it leaves alone", () => {
    const xs = [50, 15, 40, 20, 35];
    expectClose(
      [0, 25, 50, 90, 99, 100].map((p) => percentile(xs, p)),
      [15, 20, 35, 46, 49.6, 50],
      { atol: 1e-12 },
    );
    expect(xs).toEqual([50, 15, 40, 20, 35]);
    expect(percentileOfSorted([1, 2, 3, 4], 50)).toBe(2.5);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([9, 1, 5])).toBe(5);
  });

  test("nearest rank is always an observed value: the smallest with p % at or below it", () => {
    const xs = Array.from({ length: 20 }, (_, i) => 20 - i); // 20 … 1
    expect(nearestRankPercentile(xs, 95)).toBe(19);
    expect(nearestRankPercentile(xs, 100)).toBe(20);
    expect(nearestRankPercentile([7, 3], 50)).toBe(3);
    expect(nearestRankPercentile([1, 2, 3, 4], 90)).toBe(4);
    expect(percentile([1, 2, 3, 4], 90)).toBeCloseTo(3.7, 12);
  });

  test("no values is NaN under both definitions", () => {
    expect(percentile([], 50)).toBeNaN();
    expect(median([])).toBeNaN();
    expect(percentileOfSorted([], 50)).toBeNaN();
    expect(nearestRankPercentile([], 95)).toBeNaN();
  });
});

describe("process memory", () => {
  test("the peak is at least the current resident set, and grows with a large allocation", () => {
    const before = readProcessMemory();
    expect(before.peakRssBytes).toBeGreaterThanOrEqual(before.rssBytes * 0.9);
    expect(peakRssBytes()).toBeGreaterThanOrEqual(before.peakRssBytes);
    const big = new Uint8Array(before.peakRssBytes - before.rssBytes + 64 * 1024 * 1024).fill(1);
    expect(peakRssBytes()).toBeGreaterThan(before.peakRssBytes + 32 * 1024 * 1024);
    expect(big[big.length - 1]).toBe(1);
  });
});

describe("durable writes", () => {
  const dir = mkdtempSync(join(tmpdir(), "quantd-core-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("a full disk and an exhausted quota are DISK_FULL, anything else FILE_WRITE_FAILED, a QuantdError is kept", () => {
    const errno = (code: string) => Object.assign(new Error(code), { code });
    expect(writeFailure(errno("ENOSPC"), "cannot write x").code).toBe("DISK_FULL");
    expect(writeFailure(errno("EDQUOT"), "cannot write x").code).toBe("DISK_FULL");
    expect(writeFailure(errno("EACCES"), "cannot write x").code).toBe("FILE_WRITE_FAILED");
    expect(writeFailure(new Error("no errno"), "cannot write x").code).toBe("FILE_WRITE_FAILED");
    const own = new QuantdError("MODEL_TOO_LARGE", "too large");
    expect(writeFailure(own, "cannot write x")).toBe(own);
    const mapped = writeFailure(errno("ENOSPC"), "cannot write /x", { path: "/x" });
    expect(mapped.message).toBe("cannot write /x");
    expect(mapped.details).toEqual({ path: "/x" });
    expect(mapped.cause).toBeInstanceOf(Error);
  });

  test("replaces the file whole, with the mode asked for, and leaves no temporary file", async () => {
    const path = join(dir, "state.json");
    writeFileSync(path, "old");
    await writeFileDurable(path, "new text");
    expect(readFileSync(path, "utf8")).toBe("new text");
    await writeFileDurable(path, async (fh) => {
      await fh.write("written ");
      await fh.write("through the handle");
    });
    expect(readFileSync(path, "utf8")).toBe("written through the handle");
    writeFileDurableSync(path, new Uint8Array([1, 2, 3]), 0o640);
    expect([...readFileSync(path)]).toEqual([1, 2, 3]);
    writeFileDurableSync(join(dir, "fresh"), "x", 0o600);
    expect(statSync(join(dir, "fresh")).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(["fresh", "state.json"]);
  });

  test("a failed write leaves the old file and no temporary file", async () => {
    const path = join(dir, "keep.json");
    writeFileSync(path, "old");
    const failing = writeFileDurable(path, async () => {
      throw Object.assign(new Error("no space"), { code: "ENOSPC" });
    });
    await expect(failing).rejects.toMatchObject({ code: "DISK_FULL" });
    expect(readFileSync(path, "utf8")).toBe("old");
    expect(readdirSync(dir).filter((n) => n.includes("keep"))).toEqual(["keep.json"]);
    const underFile = join(path, "child");
    await expect(writeFileDurable(underFile, "x")).rejects.toMatchObject({ code: "FILE_WRITE_FAILED" });
    expect(() => writeFileDurableSync(underFile, "x")).toThrow(
      expect.objectContaining({ code: "FILE_WRITE_FAILED" }),
    );
  });
});

describe("durable copies", () => {
  const dir = mkdtempSync(join(tmpdir(), "quantd-copy-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("replace the destination whole; a missing source leaves it and no temporary file", () => {
    const src = join(dir, "tokenizer.json");
    const dest = join(dir, "out.json");
    writeFileSync(src, '{"new": true}');
    writeFileSync(dest, "old");
    copyFileDurableSync(src, dest);
    expect(readFileSync(dest, "utf8")).toBe('{"new": true}');
    const err = (() => {
      try {
        copyFileDurableSync(join(dir, "missing"), dest);
      } catch (e) {
        return e as QuantdError;
      }
    })();
    expect(err?.code).toBe("FILE_WRITE_FAILED");
    expect(err?.message).toContain("cannot copy");
    expect(readFileSync(dest, "utf8")).toBe('{"new": true}');
    expect(readdirSync(dir).sort()).toEqual(["out.json", "tokenizer.json"]);
  });

  test("a read-only source (a model directory installed read-only) gives a copy its owner can write", () => {
    // Run as a service user, not root: fsync through a write handle on a 0444 copy failed with EACCES,
    // so `quantize --out DIR` from a read-only model directory failed after all its work.
    const src = join(dir, "readonly-config.json");
    const dest = join(dir, "copied-config.json");
    writeFileSync(src, "{}");
    chmodSync(src, 0o444);
    copyFileDurableSync(src, dest);
    expect(statSync(dest).mode & 0o777).toBe(0o644);
    rmSync(src);
    rmSync(dest);
  });
});

describe("file hashes", () => {
  const dir = mkdtempSync(join(tmpdir(), "quantd-hash-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("match the published SHA-256 test vectors, across read-chunk boundaries", async () => {
    const abc = join(dir, "abc");
    writeFileSync(abc, "abc");
    const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    expect(await sha256File(abc)).toBe(want);
    expect(sha256FileSync(abc)).toBe(want);
    // FIPS 180-2's one million 'a's, and a file of three 1 MiB read chunks and a bit.
    const million = join(dir, "million");
    writeFileSync(million, "a".repeat(1_000_000));
    const wantMillion = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    expect(await sha256File(million)).toBe(wantMillion);
    expect(sha256FileSync(million)).toBe(wantMillion);
    const big = join(dir, "big");
    const bytes = Uint8Array.from({ length: 3 * 1024 * 1024 + 17 }, (_, i) => (i * 31) & 0xff);
    writeFileSync(big, bytes);
    const wantBig = createHash("sha256").update(bytes).digest("hex");
    expect(await sha256File(big)).toBe(wantBig);
    expect(sha256FileSync(big)).toBe(wantBig);
    const empty = join(dir, "empty");
    writeFileSync(empty, "");
    expect(sha256FileSync(empty)).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });

  test("a missing file is the file system's ENOENT", async () => {
    await expect(sha256File(join(dir, "missing"))).rejects.toMatchObject({ code: "ENOENT" });
    expect(() => sha256FileSync(join(dir, "missing"))).toThrow(expect.objectContaining({ code: "ENOENT" }));
  });
});
