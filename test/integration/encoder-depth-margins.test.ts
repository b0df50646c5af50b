/**
 * The architecture fixtures keep a fine-tuned classifier's fp32 margins at a
 * real checkpoint's depth, so agreement between fp32 and int8 still means
 * something there: built at 12 layers (ALBERT: its one shared layer called 12
 * times, as albert-base-v2 does), the planted sentiment path still decides on
 * the held-out SST-2 train sentences the encoders benchmark validates on, with
 * few rows near a tie and neither class rare.
 *
 * 256 wide, so the test is quick: the margins depend on depth, not width (at
 * 4 layers × 768 they spread as at 4 × 256).
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { percentile } from "../../src/bench/stats.ts";
import { readSampleTsv, splitSamples } from "../../src/quant/samples.ts";
import { loadClassifier } from "../../src/runtime/classifier.ts";
import { architecture } from "../fixtures/encoders/architectures.ts";
import { writeEncoderFixture } from "../fixtures/encoders/write-fixture.ts";
import { repoRoot } from "../helpers/paths.ts";

setDefaultTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-encoder-depth-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const DEPTH = 12;
const pool = join(repoRoot, "calib/samples/sst2-train-4k.tsv");

/** fp32 margins |logit1 − logit0| and the share of positive answers over quantize's 1,024 held-out rows. */
async function heldOutMargins(model: string): Promise<{ margins: number[]; positive: number }> {
  const req = { calibration: 128, validation: 1024, needed: 1, gateWords: "" };
  const { validation } = splitSamples(await readSampleTsv(pool), req, false, pool);
  const c = await loadClassifier(model, { session: { intraOpThreads: 1 } });
  try {
    const out = await c.classify(validation.map((v) => v.text));
    return {
      margins: out.map((o) => Math.abs(o.logits[1]! - o.logits[0]!)),
      positive: out.filter((o) => o.label === "positive").length / out.length,
    };
  } finally {
    await c.release();
  }
}

// ALBERT's shared layer settles [CLS]'s polarity rather than compounding it (at the pass that split over
// 12 layers suits different layers, its median margin was 0.9 with 5.8 % of rows within 0.1 of a tie);
// BERT's different layers compound it.
describe.each(["albert", "bert"])("%s at 12 layers", (name) => {
  test("fp32 margins: a median of several logits, few rows near a tie, both classes common", async () => {
    const arch = { ...architecture(name), layers: DEPTH };
    const { model } = await writeEncoderFixture(arch, join(dir, name), {
      hidden: 256,
      heads: 4,
      intermediate: 1024,
    });
    const { margins, positive } = await heldOutMargins(model);
    expect(margins).toHaveLength(1024);
    expect(percentile(margins, 50)).toBeGreaterThan(3);
    expect(margins.filter((m) => m < 0.1).length / margins.length).toBeLessThan(0.015);
    expect(positive).toBeGreaterThan(0.2);
    expect(positive).toBeLessThan(0.8);
  });
});
