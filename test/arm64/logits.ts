/**
 * Prints the logits of one or more models on the texts of a TSV as one JSON
 * object, so the arm64 emulation test can run the same code under qemu and on
 * the host and compare the numbers.
 *
 *   bun test/arm64/logits.ts TOKENIZER_DIR DATA.tsv MODEL.onnx [MODEL.onnx…]
 *
 * Output: `{"arch": "arm64", "logits": {"<model path>": [[l0, l1], …]}}`, rows
 * in file order. One intra-op thread, unpadded batches: the numbers do not
 * depend on how the texts are grouped.
 */
import { QuantdError } from "../../src/errors.ts";
import { loadClassifier } from "../../src/runtime/classifier.ts";
import { readSamplesTsv } from "../../src/runtime/tsv.ts";

/** What {@link modelLogits} returns and the script prints. */
export interface LogitsReport {
  arch: string;
  logits: Record<string, number[][]>;
}

/**
 * Logits of each model on the texts of `dataTsv`, tokenized with the tokenizer in `tokenizerDir`.
 *
 * @throws the QuantdError of the tokenizer, model loading or inference
 */
export async function modelLogits(
  tokenizerDir: string,
  dataTsv: string,
  models: readonly string[],
): Promise<LogitsReport> {
  const texts = (await readSamplesTsv(dataTsv)).map((s) => s.text);
  const logits: Record<string, number[][]> = {};
  for (const model of models) {
    const classifier = await loadClassifier(model, { tokenizerDir, session: { intraOpThreads: 1 } });
    try {
      const results = await classifier.classify(texts, { batchSize: 16 });
      logits[model] = results.map((r) => r.logits);
    } finally {
      await classifier.release();
    }
  }
  return { arch: process.arch, logits };
}

if (import.meta.main) {
  const [tokenizerDir, data, ...models] = process.argv.slice(2);
  if (tokenizerDir === undefined || data === undefined || models.length === 0) {
    console.error("usage: bun test/arm64/logits.ts TOKENIZER_DIR DATA.tsv MODEL.onnx [MODEL.onnx…]");
    process.exit(2);
  }
  try {
    console.log(JSON.stringify(await modelLogits(tokenizerDir, data, models)));
    process.exit(0);
  } catch (err) {
    console.error(QuantdError.from(err).toLine());
    process.exit(1);
  }
}
