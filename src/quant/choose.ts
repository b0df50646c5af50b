/**
 * The third stage of `runQuantization`: among the candidates that met the
 * gate, the fastest on this machine (`--mode auto` times them); when none met
 * it, the best by the gate's figures, so the report and the error can name it.
 */
import { median } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { BatchEncoding, Tokenizer } from "../runtime/tokenizer.ts";
import type { InferenceSession, SessionOptions } from "../runtime/types.ts";
import { type BuiltCandidates, type Candidate, describeFormat } from "./candidates.ts";
import { compareCandidates } from "./gate.ts";

/** Sequence length of the latency comparison `auto` makes (the shape quantd's latency targets are stated for). */
export const AUTO_BENCH_SEQ = 128;

/** Timed runs per candidate of the auto comparison. */
const AUTO_BENCH_RUNS = 30;

/** What the choice is made with. */
export interface ChoiceInputs {
  /** `--mode auto`: time the passing candidates and take the fastest. */
  autoMode: boolean;
  tokenizer: Tokenizer;
  maxLength: number;
  /** Held-out texts: the benchmark input is made of real tokens. */
  texts: readonly string[];
  session: SessionOptions;
  progress(line: string): void;
}

/** The chosen candidate and what the choice cost. */
export interface Choice {
  chosen: Candidate;
  /** Candidates that met the gate. */
  passing: Candidate[];
  /** Sequence length the auto comparison ran at. */
  benchSeq: number;
  benchmarkMs: number;
}

/**
 * Picks the candidate to write (see the module comment); sets `p50Ms` on the
 * passing candidates it timed.
 *
 * @throws QUANT_FAILED when no format could be built at all
 * @throws MODEL_LOAD_FAILED / INFERENCE_FAILED from the auto comparison
 */
export async function chooseCandidate(built: BuiltCandidates, inputs: ChoiceInputs): Promise<Choice> {
  const passing = built.candidates.filter((c) => c.passed);
  const benchSeq = Math.min(AUTO_BENCH_SEQ, inputs.maxLength);
  let benchmarkMs = 0;
  if (inputs.autoMode && passing.length > 1) {
    inputs.progress(`benchmarking ${passing.length} passing candidates`);
    const t = performance.now();
    // Real tokens at the target length: the held-out texts run together, cut to `seq`.
    const enc = inputs.tokenizer.encodeBatch([inputs.texts.join(" ")], {
      maxLength: benchSeq,
      padding: "max_length",
    });
    const p50 = await measureP50(
      passing.map((c) => encodeModel(c.model)),
      enc,
      inputs.session,
      AUTO_BENCH_RUNS,
    );
    passing.forEach((c, i) => {
      c.p50Ms = p50[i]!;
    });
    benchmarkMs = performance.now() - t;
  }
  const chosen =
    passing.length > 0
      ? [...passing].sort((a, b) => (a.p50Ms ?? 0) - (b.p50Ms ?? 0))[0]
      : [...built.candidates].sort((a, b) => compareCandidates(a.metrics, b.metrics))[0];
  if (chosen === undefined) {
    throw new QuantdError("QUANT_FAILED", "no int8 format could be built", {
      details: { candidates: built.failed },
    });
  }
  return { chosen, passing, benchSeq, benchmarkMs };
}

/** Why the chosen candidate won, in one line, for the report. */
export function autoDecision(choice: Choice): string {
  const { chosen, passing } = choice;
  if (passing.length <= 1) return `${describeFormat(chosen)}: the only candidate that met the gate`;
  const others = passing
    .filter((c) => c !== chosen)
    .sort((a, b) => (a.p50Ms ?? 0) - (b.p50Ms ?? 0))
    .map((c) => `${describeFormat(c)} ${(c.p50Ms ?? 0).toFixed(2)} ms`);
  return `${describeFormat(chosen)}: fastest candidate that met the gate, p50 ${(chosen.p50Ms ?? 0).toFixed(2)} ms at sequence ${choice.benchSeq} (then ${others.join(", ")})`;
}

/**
 * p50 latency of each model on the same batch, in ms: warm-up, then
 * interleaved runs (A B A B …) so machine drift (a Pi's thermal throttling)
 * hits every candidate alike.
 */
export async function measureP50(
  models: readonly Uint8Array[],
  encoding: BatchEncoding,
  session: SessionOptions,
  runs: number,
): Promise<number[]> {
  const sessions: InferenceSession[] = [];
  try {
    for (const m of models) sessions.push(await createOrtSession(m, session));
    const times = models.map(() => [] as number[]);
    for (const s of sessions) for (let w = 0; w < 5; w++) await s.run(feedsForEncoding(s, encoding));
    for (let r = 0; r < runs; r++) {
      for (const [k, s] of sessions.entries()) {
        const feeds = feedsForEncoding(s, encoding);
        const t0 = performance.now();
        await s.run(feeds);
        times[k]!.push(performance.now() - t0);
      }
    }
    return times.map(median);
  } finally {
    for (const s of sessions) await s.release();
  }
}
