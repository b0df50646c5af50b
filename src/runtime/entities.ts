/**
 * Per-token labels into entities, with the aggregation strategies users know
 * from transformers' token-classification pipeline:
 * - `none`: one entity per token whose label is not `O`;
 * - `simple`: adjacent tokens of one entity type join (a `B-` tag starts a new
 *   one), scored by the mean of their scores;
 * - `first` / `average` / `max`: tokens are first gathered into words (a word is
 *   a token that starts one plus the subword tokens after it), the word takes
 *   the label of its first token, of its mean score vector, or of its most
 *   confident token; then words group as in `simple`.
 * Special tokens never become entities. `word` is the span of the original text
 * (the pipeline decodes tokens, which loses case and accents for an uncased
 * vocabulary; offsets are what redaction needs).
 */
import { softmax } from "./classifier.ts";

/** Aggregation strategies of {@link groupEntities}. */
export const AGGREGATIONS = ["none", "simple", "first", "average", "max"] as const;

/** One of {@link AGGREGATIONS}. */
export type Aggregation = (typeof AGGREGATIONS)[number];

/** One token of a text, with its logits and where it came from. */
export interface TokenInfo {
  /** Character span `[start, end)` of the original text; `undefined` for special tokens. */
  start?: number;
  end?: number;
  /** Continues the word of the previous token (a `##` piece, or no space before it). */
  subword: boolean;
  /** A special token ([CLS], [SEP], padding): never labelled. */
  special: boolean;
  /** The token's logits over the labels. */
  logits: ArrayLike<number>;
}

/** An entity found in a text. */
export interface Entity {
  /** Label (`none`) or entity type without its `B-`/`I-` prefix (grouped strategies). */
  entity: string;
  /** Softmax probability of the label (the mean over the group for grouped strategies). */
  score: number;
  /** The text span. */
  word: string;
  start: number;
  end: number;
  /** Index of the token (`none` only). */
  index?: number;
}

interface Scored {
  label: string;
  score: number;
  start: number;
  end: number;
  index: number;
}

/** `B-PER` → `["B", "PER"]`; `I-PER` → `["I", "PER"]`; a label without a prefix counts as `I`. */
function tagOf(label: string): ["B" | "I", string] {
  if (label.startsWith("B-")) return ["B", label.slice(2)];
  if (label.startsWith("I-")) return ["I", label.slice(2)];
  return ["I", label];
}

function argmaxOf(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

/** Per-token label and score; special tokens and tokens without offsets are skipped. */
function scoreTokens(
  tokens: readonly TokenInfo[],
  labels: readonly string[],
): (Scored & { probs: number[]; subword: boolean })[] {
  const out: (Scored & { probs: number[]; subword: boolean })[] = [];
  for (const [index, t] of tokens.entries()) {
    if (t.special || t.start === undefined || t.end === undefined) continue;
    const probs = softmax(t.logits);
    const id = argmaxOf(probs);
    out.push({
      label: labels[id]!,
      score: probs[id]!,
      start: t.start,
      end: t.end,
      index,
      probs,
      subword: t.subword,
    });
  }
  return out;
}

/** Words of scored tokens, labelled by the strategy. */
function aggregateWords(
  scored: ReturnType<typeof scoreTokens>,
  labels: readonly string[],
  strategy: "first" | "average" | "max",
): Scored[] {
  const words: (typeof scored)[] = [];
  for (const t of scored) {
    const last = words.at(-1);
    if (last !== undefined && t.subword) last.push(t);
    else words.push([t]);
  }
  return words.map((group) => {
    let probs: number[];
    if (strategy === "first") probs = group[0]!.probs;
    else if (strategy === "max") probs = group.reduce((a, b) => (b.score > a.score ? b : a)).probs;
    else probs = group[0]!.probs.map((_, k) => group.reduce((s, t) => s + t.probs[k]!, 0) / group.length);
    const id = argmaxOf(probs);
    return {
      label: labels[id]!,
      score: probs[id]!,
      start: group[0]!.start,
      end: group.at(-1)!.end,
      index: group[0]!.index,
    };
  });
}

/** Joins adjacent items of one entity type (a `B-` item starts a new group), as the pipeline's `group_entities`. */
function groupAdjacent(items: readonly Scored[], text: string): Entity[] {
  const groups: Scored[][] = [];
  for (const item of items) {
    const last = groups.at(-1);
    const [bi, tag] = tagOf(item.label);
    if (last !== undefined && tagOf(last.at(-1)!.label)[1] === tag && bi !== "B") last.push(item);
    else groups.push([item]);
  }
  return groups.map((g) => {
    const start = g[0]!.start;
    const end = g.at(-1)!.end;
    return {
      entity: tagOf(g[0]!.label)[1],
      score: g.reduce((s, x) => s + x.score, 0) / g.length,
      word: text.slice(start, end),
      start,
      end,
    };
  });
}

/**
 * Entities of one text from its tokens' logits.
 *
 * @param ignore labels never reported (after grouping, as the pipeline filters them)
 */
export function groupEntities(
  text: string,
  tokens: readonly TokenInfo[],
  labels: readonly string[],
  strategy: Aggregation,
  ignore: readonly string[] = ["O"],
): Entity[] {
  const scored = scoreTokens(tokens, labels);
  let entities: Entity[];
  if (strategy === "none") {
    entities = scored.map((t) => ({
      entity: t.label,
      score: t.score,
      word: text.slice(t.start, t.end),
      start: t.start,
      end: t.end,
      index: t.index,
    }));
  } else if (strategy === "simple") entities = groupAdjacent(scored, text);
  else entities = groupAdjacent(aggregateWords(scored, labels, strategy), text);
  return entities.filter((e) => !ignore.includes(e.entity) && !ignore.includes(tagOf(e.entity)[1]));
}
