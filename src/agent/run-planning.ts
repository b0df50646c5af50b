/**
 * How the registry runs a batch: texts sorted by token length and cut into
 * runs so that padding wastes little and no run exceeds a token budget
 * (`planRuns`, `capRuns`), tokenized in time slices so a large batch never
 * holds the event loop, and how many tokens a text has without tokenizing
 * more than the limit needs.
 */
import type { TaskModel, TaskResult } from "../runtime/task-model.ts";
import type { Encoding, TextInput } from "../runtime/tokenizer.ts";

/** Largest share of padding tokens a length bucket may hold before the next, longer text starts another. */
export const MAX_PADDING_WASTE = 0.25;

/**
 * Splits encodings sorted by length into runs whose padded size
 * (`rows × longest`) exceeds their real token count by at most `maxWaste`.
 * The agent now plans runs with {@link planRuns}, which also counts the cost
 * of each extra run (paired on the same micro-batches: 1–10 % less CPU per
 * text, most on short texts where a run's fixed cost dominates).
 * A batch of mixed lengths padded to its longest row can cost twice the
 * compute of its real tokens, which would eat the whole gain of batching
 * (BERT-Mini on two cores: 2–3 × less time per text at batch 16 with equal
 * lengths, next to nothing with SST-2's mixed lengths).
 */
export function lengthBuckets(sortedLengths: readonly number[], maxWaste = MAX_PADDING_WASTE): number[][] {
  const buckets: number[][] = [];
  let current: number[] = [];
  let sum = 0;
  for (const [i, len] of sortedLengths.entries()) {
    if (current.length > 0 && (current.length + 1) * len > (1 + maxWaste) * (sum + len)) {
      buckets.push(current);
      current = [];
      sum = 0;
    }
    current.push(i);
    sum += len;
  }
  if (current.length > 0) buckets.push(current);
  return buckets;
}

/**
 * onnxruntime's fixed cost of one run, in padded tokens of compute. BERT-Mini
 * on one core costs ~0.85 ms per run plus ~0.04 ms per padded token (fitted
 * on batches 1–32 of 25 and 128 tokens: `a + b × rows × length`), so a run
 * costs about as much as 20 more tokens of padding.
 */
export const RUN_COST_TOKENS = 20;

/**
 * Splits encodings sorted by length into consecutive runs that minimise the
 * estimated cost `Σ (runCost + rows × longest)`: padding a few short texts to
 * their neighbour's length is cheaper than another run, while a text much
 * longer than the rest still gets a run of its own. Exact dynamic programme,
 * O(n²) in the batch size (the batcher's `maxBatch`).
 */
export function planRuns(sortedLengths: readonly number[], runCost = RUN_COST_TOKENS): number[][] {
  const n = sortedLengths.length;
  // best[i]: least cost of the first i texts; from[i]: where the last run of that plan starts.
  const best = new Float64Array(n + 1);
  const from = new Int32Array(n + 1);
  for (let i = 1; i <= n; i++) {
    const longest = sortedLengths[i - 1]!;
    best[i] = Number.POSITIVE_INFINITY;
    for (let j = i - 1; j >= 0; j--) {
      const cost = best[j]! + runCost + (i - j) * longest;
      if (cost < best[i]!) {
        best[i] = cost;
        from[i] = j;
      }
    }
  }
  const runs: number[][] = [];
  for (let i = n; i > 0; i = from[i]!)
    runs.push(Array.from({ length: i - from[i]! }, (_, k) => from[i]! + k));
  return runs.reverse();
}

/** Most padded tokens (rows × longest row) in one onnxruntime run: bounds a run's working memory. */
export const MAX_RUN_TOKENS = 4096;

/**
 * Splits planned runs (indices into the sorted lengths) whose padded size
 * exceeds `maxTokens`, so that one run's activations stay bounded whatever a
 * batch holds (at least one row per run).
 */
export function capRuns(
  runs: readonly number[][],
  lengthOf: (k: number) => number,
  maxTokens = MAX_RUN_TOKENS,
): number[][] {
  const out: number[][] = [];
  for (const run of runs) {
    const longest = Math.max(...run.map(lengthOf));
    const rows = Math.max(1, Math.floor(maxTokens / Math.max(1, longest)));
    for (let i = 0; i < run.length; i += rows) out.push(run.slice(i, i + rows));
  }
  return out;
}

/**
 * Runs inputs (texts or pairs, already checked against the task) in runs of
 * similar length planned by `plan` (on the token counts sorted ascending);
 * results in input order.
 *
 * @throws INFERENCE_FAILED when the runtime fails or returns NaN
 */
export async function classifyBucketed(
  model: TaskModel,
  inputs: readonly TextInput[],
  plan: (sortedLengths: readonly number[]) => number[][] = planRuns,
): Promise<TaskResult[]> {
  const encodings = await encodeYielding(model, inputs);
  const order = Array.from({ length: inputs.length }, (_, i) => i);
  order.sort((a, b) => encodings[a]!.inputIds.length - encodings[b]!.inputIds.length);
  const results = new Array<TaskResult>(inputs.length);
  for (const bucket of capRuns(
    plan(order.map((i) => encodings[i]!.inputIds.length)),
    (k) => encodings[order[k]!]!.inputIds.length,
  )) {
    const rows = bucket.map((k) => order[k]!);
    const enc = model.tokenizer.pad(rows.map((i) => encodings[i]!));
    const out = await model.runEncoded(enc);
    for (const [r, i] of rows.entries())
      results[i] = model.resultOf(out, r, enc, inputs[i]!, encodings[i]!, i);
  }
  return results;
}

/** Longest stretch of tokenizing on the server's thread before it lets other requests (health checks) in, in ms. */
export const TOKENIZE_SLICE_MS = 4;

/**
 * Tokenizes on the server's thread in slices of {@link TOKENIZE_SLICE_MS},
 * yielding to the event loop between them: a batch of long texts takes tens
 * of ms to tokenize, and health checks must not wait that long.
 */
async function encodeYielding(model: TaskModel, inputs: readonly TextInput[]): Promise<Encoding[]> {
  const encodings: Encoding[] = [];
  const pause = slicer(TOKENIZE_SLICE_MS);
  for (const x of inputs) {
    encodings.push(model.encode(x));
    await pause();
  }
  return encodings;
}

/** A function that yields to the event loop once `ms` have passed since it last did (else resolves at once). */
export function slicer(ms: number): () => Promise<void> | undefined {
  let since = performance.now();
  return () => {
    if (performance.now() - since <= ms) return undefined;
    return new Promise<void>((r) => setImmediate(r)).then(() => {
      since = performance.now();
    });
  };
}

/** Characters per token below which a text prefix is sure to hold `maxLength` tokens (WordPiece tokens are rarely longer). */
const CHARS_PER_TOKEN_BOUND = 8;

/**
 * `min(maxLength, tokens(text) + specials)`, tokenizing only a prefix of a
 * long text when the prefix already reaches the limit. The prefix ends at a
 * space, so no word is cut into more pieces than it has whole.
 */
export function cappedTokenCount(
  text: string,
  maxLength: number,
  specials: number,
  count: (text: string) => number,
): number {
  const limit = maxLength * CHARS_PER_TOKEN_BOUND;
  if (text.length > limit) {
    const cut = text.lastIndexOf(" ", limit);
    if (cut > 0 && count(text.slice(0, cut)) + specials >= maxLength) return maxLength;
  }
  return Math.min(maxLength, count(text) + specials);
}

/** The mean of each label's logit over a token model's `[tokens, width]` row. */
export function meanOverTokens(row: Float32Array, width: number): Float32Array {
  const out = new Float32Array(width);
  const tokens = row.length / width;
  for (let t = 0; t < tokens; t++) for (let j = 0; j < width; j++) out[j]! += row[t * width + j]! / tokens;
  return out;
}
