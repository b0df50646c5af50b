/**
 * Paths every test needs. Tests that use only what the repository ships use
 * {@link repoRoot} and {@link shippedModelDir}; tests that need the shared
 * reference material (golden data, reference models) check {@link hasShared}
 * and skip with a clear message when it is absent.
 */
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (the directory holding package.json). */
export const repoRoot: string = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The read-only shared reference material, `../shared` from the repository root. */
export const sharedDir: string = resolve(repoRoot, "../shared");

/** Whether {@link sharedDir} exists and holds the SST-2 golden data and reference models. */
export const hasShared: boolean =
  existsSync(resolve(sharedDir, "data/sst2/golden.dev.jsonl")) &&
  existsSync(resolve(sharedDir, "models/sst2-bert-mini"));

/** The BERT-Mini SST-2 model directory the repository ships (model.onnx, tokenizer, config). */
export const shippedModelDir: string = resolve(repoRoot, "calib/models/sst2-bert-mini");

/** The shipped fp32 model file. */
export const shippedModelPath: string = resolve(shippedModelDir, "model.onnx");

/** The shipped labelled SST-2 dev set (872 rows, `label<TAB>sentence`). */
export const shippedDevTsv: string = resolve(repoRoot, "calib/samples/sst2-dev.tsv");

/** Message for `test.skipIf(!hasShared)` so a skipped run says why. */
export const sharedSkipReason: string = `shared reference material not found at ${sharedDir}; golden-data tests skipped`;
