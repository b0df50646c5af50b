import { describe, expect, test } from "bun:test";
import { FULL_BATCH_MAX_LENGTH, LengthBuckets } from "../../../src/quant/calibrate.ts";
import type { BatchEncoding } from "../../../src/runtime/tokenizer.ts";

/** A right-padded batch whose row r holds ids 1000·tag + 10·r + position, type ids = position parity. */
function batch(tag: number, lengths: number[]): BatchEncoding {
  const seqLen = Math.max(...lengths);
  const n = lengths.length;
  const inputIds = new BigInt64Array(n * seqLen);
  const attentionMask = new BigInt64Array(n * seqLen);
  const tokenTypeIds = new BigInt64Array(n * seqLen);
  lengths.forEach((len, r) => {
    for (let j = 0; j < len; j++) {
      inputIds[r * seqLen + j] = BigInt(1000 * tag + 10 * r + j);
      attentionMask[r * seqLen + j] = 1n;
      tokenTypeIds[r * seqLen + j] = BigInt(j % 2);
    }
  });
  return {
    batchSize: n,
    seqLen,
    inputIds,
    attentionMask,
    tokenTypeIds,
    lengths,
    truncated: lengths.map(() => false),
  };
}

function rows(b: BatchEncoding): string[] {
  const out: string[] = [];
  for (let r = 0; r < b.batchSize; r++) {
    out.push(
      [...b.inputIds.subarray(r * b.seqLen, (r + 1) * b.seqLen)].join(",") +
        "|" +
        [...b.tokenTypeIds.subarray(r * b.seqLen, (r + 1) * b.seqLen)].join(","),
    );
  }
  return out;
}

describe("LengthBuckets", () => {
  test("every batch is unpadded, rows are kept intact, none lost or duplicated", () => {
    const inputs = [batch(1, [3, 5, 5, 2]), batch(2, [5, 3]), batch(3, [4, 4, 4]), batch(4, [2, 5, 3, 3, 3])];
    const lb = new LengthBuckets(3);
    const out: BatchEncoding[] = [];
    for (const b of inputs) out.push(...lb.add(b));
    out.push(...lb.flush());
    const want: string[] = [];
    for (const b of inputs) {
      for (let r = 0; r < b.batchSize; r++) {
        const len = b.lengths[r]!;
        const ids = [...b.inputIds.subarray(r * b.seqLen, r * b.seqLen + len)].join(",");
        const types = [...b.tokenTypeIds.subarray(r * b.seqLen, r * b.seqLen + len)].join(",");
        want.push(`${ids}|${types}`);
      }
    }
    const got = out.flatMap(rows);
    expect([...got].sort()).toEqual([...want].sort());
    for (const b of out) {
      expect(b.batchSize).toBeLessThanOrEqual(3);
      expect(b.lengths.every((l) => l === b.seqLen)).toBe(true);
      expect(b.attentionMask.every((m) => m === 1n)).toBe(true);
      expect(b.inputIds.length).toBe(b.batchSize * b.seqLen);
    }
    // 14 rows: length 2 ×2, 3 ×5, 4 ×3 (an unpadded full batch), 5 ×4 → batches of 3 where possible
    expect(out.map((b) => `${b.seqLen}x${b.batchSize}`).sort()).toEqual(
      ["2x2", "3x3", "3x2", "4x3", "5x3", "5x1"].sort(),
    );
  });

  test("long rows run in smaller batches (token budget)", () => {
    const long = FULL_BATCH_MAX_LENGTH * 4;
    const lb = new LengthBuckets(8);
    const out = lb.add(batch(1, new Array(8).fill(long)));
    // budget 8 × 32 tokens: two rows of 128 per run
    expect(out.map((b) => b.batchSize)).toEqual([2, 2, 2, 2]);
    expect(lb.flush()).toEqual([]);
  });

  test("a full unpadded batch runs as it is", () => {
    const b = batch(1, [4, 4, 4, 4]);
    const lb = new LengthBuckets(4);
    const out = lb.add(b);
    expect(out.length).toBe(1);
    expect(out[0]).toBe(b);
  });
});
