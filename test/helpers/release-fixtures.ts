/**
 * Releases for the fleet tests: a "retrained" fp32 model directory made from
 * the shipped BERT-Mini (same tokenizer and labels, classifier bias moved, so
 * another model with other bytes) and a board's own unlabelled samples.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "./paths.ts";

/** A "retrained" fp32 model directory: the shipped model with its classifier bias moved by `shift`. */
export async function writeRetrainedModel(dir: string, shift: number, validationRows = 0): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const model = await loadModel(shippedModelPath);
  const bias = model.graph.initializer.find((t) => t.name === "classifier.bias")!;
  const b = new Float32Array(bias.rawData!.slice().buffer);
  bias.rawData = new Uint8Array(Float32Array.from([b[0]! + shift, b[1]! - shift]).buffer);
  await saveModel(model, join(dir, "model.onnx"));
  for (const f of ["tokenizer.json", "config.json"]) copyFileSync(join(shippedModelDir, f), join(dir, f));
  if (validationRows > 0) {
    const dev = readFileSync(join(repoRoot, "calib/samples/sst2-dev.tsv"), "utf8").split("\n");
    writeFileSync(join(dir, "validation.tsv"), `${dev.slice(0, validationRows + 1).join("\n")}\n`);
  }
  return dir;
}

/** The board's own samples: SST-2 training sentences, unlabelled as live traffic would be. */
export function trainingRows(n: number): { text: string }[] {
  return readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8")
    .split("\n")
    .slice(1, n + 1)
    .filter((l) => l.includes("\t"))
    .map((l) => ({ text: l.split("\t")[1]! }));
}
