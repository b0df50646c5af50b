/**
 * `--mode auto` validates its candidates in latency order and stops at the
 * first that passes (`validateInLatencyOrder`): what is slower than a passing
 * candidate could not be chosen. Real builds of the synthetic BERT, validated
 * by the real validator; the latency order is given (the figures a timing run
 * would produce), since which of two int8 forms is faster on a busy 2-core
 * machine is not something a test may depend on. The timed path end to end is
 * in `quantize-cli.test.ts` (auto, with and without --validate-all).
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { saveModel } from "../../src/onnx/codec.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import {
  buildCandidates,
  buildFormats,
  type CandidateInputs,
  type FormatChoice,
  validateInLatencyOrder,
} from "../../src/quant/candidates.ts";
import type { GateSpec } from "../../src/quant/gate.ts";
import { buildSettingsOf, encodeSamples, readSampleTsv } from "../../src/quant/pipeline.ts";
import { describeFile } from "../../src/quant/report.ts";
import { createValidator, type Validator } from "../../src/quant/validate.ts";
import { loadTokenizer, type Tokenizer } from "../../src/runtime/tokenizer.ts";
import {
  buildSyntheticBert,
  SYNTHETIC_BERT_PRESETS,
  type SyntheticBertConfig,
} from "../fixtures/synthetic-bert.ts";
import { repoRoot, shippedModelDir } from "../helpers/paths.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-auto-order-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tiny: SyntheticBertConfig = { ...SYNTHETIC_BERT_PRESETS.tiny, vocab: 16384 };
/** 99 % on the point estimate over 200 sentences: the plain model passes in every form, the outlier's static build does not (see quant-fallback-synthetic.test.ts). */
const GATE: GateSpec = { minAgreement: 0.99, decideOn: "point" };
const session = { intraOpThreads: 1 };
const QDQ: FormatChoice = { mode: "static", method: "minmax", format: "qdq", activations: "uint8" };
const FUSED: FormatChoice = { mode: "static", method: "minmax", format: "fused", activations: "uint8" };
const DYNAMIC: FormatChoice = { mode: "dynamic" };
// No fallback: a candidate that misses the gate stays failed, so the order alone is under test.
const settings = buildSettingsOf(
  { trialBudget: 0, method: "minmax", format: "qdq", threads: session.intraOpThreads },
  GATE,
);

let tokenizer: Tokenizer;
let samples: Awaited<ReturnType<typeof readSampleTsv>>;

beforeAll(async () => {
  tokenizer = await loadTokenizer(shippedModelDir, { maxLength: 128 });
  samples = (await readSampleTsv(join(repoRoot, "calib/samples/sst2-train-4k.tsv"))).slice(0, 232);
});

/** A model saved for the validator's fp32 reference, with the inputs every candidate is built and validated from. */
async function subject(
  name: string,
  fp32: ModelProto,
): Promise<{ inputs: CandidateInputs; validator: Validator }> {
  const path = join(dir, `${name}.onnx`);
  await saveModel(fp32, path);
  const validation = samples.slice(32);
  const validator = createValidator({
    tokenizer,
    maxLength: tokenizer.maxLength,
    samples: validation,
    gate: GATE,
    fp32: { path, sha256: (await describeFile(path)).sha256 },
    session,
  });
  const inputs: CandidateInputs = {
    fp32,
    calibration: encodeSamples(tokenizer, samples.slice(0, 32), 8, tokenizer.maxLength).batches,
    probe: encodeSamples(tokenizer, validation.slice(0, 32), 8, tokenizer.maxLength).batches,
    validate: async (model, mode) => (await validator.validate(model, mode === "dynamic")).metrics,
    progress: () => undefined,
  };
  return { inputs, validator };
}

const label = (c: { mode: string; format?: string }): string => [c.mode, c.format].filter(Boolean).join("/");

describe("auto validates in latency order", () => {
  test("a candidate slower than one that passed is not validated; the report entry says which passed first", async () => {
    const { inputs, validator } = await subject("plain", buildSyntheticBert(tiny));
    const builds = await buildFormats([QDQ, FUSED, DYNAMIC], inputs, settings, true);
    // fused fastest, then qdq, then dynamic.
    const built = await validateInLatencyOrder(builds, [2.0, 1.0, 3.0], inputs, settings);
    expect(built.candidates.map(label)).toEqual(["static/fused"]);
    expect(built.candidates[0]!.passed).toBe(true);
    expect(built.candidates[0]!.p50Ms).toBe(1.0);
    expect(built.notValidated.map(label)).toEqual(["static/qdq", "dynamic"]);
    for (const e of built.notValidated) {
      expect(e.validated).toBe(false);
      expect(e.passed).toBe(false);
      expect(e.agreement).toBeUndefined();
      expect(e.note).toBe("not validated: static/minmax/fused passed first");
    }
    expect(built.notValidated.map((e) => e.p50Ms)).toEqual([2.0, 3.0]);
    // One candidate's samples were run, not three.
    expect(validator.summary().candidateSamples).toBeLessThanOrEqual(200);
  });

  test("validating all (--validate-all) validates every candidate, in the order asked for", async () => {
    const { inputs, validator } = await subject("plain-all", buildSyntheticBert(tiny));
    const builds = await buildFormats([QDQ, FUSED, DYNAMIC], inputs, settings, true);
    const built = await buildCandidates(builds, inputs, settings);
    expect(built.candidates.map(label)).toEqual(["static/qdq", "static/fused", "dynamic"]);
    expect(built.candidates.every((c) => c.passed)).toBe(true);
    expect(built.notValidated).toEqual([]);
    expect(validator.summary().candidateSamples).toBeGreaterThan(200);
  });

  test("when the fastest fails, the next is validated, and what is slower than the one that passed is not", async () => {
    // The planted outlier (300×) ruins min-max ranges (10 of 200 flip) and barely touches entropy's (one sentence flips).
    const outlier = buildSyntheticBert({ ...tiny, plantOutlier: { layer: 0, node: "attn_out", scale: 300 } });
    const { inputs } = await subject("outlier", outlier);
    const FUSED_ENTROPY: FormatChoice = { ...FUSED, method: "entropy" };
    const builds = await buildFormats([QDQ, FUSED_ENTROPY, DYNAMIC], inputs, settings, true);
    // The min-max qdq build fastest, then the entropy-calibrated fused one, then dynamic.
    const built = await validateInLatencyOrder(builds, [1.0, 2.0, 3.0], inputs, settings);
    expect(built.candidates.map((c) => [label(c), c.passed])).toEqual([
      ["static/qdq", false],
      ["static/fused", true],
    ]);
    expect(built.notValidated.map(label)).toEqual(["dynamic"]);
    expect(built.notValidated[0]!.note).toBe("not validated: static/entropy/fused passed first");
  });

  test("a pass that kept nodes in fp32 is slower than its build was timed: the next build is still validated", async () => {
    const outlier = buildSyntheticBert({
      ...tiny,
      plantOutlier: { layer: 0, node: "attn_out", scale: 1000 },
    });
    const { inputs } = await subject("outlier-fallback", outlier);
    const builds = await buildFormats([QDQ, DYNAMIC], inputs, settings, true);
    // With a budget the fallback keeps the outlier's MatMul in fp32 and the qdq build passes; dynamic is still run.
    const built = await validateInLatencyOrder(builds, [1.0, 2.0], inputs, { ...settings, budget: 4 });
    const [qdq, dynamic] = built.candidates;
    expect(qdq!.passed).toBe(true);
    expect(qdq!.keptSensitive.length).toBeGreaterThan(0);
    expect(qdq!.p50Ms).toBeUndefined();
    expect(label(dynamic!)).toBe("dynamic");
    expect(built.notValidated).toEqual([]);
  });
});
