/**
 * Runs a classifier over a sample set: accuracy where samples carry labels, and,
 * against a second model (typically int8 against its fp32 parent), top-1
 * agreement and logit differences. Latency is recorded per batch for the model
 * under evaluation; it counts inference only (tokenization is shared by both
 * models and measured by neither), so it is comparable between models.
 */
import { percentile } from "../core/stats.ts";
import { QuantdError } from "../errors.ts";
import { argmax, type BatchLogits, type Classifier } from "./classifier.ts";
import { validateText } from "./text.ts";
import { type BatchEncoding, type BatchingMode, planBatches } from "./tokenizer.ts";
import type { TsvSample } from "./tsv.ts";

/** Options for {@link evaluate}. */
export interface EvaluateOptions {
  /** A second model to compare against (agreement, logit differences). */
  compare?: Classifier;
  /** Most samples per inference call. @defaultValue 16 */
  batchSize?: number;
  /**
   * How samples are grouped into batches (results are in input order either
   * way). The default runs no padding at all, so every sample's logits are what
   * it gets alone, whatever `batchSize` — the fair way to compare int8 models,
   * some of which (ORT's static QDQ reference) leak attention into padding, and
   * the way a board serving one request at a time sees them. On the SST-2 dev set
   * at batch 16 (fp32, 1 thread) it runs about 1.7× faster than `"input-order"`
   * and within 5 % of `"sorted"`. A dynamically
   * quantized model still depends on the batch (its activation scale spans all
   * rows): use batch size 1 to reproduce one-at-a-time figures for it.
   * @defaultValue "unpadded"
   */
  batching?: BatchingMode;
  /** Called after each batch with samples done so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** Per-batch inference latency of one model. */
export interface EvalLatency {
  /** Inference calls made. */
  batches: number;
  /** Total inference time divided by samples, in milliseconds. */
  meanMsPerSample: number;
  /** Median inference time of a batch, in milliseconds. */
  p50MsPerBatch: number;
  /** 90th percentile inference time of a batch, in milliseconds. */
  p90MsPerBatch: number;
}

/** What {@link evaluate} measured. Fractions are in [0, 1]. */
export interface EvalResult {
  /** Samples evaluated. */
  n: number;
  /** Samples with a label (accuracy figures count only these). */
  labelled: number;
  /** Top-1 accuracy of the model on the labelled samples, when there are any. */
  accuracy?: number;
  /** Fraction of samples on which both models pick the same class (with `compare`). */
  agreement?: number;
  /** Samples on which they differ (with `compare`). */
  disagreements?: number;
  /** Largest |model − compare| over every logit (with `compare`). */
  maxAbsLogitDiff?: number;
  /** Mean |model − compare| over every logit (with `compare`). */
  meanAbsLogitDiff?: number;
  /** Accuracy of `compare` on the labelled samples (with `compare` and labels). */
  compareAccuracy?: number;
  /** Inference latency of the model. */
  latency: EvalLatency;
  /** Inference latency of `compare`, measured on the same batches. */
  compareLatency?: EvalLatency;
  /** Predicted class of each sample (-1 where the logits were all NaN). */
  predictions: number[];
  /** Predicted class of each sample by `compare`. */
  comparePredictions?: number[];
  /** The model's logits, row-major `[n, numLabels]`, for reuse (e.g. as a gate's reference). */
  logits: Float32Array;
  /** The logits of `compare`, when given. */
  compareLogits?: Float32Array;
  /** Classes per sample. */
  numLabels: number;
}

function summarizeLatency(batchMs: readonly number[], n: number): EvalLatency {
  const total = batchMs.reduce((a, b) => a + b, 0);
  return {
    batches: batchMs.length,
    meanMsPerSample: total / n,
    p50MsPerBatch: percentile(batchMs, 50),
    p90MsPerBatch: percentile(batchMs, 90),
  };
}

/** Whether `b` would encode texts exactly as `a` does, so `a`'s encoding can be reused. */
function sameTokenization(a: Classifier, b: Classifier): boolean {
  const ta = a.tokenizer;
  const tb = b.tokenizer;
  return ta === tb || (ta.dir === tb.dir && ta.maxLength === tb.maxLength);
}

async function timed(model: Classifier, enc: BatchEncoding): Promise<{ out: BatchLogits; ms: number }> {
  const t0 = performance.now();
  const out = await model.runEncoded(enc);
  return { out, ms: performance.now() - t0 };
}

/**
 * Evaluates `model` on `samples`, optionally against `opts.compare`.
 *
 * @throws DATA_EMPTY when there are no samples
 * @throws DATA_MISMATCH when a label is out of range, or the two models have different label counts
 * @throws USAGE for a bad `batchSize`
 * @throws TEXT_* for a bad sample text (message names its line)
 * @throws INFERENCE_FAILED when onnxruntime fails
 */
export async function evaluate(
  model: Classifier,
  samples: readonly TsvSample[],
  opts: EvaluateOptions = {},
): Promise<EvalResult> {
  const n = samples.length;
  if (n === 0) throw new QuantdError("DATA_EMPTY", "no samples to evaluate");
  const batchSize = opts.batchSize ?? 16;
  // Checked here as well as in planBatches so a bad value fails before any tokenization.
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new QuantdError("USAGE", `batchSize must be a positive integer, got ${batchSize}`);
  }
  const numLabels = model.numLabels;
  const compare = opts.compare;
  if (compare !== undefined && compare.numLabels !== numLabels) {
    throw new QuantdError(
      "DATA_MISMATCH",
      `cannot compare models with ${numLabels} and ${compare.numLabels} labels ` +
        `(${model.modelPath}, ${compare.modelPath})`,
    );
  }
  for (const s of samples) {
    if (s.label !== undefined && (!Number.isInteger(s.label) || s.label < 0 || s.label >= numLabels)) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `sample at line ${s.line} has label ${s.label}, but the model has ${numLabels} labels (${model.labels.join(", ")})`,
        { details: { line: s.line, label: s.label } },
      );
    }
  }

  const logits = new Float32Array(n * numLabels);
  const compareLogits = compare === undefined ? undefined : new Float32Array(n * numLabels);
  const batchMs: number[] = [];
  const compareBatchMs: number[] = [];
  // Validate every text before the first inference, so a bad line fails fast rather than after minutes.
  const texts = samples.map((s) => validateText(s.text, { what: `sample at line ${s.line}` }));
  const encodings = texts.map((t) => model.tokenizer.encode(t));
  const reuse = compare !== undefined && sameTokenization(model, compare);
  const compareEncodings =
    compare === undefined || reuse ? undefined : texts.map((t) => compare.tokenizer.encode(t));
  const plan = planBatches(
    encodings.map((e) => e.inputIds.length),
    batchSize,
    opts.batching ?? "unpadded",
  );

  const scatter = (into: Float32Array, rows: readonly number[], data: Float32Array): void => {
    for (const [r, i] of rows.entries())
      into.set(data.subarray(r * numLabels, (r + 1) * numLabels), i * numLabels);
  };
  let done = 0;
  for (const rows of plan) {
    const enc = model.tokenizer.pad(rows.map((i) => encodings[i]!));
    const a = await timed(model, enc);
    scatter(logits, rows, a.out.data);
    batchMs.push(a.ms);
    if (compare !== undefined && compareLogits !== undefined) {
      const encB =
        compareEncodings === undefined ? enc : compare.tokenizer.pad(rows.map((i) => compareEncodings[i]!));
      const b = await timed(compare, encB);
      scatter(compareLogits, rows, b.out.data);
      compareBatchMs.push(b.ms);
    }
    done += rows.length;
    opts.onProgress?.(done, n);
  }

  const predictions = Array.from({ length: n }, (_, i) => argmax(logits, i * numLabels, numLabels));
  const labelled = samples.filter((s) => s.label !== undefined).length;
  const accuracyOf = (preds: readonly number[]): number | undefined => {
    if (labelled === 0) return undefined;
    let correct = 0;
    for (const [i, s] of samples.entries()) if (s.label !== undefined && preds[i] === s.label) correct++;
    return correct / labelled;
  };

  const result: EvalResult = {
    n,
    labelled,
    latency: summarizeLatency(batchMs, n),
    predictions,
    logits,
    numLabels,
  };
  const accuracy = accuracyOf(predictions);
  if (accuracy !== undefined) result.accuracy = accuracy;
  if (compareLogits !== undefined) {
    const comparePredictions = Array.from({ length: n }, (_, i) =>
      argmax(compareLogits, i * numLabels, numLabels),
    );
    let agree = 0;
    // -1 (all-NaN logits) agrees with nothing, not even another -1.
    for (let i = 0; i < n; i++) if (predictions[i]! >= 0 && predictions[i] === comparePredictions[i]) agree++;
    let maxAbs = 0;
    let sumAbs = 0;
    for (let i = 0; i < logits.length; i++) {
      const d = Math.abs(logits[i]! - compareLogits[i]!);
      // NaN must not vanish from the maximum: Math.max would keep it, a `>` comparison would drop it.
      maxAbs = Math.max(maxAbs, d);
      sumAbs += d;
    }
    result.agreement = agree / n;
    result.disagreements = n - agree;
    result.maxAbsLogitDiff = maxAbs;
    result.meanAbsLogitDiff = sumAbs / logits.length;
    result.comparePredictions = comparePredictions;
    result.compareLogits = compareLogits;
    result.compareLatency = summarizeLatency(compareBatchMs, n);
    const compareAccuracy = accuracyOf(comparePredictions);
    if (compareAccuracy !== undefined) result.compareAccuracy = compareAccuracy;
  }
  return result;
}
