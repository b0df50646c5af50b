/**
 * Tokenization for BERT-family encoders (WordPiece, byte-level BPE,
 * SentencePiece Unigram or BPE behind Metaspace) with truncation and padding.
 *
 * `@huggingface/tokenizers` reproduces the Python (Rust `tokenizers`) ids exactly
 * but ignores the truncation and padding settings, so this module asks it only
 * for the bare token ids of each segment and does the rest itself: it truncates
 * with Rust `tokenizers`' longest-first rule, inserts the special tokens of the
 * post-processor template, and pads a batch into row-major int64 tensors.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import { alignTokens, type PieceStyle, pieceStyleOf, type TokenSpan } from "./token-align.ts";

/** One input: a text, or a pair of texts (e.g. question and passage). */
export type TextInput = string | readonly [string, string];

/** How a batch is padded. `"none"` requires every row to have the same length. */
export type PaddingStrategy = "longest" | "max_length" | "none";

/** Options for {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /** Longest encoding, special tokens included. @defaultValue the tokenizer's {@link Tokenizer.maxLength} */
  maxLength?: number;
  /** Truncate inputs longer than `maxLength` (else they are returned whole). @defaultValue true */
  truncation?: boolean;
}

/** Options for {@link Tokenizer.encodeBatch}. */
export interface EncodeBatchOptions extends EncodeOptions {
  /** @defaultValue "longest" (pad to the batch's longest row) */
  padding?: PaddingStrategy;
}

/** One encoded input, special tokens included, unpadded. */
export interface Encoding {
  inputIds: number[];
  tokenTypeIds: number[];
  /** Whether tokens were dropped to fit `maxLength`. */
  truncated: boolean;
}

/**
 * How a model numbers token positions, for models that take `position_ids` as
 * an input:
 * - `"arange"`: 0, 1, 2, … on every row, padding included (BERT, ELECTRA, DistilBERT, ALBERT);
 * - `"after-padding"`: real tokens count from `paddingIdx + 1` and padding gets
 *   `paddingIdx` (RoBERTa, XLM-R, CamemBERT, MPNet: `create_position_ids_from_input_ids`).
 */
export type PositionStyle = { kind: "arange" } | { kind: "after-padding"; paddingIdx: number };

/** A padded batch, laid out row-major as `[batchSize, seqLen]`, ready to feed a BERT. */
export interface BatchEncoding {
  batchSize: number;
  seqLen: number;
  inputIds: BigInt64Array;
  /** 1 for real tokens, 0 for padding. */
  attentionMask: BigInt64Array;
  tokenTypeIds: BigInt64Array;
  /** Unpadded length of each row. */
  lengths: number[];
  /** Whether each row was truncated. */
  truncated: boolean[];
  /** How `position_ids` are filled for a model that takes them. @defaultValue `{ kind: "arange" }` */
  positions?: PositionStyle;
}

/** Options for {@link loadTokenizer}. */
export interface LoadTokenizerOptions {
  /** Upper bound on the maximum length (the smallest of this, the tokenizer's and the model's wins). */
  maxLength?: number;
  /**
   * The model's `config.json`, whose `max_position_embeddings` bounds the length.
   * @defaultValue `config.json` in the tokenizer directory, when present
   */
  configPath?: string;
  /**
   * Rows of the model's position table (read from its graph), which bound the length as
   * `max_position_embeddings` does: less the rows a RoBERTa-family model never uses.
   */
  positionRows?: number;
}

/** Ids of the special tokens quantd needs. */
export interface SpecialTokenIds {
  cls: number | undefined;
  sep: number | undefined;
  pad: number;
}

/** One piece of a post-processor template: special tokens, or sequence A / B. */
type TemplatePiece =
  | { kind: "special"; ids: number[]; typeId: number }
  | { kind: "sequence"; which: "A" | "B"; typeId: number };

interface Template {
  single: TemplatePiece[];
  pair: TemplatePiece[];
}

function invalid(dir: string, why: string, cause?: unknown): QuantdError {
  return new QuantdError("TOKENIZER_INVALID", `tokenizer in ${dir} is not usable: ${why}`, {
    cause,
    details: { dir },
  });
}

function readJson(
  path: string,
  dir: string,
  badCode: "TOKENIZER_INVALID" | "CONFIG_INVALID" = "TOKENIZER_INVALID",
): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new QuantdError("FILE_UNREADABLE", `cannot read ${path}`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    if (badCode === "CONFIG_INVALID") {
      throw new QuantdError("CONFIG_INVALID", `${path} is not valid JSON`, { cause: err });
    }
    throw invalid(dir, `${path} is not valid JSON`, err);
  }
}

/**
 * Reads the special-token template from `post_processor` so that the tokens
 * (and their type ids) are exactly those Python would insert.
 */
function parseTemplate(
  pp: unknown,
  tokenId: (t: string) => number | undefined,
  dir: string,
  fallback: Template = BARE,
): Template {
  if (pp === null || pp === undefined) return fallback;
  if (!isRecord(pp)) throw invalid(dir, "post_processor is not an object");
  switch (pp["type"]) {
    case "TemplateProcessing": {
      const specials = isRecord(pp["special_tokens"]) ? pp["special_tokens"] : {};
      const pieces = (v: unknown, what: string): TemplatePiece[] => {
        if (!Array.isArray(v)) throw invalid(dir, `post_processor.${what} is not a list`);
        return v.map((item: unknown): TemplatePiece => {
          if (isRecord(item) && isRecord(item["Sequence"])) {
            const s = item["Sequence"];
            return seq(s["id"] === "B" ? "B" : "A", Number(s["type_id"] ?? 0));
          }
          if (isRecord(item) && isRecord(item["SpecialToken"])) {
            const s = item["SpecialToken"];
            const name = String(s["id"]);
            const entry = specials[name];
            let ids: number[] | undefined;
            if (isRecord(entry) && Array.isArray(entry["ids"])) ids = entry["ids"].map(Number);
            else {
              const id = tokenId(name);
              if (id !== undefined) ids = [id];
            }
            if (ids === undefined || ids.some((x) => !Number.isInteger(x))) {
              throw invalid(dir, `special token ${name} of the template has no id`);
            }
            return { kind: "special", ids, typeId: Number(s["type_id"] ?? 0) };
          }
          throw invalid(dir, `unknown piece in post_processor.${what}: ${JSON.stringify(item)}`);
        });
      };
      return { single: pieces(pp["single"], "single"), pair: pieces(pp["pair"], "pair") };
    }
    case "BertProcessing":
    case "RobertaProcessing": {
      const cls = pp["cls"];
      const sep = pp["sep"];
      if (!Array.isArray(cls) || !Array.isArray(sep)) throw invalid(dir, "post_processor lacks cls/sep");
      const c = Number(cls[1]);
      const s = Number(sep[1]);
      const roberta = pp["type"] === "RobertaProcessing";
      const special = (id: number, typeId: number): TemplatePiece => ({ kind: "special", ids: [id], typeId });
      return {
        single: [special(c, 0), seq("A", 0), special(s, 0)],
        // RoBERTa separates pairs with two </s>. Its models read no segment ids, but Rust `tokenizers`
        // (and so Python) still gives the second half type id 1, as BertProcessing does.
        pair: roberta
          ? [special(c, 0), seq("A", 0), special(s, 0), special(s, 1), seq("B", 1), special(s, 1)]
          : [special(c, 0), seq("A", 0), special(s, 0), seq("B", 1), special(s, 1)],
      };
    }
    case "Sequence": {
      // e.g. ByteLevel (offsets only) followed by a template: the template decides the specials.
      const list = Array.isArray(pp["processors"]) ? pp["processors"] : [];
      const inner = list.find(
        (p: unknown) =>
          isRecord(p) &&
          (p["type"] === "TemplateProcessing" ||
            p["type"] === "BertProcessing" ||
            p["type"] === "RobertaProcessing"),
      );
      return parseTemplate(inner ?? null, tokenId, dir, fallback);
    }
    case "ByteLevel":
      return fallback;
    default:
      throw invalid(dir, `unsupported post_processor type ${JSON.stringify(pp["type"])}`);
  }
}

function seq(which: "A" | "B", typeId: number): TemplatePiece {
  return { kind: "sequence", which, typeId };
}

/** No special tokens at all: what Rust `tokenizers` does without a post-processor. */
const BARE: Template = { single: [seq("A", 0)], pair: [seq("A", 0), seq("B", 1)] };

/**
 * transformers' tokenizer classes that join a pair as `<s> A </s></s> B </s>`
 * with segment ids all 0 (their `build_inputs_with_special_tokens` and
 * `create_token_type_ids_from_sequences`); every other class uses BERT's
 * `[CLS] A [SEP] B [SEP]` with segment 1 for B and its [SEP].
 */
const DOUBLE_SEP_CLASSES = /^(Roberta|XLMRoberta|Camembert|MPNet|Longformer|Bart|Mbart|Flaubert|Xlm)/i;

/**
 * The template for a tokenizer.json without a post-processor (some converted
 * exports lose it, yet their model was trained with special tokens): the
 * `cls_token` (or `bos_token`) and `sep_token` (or `eos_token`) of
 * tokenizer_config.json, laid out as its `tokenizer_class` lays them out. With
 * neither declared, no special tokens, as Rust `tokenizers` does.
 */
function templateFromConfig(
  config: Record<string, unknown>,
  tokenId: (t: string) => number | undefined,
): Template {
  const idOf = (...keys: string[]): number | undefined => {
    for (const key of keys) {
      const v = config[key];
      const name =
        typeof v === "string" ? v : isRecord(v) && typeof v["content"] === "string" ? v["content"] : "";
      const id = name === "" ? undefined : tokenId(name);
      if (id !== undefined) return id;
    }
    return undefined;
  };
  const c = idOf("cls_token", "bos_token");
  const s = idOf("sep_token", "eos_token");
  if (c === undefined || s === undefined) return BARE;
  const special = (id: number, typeId: number): TemplatePiece => ({ kind: "special", ids: [id], typeId });
  const doubleSep = DOUBLE_SEP_CLASSES.test(String(config["tokenizer_class"] ?? ""));
  return {
    single: [special(c, 0), seq("A", 0), special(s, 0)],
    pair: doubleSep
      ? [special(c, 0), seq("A", 0), special(s, 0), special(s, 0), seq("B", 0), special(s, 0)]
      : [special(c, 0), seq("A", 0), special(s, 0), seq("B", 1), special(s, 1)],
  };
}

/**
 * transformers' model types whose embeddings number positions from the
 * padding index (`create_position_ids_from_input_ids`).
 */
const AFTER_PADDING_MODELS = new Set([
  "roberta",
  "xlm-roberta",
  "xlm-roberta-xl",
  "camembert",
  "mpnet",
  "longformer",
  "data2vec-text",
  "ibert",
]);

/** The position style of a model's `config.json` (its `model_type` and `pad_token_id`). */
function positionStyleOf(modelConfig: unknown): PositionStyle {
  if (!isRecord(modelConfig) || !AFTER_PADDING_MODELS.has(String(modelConfig["model_type"]))) {
    return { kind: "arange" };
  }
  const pad = modelConfig["pad_token_id"];
  return { kind: "after-padding", paddingIdx: typeof pad === "number" && pad >= 0 ? pad : 1 };
}

/**
 * transformers' tokenizer classes of models whose embeddings number positions
 * from the padding index (Longformer, Data2VecText and I-BERT ship RoBERTa's).
 */
const AFTER_PADDING_CLASSES = /^(Roberta|XLMRoberta|Camembert|MPNet)Tokenizer(Fast)?$/i;

/**
 * The position style of an export without a `config.json`, from its tokenizer:
 * the `tokenizer_class` of tokenizer_config.json when it names one (it names
 * the model family, and tells RoBERTa from BART, which shares RoBERTa's
 * post-processor but counts positions from 2 on every row); otherwise a
 * `RobertaProcessing` post-processor, which only RoBERTa-family converters
 * write (XLM-R, CamemBERT and MPNet write a `TemplateProcessing`, hence the
 * class first). The padding index is the tokenizer's pad token, as
 * transformers' configs of these families set `pad_token_id` to it.
 */
function positionStyleOfTokenizer(
  tokenizerConfig: Record<string, unknown>,
  postProcessor: unknown,
  padId: number | undefined,
): PositionStyle {
  const cls = tokenizerConfig["tokenizer_class"];
  const afterPadding =
    typeof cls === "string" ? AFTER_PADDING_CLASSES.test(cls) : isRobertaProcessing(postProcessor);
  return afterPadding ? { kind: "after-padding", paddingIdx: padId ?? 1 } : { kind: "arange" };
}

function isRobertaProcessing(pp: unknown): boolean {
  if (!isRecord(pp)) return false;
  if (pp["type"] === "RobertaProcessing") return true;
  return (
    pp["type"] === "Sequence" && Array.isArray(pp["processors"]) && pp["processors"].some(isRobertaProcessing)
  );
}

function countSpecials(pieces: readonly TemplatePiece[]): number {
  let n = 0;
  for (const p of pieces) if (p.kind === "special") n += p.ids.length;
  return n;
}

/**
 * Lengths to keep of segments of `n1` and `n2` tokens so that together they fit
 * `budget`, following Rust `tokenizers`' `LongestFirst` (what transformers' fast
 * BERT tokenizer, and hence our golden data, uses): only the longer segment is cut
 * while the shorter fits in half the budget; otherwise the shorter keeps
 * floor(budget/2) and the longer the rest (on a tie the second segment keeps the
 * extra token). This is not quite "drop one token at a time from the longer":
 * for 8 + 4 tokens into 7 Rust keeps 4 + 3, one-at-a-time would keep 3 + 4 or
 * 4 + 3 depending on how ties are broken, and transformers' pure-Python ("slow")
 * tokenizers may split such pairs differently. We follow Rust, as transformers'
 * fast tokenizers (which produced the golden ids) do.
 */
export function longestFirstLengths(n1: number, n2: number, budget: number): [number, number] {
  if (n1 + n2 <= budget) return [n1, n2];
  const swap = n1 > n2;
  let short = swap ? n2 : n1;
  let long: number;
  if (short > budget) long = short;
  else long = Math.max(short, budget - short);
  if (short + long > budget) {
    short = Math.floor(budget / 2);
    long = short + (budget % 2);
  }
  // Never grow a segment (the rule above only ever yields targets, not lengths).
  const a = swap ? long : short;
  const b = swap ? short : long;
  return [Math.min(n1, a), Math.min(n2, b)];
}

/**
 * How inputs are grouped into batches:
 * - `"unpadded"`: only inputs of the same token length share a batch, so no row
 *   is padded and every input gets exactly the logits it would get alone. A model
 *   whose masking does not survive quantization (ORT's static QDQ reference moves
 *   by up to 0.19 at batch 16) still gives batch-size-independent results.
 * - `"sorted"`: inputs sorted by length, then cut into full batches (little padding).
 * - `"input-order"`: consecutive inputs, padded to each batch's longest.
 */
export type BatchingMode = "unpadded" | "sorted" | "input-order";

/**
 * Plans batches of at most `batchSize` inputs given their token lengths, as
 * lists of input indices. Within a batch, and among batches of one length,
 * input order is kept (so a run is reproducible).
 *
 * @throws USAGE for a bad `batchSize` or mode
 */
export function planBatches(lengths: readonly number[], batchSize: number, mode: BatchingMode): number[][] {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new QuantdError("USAGE", `batchSize must be a positive integer, got ${batchSize}`);
  }
  const chunk = (order: readonly number[]): number[][] => {
    const out: number[][] = [];
    for (let i = 0; i < order.length; i += batchSize) out.push(order.slice(i, i + batchSize));
    return out;
  };
  const order = Array.from({ length: lengths.length }, (_, i) => i);
  switch (mode) {
    case "input-order":
      return chunk(order);
    case "sorted":
      // Array.prototype.sort is stable: equal lengths keep input order.
      return chunk(order.sort((a, b) => lengths[a]! - lengths[b]!));
    case "unpadded": {
      const byLength = new Map<number, number[]>();
      for (const i of order) {
        const group = byLength.get(lengths[i]!);
        if (group === undefined) byLength.set(lengths[i]!, [i]);
        else group.push(i);
      }
      return [...byLength.keys()].sort((a, b) => a - b).flatMap((len) => chunk(byLength.get(len)!));
    }
    default:
      throw new QuantdError("USAGE", `unknown batching mode ${JSON.stringify(mode)}`);
  }
}

/** A tokenizer for BERT-like models. Create with {@link loadTokenizer}. */
export class Tokenizer {
  /** Directory the tokenizer was read from. */
  readonly dir: string;
  /** Default (and largest sensible) encoding length, special tokens included. */
  readonly maxLength: number;
  /** Ids of `[CLS]`, `[SEP]` and `[PAD]` (or the tokenizer's equivalents). */
  readonly specialIds: SpecialTokenIds;
  /** Special tokens added to one text (2 for BERT: `[CLS]`, `[SEP]`). */
  readonly specialsSingle: number;
  /** Special tokens added to a pair (3 for BERT: `[CLS]`, `[SEP]`, `[SEP]`). */
  readonly specialsPair: number;
  /** How the model numbers positions (from its `config.json`, else its tokenizer's family), for models that take `position_ids`. */
  readonly positions: PositionStyle;
  /** How the vocabulary writes its pieces (for character offsets). */
  readonly pieceStyle: PieceStyle;
  readonly #hf: HfTokenizer;
  readonly #template: Template;
  #vocabSize: number | undefined;

  /** @internal use {@link loadTokenizer} */
  constructor(
    dir: string,
    hf: HfTokenizer,
    template: Template,
    maxLength: number,
    specialIds: SpecialTokenIds,
    positions: PositionStyle = { kind: "arange" },
    pieceStyle: PieceStyle = { byteLevel: false, metaspace: false, uncased: false },
  ) {
    this.dir = dir;
    this.pieceStyle = pieceStyle;
    this.positions = positions;
    this.#hf = hf;
    this.#template = template;
    this.maxLength = maxLength;
    this.specialIds = specialIds;
    this.specialsSingle = countSpecials(template.single);
    this.specialsPair = countSpecials(template.pair);
  }

  /** Token ids of `text` without special tokens, untruncated. */
  tokenIds(text: string): number[] {
    return this.#hf.encode(text, { add_special_tokens: false }).ids;
  }

  /** Number of ids the tokenizer can produce (largest id + 1, added tokens included). */
  get vocabSize(): number {
    if (this.#vocabSize === undefined) {
      let max = -1;
      for (const id of this.#hf.get_vocab(true).values()) if (id > max) max = id;
      this.#vocabSize = max + 1;
    }
    return this.#vocabSize;
  }

  /** The vocabulary id of a token string, if it has one. */
  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  /** The token string of an id, if any. */
  idToToken(id: number): string | undefined {
    return this.#hf.id_to_token(id);
  }

  /**
   * Encodes one text or a pair into ids with special tokens, truncated to
   * `maxLength` (longest-first for pairs; the special tokens are always kept).
   *
   * @throws USAGE when `maxLength` cannot hold the special tokens plus one token per segment
   * @throws TEXT_NOT_STRING when `text` or `pair` is not a string
   */
  encode(text: string, pair?: string, opts: EncodeOptions = {}): Encoding {
    // The library would throw a bare TypeError (or tokenize "undefined") for a non-string.
    if (typeof text !== "string" || (pair !== undefined && typeof pair !== "string")) {
      throw new QuantdError("TEXT_NOT_STRING", "the tokenizer needs string input");
    }
    const maxLength = this.#resolveMaxLength(opts.maxLength, pair !== undefined);
    const truncation = opts.truncation ?? true;
    let a = this.tokenIds(text);
    let b = pair === undefined ? undefined : this.tokenIds(pair);
    const pieces = b === undefined ? this.#template.single : this.#template.pair;
    const specials = b === undefined ? this.specialsSingle : this.specialsPair;
    let truncated = false;
    if (truncation && a.length + (b?.length ?? 0) + specials > maxLength) {
      const budget = maxLength - specials;
      truncated = true;
      if (b === undefined) a = a.slice(0, budget);
      else {
        const [k1, k2] = longestFirstLengths(a.length, b.length, budget);
        a = a.slice(0, k1);
        b = b.slice(0, k2);
      }
    }
    const inputIds: number[] = [];
    const tokenTypeIds: number[] = [];
    for (const p of pieces) {
      if (p.kind === "special") {
        for (const id of p.ids) {
          inputIds.push(id);
          tokenTypeIds.push(p.typeId);
        }
      } else {
        const ids = p.which === "A" ? a : (b ?? []);
        for (const id of ids) {
          inputIds.push(id);
          tokenTypeIds.push(p.typeId);
        }
      }
    }
    return { inputIds, tokenTypeIds, truncated };
  }

  /**
   * Where each position of `enc` (the encoding of `text` alone, by {@link Tokenizer.encode})
   * comes from: its character span of `text` and whether it continues a word, or
   * `undefined` for a special token.
   */
  spans(text: string, enc: Encoding): (TokenSpan | undefined)[] {
    const ids = this.tokenIds(text);
    const aligned = alignTokens(
      text,
      ids.map((id) => this.#hf.id_to_token(id) ?? ""),
      this.pieceStyle,
    );
    const out: (TokenSpan | undefined)[] = [];
    let k = 0;
    for (const p of this.#template.single) {
      if (p.kind === "special") for (const _ of p.ids) out.push(undefined);
      else {
        const kept = enc.inputIds.length - this.specialsSingle;
        for (let j = 0; j < kept; j++) out.push(aligned[k++]);
      }
    }
    return out;
  }

  /**
   * Encodes a batch and pads it into int64 tensors (row-major `[batch, seq]`).
   *
   * @throws USAGE for an empty batch, a `maxLength` too small for the special
   * tokens, or `padding: "none"` with rows of different lengths
   */
  encodeBatch(inputs: readonly TextInput[], opts: EncodeBatchOptions = {}): BatchEncoding {
    if (inputs.length === 0) throw new QuantdError("USAGE", "cannot encode an empty batch");
    const encodings = inputs.map((input) =>
      typeof input === "string" ? this.encode(input, undefined, opts) : this.encode(input[0], input[1], opts),
    );
    return this.pad(encodings, opts);
  }

  /**
   * Pads encodings into a {@link BatchEncoding}.
   *
   * @throws USAGE when `padding: "none"` meets rows of different lengths
   */
  pad(encodings: readonly Encoding[], opts: EncodeBatchOptions = {}): BatchEncoding {
    if (encodings.length === 0) throw new QuantdError("USAGE", "cannot pad an empty batch");
    const padding = opts.padding ?? "longest";
    const lengths = encodings.map((e) => e.inputIds.length);
    const longest = Math.max(...lengths);
    let seqLen: number;
    switch (padding) {
      case "longest":
        seqLen = longest;
        break;
      case "max_length":
        seqLen = Math.max(longest, opts.maxLength ?? this.maxLength);
        break;
      case "none":
        if (lengths.some((l) => l !== longest)) {
          throw new QuantdError(
            "USAGE",
            `padding "none" needs rows of equal length, got lengths ${Math.min(...lengths)}..${longest}`,
          );
        }
        seqLen = longest;
        break;
      default:
        throw new QuantdError("USAGE", `unknown padding strategy ${JSON.stringify(padding)}`);
    }
    const batchSize = encodings.length;
    const inputIds = new BigInt64Array(batchSize * seqLen);
    const attentionMask = new BigInt64Array(batchSize * seqLen);
    const tokenTypeIds = new BigInt64Array(batchSize * seqLen);
    const pad = BigInt(this.specialIds.pad);
    for (let r = 0; r < batchSize; r++) {
      const e = encodings[r]!;
      const base = r * seqLen;
      const n = e.inputIds.length;
      for (let j = 0; j < n; j++) {
        inputIds[base + j] = BigInt(e.inputIds[j]!);
        tokenTypeIds[base + j] = BigInt(e.tokenTypeIds[j]!);
        attentionMask[base + j] = 1n;
      }
      // Right padding, as BERT's tokenizer does; pad positions get type id 0 and mask 0.
      if (pad !== 0n) inputIds.fill(pad, base + n, base + seqLen);
    }
    return {
      batchSize,
      seqLen,
      inputIds,
      attentionMask,
      tokenTypeIds,
      lengths,
      truncated: encodings.map((e) => e.truncated),
      positions: this.positions,
    };
  }

  #resolveMaxLength(requested: number | undefined, pair: boolean): number {
    const maxLength = requested ?? this.maxLength;
    const specials = pair ? this.specialsPair : this.specialsSingle;
    const least = specials + (pair ? 2 : 1);
    if (!Number.isInteger(maxLength) || maxLength < least) {
      throw new QuantdError(
        "USAGE",
        `maxLength must be an integer of at least ${least} (${specials} special tokens + ${pair ? "one token per segment" : "one token"}), got ${maxLength}`,
      );
    }
    return maxLength;
  }
}

// transformers writes int(1e30) as model_max_length when a tokenizer has no limit of its own.
const NO_LIMIT = 1e29;

/**
 * Loads `tokenizer.json` (required) and `tokenizer_config.json` (optional) from
 * `dir`. The maximum length is the smallest of `model_max_length`, the model's
 * `max_position_embeddings` (from `config.json`, when present), `opts.positionRows`
 * (both less the rows positions after a padding index leave unused) and
 * `opts.maxLength`; 512 when none of them sets one. How positions are numbered
 * comes from `config.json`'s `model_type`, or without it from the tokenizer's family.
 *
 * @throws TOKENIZER_NOT_FOUND when `dir/tokenizer.json` does not exist
 * @throws TOKENIZER_INVALID when the files are not valid JSON or describe an unsupported tokenizer
 * @throws CONFIG_INVALID when the model's `config.json` is not valid JSON
 * @throws USAGE when `opts.maxLength` is not a positive integer
 */
export async function loadTokenizer(dir: string, opts: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  const tokenizerPath = join(dir, "tokenizer.json");
  if (!existsSync(tokenizerPath)) {
    throw new QuantdError("TOKENIZER_NOT_FOUND", `no tokenizer.json in ${dir}`, { details: { dir } });
  }
  const tokenizerJson = readJson(tokenizerPath, dir);
  if (!isRecord(tokenizerJson) || !isRecord(tokenizerJson["model"])) {
    throw invalid(dir, "tokenizer.json has no model section");
  }
  const configPath = join(dir, "tokenizer_config.json");
  const tokenizerConfig = existsSync(configPath) ? readJson(configPath, dir) : {};
  if (!isRecord(tokenizerConfig)) throw invalid(dir, "tokenizer_config.json is not an object");

  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(tokenizerJson, tokenizerConfig);
  } catch (err) {
    throw invalid(dir, `@huggingface/tokenizers rejected it (${(err as Error).message})`, err);
  }
  const tokenId = (t: string): number | undefined => hf.token_to_id(t);
  const template = parseTemplate(
    tokenizerJson["post_processor"],
    tokenId,
    dir,
    templateFromConfig(tokenizerConfig, tokenId),
  );

  const limits: number[] = [];
  const mml = tokenizerConfig["model_max_length"];
  if (typeof mml === "number" && mml > 0 && mml < NO_LIMIT) limits.push(Math.floor(mml));
  const modelConfigPath = opts.configPath ?? join(dir, "config.json");
  const modelConfig = existsSync(modelConfigPath)
    ? readJson(modelConfigPath, dir, "CONFIG_INVALID")
    : undefined;
  if (opts.maxLength !== undefined) {
    if (!Number.isInteger(opts.maxLength) || opts.maxLength <= 0) {
      throw new QuantdError("USAGE", `maxLength must be a positive integer, got ${opts.maxLength}`);
    }
    limits.push(opts.maxLength);
  }

  const named = (key: string, fallback: string): number | undefined => {
    const v = tokenizerConfig[key];
    const name =
      typeof v === "string" ? v : isRecord(v) && typeof v["content"] === "string" ? v["content"] : fallback;
    return tokenId(name);
  };
  const firstSpecial = template.single.find((p) => p.kind === "special");
  const lastSpecial = [...template.single].reverse().find((p) => p.kind === "special");
  const specialIds: SpecialTokenIds = {
    cls: named("cls_token", "[CLS]") ?? (firstSpecial?.kind === "special" ? firstSpecial.ids[0] : undefined),
    sep: named("sep_token", "[SEP]") ?? (lastSpecial?.kind === "special" ? lastSpecial.ids[0] : undefined),
    // Padding positions are masked out, so any id works when a tokenizer declares none; 0 is BERT's.
    pad: named("pad_token", "[PAD]") ?? 0,
  };
  const positions =
    modelConfig === undefined
      ? positionStyleOfTokenizer(
          tokenizerConfig,
          tokenizerJson["post_processor"],
          named("pad_token", "<pad>"),
        )
      : positionStyleOf(modelConfig);
  // Positions after the padding index leave paddingIdx + 1 rows of the table unused (RoBERTa: 514 → 512).
  const unused = positions.kind === "after-padding" ? positions.paddingIdx + 1 : 0;
  const mpe = isRecord(modelConfig) ? modelConfig["max_position_embeddings"] : undefined;
  for (const rows of [mpe, opts.positionRows]) {
    if (typeof rows === "number" && rows > unused) limits.push(Math.floor(rows) - unused);
  }
  const maxLength = limits.length > 0 ? Math.min(...limits) : 512;
  return new Tokenizer(dir, hf, template, maxLength, specialIds, positions, pieceStyleOf(tokenizerJson));
}
