/**
 * The bias correction's measurement fetches a large model's MatMul outputs in
 * groups, so a run never returns more than a bounded number of bytes.
 */
import { expect, test } from "bun:test";
import { fetchGroups, MAX_FETCH_BYTES } from "../../src/quant/bias-correction.ts";

test("outputs are fetched in order, in groups within the byte budget; one larger than it goes alone", () => {
  const rows = 8 * 128;
  // BERT-base: per layer q, k, v, dense (768), FFN (3072), FFN output (768); 12 layers.
  const names = new Map<string, number>();
  for (let l = 0; l < 12; l++) {
    for (const [m, c] of [
      ["q", 768],
      ["k", 768],
      ["v", 768],
      ["o", 768],
      ["ffn", 3072],
      ["out", 768],
    ] as const)
      names.set(`${l}.${m}`, c);
  }
  const huge = MAX_FETCH_BYTES / (rows * 4) + 1;
  names.set("huge", huge);
  names.set("classifier", 2);
  const groups = fetchGroups(names, rows);
  expect(groups.flat()).toEqual([...names.keys()]);
  expect(groups.length).toBeGreaterThan(1);
  for (const g of groups) {
    const bytes = g.reduce((a, n) => a + names.get(n)! * rows * 4, 0);
    if (g.length > 1) expect(bytes).toBeLessThanOrEqual(MAX_FETCH_BYTES);
  }
  expect(groups.find((g) => g.includes("huge"))).toEqual(["huge"]);
  // A small model's outputs come back in one run.
  expect(
    fetchGroups(
      new Map([
        ["a", 256],
        ["b", 1024],
      ]),
      8 * 64,
    ),
  ).toEqual([["a", "b"]]);
});
