/**
 * The quantizer as a library function: plan → calibrate (static mode) → graph
 * rewrite passes. The CLI, the accuracy gate with its sensitivity fallback and
 * the report are built on top of {@link quantizeModel}; the fallback rebuilds
 * with more nodes excluded by passing back the `ranges` of the first build, so
 * a rebuild costs a rewrite (about a second), not a calibration.
 *
 * The measured variants and methods behind these defaults (`bun bench/quant-variants.ts`):
 * `bench/results/quant-variants.md`.
 *
 * Why these defaults:
 * - Only MatMul/Gemm inputs are quantized (no QuantizeLinear on outputs): ORT
 *   fuses each into MatMulIntegerToFloat (int8 GEMM, float out), so LayerNorm,
 *   GELU, Softmax and the residual adds stay fp32 and keep ORT's transformer
 *   fusions (Gelu, FusedMatMul). Output QDQ (→ QLinearMatMul + a
 *   DequantizeLinear before every fp32 op) measured ~10 % slower. ORT's own
 *   static tool quantizes every op (QLinearAdd, QLinearSoftmax…): slower and
 *   less accurate (4 flips on near-ties vs our 1–2).
 * - `format: "fused"` writes MatMulIntegerToFloat with the bias folded in,
 *   which ORT's QDQ fusion cannot do (it leaves 20 bias Adds): same logits,
 *   ~8 % faster, and the only static form under 0.9 × ORT's faster reference.
 *   It is the static default; `--format qdq` writes the portable QDQ form
 *   (any ONNX runtime), and `--mode auto` measures both.
 * - Per-channel int8 weights, uint8 activations, no reduce-range: the
 *   qnnpack-style scheme MLAS runs natively on x86 (VNNI) and arm64 (dot).
 * - Embedding tables int8 with one scale per row: the word table is over half
 *   the file; per-tensor scales cost 0.3–0.5 point of agreement for no speed.
 * - Attention activation×activation MatMuls stay fp32: quantizing them was
 *   slower (0.90 vs 0.84) and flipped more samples (99.54 %).
 * - Pooler and classifier quantized: keeping the pooler fp32 gives 100 %
 *   agreement but 26.44 % of the file, over the 26 % target.
 * - Run-time Reshape shapes become constants (126 nodes fewer, ~2.5 %).
 * - percentile (99.999 %) is the default method: on the shipped model the
 *   methods differ by one or two near-tie sentences, and percentile is the one
 *   that lost neither agreement nor accuracy there.
 */
import { assertNever, QuantdError } from "../errors.ts";
import { encodeModel } from "../onnx/codec.ts";
import { copyForEdit } from "../onnx/graph.ts";
import { type OpsetUpgrade, upgradeOpset } from "../onnx/opset-upgrade.ts";
import type { ModelProto } from "../onnx/types.ts";
import type { BatchEncoding } from "../runtime/tokenizer.ts";
import { applyBiasCorrections, type BiasCorrections, biasSites } from "./bias-correction.ts";
import { calibrate } from "./calibrate.ts";
import { assertRunnableGraph } from "./graph-check.ts";
import { type ConstantReshapeResult, simplifyReshapeShapes } from "./passes/constant-reshape.ts";
import { insertDynamicMatMul } from "./passes/dynamic-matmul.ts";
import { quantizeEmbeddings } from "./passes/embedding.ts";
import { type LoweredModel, type LoweredNode, lowerContribOps } from "./passes/lower-contrib.ts";
import { insertStaticQdq } from "./passes/qdq-static.ts";
import { GraphRewrite, MS_DOMAIN } from "./passes/rewrite.ts";
import { insertWeightOnly } from "./passes/weight-only.ts";
import {
  type ActivationType,
  applyRanges,
  type DynamicQuantizeOptions,
  defaultQuantizeOptions,
  type EmbeddingTarget,
  excludeNodes,
  type PackedAttentionTarget,
  planQuantization,
  type QuantizeOptions,
  type QuantPlan,
  type StaticQuantizeOptions,
  type TensorRange,
  type WeightMatMulTarget,
  type WeightOnlyTarget,
} from "./plan.ts";
import { computeActivationQParams, type QParams } from "./qparams.ts";

export type { QuantizeOptions, QuantPlan } from "./plan.ts";

/** What {@link quantizeModel} needs besides the options. */
export interface QuantizeInputs {
  /** Tokenized calibration batches (static mode, unless `ranges` is given). */
  calibration?: readonly BatchEncoding[];
  /**
   * Activation ranges from an earlier build of the same model (its
   * `QuantizeResult.ranges`): skips calibration, so a rebuild with more
   * nodes excluded is cheap.
   */
  ranges?: ReadonlyMap<string, TensorRange>;
  /**
   * What to add to the biases of quantized MatMuls (`bias-correction.ts`); a
   * bias whose readers are not all quantized in this build keeps its value.
   */
  biasCorrections?: BiasCorrections;
}

/**
 * Options of {@link quantizeModel}: `type` plus any option to override (the
 * rest come from {@link defaultQuantizeOptions}), plus the inputs.
 */
export type QuantizeModelOptions = (
  | ({ type: "static" } & Partial<Omit<StaticQuantizeOptions, "type">>)
  | ({ type: "dynamic" } & Partial<Omit<DynamicQuantizeOptions, "type">>)
) &
  QuantizeInputs;

/** Wall-clock time of each stage, in milliseconds. */
export interface QuantizeTimings {
  planMs: number;
  calibrationMs: number;
  quantizationMs: number;
  totalMs: number;
}

/** The quantized model and how it was made. */
export interface QuantizeResult {
  /** A new model; the input model is not modified. */
  model: ModelProto;
  /** The final plan (after dropping targets with unusable ranges). */
  plan: QuantPlan;
  /** The resolved options. */
  options: QuantizeOptions;
  /** Activation ranges used (static; empty for dynamic). */
  ranges: ReadonlyMap<string, TensorRange>;
  /** The bias corrections asked for (a rebuild passes them on); empty when none. */
  biasCorrections: BiasCorrections;
  /** Quantization parameters written for each activation (static). */
  qparams: ReadonlyMap<string, QParams>;
  /** What the Reshape-shape simplification did (or why it was reverted). */
  shapes: ConstantReshapeResult;
  /** Fused contrib ops lowered to standard ops before planning (FusedGemm, FusedMatMul, EmbedLayerNormalization). */
  lowered: LoweredNode[];
  /** The model's default-domain opset and the one written (13 when an opset 11/12 model was upgraded). */
  opset: { from: number; to: number };
  timings: QuantizeTimings;
}

/** Resolves partial options against the defaults. */
export function resolveQuantizeOptions(opts: QuantizeModelOptions): QuantizeOptions {
  const { calibration: _c, ranges: _r, biasCorrections: _b, ...rest } = opts;
  switch (rest.type) {
    case "static":
      return defaultQuantizeOptions("static", stripUndefined(rest));
    case "dynamic": {
      const { type: _t, ...dyn } = stripUndefined(rest) as Partial<DynamicQuantizeOptions> & {
        method?: unknown;
        quantizeAttentionMatMuls?: unknown;
        format?: unknown;
        activations?: unknown;
      };
      // Static-only fields (a caller building both modes from one object) mean nothing here.
      const { method: _m, quantizeAttentionMatMuls: _q, format: _f, activations: _a, ...dynamicOnly } = dyn;
      return defaultQuantizeOptions("dynamic", dynamicOnly);
    }
    default:
      return assertNever(rest, "quantization mode");
  }
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

/**
 * Reshape rewrites already confirmed by onnxruntime, per fp32 input model: the
 * gate's fallback and `auto` mode rebuild from the same model several times,
 * and each check costs two session loads.
 */
const verifiedShapes = new WeakMap<ModelProto, string>();

function ensureOpset(model: ModelProto, domain: string, version: number): void {
  if (!model.opsetImport.some((o) => o.domain === domain)) model.opsetImport.push({ domain, version });
}

/** Activation quantization parameters from calibrated ranges (asymmetric, uint8 unless asked for int8). */
export function activationQParams(
  plan: QuantPlan,
  ranges: ReadonlyMap<string, TensorRange>,
  reduceRange: boolean,
  type: ActivationType = "uint8",
): Map<string, QParams> {
  const out = new Map<string, QParams>();
  for (const name of plan.observe) {
    const r = ranges.get(name);
    if (r === undefined) continue;
    out.set(name, computeActivationQParams(r.min, r.max, { reduceRange, type }));
  }
  return out;
}

/**
 * The graph {@link quantizeModel} plans on and rewrites: the fp32 model with
 * its opset moved up and its weight-hiding contrib ops lowered. Its node and
 * tensor names are the int8 model's, so a measurement that compares the two
 * tensor by tensor (bias correction) runs the fp32 side on it.
 *
 * @throws QUANT_UNSUPPORTED when the opset is older than 11 or an opset 11/12 node cannot be moved to 13
 */
export function planningGraph(input: ModelProto): LoweredModel & { opset: OpsetUpgrade } {
  // Per-channel DequantizeLinear needs opset 13: older TorchScript exports (11, 12) are moved up.
  const opset = upgradeOpset(input);
  // Fused contrib ops that hide a weight become the standard ops they fuse; the rest of the
  // pipeline then sees one graph (same function) whose weights are all in reach.
  return { ...lowerContribOps(opset.model), opset };
}

/**
 * Quantizes an fp32 model to int8.
 *
 * @throws MODEL_ALREADY_QUANTIZED when the model holds quantization ops
 * @throws QUANT_UNSUPPORTED when the opset is older than 11, an opset 11/12 node cannot be moved to 13, or a
 *   node's op is in a domain onnxruntime has no kernels for
 * @throws MODEL_INVALID when a node reads a tensor nothing makes
 * @throws CALIB_EMPTY in static mode without calibration batches or ranges
 * @throws USAGE when `exclude` names a node that is not in the model
 * @throws CALIB_FAILED / QUANT_FAILED from calibration and the passes
 */
export async function quantizeModel(input: ModelProto, opts: QuantizeModelOptions): Promise<QuantizeResult> {
  const t0 = performance.now();
  const options = resolveQuantizeOptions(opts);
  assertRunnableGraph(input);
  const { model, lowered, opset } = planningGraph(input);
  let plan = planQuantization(model, options);
  const planMs = performance.now() - t0;

  let ranges: ReadonlyMap<string, TensorRange> = new Map();
  let calibrationMs = 0;
  switch (options.type) {
    case "static": {
      const tc = performance.now();
      if (opts.ranges !== undefined) {
        ranges = opts.ranges;
      } else if (plan.observe.length > 0) {
        const batches = opts.calibration ?? [];
        if (batches.length === 0) {
          throw new QuantdError(
            "CALIB_EMPTY",
            "static quantization needs calibration samples, and none were given",
          );
        }
        const res = await calibrate(model, plan.observe, batches, { method: options.method });
        ranges = res.ranges;
        // Reused ranges mean no calibration ran: the time stays 0.
        calibrationMs = performance.now() - tc;
      }
      plan = applyRanges(plan, ranges);
      break;
    }
    case "dynamic":
      break;
    default:
      assertNever(options, "quantization mode");
  }

  const tq = performance.now();
  const out = copyForEdit(model);
  const biasCorrections = opts.biasCorrections ?? new Map<string, Float32Array>();
  if (biasCorrections.size > 0) applyBiasCorrections(out, biasSites(model, plan.quantized), biasCorrections);
  const rw = new GraphRewrite(out.graph);
  const qparams =
    options.type === "static"
      ? activationQParams(plan, ranges, options.reduceRange, options.activations)
      : new Map();
  const embeddings = plan.quantized.filter((t): t is EmbeddingTarget => t.kind === "embedding");
  switch (options.type) {
    case "static":
      insertStaticQdq(rw, plan.quantized, qparams, options);
      break;
    case "dynamic":
      insertDynamicMatMul(
        rw,
        plan.quantized.filter(
          (t): t is WeightMatMulTarget | PackedAttentionTarget =>
            t.kind === "weight-matmul" || t.kind === "packed-attention",
        ),
        options,
      );
      break;
    default:
      assertNever(options, "quantization mode");
  }
  quantizeEmbeddings(rw, embeddings, {
    granularity: options.embeddingGranularity,
    reduceRange: options.reduceRange,
  });
  insertWeightOnly(
    rw,
    plan.quantized.filter((t): t is WeightOnlyTarget => t.kind === "weight-only"),
    options,
  );
  rw.commit();
  if (options.type === "static" && options.format === "fused") ensureOpset(out, MS_DOMAIN, 1);
  out.producerName = "quantd";
  const shapes = options.simplifyShapes
    ? await simplifyReshapeShapes(out, encodeModel, verifiedShapes.get(input))
    : { reshapes: 0, removedNodes: 0, reverted: "disabled" };
  if (shapes.signature !== undefined) verifiedShapes.set(input, shapes.signature);
  const quantizationMs = performance.now() - tq;
  return {
    model: out,
    plan,
    options,
    ranges,
    biasCorrections,
    qparams,
    shapes,
    lowered,
    opset: { from: opset.from, to: opset.to },
    timings: { planMs, calibrationMs, quantizationMs, totalMs: performance.now() - t0 },
  };
}

/**
 * Rebuilds a quantized model from an earlier result with `exclude` more nodes
 * kept fp32, reusing its ranges (no calibration) and its bias corrections.
 */
export async function requantize(
  model: ModelProto,
  previous: Pick<QuantizeResult, "options" | "ranges"> & { biasCorrections?: BiasCorrections },
  exclude: readonly string[],
): Promise<QuantizeResult> {
  const merged = [...new Set([...previous.options.exclude, ...exclude])];
  const base: QuantizeModelOptions = {
    ...previous.options,
    exclude: merged,
    ranges: previous.ranges,
    ...(previous.biasCorrections !== undefined ? { biasCorrections: previous.biasCorrections } : {}),
  };
  return quantizeModel(model, base);
}

/** Re-export for callers that hold a plan and want to narrow it without rebuilding. */
export { excludeNodes };
