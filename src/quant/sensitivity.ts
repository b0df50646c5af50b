/**
 * Which quantized nodes hurt accuracy most, and the fallback that keeps them in
 * fp32 until the accuracy gate holds.
 *
 * Sensitivity is measured per layer, in one pass: the fp32 model and the int8
 * candidate both expose, as extra graph outputs, the output of every quantized
 * node and its activation inputs; both run on a few validation samples. A node's
 * relative error ‖int8 − fp32‖ / ‖fp32‖ at its output includes what its
 * ancestors already got wrong, so the ranking uses the error a node *adds*: its
 * output error minus the worst error among its inputs. (The inputs of a QDQ node
 * are the fp32-valued tensors before QuantizeLinear, so their error is upstream
 * error only.) That singles out the one projection with an outlier channel
 * instead of every node downstream of it.
 *
 * This costs two inferences per probe batch, against one full validation per
 * node for quantize-one-at-a-time, which is what lets the fallback run on a board.
 */
import { QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import type { ModelProto, NodeProto, ValueInfoProto } from "../onnx/types.ts";
import { feedsForEncoding } from "../runtime/classifier.ts";
import { createOrtSession } from "../runtime/ort-session.ts";
import type { BatchEncoding } from "../runtime/tokenizer.ts";
import type { SessionOptions } from "../runtime/types.ts";
import { checkGate, type GateMetrics, type GateSpec } from "./gate.ts";
import { boughtAgainst, type FallbackTrial, type LayerErrorEntry } from "./report.ts";

/** A quantized node to probe, described by fp32 tensor names (which the candidate keeps). */
export interface SensitivityTarget {
  node: string;
  opType: string;
  /** The node's first output. */
  output: string;
  /** Inputs computed by other nodes (not weights, not graph inputs). */
  activationInputs: string[];
  /** Float weight elements the node reads (what keeping it in fp32 costs, at 3 bytes each over int8). */
  weightElements?: number;
  /**
   * The output of the bias Add that follows the node, when one does: compared
   * instead of `output` when a rewrite folded the Add into the node (the fused
   * MatMulIntegerToFloat writes the Add's output, and the MatMul's is gone).
   */
  biasAddOutput?: string;
}

/**
 * Probe targets for the named nodes of the fp32 model. Unknown names are
 * ignored (the planner may name nodes the graph no longer has after a rewrite).
 */
export function sensitivityTargets(fp32: ModelProto, nodeNames: readonly string[]): SensitivityTarget[] {
  const wanted = new Set(nodeNames);
  const produced = new Set<string>();
  const consumers = new Map<string, NodeProto[]>();
  for (const n of fp32.graph.node) {
    for (const o of n.output) produced.add(o);
    for (const i of n.input) consumers.set(i, [...(consumers.get(i) ?? []), n]);
  }
  const constants = new Set(fp32.graph.initializer.map((t) => t.name));
  const elements = new Map(
    fp32.graph.initializer.map((t) => [t.name, t.dims.reduce((a, d) => a * Number(d), 1)]),
  );
  const targets: SensitivityTarget[] = [];
  for (const n of fp32.graph.node) {
    if (!wanted.has(n.name)) continue;
    const output = n.output[0];
    if (output === undefined || output === "") continue;
    // Gather's indices are int64 ids: only float activations carry quantization error.
    const floatInputs = n.opType === "Gather" ? [] : n.input;
    const target: SensitivityTarget = {
      node: n.name,
      opType: n.opType,
      output,
      activationInputs: floatInputs.filter((i) => i !== "" && produced.has(i)),
    };
    const weights = n.input.reduce((sum, i) => sum + (elements.get(i) ?? 0), 0);
    if (weights > 0) target.weightElements = weights;
    const next = consumers.get(output);
    const add = next?.length === 1 ? next[0] : undefined;
    if (add?.opType === "Add" && add.input.some((i) => constants.has(i)) && add.output[0] !== undefined) {
      target.biasAddOutput = add.output[0];
    }
    targets.push(target);
  }
  return targets;
}

/**
 * A shallow copy of `model` whose graph also outputs `names`. The outputs carry
 * no type: onnxruntime infers it, so int64 shape tensors can be listed too.
 */
export function withExtraOutputs(model: ModelProto, names: readonly string[]): ModelProto {
  const existing = new Set(model.graph.output.map((o) => o.name));
  const extra: ValueInfoProto[] = names.filter((n) => !existing.has(n)).map((name) => ({ name }));
  return { ...model, graph: { ...model.graph, output: [...model.graph.output, ...extra] } };
}

function producedNames(model: ModelProto): Set<string> {
  const s = new Set<string>();
  for (const n of model.graph.node) for (const o of n.output) s.add(o);
  return s;
}

/** Options for {@link measureLayerErrors}. */
export interface LayerErrorOptions {
  /** onnxruntime options of the sessions that run both models. */
  session?: SessionOptions;
}

/**
 * Per-node output error of `candidate` against `fp32` on `batches`, worst
 * added error first. Tensors the candidate no longer has (fused away by a
 * rewrite) are left out.
 *
 * @throws MODEL_LOAD_FAILED / INFERENCE_FAILED when onnxruntime fails on either model
 */
export async function measureLayerErrors(
  fp32: ModelProto,
  candidate: ModelProto,
  targets: readonly SensitivityTarget[],
  batches: readonly BatchEncoding[],
  opts: LayerErrorOptions = {},
): Promise<LayerErrorEntry[]> {
  const inBoth = producedNames(candidate);
  const inFp32 = producedNames(fp32);
  const names = [
    ...new Set(
      targets
        .flatMap((t) => [
          t.output,
          ...t.activationInputs,
          ...(t.biasAddOutput !== undefined ? [t.biasAddOutput] : []),
        ])
        .filter((n) => inBoth.has(n) && inFp32.has(n)),
    ),
  ];
  if (names.length === 0 || batches.length === 0) return [];
  const sumSqDiff = new Map<string, number>();
  const sumSqRef = new Map<string, number>();
  const refSession = await createOrtSession(encodeModel(withExtraOutputs(fp32, names)), opts.session ?? {});
  try {
    const candSession = await createOrtSession(
      encodeModel(withExtraOutputs(candidate, names)),
      opts.session ?? {},
    );
    try {
      for (const batch of batches) {
        const ref = await refSession.run(feedsForEncoding(refSession, batch), names);
        const cand = await candSession.run(feedsForEncoding(candSession, batch), names);
        for (const name of names) {
          const r = ref[name];
          const c = cand[name];
          if (r === undefined || c === undefined || r.type !== "float32" || c.type !== "float32") continue;
          const rd = r.data as Float32Array;
          const cd = c.data as Float32Array;
          if (rd.length !== cd.length) continue;
          let dd = 0;
          let rr = 0;
          for (let i = 0; i < rd.length; i++) {
            const a = rd[i]!;
            // -3.4e38 mask values and infinities are not errors of quantization
            if (!Number.isFinite(a) || Math.abs(a) > 1e30) continue;
            const d = cd[i]! - a;
            dd += Number.isFinite(d) ? d * d : Number.MAX_VALUE;
            rr += a * a;
          }
          sumSqDiff.set(name, (sumSqDiff.get(name) ?? 0) + dd);
          sumSqRef.set(name, (sumSqRef.get(name) ?? 0) + rr);
        }
      }
    } finally {
      await candSession.release();
    }
  } finally {
    await refSession.release();
  }
  const relError = (name: string): number | undefined => {
    const d = sumSqDiff.get(name);
    const r = sumSqRef.get(name);
    if (d === undefined || r === undefined) return undefined;
    if (r === 0) return d === 0 ? 0 : Number.POSITIVE_INFINITY;
    return Math.sqrt(d / r);
  };
  const entries: LayerErrorEntry[] = [];
  for (const t of targets) {
    let tensor = t.output;
    let out = relError(tensor);
    if (out === undefined && t.biasAddOutput !== undefined) {
      tensor = t.biasAddOutput;
      out = relError(tensor);
    }
    if (out === undefined) continue;
    let upstream = 0;
    for (const i of t.activationInputs) upstream = Math.max(upstream, relError(i) ?? 0);
    entries.push({
      node: t.node,
      opType: t.opType,
      tensor,
      relError: out,
      addedError: out - upstream,
      ...(t.weightElements !== undefined ? { fp32CostBytes: t.weightElements * 3 } : {}),
    });
  }
  return entries.sort((a, b) => b.addedError - a.addedError || b.relError - a.relError);
}

/** A candidate the fallback built and validated. */
export interface FallbackCandidate<M> {
  model: M;
  metrics: GateMetrics;
}

/** What the fallback needs from its caller: how to build and how to judge a candidate. */
export interface FallbackHooks<M> {
  /** Rebuilds the int8 model with `keepFp32` (fp32 node names) left unquantized. */
  rebuild(keepFp32: readonly string[]): Promise<M>;
  /** Validates a candidate against fp32 on the held-out samples. */
  validate(model: M): Promise<GateMetrics>;
  /** Ranks the candidate's quantized nodes, worst first. */
  rank(model: M): Promise<LayerErrorEntry[]>;
}

/** Options for {@link runFallback}. */
export interface FallbackOptions {
  gate: GateSpec;
  /** Rebuilds allowed. @defaultValue {@link DEFAULT_TRIAL_BUDGET} */
  budget?: number;
  /** Nodes that may not be kept in fp32 by this search (already excluded ones, say). */
  ignore?: readonly string[];
  /**
   * Readers of each weight (the plan's `weightReaders`). Keeping one reader of a shared weight fp32
   * keeps them all (the file holds the weight once), so the search weighs and tries them as one choice.
   * @defaultValue no shared weights
   */
  weightReaders?: Readonly<Record<string, readonly string[]>>;
}

/**
 * The price a node with no weights (an attention MatMul: no bytes of its own)
 * takes when ranking by gain per cost, so that a cost of 0 does not put it
 * first whatever its gain; about one 256 × 256 projection's price.
 */
export const FALLBACK_COST_FLOOR_BYTES = 256 * 1024;

/**
 * The fallback's order: estimated gain (the error a node adds) per cost (the
 * bytes keeping it fp32 adds; {@link FALLBACK_COST_FLOOR_BYTES} for a node
 * with no weights), best first. A large embedding table with a middling error
 * goes after a small projection with the same error: keeping it costs 12 MB
 * for what 200 KB would buy. A small table goes before a projection with a
 * few times its error: the floor is not added to a node's own bytes, or a
 * 768-byte segment table would be priced like a 257 KB projection.
 */
export function byGainPerCost(a: LayerErrorEntry, b: LayerErrorEntry): number {
  const cost = (e: LayerErrorEntry): number =>
    e.fp32CostBytes !== undefined && e.fp32CostBytes > 0 ? e.fp32CostBytes : FALLBACK_COST_FLOOR_BYTES;
  const score = (e: LayerErrorEntry): number => Math.max(0, e.addedError) / cost(e);
  return score(b) - score(a) || b.addedError - a.addedError;
}

/**
 * Each reader of a shared weight (read by more than one node) → every reader of
 * its group. Readers linked through a chain of shared weights are one group:
 * keeping X fp32 keeps its weights A and B fp32, so A's other readers and B's go
 * with it, and a group keyed by its first member must list them in one order.
 */
function sharedReaderGroups(
  weightReaders: Readonly<Record<string, readonly string[]>>,
): Map<string, readonly string[]> {
  const groupOf = new Map<string, Set<string>>();
  for (const readers of Object.values(weightReaders)) {
    if (readers.length < 2) continue;
    const merged = new Set(readers);
    for (const r of readers) for (const n of groupOf.get(r) ?? []) merged.add(n);
    for (const n of merged) groupOf.set(n, merged);
  }
  const lists = new Map<Set<string>, readonly string[]>();
  for (const g of groupOf.values()) if (!lists.has(g)) lists.set(g, [...g]);
  return new Map([...groupOf].map(([n, g]) => [n, lists.get(g)!]));
}

/**
 * One entry per choice the fallback can make. The readers of a shared weight
 * (ALBERT's one layer, read by every layer) go fp32 together, so they are one
 * choice: their worst reader stands for them, with the added error of all of
 * them (keeping the weight fp32 removes each reader's) and the weight's bytes
 * once. Ranked reader by reader, a shared weight's gain read as a quarter of
 * what keeping it buys, and a reverted reader left its fellows to be tried
 * again: the same build validated twice.
 */
function mergeSharedReaders(
  entries: readonly LayerErrorEntry[],
  groups: ReadonlyMap<string, readonly string[]>,
): LayerErrorEntry[] {
  const byWeight = new Map<string, LayerErrorEntry[]>();
  const out: LayerErrorEntry[] = [];
  for (const e of entries) {
    const key = groups.get(e.node)?.[0];
    if (key === undefined) out.push(e);
    else byWeight.set(key, [...(byWeight.get(key) ?? []), e]);
  }
  for (const readers of byWeight.values()) {
    const worst = readers.reduce((a, b) => (b.addedError > a.addedError ? b : a));
    out.push({
      ...worst,
      relError: Math.max(...readers.map((r) => r.relError)),
      addedError: readers.reduce((sum, r) => sum + Math.max(0, r.addedError), 0),
      sharedReaders: readers.length,
    });
  }
  return out;
}

/** Rebuilds the fallback may try before giving up. */
export const DEFAULT_TRIAL_BUDGET = 8;

/** Outcome of {@link runFallback}. */
export interface FallbackResult<M> {
  /** The candidate that passed, or the best one seen when none did. */
  best: FallbackCandidate<M>;
  passed: boolean;
  /** Nodes kept fp32 in `best`, in the order they were added, with their measured error. */
  keptFp32: LayerErrorEntry[];
  trials: FallbackTrial[];
  /** The ranking of the original candidate; empty when it passed as it was (nothing was ranked). */
  ranking: LayerErrorEntry[];
}

/**
 * Keeps nodes in fp32 (the readers of a shared weight as one, {@link mergeSharedReaders}),
 * a few more each trial, the best estimated gain per cost
 * first ({@link byGainPerCost}), until the gate holds or the budget is spent;
 * each trial records what it bought (agreement, bound, logit error) and paid
 * (bytes). After each rebuild the ranking is measured
 * again, because removing one bad node changes the error every later node sees.
 * The number added per trial grows (1, 1, 1, 2, 3, 4, …) so a model with many
 * mildly sensitive nodes is still reached within a small budget. A trial that
 * did not help (less agreement than the candidate it started from, or as
 * much with no smaller logit error) is reverted: its nodes go back to int8, are not
 * tried again, and the trial is recorded as `reverted`, so no node stays fp32
 * without having bought something. Once the gate holds, the rebuilds left go
 * to the size phase ({@link dropUnneeded}): a kept node the passing build does
 * not need goes back to int8.
 *
 * @throws USAGE when `opts.budget` is not a non-negative integer
 */
export async function runFallback<M>(
  start: FallbackCandidate<M>,
  hooks: FallbackHooks<M>,
  opts: FallbackOptions,
): Promise<FallbackResult<M>> {
  const budget = opts.budget ?? DEFAULT_TRIAL_BUDGET;
  if (!Number.isInteger(budget) || budget < 0) {
    throw new QuantdError("USAGE", `fallback trial budget must be a non-negative integer, got ${budget}`);
  }
  const ignore = new Set(opts.ignore ?? []);
  const groups = sharedReaderGroups(opts.weightReaders ?? {});
  const trials: FallbackTrial[] = [];
  const kept: LayerErrorEntry[] = [];
  let current = start;
  if (checkGate(start.metrics, opts.gate).passed) {
    return { best: start, passed: true, keptFp32: [], trials, ranking: [] };
  }
  const ranking = await hooks.rank(start.model);
  let ranked = ranking;
  for (let trial = 0; trial < budget; trial++) {
    const next = mergeSharedReaders(ranked, groups)
      .filter((e) => !ignore.has(e.node))
      .sort(byGainPerCost)
      .slice(0, Math.max(1, Math.floor(kept.length / 2)));
    if (next.length === 0) break;
    const names = [...kept, ...next].map((k) => k.node);
    const model = await hooks.rebuild(names);
    const metrics = await hooks.validate(model);
    const passed = checkGate(metrics, opts.gate).passed;
    // Kept only when it passed or helped; a reverted trial's nodes are never tried again.
    const reverted = !passed && !helped(metrics, current.metrics);
    trials.push(trialRecord(names, next, metrics, current.metrics, passed, reverted));
    for (const e of next) for (const n of groups.get(e.node) ?? [e.node]) ignore.add(n);
    if (reverted) {
      ranked = ranked.filter((e) => !ignore.has(e.node));
      continue;
    }
    kept.push(...next);
    current = { model, metrics };
    if (passed) {
      const shrunk = await dropUnneeded(
        { best: current, kept },
        hooks,
        opts.gate,
        budget - trials.length,
        trials,
      );
      return { best: shrunk.best, passed: true, keptFp32: shrunk.kept, trials, ranking };
    }
    if (trial + 1 < budget) ranked = await hooks.rank(current.model);
  }
  return { best: current, passed: false, keptFp32: kept, trials, ranking };
}

/**
 * The size phase, once the gate holds with rebuilds left: each kept choice that
 * has bytes of its own, the most bytes first, goes back to int8 for one trial;
 * the drop stands when the gate still holds (its bytes saved), else it is
 * undone and the trial recorded as reverted. A node kept on the way because it
 * helped then (a cheap table, say) may not be needed once a later trial met the
 * gate. A set of kept nodes already validated in this search is not built again.
 */
async function dropUnneeded<M>(
  from: { best: FallbackCandidate<M>; kept: readonly LayerErrorEntry[] },
  hooks: FallbackHooks<M>,
  gate: GateSpec,
  rebuildsLeft: number,
  trials: FallbackTrial[],
): Promise<{ best: FallbackCandidate<M>; kept: LayerErrorEntry[] }> {
  const setOf = (names: readonly string[]): string => [...names].sort().join("\n");
  const built = new Set(trials.map((t) => setOf(t.keptFp32)));
  let { best } = from;
  let kept = [...from.kept];
  const byBytes = kept
    .filter((e) => (e.fp32CostBytes ?? 0) > 0)
    .sort((a, b) => (b.fp32CostBytes ?? 0) - (a.fp32CostBytes ?? 0));
  let left = rebuildsLeft;
  for (const drop of byBytes) {
    const names = kept.filter((e) => e !== drop).map((e) => e.node);
    // No names is the build the search started from, which missed the gate.
    if (left <= 0 || names.length === 0 || built.has(setOf(names))) continue;
    built.add(setOf(names));
    left--;
    const model = await hooks.rebuild(names);
    const metrics = await hooks.validate(model);
    const passed = checkGate(metrics, gate).passed;
    const record = trialRecord(names, [], metrics, best.metrics, passed, !passed);
    trials.push({
      ...record,
      dropped: [drop.node],
      bought: { ...record.bought!, bytes: -(drop.fp32CostBytes ?? 0) },
    });
    if (!passed) continue;
    kept = kept.filter((e) => e !== drop);
    best = { model, metrics };
  }
  return { best, kept };
}

/**
 * Whether a trial's candidate improves on the one it started from: more
 * agreement, or as much with a smaller logit error. The point estimates, not
 * the bounds: a validation that stopped early has a wider bound for its
 * fewer samples, which would read as a loss.
 */
function helped(m: GateMetrics, from: GateMetrics): boolean {
  return (
    m.agreement > from.agreement ||
    (m.agreement === from.agreement && m.meanAbsLogitDiff < from.meanAbsLogitDiff)
  );
}

/** A fallback trial as the report records it: what it kept, measured and bought against where it started. */
function trialRecord(
  names: string[],
  added: readonly LayerErrorEntry[],
  metrics: GateMetrics,
  from: GateMetrics,
  passed: boolean,
  reverted: boolean,
): FallbackTrial {
  return {
    keptFp32: names,
    agreement: metrics.agreement,
    meanAbsLogitDiff: metrics.meanAbsLogitDiff,
    passed,
    added: added.map((e) => e.node),
    agreementLower: metrics.agreementLower,
    bought: boughtAgainst(
      metrics,
      from,
      added.reduce((sum, e) => sum + (e.fp32CostBytes ?? 0), 0),
    ),
    ...(reverted ? { reverted: true } : {}),
  };
}
