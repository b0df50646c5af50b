/**
 * Bias correction: a change of the int8 error that costs no byte, tried by
 * the fallback after the calibration methods and before any node is kept in
 * fp32.
 *
 * Int8 rounding of weights and activations does not only add noise to a
 * MatMul's output: part of it is a mean shift per output channel, the same at
 * every token (an activation range that clips one side, a rounded embedding
 * row read at every position). A shift passes through every later layer and
 * moves every logit the same way, which is what turns near-ties into flips.
 * The correction measures each quantized MatMul's mean output error
 * E[y_int8 − y_fp32] per channel on the calibration samples (real tokens
 * only, padding left out) and subtracts it from the MatMul's bias, so the
 * int8 model's outputs have fp32's means; the bias is a float vector in every
 * int8 form (MatMulIntegerToFloat's bias input, the QDQ form's Add, QGemm's
 * int32 bias is requantized from it), so the file does not grow. In graphs
 * onnxruntime's optimizer saved, the bias may sit inside the fused op after
 * the MatMul (BiasGelu, FastGelu, SkipLayerNormalization): then the MatMul's
 * own output is compared, and the correction it already holds is counted in.
 *
 * Layer by layer, in graph order: a layer's error is measured with every
 * layer before it already corrected, since a correction upstream changes what
 * the layers downstream see (corrections measured all at once, from the
 * uncorrected model, compound). MatMuls that do not feed each other (a layer's
 * query, key and value) are measured in one run.
 *
 * A bias read by several MatMuls (ALBERT's one layer, read by every layer) is
 * one tensor in the file: it gets one correction, the mean error over all its
 * readers, not one per reader applied again at each (the bias would move four
 * times over). Since that bias serves layers both before and after the other
 * biases it shares the model with, one pass in graph order measures its later
 * readers before the biases between them are corrected: a second pass
 * measures them again with everything corrected. A reader of its own bias
 * would cost bytes (256 floats are 1 KB per reader and bias): measured on the
 * ALBERT fixture, it bought no fewer flips than the shared mean, so it is not
 * offered. A bias also read by a node left fp32 is not touched.
 */
import { encodeModel } from "../onnx/codec.ts";
import { copyForEdit, GraphIndex } from "../onnx/graph.ts";
import { makeTensor, tensorToFloat32 } from "../onnx/tensor.ts";
import { DataType, type ModelProto, type NodeProto } from "../onnx/types.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { BatchEncoding } from "../runtime/tokenizer.ts";
import type { SessionOptions } from "../runtime/types.ts";
import { checkGate, compareCandidates, type GateMetrics, type GateSpec } from "./gate.ts";
import { trialFigures, type ValidatedBuild } from "./method-mix.ts";
import { MS_DOMAIN } from "./passes/rewrite.ts";
import { nodeKey, type QuantTarget, type WeightMatMulTarget } from "./plan.ts";
import type { QuantizeResult } from "./quantize.ts";
import type { BiasCorrectionEntry, BiasCorrectionTrial } from "./report.ts";
import { withExtraOutputs } from "./sensitivity.ts";

/** A bias the correction may change: the float vector added to the output of one or more quantized MatMuls. */
export interface BiasSite {
  /** The bias initializer. */
  bias: string;
  /** Output channels (the bias's length). */
  channels: number;
  /** The quantized MatMul/Gemm nodes whose output gets it (several when it is shared). */
  readers: string[];
  /** Each reader's compared output (its bias Add's output, the Gemm's, or the MatMul's), in `readers`' order. */
  outputs: string[];
  /**
   * Whether `outputs` include the bias (an Add's or a Gemm's output), or it is
   * added after them inside a fused op (BiasGelu, FastGelu,
   * SkipLayerNormalization), whose MatMul input is what is compared.
   */
  included: boolean;
}

/** What to add to each bias, by initializer name. */
export type BiasCorrections = ReadonlyMap<string, Float32Array>;

/**
 * onnxruntime's fused ops that add a bias to a MatMul's output inside them
 * (what its optimizer leaves of the bias Add), with their bias input, and the
 * inputs the MatMul's output may be.
 */
const FUSED_BIAS: Readonly<Record<string, { bias: number; from: readonly number[] }>> = {
  BiasGelu: { bias: 1, from: [0] },
  FastGelu: { bias: 1, from: [0] },
  SkipLayerNormalization: { bias: 4, from: [0, 1] },
};

/** Where a reader's bias is: its tensor, the output compared, the node holding it, and whether that output includes it. */
interface ReaderBias {
  bias: string;
  output: string;
  holder: NodeProto;
  /** False when the bias is added inside a fused op after `output` (the MatMul's own output). */
  included: boolean;
}

/**
 * A reader's bias: the Gemm's own, the float vector of the one Add that reads
 * the MatMul's output, or the bias input of the one fused op that does
 * ({@link FUSED_BIAS}).
 */
function readerBias(
  n: NodeProto,
  t: WeightMatMulTarget,
  channels: number,
  index: GraphIndex,
): ReaderBias | undefined {
  const isVector = (name: string | undefined): name is string => {
    const b = index.initializer(name ?? "");
    return b?.dataType === DataType.FLOAT && b.dims.length === 1 && Number(b.dims[0]) === channels;
  };
  const out = n.output[0] ?? "";
  if (t.opType === "Gemm") {
    return isVector(t.bias) ? { bias: t.bias, output: out, holder: n, included: true } : undefined;
  }
  const readers = index.consumers(out);
  const next = readers.length === 1 ? readers[0]! : undefined;
  if (next?.opType === "Add" && next.domain === "" && next.input.length === 2) {
    const bias = next.input[0] === out ? next.input[1] : next.input[0];
    return isVector(bias) ? { bias, output: next.output[0]!, holder: next, included: true } : undefined;
  }
  const fused = next?.domain === MS_DOMAIN ? FUSED_BIAS[next.opType] : undefined;
  if (next === undefined || fused === undefined) return undefined;
  const bias = next.input[fused.bias];
  const fromMatMul = fused.from.some((i) => next.input[i] === out);
  return fromMatMul && isVector(bias) ? { bias, output: out, holder: next, included: false } : undefined;
}

/**
 * The biases of `targets`' weight MatMuls in `model` (the graph they were
 * planned on), in the order of their first reader. A bias is left out when a
 * node other than its quantized readers reads it too (an fp32 layer sharing
 * it): correcting it would move that layer's output; when its readers
 * differ in whether their compared output includes it; and when one fused op
 * adds it to two of them (a SkipLayerNormalization of two MatMuls' outputs):
 * the error it would take off is their errors' sum, not the mean over readers
 * the measurement takes.
 */
export function biasSites(model: ModelProto, targets: readonly QuantTarget[]): BiasSite[] {
  const index = new GraphIndex(model.graph);
  const byKey = new Map(model.graph.node.map((n, i) => [nodeKey(n, i), n]));
  const sites = new Map<string, BiasSite & { holders: Set<NodeProto>; mixed: boolean }>();
  for (const t of targets) {
    const n = t.kind === "weight-matmul" ? byKey.get(t.node) : undefined;
    const w = t.kind === "weight-matmul" ? index.initializer(t.weight) : undefined;
    if (n === undefined || w === undefined || t.kind !== "weight-matmul") continue;
    const found = readerBias(n, t, Number(w.dims[t.channelAxis]), index);
    if (found === undefined) continue;
    const site = sites.get(found.bias) ?? {
      bias: found.bias,
      channels: Number(w.dims[t.channelAxis]),
      readers: [],
      outputs: [],
      included: found.included,
      holders: new Set<NodeProto>(),
      mixed: false,
    };
    site.mixed ||= site.included !== found.included;
    site.readers.push(t.node);
    site.outputs.push(found.output);
    site.holders.add(found.holder);
    sites.set(found.bias, site);
  }
  return [...sites.values()]
    .filter(
      (s) =>
        !s.mixed &&
        s.holders.size === s.readers.length &&
        index.consumers(s.bias).every((c) => s.holders.has(c)),
    )
    .map(({ holders: _h, mixed: _m, ...s }) => s);
}

/**
 * Adds each site's correction to its bias in `model` (an editable copy: the
 * initializer is replaced, never mutated). Biases not among `sites` (their
 * readers left fp32 in this build) keep their values. Returns the biases changed.
 */
export function applyBiasCorrections(
  model: ModelProto,
  sites: readonly BiasSite[],
  corrections: BiasCorrections,
): string[] {
  const changed: string[] = [];
  const init = model.graph.initializer;
  for (const s of sites) {
    const delta = corrections.get(s.bias);
    const i = init.findIndex((t) => t.name === s.bias);
    if (delta === undefined || i < 0 || delta.length !== s.channels) continue;
    const values = tensorToFloat32(init[i]!);
    const corrected = Float32Array.from(values, (v, c) => v + delta[c]!);
    init[i] = makeTensor(s.bias, DataType.FLOAT, init[i]!.dims.map(Number), corrected);
    changed.push(s.bias);
  }
  return changed;
}

/** Per-channel sums of a tensor over the rows that count, and how many rows. */
interface ChannelSums {
  sum: Float64Array;
  rows: number;
}

/**
 * Adds a batch's `[..., channels]` output to `acc`: every row of a token-level
 * tensor (`batch × seq` rows) but padding, every row of a sample-level one
 * (a pooler's `batch` rows).
 */
function addRows(acc: ChannelSums, data: Float32Array, batch: BatchEncoding): void {
  const c = acc.sum.length;
  const rows = data.length / c;
  const tokens = rows === batch.batchSize * batch.seqLen;
  for (let r = 0; r < rows; r++) {
    if (tokens && batch.attentionMask[r] === 0n) continue;
    acc.rows++;
    for (let k = 0; k < c; k++) acc.sum[k]! += data[r * c + k]!;
  }
}

/**
 * Bytes of outputs one run may return at once: every MatMul output of a
 * BERT-base at 8 × 128 tokens is about 340 MB, more than a board should hold
 * for a side measurement, so the outputs are fetched in groups (a run each).
 */
export const MAX_FETCH_BYTES = 64 * 1024 * 1024;

/**
 * `names` (tensor → channels) in groups, in order, whose float outputs over
 * `rows` rows stay within {@link MAX_FETCH_BYTES} (a larger one alone).
 */
export function fetchGroups(names: ReadonlyMap<string, number>, rows: number): string[][] {
  const groups: string[][] = [];
  let group: string[] = [];
  let bytes = 0;
  for (const [name, channels] of names) {
    const b = channels * rows * 4;
    if (group.length > 0 && bytes + b > MAX_FETCH_BYTES) {
      groups.push(group);
      group = [];
      bytes = 0;
    }
    group.push(name);
    bytes += b;
  }
  if (group.length > 0) groups.push(group);
  return groups;
}

/** Channel sums of `names` (each `channels` wide) over `batches`, in one onnxruntime session. */
async function channelSums(
  model: ModelProto,
  names: ReadonlyMap<string, number>,
  batches: readonly BatchEncoding[],
  session: SessionOptions,
): Promise<Map<string, ChannelSums>> {
  const wanted = [...names.keys()];
  const out = new Map(wanted.map((n) => [n, { sum: new Float64Array(names.get(n)!), rows: 0 }]));
  const rows = Math.max(0, ...batches.map((b) => b.batchSize * b.seqLen));
  const s = await createOrtSession(encodeModel(withExtraOutputs(model, wanted)), session);
  try {
    for (const group of fetchGroups(names, rows)) {
      for (const batch of batches) {
        const got = await s.run(feedsForEncoding(s, batch), group);
        for (const n of group) {
          const t = got[n];
          if (t?.type === "float32") addRows(out.get(n)!, t.data as Float32Array, batch);
        }
      }
    }
  } finally {
    await s.release();
  }
  return out;
}

/**
 * A site's mean output error per channel, over all its readers' rows: int8
 * sums less fp32's, plus the correction `delta` the int8 model holds when its
 * bias is added after the compared output (so the error is the biased sum's).
 */
function siteError(
  site: BiasSite,
  int8: ReadonlyMap<string, ChannelSums>,
  fp32: ReadonlyMap<string, ChannelSums>,
  delta: Float32Array | undefined,
): Float64Array {
  const err = new Float64Array(site.channels);
  let rows = 0;
  for (const o of site.outputs) {
    const q = int8.get(o);
    const f = fp32.get(o);
    // Rows that differ mean the int8 model answered with another tensor under this name: its sums are not
    // comparable, and counting them would take fp32's mean off the bias.
    if (q === undefined || f === undefined || q.rows !== f.rows) continue;
    for (let k = 0; k < site.channels; k++) err[k]! += q.sum[k]! - f.sum[k]!;
    rows += f.rows;
  }
  if (rows > 0) for (let k = 0; k < site.channels; k++) err[k]! /= rows;
  if (!site.included && delta !== undefined) for (let k = 0; k < site.channels; k++) err[k]! += delta[k]!;
  return err;
}

/** Mean over channels of |e|. */
function meanAbs(e: Float64Array): number {
  let s = 0;
  for (const v of e) s += Math.abs(v);
  return e.length === 0 ? 0 : s / e.length;
}

/** Tensors computed from `from` (its own included), following the graph forward. */
function downstream(from: readonly string[], index: GraphIndex): Set<string> {
  const seen = new Set(from);
  const todo = [...from];
  for (let t = todo.pop(); t !== undefined; t = todo.pop()) {
    for (const n of index.consumers(t)) {
      for (const o of n.output) {
        if (o === "" || seen.has(o)) continue;
        seen.add(o);
        todo.push(o);
      }
    }
  }
  return seen;
}

/**
 * The sites in runs that can be measured together: consecutive sites of which
 * none feeds another (a layer's query, key and value), in order.
 */
export function measurementSteps(model: ModelProto, sites: readonly BiasSite[]): BiasSite[][] {
  const index = new GraphIndex(model.graph);
  const reach = new Map(sites.map((s) => [s, downstream(s.outputs, index)]));
  const feeds = (a: BiasSite, b: BiasSite): boolean => b.outputs.some((o) => reach.get(a)!.has(o));
  const steps: BiasSite[][] = [];
  let step: BiasSite[] = [];
  for (const s of sites) {
    if (step.some((x) => feeds(x, s) || feeds(s, x))) {
      steps.push(step);
      step = [];
    }
    step.push(s);
  }
  if (step.length > 0) steps.push(step);
  return steps;
}

/** What {@link measureBiasCorrections} found. */
export interface BiasCorrectionResult {
  /** What to add to each measured bias (the sum of its steps' corrections). */
  corrections: Map<string, Float32Array>;
  /** Each site's mean output error before and after, in the sites' order. */
  sites: BiasCorrectionEntry[];
  /** Passes over the sites: 2 when a bias is shared (see the module comment), else 1. */
  sweeps: number;
  /** Runs of the int8 model over the calibration samples. */
  runs: number;
}

/** Options of {@link measureBiasCorrections}. */
export interface BiasCorrectionOptions {
  /** onnxruntime settings of the measurement's runs (threads). */
  session?: SessionOptions;
  /** @defaultValue 2 when a bias has several readers, else 1 */
  sweeps?: number;
}

/**
 * Measures the corrections of `sites` layer by layer (see the module comment):
 * `build` makes the int8 model with the corrections found so far (a rewrite
 * from the same ranges), `reference` is the fp32 graph the int8 one was
 * planned on, and `batches` are the calibration samples.
 *
 * @throws MODEL_LOAD_FAILED / INFERENCE_FAILED when onnxruntime fails on either model
 */
export async function measureBiasCorrections(
  reference: ModelProto,
  sites: readonly BiasSite[],
  batches: readonly BatchEncoding[],
  build: (corrections: BiasCorrections) => Promise<ModelProto>,
  opts: BiasCorrectionOptions = {},
): Promise<BiasCorrectionResult> {
  const session = opts.session ?? {};
  const widths = (list: readonly BiasSite[]) =>
    new Map(list.flatMap((s) => s.outputs.map((o) => [o, s.channels] as const)));
  const fp32 = await channelSums(reference, widths(sites), batches, session);
  const errors = async (list: readonly BiasSite[], c: BiasCorrections) =>
    channelSums(await build(c), widths(list), batches, session);
  const corrections = new Map<string, Float32Array>();
  const first = await errors(sites, corrections);
  const before = new Map(sites.map((s) => [s.bias, meanAbs(siteError(s, first, fp32, undefined))]));
  const sweeps = opts.sweeps ?? (sites.some((s) => s.readers.length > 1) ? 2 : 1);
  const steps = measurementSteps(reference, sites);
  let runs = 1;
  for (let sweep = 0; sweep < sweeps; sweep++) {
    for (const [i, step] of steps.entries()) {
      // The first step sees no correction yet: the uncorrected run already measured it.
      const int8 = sweep === 0 && i === 0 ? first : await errors(step, corrections);
      if (int8 !== first) runs++;
      for (const s of step) {
        const prev = corrections.get(s.bias) ?? new Float32Array(s.channels);
        const e = siteError(s, int8, fp32, prev);
        corrections.set(
          s.bias,
          Float32Array.from(prev, (v, k) => v - e[k]!),
        );
      }
    }
  }
  const last = await errors(sites, corrections);
  runs++;
  return {
    corrections,
    sites: sites.map((s) => ({
      bias: s.bias,
      readers: s.readers.length,
      before: before.get(s.bias) ?? 0,
      after: meanAbs(siteError(s, last, fp32, corrections.get(s.bias))),
    })),
    sweeps,
    runs,
  };
}

/**
 * `int8` (built with no correction) with `corrections` added to its biases,
 * when every site's bias is still a float initializer of that name in it (the
 * fused MatMulIntegerToFloat's bias input, the QDQ form's Add): the same model
 * a rebuild makes, without quantizing every weight again at each step of the
 * measurement (a large model's rebuild takes seconds). `undefined` otherwise
 * (a QDQ Gemm's bias is stored int32): the caller rebuilds.
 */
export function patchedBiases(
  int8: ModelProto,
  sites: readonly BiasSite[],
  corrections: BiasCorrections,
): ModelProto | undefined {
  const floats = new Set(
    int8.graph.initializer.filter((t) => t.dataType === DataType.FLOAT).map((t) => t.name),
  );
  if (!sites.every((s) => floats.has(s.bias))) return undefined;
  const out = copyForEdit(int8);
  applyBiasCorrections(out, sites, corrections);
  return out;
}

/** What the bias-correction step needs from its caller. */
export interface BiasCorrectionHooks {
  /** Rebuilds the start with these corrections (a rewrite from the same ranges, no calibration). */
  rebuild(corrections: BiasCorrections): Promise<QuantizeResult>;
  /** The gate's figures of a build on the validation samples (never the calibration ones it was corrected on). */
  validate(model: ModelProto): Promise<GateMetrics>;
}

/**
 * The bias-correction step of the fallback: `start`'s biases corrected (see
 * the module comment), the build validated, and kept when it passes or ranks
 * better than `start`. Nothing is tried when `start` has no bias to correct.
 *
 * @throws MODEL_LOAD_FAILED / INFERENCE_FAILED when onnxruntime fails on a measured model, and what the hooks throw
 */
export async function tryBiasCorrection(
  start: ValidatedBuild,
  reference: ModelProto,
  calibration: readonly BatchEncoding[],
  gate: GateSpec,
  hooks: BiasCorrectionHooks & { session?: SessionOptions },
): Promise<{ best: ValidatedBuild; trial?: BiasCorrectionTrial }> {
  const t0 = performance.now();
  // A site is measured at tensors the int8 build must still have (a rewrite that fused one away leaves it out).
  const produced = new Set(start.result.model.graph.node.flatMap((n) => n.output));
  const sites = biasSites(reference, start.result.plan.quantized).filter((s) =>
    s.outputs.every((o) => produced.has(o)),
  );
  if (sites.length === 0) return { best: start };
  const int8 = start.result.model;
  const measured = await measureBiasCorrections(
    reference,
    sites,
    calibration,
    async (c) =>
      (start.result.biasCorrections.size === 0 ? patchedBiases(int8, sites, c) : undefined) ??
      (await hooks.rebuild(c)).model,
    hooks.session !== undefined ? { session: hooks.session } : {},
  );
  const result = await hooks.rebuild(measured.corrections);
  const metrics = await hooks.validate(result.model);
  const passed = checkGate(metrics, gate).passed;
  const used = passed || compareCandidates(metrics, start.metrics) < 0;
  const mean = (f: (s: BiasCorrectionEntry) => number) =>
    measured.sites.reduce((a, s) => a + f(s), 0) / measured.sites.length;
  const trial: BiasCorrectionTrial = {
    biases: sites.length,
    readers: sites.reduce((a, s) => a + s.readers.length, 0),
    shared: sites.filter((s) => s.readers.length > 1).length,
    sweeps: measured.sweeps,
    runs: measured.runs,
    meanBiasBefore: mean((s) => s.before),
    meanBiasAfter: mean((s) => s.after),
    perBias: measured.sites,
    ...trialFigures(metrics, start.metrics, passed, performance.now() - t0),
    ...(used ? { used: true } : {}),
  };
  return { best: used ? { result, metrics } : start, trial };
}
