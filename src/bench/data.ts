/**
 * Real text for a benchmark (`--data`): per model, its tokenizer turns labelled
 * sentences into feeds of an exact `[batch, seq]` (truncated or padded) for the
 * latency runs, and into predictions at natural lengths for accuracy and top-1
 * agreement. A data file that does not fit the model (labels beyond its classes,
 * token ids beyond its vocabulary) is a DATA_MISMATCH for that model only.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { QuantdError } from "../errors.ts";
import { argmax, feedsForEncoding } from "../runtime/classifier.ts";
import { findModelFiles } from "../runtime/model-files.ts";
import { loadTokenizer, type Tokenizer } from "../runtime/tokenizer.ts";
import type { BatchEncoding } from "../runtime/tokenizer.ts";
import type { InferenceSession, Tensor } from "../runtime/types.ts";
import type { Shape } from "./inputs.ts";
import { findVocabSize } from "./inputs.ts";
import type { BenchModel, ModelData } from "./measure.ts";

/** One labelled text. */
export interface LabelledText {
  text: string;
  label: number;
}

/** Options for {@link createModelData}. */
export interface ModelDataOptions {
  /**
   * Directory with `tokenizer.json`.
   * @defaultValue beside the model, else one folder up (where a `reference/` variant's original sits)
   */
  tokenizerDir?: string;
  /**
   * Texts per inference when predicting. One at a time by default: padding
   * leaks into ORT's static tool output (it quantizes the masked scores) and a
   * dynamic model's activation range spans the batch, so only batch 1 gives
   * each model's own figures, the way the reference numbers were taken.
   * @defaultValue 1
   */
  batchSize?: number;
}

/**
 * Where a benchmarked model's tokenizer is: `given`, else beside the model
 * (`undefined`: the loader's default), else one folder up (where a `reference/`
 * variant's original sits).
 */
export function tokenizerDirFor(modelPath: string, given: string | undefined): string | undefined {
  if (given !== undefined) return given;
  const dir = dirname(modelPath);
  if (existsSync(join(dir, "tokenizer.json"))) return undefined;
  const parent = dirname(dir);
  return existsSync(join(parent, "tokenizer.json")) ? parent : undefined;
}

function logitsOutput(session: InferenceSession): string {
  if (session.outputNames.includes("logits")) return "logits";
  const only = session.outputNames[0];
  if (session.outputNames.length !== 1 || only === undefined) {
    throw new QuantdError(
      "MODEL_INPUTS_MISMATCH",
      `cannot tell which output holds the logits (outputs: ${session.outputNames.join(", ")})`,
    );
  }
  return only;
}

function checkIdsInVocab(enc: BatchEncoding, vocabSize: number | undefined, what: string): void {
  if (vocabSize === undefined) return;
  for (const id of enc.inputIds) {
    if (id >= BigInt(vocabSize)) {
      throw new QuantdError(
        "DATA_MISMATCH",
        `the tokenizer produced id ${id}, beyond the vocabulary of ${what} (${vocabSize} tokens): wrong tokenizer?`,
        { details: { id: Number(id), vocabSize } },
      );
    }
  }
}

/**
 * Prepares the real-text inputs of one model.
 *
 * @throws DATA_EMPTY when there are no samples
 * @throws FILE_NOT_FOUND, TOKENIZER_NOT_FOUND, TOKENIZER_INVALID when the model's tokenizer cannot be found or read
 */
export async function createModelData(
  model: BenchModel,
  samples: readonly LabelledText[],
  opts: ModelDataOptions = {},
): Promise<ModelData> {
  if (samples.length === 0) throw new QuantdError("DATA_EMPTY", "the data file holds no samples");
  const files = findModelFiles(model.path, tokenizerDirFor(model.path, opts.tokenizerDir));
  const tokenizer: Tokenizer = await loadTokenizer(
    files.tokenizerDir,
    files.configPath !== undefined ? { configPath: files.configPath } : {},
  );
  const vocabSize = model.vocabSize ?? findVocabSize(model.path);
  const texts = samples.map((s) => s.text);
  const labels = samples.map((s) => s.label);
  const batchSize = opts.batchSize ?? 1;

  return {
    labels,
    feedsFor(session: InferenceSession, shape: Shape): Record<string, Tensor> {
      // Cycle through the texts to fill the batch; every row is cut or padded to exactly `seq`.
      const batch = Array.from({ length: shape.batch }, (_, i) => texts[i % texts.length]!);
      const enc = tokenizer.encodeBatch(batch, { maxLength: shape.seq, padding: "max_length" });
      if (enc.seqLen !== shape.seq) {
        throw new QuantdError(
          "DATA_MISMATCH",
          `cannot make sequences of ${shape.seq} tokens with this tokenizer (got ${enc.seqLen})`,
        );
      }
      checkIdsInVocab(enc, vocabSize, model.label);
      return feedsForEncoding(session, enc);
    },
    async predict(session: InferenceSession): Promise<number[]> {
      const output = logitsOutput(session);
      const predictions: number[] = [];
      let numLabels = 0;
      for (let start = 0; start < texts.length; start += batchSize) {
        const enc = tokenizer.encodeBatch(texts.slice(start, start + batchSize), { padding: "longest" });
        checkIdsInVocab(enc, vocabSize, model.label);
        const out = (await session.run(feedsForEncoding(session, enc), [output]))[output];
        if (out === undefined || out.type !== "float32" || out.data.length % enc.batchSize !== 0) {
          throw new QuantdError("INFERENCE_FAILED", `${output} is not a float32 [batch, classes] tensor`);
        }
        const logits = out.data as Float32Array;
        numLabels = logits.length / enc.batchSize;
        for (let r = 0; r < enc.batchSize; r++) predictions.push(argmax(logits, r * numLabels, numLabels));
      }
      const bad = labels.findIndex((l) => !Number.isInteger(l) || l < 0 || l >= numLabels);
      if (bad !== -1) {
        throw new QuantdError(
          "DATA_MISMATCH",
          `sample ${bad} has label ${labels[bad]}, but ${model.label} has ${numLabels} classes (0…${numLabels - 1})`,
          { details: { index: bad, label: labels[bad], classes: numLabels } },
        );
      }
      return predictions;
    },
  };
}
