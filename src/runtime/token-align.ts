/**
 * Character offsets of tokens in the original text. The tokenizers library
 * quantd runs (`@huggingface/tokenizers`) returns ids and token strings but no
 * offsets, so they are recovered here: each token's surface form (its piece
 * without the `##` continuation prefix, the byte-level alphabet decoded, the
 * SentencePiece `▁` dropped) is searched for in the text, compared the way the
 * tokenizer normalized it (lowercase and accents stripped for an uncased
 * vocabulary, whitespace skipped). A token whose surface cannot be found
 * (`[UNK]`, a byte fragment of a multi-byte character) covers the text up to
 * where the next token is found.
 */
import { isRecord } from "../json.ts";

/** How a vocabulary writes its pieces. */
export interface PieceStyle {
  /** WordPiece continuation prefix (`##`), when the model has one. */
  continuingPrefix?: string;
  /** Pieces are in GPT-2's byte-level alphabet (`Ġ` for a space). */
  byteLevel: boolean;
  /** SentencePiece's word-start marker `▁`. */
  metaspace: boolean;
  /** The normalizer lowercases and strips accents (BERT uncased). */
  uncased: boolean;
}

/** Offsets and word structure of one text's tokens. */
export interface TokenSpan {
  start: number;
  end: number;
  /** The token continues the previous token's word. */
  subword: boolean;
}

let byteDecoder: Map<string, number> | undefined;

/** GPT-2's byte-to-unicode table, inverted: printable bytes stand for themselves, the rest from U+0100 up. */
function byteLevelDecoder(): Map<string, number> {
  if (byteDecoder !== undefined) return byteDecoder;
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map = new Map<string, number>();
  for (const b of printable) map.set(String.fromCharCode(b), b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.includes(b)) continue;
    map.set(String.fromCharCode(256 + n), b);
    n++;
  }
  byteDecoder = map;
  return map;
}

/** A piece's surface text per the vocabulary's style ("" when it has none to find, e.g. a byte fragment). */
function surfaceOf(piece: string, style: PieceStyle): string {
  const prefix = style.continuingPrefix;
  if (prefix !== undefined && prefix !== "" && piece.startsWith(prefix)) return piece.slice(prefix.length);
  if (style.byteLevel) {
    const table = byteLevelDecoder();
    const bytes: number[] = [];
    for (const ch of piece) {
      const b = table.get(ch);
      if (b === undefined) return piece;
      bytes.push(b);
    }
    const text = new TextDecoder("utf-8", { fatal: false }).decode(Uint8Array.from(bytes));
    return text.includes("\ufffd") ? "" : text.trim();
  }
  if (style.metaspace) return piece.replaceAll("▁", "");
  return piece;
}

/** The text as the tokenizer compares it, with each folded character's index in the original. */
function fold(text: string, uncased: boolean): { folded: string; at: number[] } {
  let folded = "";
  const at: number[] = [];
  for (let i = 0; i < text.length; ) {
    const cp = text.codePointAt(i)!;
    const ch = String.fromCodePoint(cp);
    const f = uncased
      ? ch
          .normalize("NFD")
          .replace(/\p{Mn}/gu, "")
          .toLowerCase()
      : ch;
    for (let k = 0; k < f.length; k++) {
      folded += f[k];
      at.push(i);
    }
    i += ch.length;
  }
  at.push(text.length);
  return { folded, at };
}

function foldPiece(piece: string, uncased: boolean): string {
  return uncased
    ? piece
        .normalize("NFD")
        .replace(/\p{Mn}/gu, "")
        .toLowerCase()
    : piece;
}

/**
 * Offsets of `pieces` (the text's tokens, special tokens excluded, in order) in `text`.
 * A token is a subword as the pipeline's `is_subword` decides: for a WordPiece
 * vocabulary when it carries the continuation prefix; otherwise when neither it
 * nor the character before it is whitespace.
 */
export function alignTokens(text: string, pieces: readonly string[], style: PieceStyle): TokenSpan[] {
  const { folded, at } = fold(text, style.uncased);
  const found: { start: number; end: number }[] = [];
  const unfound: number[] = [];
  let cursor = 0;
  const skipSpace = (i: number): number => {
    while (i < folded.length && /\s/.test(folded[i]!)) i++;
    return i;
  };
  // Tokens not found share the text between the last found token and the next one, in order.
  const placeUnfound = (until: number): void => {
    let from = skipSpace(cursor);
    for (const [k, idx] of unfound.entries()) {
      const end = k === unfound.length - 1 ? Math.max(from, trimEnd(folded, until, from)) : from;
      found[idx] = { start: from, end };
      from = end;
    }
    unfound.length = 0;
  };
  for (const [idx, piece] of pieces.entries()) {
    const target = foldPiece(surfaceOf(piece, style), style.uncased);
    const from = skipSpace(cursor);
    const hit = target === "" ? -1 : folded.indexOf(target, from);
    found.push({ start: from, end: from });
    if (hit < 0) {
      unfound.push(idx);
      continue;
    }
    if (unfound.length > 0) placeUnfound(hit);
    found[idx] = { start: hit, end: hit + target.length };
    cursor = hit + target.length;
  }
  placeUnfound(folded.length);
  return found.map(({ start, end }, idx) => {
    const s = at[start]!;
    const prefix = style.continuingPrefix;
    const subword =
      prefix !== undefined && prefix !== ""
        ? pieces[idx]!.startsWith(prefix)
        : s > 0 && !/\s/.test(text[s - 1]!) && !/\s/.test(text[s] ?? " ");
    return { start: s, end: at[end]!, subword };
  });
}

/** `end` moved back over whitespace, not before `from`. */
function trimEnd(folded: string, end: number, from: number): number {
  let e = end;
  while (e > from && /\s/.test(folded[e - 1]!)) e--;
  return e;
}

/** Whether `node` (a tokenizer.json component) is of `type`, or a Sequence holding one. */
function hasComponent(node: unknown, type: string): boolean {
  if (!isRecord(node)) return false;
  if (node["type"] === type) return true;
  for (const key of ["pretokenizers", "normalizers", "decoders", "processors"]) {
    const list = node[key];
    if (Array.isArray(list) && list.some((n) => hasComponent(n, type))) return true;
  }
  return false;
}

/** The {@link PieceStyle} a `tokenizer.json` describes. */
export function pieceStyleOf(tokenizerJson: Record<string, unknown>): PieceStyle {
  const model = isRecord(tokenizerJson["model"]) ? tokenizerJson["model"] : {};
  const normalizer = tokenizerJson["normalizer"];
  const pre = tokenizerJson["pre_tokenizer"];
  const prefix = model["continuing_subword_prefix"];
  const bertLower =
    isRecord(normalizer) && normalizer["type"] === "BertNormalizer" && normalizer["lowercase"] !== false;
  const style: PieceStyle = {
    byteLevel: hasComponent(pre, "ByteLevel") || hasComponent(tokenizerJson["decoder"], "ByteLevel"),
    metaspace: hasComponent(pre, "Metaspace") || model["type"] === "Unigram",
    uncased: bertLower || hasComponent(normalizer, "Lowercase"),
  };
  if (typeof prefix === "string" && prefix !== "") style.continuingPrefix = prefix;
  else if (model["type"] === "WordPiece") style.continuingPrefix = "##";
  return style;
}
