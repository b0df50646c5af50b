/**
 * quantd's tokenizer on every family of tokenizer.json BERT-like encoders ship
 * (WordPiece; byte-level BPE with RobertaProcessing or a ByteLevel + template
 * Sequence; SentencePiece Unigram and BPE behind Metaspace; no post-processor),
 * each made by code in `test/fixtures/encoders/tokenizers.ts`.
 *
 * Where the goldens come from:
 * - ids and segment ids of single texts and pairs, untruncated: the
 *   `@huggingface/tokenizers` JS library's own `encode(text, { text_pair })`,
 *   which runs the post-processor itself. It is tested against Python
 *   `tokenizers` for these model types (WordPiece, byte-level BPE, Unigram and
 *   BPE with Metaspace; BertProcessing, RobertaProcessing, TemplateProcessing),
 *   and Python `tokenizers` cannot be installed here (no PyPI).
 * - truncation, padding, position ids, length limits and the no-post-processor
 *   layout: hand-verified below, from the rules of Rust `tokenizers`
 *   (`LongestFirst`, right padding with the pad token) and of transformers'
 *   tokenizer classes (`build_inputs_with_special_tokens`,
 *   `create_position_ids_from_input_ids`), which the JS library does not apply.
 * - a few token strings per family: hand-verified from how the fixture
 *   vocabularies are built (frequent SST-2 words are single pieces).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { positionIdsOf } from "../../src/runtime/classifier.ts";
import { loadTokenizer, type Tokenizer } from "../../src/runtime/tokenizer.ts";
import {
  buildTokenizer,
  corpusSentences,
  TOKENIZER_STYLES,
  type TokenizerFiles,
  type TokenizerStyleName,
} from "../fixtures/encoders/tokenizers.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-tok-families-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const corpus = corpusSentences();
const STYLES = Object.keys(TOKENIZER_STYLES) as TokenizerStyleName[];
const built = new Map<TokenizerStyleName, { files: TokenizerFiles; tok: Tokenizer; hf: HfTokenizer }>();

async function load(name: TokenizerStyleName, config?: Record<string, unknown>): Promise<Tokenizer> {
  const files = buildTokenizer(name, corpus);
  const d = join(dir, `${name}${config === undefined ? "" : "-config"}`);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "tokenizer.json"), JSON.stringify(files.tokenizer));
  writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify(files.tokenizerConfig));
  if (config !== undefined) writeFileSync(join(d, "config.json"), JSON.stringify(config));
  return loadTokenizer(d);
}

beforeAll(async () => {
  for (const name of STYLES) {
    const files = buildTokenizer(name, corpus);
    built.set(name, {
      files,
      tok: await load(name),
      hf: new HfTokenizer(files.tokenizer, files.tokenizerConfig),
    });
  }
});

const get = (name: TokenizerStyleName) => built.get(name)!;
const tokens = (t: Tokenizer, ids: number[]) => ids.map((id) => t.idToToken(id));

const TEXTS = [
  "a gorgeous , witty , seductive movie .",
  "the plot is nothing but boilerplate clichés from start to finish ,",
  "Unflinchingly bleak and desperate",
  "it 's slow -- very , very slow .",
  "émigré naïveté 😀",
];
const PAIRS: [string, string][] = [
  ["is it good ?", "yes , it is very good ."],
  [TEXTS[1]!, TEXTS[0]!],
  ["A", "B"],
];

describe.each(STYLES)("%s", (name) => {
  const postProcessed = TOKENIZER_STYLES[name].postProcessor !== "none";

  test.skipIf(!postProcessed)("single texts and pairs match the JS library's own post-processing", () => {
    const { tok, hf } = get(name);
    for (const text of TEXTS) {
      const ref = hf.encode(text, { return_token_type_ids: true });
      const ours = tok.encode(text);
      expect(ours.inputIds).toEqual(ref.ids);
      expect(ours.tokenTypeIds).toEqual(ref.token_type_ids ?? ref.ids.map(() => 0));
    }
    for (const [a, b] of PAIRS) {
      const ref = hf.encode(a, { text_pair: b, return_token_type_ids: true });
      const ours = tok.encode(a, b);
      expect(ours.inputIds).toEqual(ref.ids);
      expect(ours.tokenTypeIds).toEqual(ref.token_type_ids!);
    }
  });

  test("special tokens, pad id and layout are the family's (hand-verified)", () => {
    const { tok, files } = get(name);
    const style = TOKENIZER_STYLES[name];
    const a = tok.encode("good");
    const p = tok.encode("good", "bad");
    const good = tok.tokenIds("good");
    const bad = tok.tokenIds("bad");
    expect(a.inputIds).toEqual([files.clsId, ...good, files.sepId]);
    expect(tok.specialIds.pad).toBe(files.padId);
    if (style.doubleSep) {
      expect(p.inputIds).toEqual([files.clsId, ...good, files.sepId, files.sepId, ...bad, files.sepId]);
      expect(tok.specialsPair).toBe(4);
    } else {
      expect(p.inputIds).toEqual([files.clsId, ...good, files.sepId, ...bad, files.sepId]);
      expect(p.tokenTypeIds).toEqual([0, ...good.map(() => 0), 0, ...bad.map(() => 1), 1]);
      expect(tok.specialsPair).toBe(3);
    }
  });

  test("truncation: single texts keep a prefix, pairs are cut longest-first, specials kept (hand-verified)", () => {
    const { tok } = get(name);
    const long = TEXTS[1]!;
    const ids = tok.tokenIds(long);
    expect(ids.length).toBeGreaterThan(10);
    const single = tok.encode(long, undefined, { maxLength: 8 });
    expect(single.truncated).toBe(true);
    expect(single.inputIds.length).toBe(8);
    expect(single.inputIds.slice(1, 7)).toEqual(ids.slice(0, 6));
    // A long first text and a 1-token second one: only the first is cut.
    const short = tok.tokenIds("A");
    const budget = 12 - tok.specialsPair;
    const pair = tok.encode(long, "A", { maxLength: 12 });
    expect(pair.inputIds.length).toBe(12);
    expect(pair.inputIds.slice(1, 1 + budget - short.length)).toEqual(ids.slice(0, budget - short.length));
    expect(pair.inputIds.slice(-1 - short.length, -1)).toEqual(short);
  });

  test("padding: right padding with the family's pad id, mask 0 on padding", () => {
    const { tok, files } = get(name);
    const batch = tok.encodeBatch(["good", TEXTS[0]!]);
    const n = batch.lengths[0]!;
    expect(n).toBeLessThan(batch.seqLen);
    const row0 = Array.from(batch.inputIds.subarray(0, batch.seqLen), Number);
    expect(row0.slice(n)).toEqual(new Array(batch.seqLen - n).fill(files.padId));
    expect(Array.from(batch.attentionMask.subarray(0, batch.seqLen), Number)).toEqual([
      ...new Array(n).fill(1),
      ...new Array(batch.seqLen - n).fill(0),
    ]);
  });
});

describe("hand-verified pieces", () => {
  test("WordPiece lowercases and splits unknown words into ## pieces", () => {
    const { tok } = get("bert");
    expect(tokens(tok, tok.encode("The movie isn't").inputIds)).toEqual([
      "[CLS]",
      "the",
      "movie",
      "is",
      "##n",
      "'",
      "t",
      "[SEP]",
    ]);
  });

  test("byte-level BPE keeps case, marks spaces with Ġ and falls back to bytes", () => {
    const { tok } = get("roberta");
    // Merges were learned on words after a space: a leading word without one splits further.
    expect(tokens(tok, tok.tokenIds(" the movie"))).toEqual(["Ġthe", "Ġmovie"]);
    expect(tokens(tok, tok.tokenIds("the movie"))).toEqual(["th", "e", "Ġmovie"]);
    // é is two UTF-8 bytes, each its own byte-level character (Ã and ©).
    const pieces = tokens(tok, tok.tokenIds(" é")).join("");
    expect(pieces).toBe("ĠÃ©");
  });

  test("Unigram behind Metaspace: ▁ marks word starts, unknown characters give <unk>", () => {
    const { tok } = get("xlm-roberta");
    expect(tokens(tok, tok.tokenIds("the movie"))).toEqual(["▁the", "▁movie"]);
    // The SST-2 corpus is lowercase: "U" is not in the vocabulary.
    expect(tokens(tok, tok.tokenIds("U"))).toEqual(["▁", "<unk>"]);
    const albert = get("albert").tok;
    // ALBERT lowercases first.
    expect(tokens(albert, albert.tokenIds("The Movie"))).toEqual(["▁the", "▁movie"]);
  });

  test("SentencePiece BPE behind Metaspace merges ▁-prefixed words", () => {
    const { tok } = get("metaspace-bpe");
    expect(tokens(tok, tok.tokenIds("the movie"))).toEqual(["▁the", "▁movie"]);
  });

  test("no post-processor: [CLS] A [SEP] B [SEP] from tokenizer_config.json, as BertTokenizer builds them", () => {
    const { tok, hf, files } = get("minilm-no-post-processor");
    // The library adds nothing (Rust tokenizers without a post-processor) …
    expect(hf.encode("good").ids).toEqual(tok.tokenIds("good"));
    // … quantd adds what the model was trained with.
    const good = tok.tokenIds("good");
    const bad = tok.tokenIds("bad");
    expect(tok.encode("good", "bad")).toEqual({
      inputIds: [files.clsId, ...good, files.sepId, ...bad, files.sepId],
      tokenTypeIds: [0, ...good.map(() => 0), 0, ...bad.map(() => 1), 1],
      truncated: false,
    });
  });

  test("no post-processor in a RoBERTa-class tokenizer: <s> A </s></s> B </s>, segment ids 0", async () => {
    const files = buildTokenizer("roberta", corpus);
    const d = join(dir, "roberta-bare");
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "tokenizer.json"), JSON.stringify({ ...files.tokenizer, post_processor: null }));
    writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify(files.tokenizerConfig));
    const tok = await loadTokenizer(d);
    const e = tok.encode("good", "bad");
    const good = tok.tokenIds("good");
    const bad = tok.tokenIds("bad");
    expect(e.inputIds).toEqual([files.clsId, ...good, files.sepId, files.sepId, ...bad, files.sepId]);
    expect(e.tokenTypeIds.every((t) => t === 0)).toBe(true);
  });
});

describe("positions and limits from config.json", () => {
  test("RoBERTa-family models count positions after the padding index; max length leaves those rows out", async () => {
    const tok = await load("xlm-roberta", {
      model_type: "xlm-roberta",
      pad_token_id: 1,
      max_position_embeddings: 130,
    });
    expect(tok.positions).toEqual({ kind: "after-padding", paddingIdx: 1 });
    // 130 positions, of which 0 and 1 (padding index and below) are never a real token's.
    expect(tok.maxLength).toBe(128);
    const batch = tok.encodeBatch(["good", TEXTS[0]!]);
    const pos = Array.from(positionIdsOf(batch), Number);
    const n = batch.lengths[0]!;
    const row0 = pos.slice(0, batch.seqLen);
    expect(row0).toEqual([
      ...Array.from({ length: n }, (_, j) => j + 2),
      ...new Array(batch.seqLen - n).fill(1),
    ]);
    expect(pos.slice(batch.seqLen)).toEqual(Array.from({ length: batch.seqLen }, (_, j) => j + 2));
  });

  test("without config.json, the tokenizer's class (else a RobertaProcessing) names the family", async () => {
    for (const name of ["roberta", "xlm-roberta", "mpnet", "metaspace-bpe"] as const) {
      expect([name, get(name).tok.positions]).toEqual([
        name,
        { kind: "after-padding", paddingIdx: get(name).files.padId },
      ]);
    }
    for (const name of ["bert", "albert", "deberta"] as const) {
      expect([name, get(name).tok.positions]).toEqual([name, { kind: "arange" }]);
    }
    const files = buildTokenizer("roberta", corpus);
    const withClass = async (tokenizerClass: string | undefined): Promise<Tokenizer> => {
      const d = join(dir, `roberta-class-${tokenizerClass ?? "none"}`);
      mkdirSync(d, { recursive: true });
      writeFileSync(join(d, "tokenizer.json"), JSON.stringify(files.tokenizer));
      const { tokenizer_class: _, ...rest } = files.tokenizerConfig;
      const config = tokenizerClass === undefined ? rest : { ...rest, tokenizer_class: tokenizerClass };
      writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify(config));
      return loadTokenizer(d);
    };
    // No class: RobertaProcessing, which only RoBERTa-family converters write.
    expect((await withClass(undefined)).positions).toEqual({
      kind: "after-padding",
      paddingIdx: files.padId,
    });
    // BART shares RoBERTa's post-processor but numbers positions from 2 on every row.
    expect((await withClass("BartTokenizer")).positions).toEqual({ kind: "arange" });
  });

  test("without config.json, the graph's position table bounds the length less the rows after-padding positions skip", async () => {
    const files = buildTokenizer("roberta", corpus);
    const d = join(dir, "roberta-position-rows");
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "tokenizer.json"), JSON.stringify(files.tokenizer));
    const { model_max_length: _, ...config } = files.tokenizerConfig;
    writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify(config));
    const tok = await loadTokenizer(d, { positionRows: 130 });
    // 130 rows, of which the padding index and those below it are never a real token's.
    expect(tok.maxLength).toBe(130 - (files.padId + 1));
    const batch = tok.encodeBatch(["good ".repeat(200)]);
    expect(Math.max(...Array.from(positionIdsOf(batch), Number))).toBe(129);
    expect((await loadTokenizer(d, { positionRows: 130, maxLength: 64 })).maxLength).toBe(64);
  });

  test("BERT-family models number every position 0, 1, 2, …", async () => {
    const tok = await load("bert", { model_type: "bert", max_position_embeddings: 128 });
    expect(tok.positions).toEqual({ kind: "arange" });
    expect(tok.maxLength).toBe(128);
    const batch = tok.encodeBatch(["good", TEXTS[0]!]);
    expect(Array.from(positionIdsOf(batch).subarray(0, batch.seqLen), Number)).toEqual(
      Array.from({ length: batch.seqLen }, (_, j) => j),
    );
  });
});
