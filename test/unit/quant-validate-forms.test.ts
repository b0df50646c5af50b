/**
 * A dynamic candidate is judged in both forms serving runs a sample in: its
 * serving batch (one token length, up to 16) and alone. Real onnxruntime
 * sessions over hand-built graphs whose batched and alone logits differ by
 * construction: each row's value p is the position of its largest token id;
 * fp32 answers [−eᵖ, p] (always class 1); the candidate answers
 * [p, max of p over the batch], so alone it ties (class 0: a flip) and in a
 * batch only the rows holding the batch's largest p flip.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeModel } from "../../src/onnx/codec.ts";
import { checkGate, type GateSpec } from "../../src/quant/gate.ts";
import type { QuantSample } from "../../src/quant/samples.ts";
import { createValidator } from "../../src/quant/validate.ts";
import { loadTokenizer } from "../../src/runtime/tokenizer.ts";
import { shippedModelDir } from "../helpers/paths.ts";
import { ONNX_FLOAT, ONNX_INT64, type TinyNode, tinyOnnxModel } from "../helpers/tiny-onnx.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-validate-forms-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** p: the position of each row's largest token id, as a float [batch, 1]. */
const positionOfMax: TinyNode[] = [
  { opType: "Cast", inputs: ["input_ids"], outputs: ["ids"], intAttrs: { to: ONNX_FLOAT } },
  { opType: "ArgMax", inputs: ["ids"], outputs: ["at"], intAttrs: { axis: 1, keepdims: 1 } },
  { opType: "Cast", inputs: ["at"], outputs: ["p"], intAttrs: { to: ONNX_FLOAT } },
];
const io = {
  inputs: [{ name: "input_ids", elemType: ONNX_INT64, dims: ["batch", "seq"] }],
  outputs: [{ name: "logits", elemType: ONNX_FLOAT, dims: ["batch", 2] }],
};
const fp32 = tinyOnnxModel(
  [
    ...positionOfMax,
    { opType: "Exp", inputs: ["p"], outputs: ["e"] },
    { opType: "Neg", inputs: ["e"], outputs: ["low"] },
    { opType: "Concat", inputs: ["low", "p"], outputs: ["logits"], intAttrs: { axis: 1 } },
  ],
  io.inputs,
  io.outputs,
);
const batchDependent = decodeModel(
  tinyOnnxModel(
    [
      ...positionOfMax,
      { opType: "ReduceMax", inputs: ["p"], outputs: ["m"], intAttrs: { keepdims: 1 } },
      { opType: "Max", inputs: ["p", "m"], outputs: ["high"] },
      { opType: "Concat", inputs: ["p", "high"], outputs: ["logits"], intAttrs: { axis: 1 } },
    ],
    io.inputs,
    io.outputs,
  ),
);
const fp32Path = join(dir, "fp32.onnx");
writeFileSync(fp32Path, fp32);

// Many samples of few token lengths, so serving batches hold several rows with distinct positions.
const words = ["good", "bad", "movie", "plot", "actor", "great", "dull", "fun"];
const samples: QuantSample[] = Array.from({ length: 240 }, (_, i) => ({
  text: Array.from({ length: 3 + (i % 4) }, (_, k) => words[(i * 7 + k * 3 + (i >> 3)) % words.length]).join(
    " ",
  ),
  origin: `test:${i}`,
  id: i + 1,
}));
const gate: GateSpec = { minAgreement: 0.5, confidence: 0.95 };

async function validator(earlyStop: boolean) {
  const tokenizer = await loadTokenizer(shippedModelDir, { maxLength: 32 });
  return createValidator({
    tokenizer,
    maxLength: 32,
    samples,
    gate,
    fp32: { path: fp32Path, sha256: "forms-test" },
    session: { intraOpThreads: 1 },
    earlyStop,
  });
}

describe("dynamic candidates are gated alone and in their serving batch", () => {
  test("a sample that agrees in its batch but flips alone counts as a flip; both forms' flips are reported", async () => {
    const v = await validator(false);
    const { metrics } = await v.validate(batchDependent, true);
    expect(metrics.n).toBe(samples.length);
    const forms = metrics.servingForms!;
    // Alone, every row ties and takes class 0; in batches only each batch's largest p does.
    expect(forms.aloneFlips).toBe(samples.length);
    expect(forms.batchedFlips).toBeGreaterThan(0);
    expect(forms.batchedFlips).toBeLessThan(samples.length / 2);
    // Gated in batches alone, this candidate would pass the 50 % gate; it agrees in both forms nowhere.
    expect(metrics.gateAgreements).toBe(0);
    expect(metrics.agreement).toBe(0);
    expect(checkGate(metrics, gate).passed).toBe(false);
    // Every sample that shared a batch ran a second time, alone.
    expect(v.summary().aloneSamples).toBeGreaterThan(samples.length / 2);
    expect(v.summary().aloneSamples).toBeLessThanOrEqual(samples.length);
  });

  test("early stop counts the same trial: the candidate stops as failed once it cannot pass", async () => {
    const v = await validator(true);
    const { metrics, stopped } = await v.validate(batchDependent, true);
    expect(stopped).toBe("failed");
    expect(metrics.n).toBeLessThan(samples.length);
    expect(metrics.servingForms!.aloneFlips).toBe(metrics.n);
  });

  test("a static candidate runs once, in length-sorted batches, with no alone runs", async () => {
    const v = await validator(false);
    const { metrics } = await v.validate(decodeModel(fp32), false);
    expect(metrics.agreement).toBe(1);
    expect(metrics.servingForms).toBeUndefined();
    expect(v.summary().aloneSamples).toBeUndefined();
  });
});
