/**
 * The third stage of `runQuantization`: among the candidates that met the
 * gate, the fastest on this machine (`--mode auto` times them, by default
 * before validating them, so that it validates in latency order and stops at
 * the first that passes: `validateInLatencyOrder` in `candidates.ts`); when
 * none met it, the best by the gate's figures, so the report and the error can
 * name it.
 */
import { median } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { ModelProto } from "../onnx/types.ts";
import type { BatchEncoding, Tokenizer } from "../runtime/tokenizer.ts";
import type { InferenceSession, SessionOptions } from "../runtime/types.ts";
import { type BuiltCandidates, type Candidate, describeFormat } from "./candidates.ts";
import { compareCandidates } from "./gate.ts";
import type { CandidateEntry } from "./report.ts";

/** Sequence length of the latency comparison `auto` makes (the shape quantd's latency targets are stated for). */
export const AUTO_BENCH_SEQ = 128;

/** Timed runs per candidate of the auto comparison. */
const AUTO_BENCH_RUNS = 30;

/** What the choice is made with. */
export interface ChoiceInputs {
  /** `--mode auto`: the fastest passing candidate is taken. */
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
  /** Formats timed but not validated (slower than one that passed first). */
  notValidated: readonly CandidateEntry[];
  /** Sequence length the auto comparison ran at. */
  benchSeq: number;
  /** Time of every latency comparison of the run (before validation and in the choice), ms. */
  benchmarkMs: number;
}

/** Sequence length of the auto comparison: {@link AUTO_BENCH_SEQ}, or the model's longest when shorter. */
function benchSeqOf(maxLength: number): number {
  return Math.min(AUTO_BENCH_SEQ, maxLength);
}

/**
 * p50 latency of each model at the auto comparison's shape, in ms, and what
 * timing them took: real tokens, the held-out texts run together and cut to
 * the sequence length.
 *
 * @throws MODEL_LOAD_FAILED / INFERENCE_FAILED from onnxruntime
 */
export async function timeModels(
  models: readonly ModelProto[],
  inputs: ChoiceInputs,
): Promise<{ p50Ms: number[]; ms: number }> {
  const t = performance.now();
  const enc = inputs.tokenizer.encodeBatch([inputs.texts.join(" ")], {
    maxLength: benchSeqOf(inputs.maxLength),
    padding: "max_length",
  });
  const p50Ms = await measureP50(
    models.map((m) => encodeModel(m)),
    enc,
    inputs.session,
    AUTO_BENCH_RUNS,
  );
  return { p50Ms, ms: performance.now() - t };
}

/**
 * Picks the candidate to write (see the module comment). In auto mode the
 * passing candidates are timed (`p50Ms` set) unless every one already was,
 * before validation (`validateInLatencyOrder`); `timedMs` is what that took.
 *
 * @throws QUANT_FAILED when no format could be built at all
 * @throws MODEL_LOAD_FAILED / INFERENCE_FAILED from the auto comparison
 */
export async function chooseCandidate(
  built: BuiltCandidates,
  inputs: ChoiceInputs,
  timedMs = 0,
): Promise<Choice> {
  const passing = built.candidates.filter((c) => c.passed);
  let benchmarkMs = timedMs;
  if (inputs.autoMode && passing.length > 1 && passing.some((c) => c.p50Ms === undefined)) {
    // One interleaved run for all of them: figures from separate runs would not compare.
    inputs.progress(`benchmarking ${passing.length} passing candidates`);
    const timed = await timeModels(
      passing.map((c) => c.model),
      inputs,
    );
    passing.forEach((c, i) => {
      c.p50Ms = timed.p50Ms[i]!;
    });
    benchmarkMs += timed.ms;
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
  return {
    chosen,
    passing,
    notValidated: built.notValidated,
    benchSeq: benchSeqOf(inputs.maxLength),
    benchmarkMs,
  };
}

/** Why the chosen candidate won, in one line, for the report. */
export function autoDecision(choice: Choice): string {
  const { chosen, passing, notValidated } = choice;
  if (passing.length <= 1 && notValidated.length === 0) {
    return `${describeFormat(chosen)}: the only candidate that met the gate`;
  }
  const others = [
    ...passing.filter((c) => c !== chosen).map((c) => ({ c, p50: c.p50Ms ?? 0, tail: "" })),
    ...notValidated.map((c) => ({ c, p50: c.p50Ms ?? 0, tail: " not validated" })),
  ]
    .sort((a, b) => a.p50 - b.p50)
    .map((o) => `${describeFormat(o.c)} ${o.p50.toFixed(2)} ms${o.tail}`);
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
