/**
 * The exporter-shape fixtures are the synthetic BERT in other graph shapes,
 * not other models: each computes the plain model's logits (the tanh GELU and
 * FastGelu approximations move them by ~1e-4) on padded batches, so its
 * planted sentiment margins, and what agreement means on it, carry over.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { collectLogits } from "../../src/quant/pipeline.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { syntheticEncoderFixtures, TEST_BERT } from "../fixtures/exporters/index.ts";
import { buildSyntheticBert, syntheticBertInputs } from "../fixtures/synthetic-bert.ts";
import { shippedModelDir } from "../helpers/paths.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-exporter-fixtures-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// Padded batches of mixed lengths: every mask form must hide the padding the same way.
const inputs = syntheticBertInputs(48, 8, TEST_BERT.vocab, 40, 11);

async function logits(model: string | Uint8Array): Promise<Float32Array> {
  const s = await createOrtSession(model);
  try {
    return (await collectLogits(s, inputs)).data;
  } finally {
    await s.release();
  }
}

describe("exporter-shape fixtures compute the plain synthetic BERT", () => {
  let reference: Float32Array;
  test.each(syntheticEncoderFixtures(TEST_BERT).map((f) => [f.name, f] as const))(
    "%s",
    async (name, fixture) => {
      reference ??= await logits(encodeModel(buildSyntheticBert(TEST_BERT)));
      const path = await fixture.build(join(dir, name), shippedModelDir);
      const got = await logits(path);
      let worst = 0;
      for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - reference[i]!));
      expect(got.length).toBe(reference.length);
      expect(worst).toBeLessThan(1e-3);
      // And it is the graph shape it claims: not the plain model's node list.
      if (name !== "hf-opset17" && name !== "hf-external-data") {
        const ops = (await loadModel(path)).graph.node.map((n) => `${n.domain}:${n.opType}`).join(" ");
        const plain = buildSyntheticBert(TEST_BERT)
          .graph.node.map((n) => `${n.domain}:${n.opType}`)
          .join(" ");
        expect(ops).not.toBe(plain);
      }
    },
  );
});
