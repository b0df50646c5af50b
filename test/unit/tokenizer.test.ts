import { beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import {
  loadTokenizer,
  longestFirstLengths,
  planBatches,
  type Tokenizer,
} from "../../src/runtime/tokenizer.ts";
import { codeOf, codeOfAsync } from "../helpers/error-code.ts";
import { hasShared, sharedDir, sharedSkipReason, shippedModelDir } from "../helpers/paths.ts";

// Ids from ../shared/data/sst2/golden.dev.jsonl (Python transformers 5.17), embedded so that this
// test runs without the shared material: accents stripped, subwords, punctuation, the longest dev row.
const KNOWN: { text: string; ids: number[] }[] = [
  { text: "one long string of cliches .", ids: [2, 254, 603, 3746, 110, 1099, 16, 3] },
  { text: "cool ?", ids: [2, 1746, 31, 3] },
  {
    text: "without non-stop techno or the existential overtones of a kieslowski morality tale , maelström is just another winter sleepers .",
    ids: [
      2, 671, 1683, 15, 3414, 1750, 66, 265, 100, 4307, 5408, 1753, 110, 33, 9921, 5680, 839, 14, 10514, 131,
      373, 766, 15965, 8367, 72, 16, 3,
    ],
  },
  {
    text: "displaying about equal amounts of naiveté , passion and talent , beneath clouds establishes sen as a filmmaker of considerable potential .",
    ids: [
      2, 4623, 104, 276, 4843, 3803, 110, 7536, 14, 1453, 109, 1618, 14, 3363, 13299, 9276, 190, 64, 154, 33,
      1573, 110, 2193, 3552, 16, 3,
    ],
  },
  {
    text: "the tale of tok -lrb- andy lau -rrb- , a sleek sociopath on the trail of o -lrb- takashi sorimachi -rrb- , the most legendary of asian hitmen , is too scattershot to take hold .",
    ids: [
      2, 100, 839, 110, 119, 77, 15, 44, 60, 82, 15, 109, 70, 6210, 15, 50, 60, 82, 15, 14, 33, 8050, 7101,
      10692, 153, 100, 12406, 110, 47, 15, 44, 60, 82, 15, 501, 478, 61, 2087, 151, 461, 61, 15, 50, 60, 82,
      15, 14, 100, 303, 7524, 110, 6864, 1976, 2833, 14, 131, 338, 213, 7427, 14224, 68, 119, 934, 2178, 16,
      3,
    ],
  },
];
const LONG = KNOWN[4]!;
const CLS = 2;
const SEP = 3;

let tok: Tokenizer;
beforeAll(async () => {
  tok = await loadTokenizer(shippedModelDir);
});

describe("loadTokenizer on the shipped BERT-Mini", () => {
  test("reads limits and special ids", () => {
    expect(tok.maxLength).toBe(512);
    expect(tok.specialIds).toEqual({ cls: CLS, sep: SEP, pad: 0 });
    expect(tok.specialsSingle).toBe(2);
    expect(tok.specialsPair).toBe(3);
  });

  test("reproduces Python ids for known sentences", () => {
    for (const k of KNOWN) {
      const e = tok.encode(k.text);
      expect(e.inputIds).toEqual(k.ids);
      expect(e.tokenTypeIds).toEqual(k.ids.map(() => 0));
      expect(e.truncated).toBe(false);
    }
  });

  test("pairs match the library's own template processing", () => {
    const tj = JSON.parse(readFileSync(join(shippedModelDir, "tokenizer.json"), "utf8"));
    const tc = JSON.parse(readFileSync(join(shippedModelDir, "tokenizer_config.json"), "utf8"));
    const hf = new HfTokenizer(tj, tc);
    for (const [a, b] of [
      [KNOWN[0]!.text, KNOWN[1]!.text],
      [KNOWN[2]!.text, KNOWN[3]!.text],
      ["is it good ?", "yes , it is very good ."],
    ] as const) {
      const ours = tok.encode(a, b);
      const ref = hf.encode(a, { text_pair: b, return_token_type_ids: true });
      expect(ours.inputIds).toEqual(ref.ids);
      expect(ours.tokenTypeIds).toEqual(ref.token_type_ids);
      // segment B and its [SEP] are type 1, everything before is type 0
      const firstSep = ours.inputIds.indexOf(SEP);
      expect(ours.tokenTypeIds.slice(0, firstSep + 1).every((t) => t === 0)).toBe(true);
      expect(ours.tokenTypeIds.slice(firstSep + 1).every((t) => t === 1)).toBe(true);
    }
  });

  test("the length limit is the smallest of tokenizer, model config and option", async () => {
    const dir = mkdtempSync(join(tmpdir(), "quantd-tok-"));
    try {
      copyFileSync(join(shippedModelDir, "tokenizer.json"), join(dir, "tokenizer.json"));
      copyFileSync(join(shippedModelDir, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
      expect((await loadTokenizer(dir)).maxLength).toBe(512);
      writeFileSync(join(dir, "config.json"), JSON.stringify({ max_position_embeddings: 128 }));
      expect((await loadTokenizer(dir)).maxLength).toBe(128);
      expect((await loadTokenizer(dir, { maxLength: 64 })).maxLength).toBe(64);
      expect((await loadTokenizer(dir, { maxLength: 1000 })).maxLength).toBe(128);
      writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ model_max_length: 1e30 }));
      rmSync(join(dir, "config.json"));
      // transformers' "no limit" sentinel does not count; nothing else sets one, so BERT's 512 applies
      expect((await loadTokenizer(dir)).maxLength).toBe(512);
      expect(await codeOfAsync(() => loadTokenizer(dir, { maxLength: 0 }))).toBe("USAGE");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("BertProcessing, and absent post-processors with or without specials in tokenizer_config.json", async () => {
    const dir = mkdtempSync(join(tmpdir(), "quantd-tok-"));
    try {
      const tj = JSON.parse(readFileSync(join(shippedModelDir, "tokenizer.json"), "utf8"));
      copyFileSync(join(shippedModelDir, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
      tj.post_processor = { type: "BertProcessing", sep: ["[SEP]", SEP], cls: ["[CLS]", CLS] };
      writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tj));
      const bert = await loadTokenizer(dir);
      expect(bert.encode("good", "bad")).toEqual(tok.encode("good", "bad"));
      expect(bert.encode(LONG.text, undefined, { maxLength: 8 })).toEqual(
        tok.encode(LONG.text, undefined, { maxLength: 8 }),
      );
      tj.post_processor = null;
      writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tj));
      // Without a post-processor the specials come from tokenizer_config.json (BertTokenizer's layout) …
      const fromConfig = await loadTokenizer(dir);
      expect(fromConfig.encode("good", "bad")).toEqual(tok.encode("good", "bad"));
      // … and with none declared there, there are none (Rust tokenizers adds nothing).
      writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ model_max_length: 512 }));
      const bare = await loadTokenizer(dir);
      expect(bare.specialsSingle).toBe(0);
      expect(bare.encode(KNOWN[0]!.text).inputIds).toEqual(KNOWN[0]!.ids.slice(1, -1));
      expect(bare.encode("good", "bad").tokenTypeIds).toEqual([0, 1]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("missing or broken files give stable codes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "quantd-tok-"));
    try {
      expect(await codeOfAsync(() => loadTokenizer(dir))).toBe("TOKENIZER_NOT_FOUND");
      expect(await codeOfAsync(() => loadTokenizer(join(dir, "absent")))).toBe("TOKENIZER_NOT_FOUND");
      writeFileSync(join(dir, "tokenizer.json"), "{ not json");
      expect(await codeOfAsync(() => loadTokenizer(dir))).toBe("TOKENIZER_INVALID");
      writeFileSync(join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0" }));
      expect(await codeOfAsync(() => loadTokenizer(dir))).toBe("TOKENIZER_INVALID");
      const tj = JSON.parse(readFileSync(join(shippedModelDir, "tokenizer.json"), "utf8"));
      tj.post_processor = { type: "SomethingNew" };
      writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tj));
      expect(await codeOfAsync(() => loadTokenizer(dir))).toBe("TOKENIZER_INVALID");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("truncation", () => {
  test.each([8, 16])("single text to %d keeps [CLS] … [SEP] and a prefix of the text", (maxLength) => {
    const e = tok.encode(LONG.text, undefined, { maxLength });
    expect(e.inputIds.length).toBe(maxLength);
    expect(e.truncated).toBe(true);
    expect(e.inputIds[0]).toBe(CLS);
    expect(e.inputIds[maxLength - 1]).toBe(SEP);
    expect(e.inputIds.slice(1, -1)).toEqual(LONG.ids.slice(1, maxLength - 1));
    expect(e.tokenTypeIds).toEqual(new Array(maxLength).fill(0));
  });

  test("short texts and exact fits are not truncated", () => {
    const short = KNOWN[0]!;
    const exact = tok.encode(short.text, undefined, { maxLength: short.ids.length });
    expect(exact.inputIds).toEqual(short.ids);
    expect(exact.truncated).toBe(false);
    const cut = tok.encode(short.text, undefined, { maxLength: short.ids.length - 1 });
    expect(cut.inputIds.length).toBe(short.ids.length - 1);
    expect(cut.truncated).toBe(true);
  });

  test("truncation: false keeps everything", () => {
    const e = tok.encode(LONG.text, undefined, { maxLength: 8, truncation: false });
    expect(e.inputIds).toEqual(LONG.ids);
    expect(e.truncated).toBe(false);
  });

  test("the default limit is the tokenizer's maxLength", () => {
    const text = "good ".repeat(600);
    const e = tok.encode(text);
    expect(e.inputIds.length).toBe(512);
    expect(e.truncated).toBe(true);
    expect(tok.encode(text, "bad").inputIds.length).toBe(512);
  });

  test("longestFirstLengths follows Rust tokenizers' LongestFirst", () => {
    // fits: untouched
    expect(longestFirstLengths(5, 3, 8)).toEqual([5, 3]);
    // the shorter fits in half the budget: only the longer is cut
    expect(longestFirstLengths(64, 3, 13)).toEqual([10, 3]);
    expect(longestFirstLengths(3, 64, 13)).toEqual([3, 10]);
    // both cut: the shorter keeps floor(budget/2), the longer the rest
    expect(longestFirstLengths(64, 10, 13)).toEqual([7, 6]);
    expect(longestFirstLengths(10, 64, 13)).toEqual([6, 7]);
    // equal lengths: the second segment keeps the odd token
    expect(longestFirstLengths(10, 10, 13)).toEqual([6, 7]);
    expect(longestFirstLengths(10, 10, 14)).toEqual([7, 7]);
    // the longer is cut down to the shorter before both shrink
    expect(longestFirstLengths(7, 9, 14)).toEqual([7, 7]);
    expect(longestFirstLengths(9, 6, 14)).toEqual([8, 6]);
    // the cases of Rust tokenizers' own truncation test (utils/truncation.rs, max_length 7)
    const rust: [number, number, number, number][] = [
      [0, 8, 0, 7],
      [2, 8, 2, 5],
      [4, 4, 3, 4],
      [4, 8, 3, 4],
      [8, 0, 7, 0],
      [8, 2, 5, 2],
      [8, 4, 4, 3],
      [8, 8, 3, 4],
      [2, 4, 2, 4],
    ];
    for (const [n1, n2, k1, k2] of rust)
      expect([n1, n2, longestFirstLengths(n1, n2, 7)]).toEqual([n1, n2, [k1, k2]]);
    for (let n1 = 0; n1 < 30; n1++) {
      for (let n2 = 0; n2 < 30; n2++) {
        for (const budget of [2, 5, 13, 16]) {
          const [k1, k2] = longestFirstLengths(n1, n2, budget);
          expect(k1 <= n1 && k2 <= n2).toBe(true);
          expect(k1 + k2).toBe(Math.min(n1 + n2, budget));
        }
      }
    }
  });

  test.each([8, 16])("pair to %d: exact length, specials kept, longest first", (maxLength) => {
    const a = LONG.text;
    const b = KNOWN[0]!.text; // 6 tokens
    const aIds = LONG.ids.slice(1, -1);
    const bIds = KNOWN[0]!.ids.slice(1, -1);
    const e = tok.encode(a, b, { maxLength });
    expect(e.inputIds.length).toBe(maxLength);
    expect(e.truncated).toBe(true);
    const [k1, k2] = longestFirstLengths(aIds.length, bIds.length, maxLength - 3);
    expect(e.inputIds).toEqual([CLS, ...aIds.slice(0, k1), SEP, ...bIds.slice(0, k2), SEP]);
    expect(e.tokenTypeIds).toEqual([...new Array(k1 + 2).fill(0), ...new Array(k2 + 1).fill(1)]);
    if (maxLength === 16) expect([k1, k2]).toEqual([7, 6]); // B (6) fits in half of 13: kept whole
    if (maxLength === 8) expect([k1, k2]).toEqual([3, 2]); // both cut, the longer A keeps the extra token
    // swapping the pair swaps the roles
    const s = tok.encode(b, a, { maxLength });
    expect(s.inputIds).toEqual([CLS, ...bIds.slice(0, k2), SEP, ...aIds.slice(0, k1), SEP]);
  });

  test("non-string input is refused", () => {
    expect(codeOf(() => tok.encode(undefined as unknown as string))).toBe("TEXT_NOT_STRING");
    expect(codeOf(() => tok.encode("a", 5 as unknown as string))).toBe("TEXT_NOT_STRING");
  });

  test("maxLength too small for the special tokens is a usage error", () => {
    expect(codeOf(() => tok.encode("good", undefined, { maxLength: 2 }))).toBe("USAGE");
    expect(codeOf(() => tok.encode("good", "bad", { maxLength: 4 }))).toBe("USAGE");
    expect(tok.encode("good movie", undefined, { maxLength: 3 }).inputIds.length).toBe(3);
    expect(tok.encode("good movie", "bad", { maxLength: 5 }).inputIds.length).toBe(5);
  });
});

describe("batches and padding", () => {
  test("planBatches: unpadded groups equal lengths, sorted and input order cut full batches", () => {
    const lengths = [5, 3, 5, 9, 3, 5, 5];
    expect(planBatches(lengths, 2, "input-order")).toEqual([[0, 1], [2, 3], [4, 5], [6]]);
    expect(planBatches(lengths, 2, "sorted")).toEqual([[1, 4], [0, 2], [5, 6], [3]]);
    expect(planBatches(lengths, 2, "unpadded")).toEqual([[1, 4], [0, 2], [5, 6], [3]]);
    expect(planBatches(lengths, 3, "sorted")).toEqual([[1, 4, 0], [2, 5, 6], [3]]);
    expect(planBatches(lengths, 3, "unpadded")).toEqual([[1, 4], [0, 2, 5], [6], [3]]);
    for (const mode of ["input-order", "sorted", "unpadded"] as const) {
      expect(planBatches([], 4, mode)).toEqual([]);
      expect(
        planBatches(lengths, 100, mode)
          .flat()
          .sort((a, b) => a - b),
      ).toEqual([0, 1, 2, 3, 4, 5, 6]);
    }
    expect(codeOf(() => planBatches(lengths, 0, "sorted"))).toBe("USAGE");
    expect(codeOf(() => planBatches(lengths, 2, "random" as "sorted"))).toBe("USAGE");
  });

  test("pads to the longest row by default, right side, mask 0 and type 0 on padding", () => {
    const texts = KNOWN.map((k) => k.text);
    const b = tok.encodeBatch(texts);
    const longest = Math.max(...KNOWN.map((k) => k.ids.length));
    expect(b.batchSize).toBe(texts.length);
    expect(b.seqLen).toBe(longest);
    expect(b.inputIds.length).toBe(texts.length * longest);
    expect(b.lengths).toEqual(KNOWN.map((k) => k.ids.length));
    expect(b.truncated).toEqual(KNOWN.map(() => false));
    for (let r = 0; r < texts.length; r++) {
      const ids = KNOWN[r]!.ids;
      const row = [...b.inputIds.slice(r * longest, (r + 1) * longest)].map(Number);
      const mask = [...b.attentionMask.slice(r * longest, (r + 1) * longest)].map(Number);
      const types = [...b.tokenTypeIds.slice(r * longest, (r + 1) * longest)].map(Number);
      expect(row).toEqual([...ids, ...new Array(longest - ids.length).fill(0)]);
      expect(mask).toEqual([...ids.map(() => 1), ...new Array(longest - ids.length).fill(0)]);
      expect(types).toEqual(new Array(longest).fill(0));
    }
  });

  test("max_length padding, truncation counted per row, and pairs in a batch", () => {
    const b = tok.encodeBatch([KNOWN[1]!.text, LONG.text, ["good", "bad"]], {
      maxLength: 16,
      padding: "max_length",
    });
    expect(b.seqLen).toBe(16);
    expect(b.lengths).toEqual([4, 16, 5]);
    expect(b.truncated).toEqual([false, true, false]);
    const row2 = [...b.tokenTypeIds.slice(32, 48)].map(Number);
    expect(row2).toEqual([0, 0, 0, 1, 1, ...new Array(11).fill(0)]);
  });

  test("padding none needs equal lengths", () => {
    const b = tok.encodeBatch([KNOWN[1]!.text, "bad ."], { padding: "none" });
    expect(b.seqLen).toBe(4);
    expect(codeOf(() => tok.encodeBatch([KNOWN[0]!.text, "bad ."], { padding: "none" }))).toBe("USAGE");
    expect(codeOf(() => tok.encodeBatch([]))).toBe("USAGE");
  });
});

const goldenPath = resolve(sharedDir, "data/sst2/golden.dev.jsonl");
describe("golden dev set", () => {
  test.skipIf(!hasShared)(
    hasShared ? "reproduces every input_ids and token_type_ids of Python" : sharedSkipReason,
    () => {
      const rows = readFileSync(goldenPath, "utf8")
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as { text: string; input_ids: number[]; token_type_ids: number[] });
      expect(rows.length).toBe(872);
      let mismatches = 0;
      const firstBad: string[] = [];
      for (const [i, g] of rows.entries()) {
        const e = tok.encode(g.text);
        const ok =
          e.inputIds.length === g.input_ids.length &&
          e.inputIds.every((v, j) => v === g.input_ids[j]) &&
          e.tokenTypeIds.every((v, j) => v === g.token_type_ids[j]);
        if (!ok) {
          mismatches++;
          if (firstBad.length < 3) firstBad.push(`row ${i}: ${JSON.stringify(g.text)}`);
        }
      }
      expect(firstBad).toEqual([]);
      expect(mismatches).toBe(0);
      // the batch path gives the same ids as the single path
      const batch = tok.encodeBatch(rows.slice(0, 32).map((g) => g.text));
      for (let r = 0; r < 32; r++) {
        const ids = rows[r]!.input_ids;
        const row = [...batch.inputIds.slice(r * batch.seqLen, r * batch.seqLen + ids.length)].map(Number);
        expect(row).toEqual(ids);
      }
    },
  );
});
