/**
 * Bias correction (`src/quant/bias-correction.ts`) on the ALBERT fixture,
 * whose one shared layer makes six of its nine biases each read by four
 * MatMuls: which biases it finds, that a corrected build moves the int8
 * model's mean outputs toward fp32's (measured here on the logits, apart from
 * the module's own figures), that a shared bias stays one tensor with one
 * correction, and that a bias whose reader is kept fp32 keeps its value.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { tensorToFloat32 } from "../../src/onnx/tensor.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import {
  type BiasCorrectionResult,
  type BiasSite,
  biasSites,
  measureBiasCorrections,
  measurementSteps,
  patchedBiases,
} from "../../src/quant/bias-correction.ts";
import { modelMaxPositions, runQuantization } from "../../src/quant/pipeline.ts";
import { planningGraph, type QuantizeResult, quantizeModel, requantize } from "../../src/quant/quantize.ts";
import { readSampleTsv } from "../../src/quant/samples.ts";
import { collectLogits, encodeSamples } from "../../src/quant/validate.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { type BatchEncoding, loadTokenizer } from "../../src/runtime/tokenizer.ts";
import { writeEncoderFixture } from "../fixtures/encoders/write-fixture.ts";
import { saveOrtOptimized } from "../fixtures/exporters/ort-optimized.ts";
import { repoRoot } from "../helpers/paths.ts";

setDefaultTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-bias-correction-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const LAYER = "albert.encoder.albert_layer_groups.0.albert_layers.0";
/** The shared layer's MatMul biases (not its LayerNorms'), in its order: each one initializer four Adds read. */
let SHARED: string[];
const session = { intraOpThreads: 1 };

let fp32: ModelProto;
let lowered: ModelProto;
let calibration: BatchEncoding[];
let base: QuantizeResult;
let sites: BiasSite[];
let measured: BiasCorrectionResult;

beforeAll(async () => {
  const fixture = await writeEncoderFixture("albert", join(dir, "albert"));
  fp32 = await loadModel(fixture.model);
  lowered = planningGraph(fp32).model;
  const readBy = (name: string) =>
    fp32.graph.node.filter((n) => n.opType === "Add" && n.input.includes(name)).length;
  SHARED = fp32.graph.initializer
    .map((t) => t.name)
    .filter((n) => n.startsWith(LAYER) && n.endsWith(".bias") && readBy(n) > 1);
  const tok = await loadTokenizer(fixture.dir, { maxLength: modelMaxPositions(fp32)! });
  const rows = await readSampleTsv(join(repoRoot, "calib/samples/sst2-train-4k.tsv"));
  calibration = encodeSamples(tok, rows.slice(0, 48), 8, tok.maxLength).batches;
  base = await quantizeModel(fp32, { type: "static", calibration });
  sites = biasSites(lowered, base.plan.quantized);
  measured = await measureBiasCorrections(
    lowered,
    sites,
    calibration,
    async (c) => (await requantize(fp32, { ...base, biasCorrections: c }, [])).model,
    { session },
  );
});

/** Mean over the calibration samples of int8 logits − fp32 logits, per class. */
async function meanLogitError(model: ModelProto): Promise<number[]> {
  const run = async (m: ModelProto) => {
    const s = await createOrtSession(encodeModel(m), session);
    try {
      return await collectLogits(s, calibration);
    } finally {
      await s.release();
    }
  };
  const [ref, got] = [await run(fp32), await run(model)];
  const mean = new Array<number>(ref.cols).fill(0);
  for (let i = 0; i < ref.data.length; i++) mean[i % ref.cols]! += (got.data[i]! - ref.data[i]!) / ref.rows;
  return mean;
}

const biasValues = (m: ModelProto, name: string): Float32Array =>
  tensorToFloat32(m.graph.initializer.find((t) => t.name === name)!);

describe("bias correction on ALBERT", () => {
  test("its sites: the mapping, the six shared biases (four readers each), the pooler and the classifier", () => {
    expect(SHARED).toHaveLength(6);
    expect(sites.map((s) => [s.bias, s.readers.length])).toEqual([
      ["albert.encoder.embedding_hidden_mapping_in.bias", 1],
      ...SHARED.map((b) => [b, 4]),
      ["albert.pooler.dense.bias", 1],
      ["classifier.bias", 1],
    ]);
    // Every shared site reads into every other across the layers: each is measured on its own.
    expect(measurementSteps(lowered, sites)).toHaveLength(sites.length);
  });

  test("a bias also read by a node left fp32 is not a site: correcting it would move that node's output", () => {
    const query = `${LAYER}.attention.query.bias`;
    const oneReaderLess = base.plan.quantized.filter(
      (t) => t.node !== "/albert/encoder/albert_layer_groups.0/albert_layers.0/attention/query/MatMul_2",
    );
    const left = biasSites(lowered, oneReaderLess).map((s) => s.bias);
    expect(left).not.toContain(query);
    expect(left).toHaveLength(sites.length - 1);
  });

  test("every corrected site's mean output error falls, and the biggest (the shared ones) by most of it", () => {
    for (const s of measured.sites) expect(s.after).toBeLessThanOrEqual(s.before);
    const sum = (f: (s: (typeof measured.sites)[number]) => number) =>
      measured.sites.reduce((a, s) => a + f(s), 0);
    expect(sum((s) => s.after)).toBeLessThan(0.5 * sum((s) => s.before));
    expect(measured.sweeps).toBe(2);
  });

  test("the corrected model's mean logit error, measured apart from the module, is smaller than the uncorrected one's", async () => {
    const corrected = await requantize(fp32, { ...base, biasCorrections: measured.corrections }, []);
    const before = await meanLogitError(base.model);
    const after = await meanLogitError(corrected.model);
    const norm = (v: number[]) => Math.hypot(...v);
    expect(norm(after)).toBeLessThan(0.5 * norm(before));
  });

  test("a shared bias stays one tensor, read by its four readers, with one correction: no byte added", async () => {
    const corrected = await requantize(fp32, { ...base, biasCorrections: measured.corrections }, []);
    expect(encodeModel(corrected.model).byteLength).toBe(encodeModel(base.model).byteLength);
    expect(corrected.model.graph.initializer.map((t) => t.name).sort()).toEqual(
      base.model.graph.initializer.map((t) => t.name).sort(),
    );
    for (const b of SHARED) {
      expect(corrected.model.graph.node.filter((n) => n.input.includes(b))).toHaveLength(4);
      const delta = measured.corrections.get(b)!;
      const want = biasValues(lowered, b).map((v, k) => v + delta[k]!);
      expect(Array.from(biasValues(corrected.model, b))).toEqual(Array.from(want));
    }
  });

  test("the measurement's patched copy of the int8 build is the model a rebuild with the corrections makes", async () => {
    const rebuilt = await requantize(fp32, { ...base, biasCorrections: measured.corrections }, []);
    const patched = patchedBiases(base.model, sites, measured.corrections)!;
    expect(Buffer.from(encodeModel(patched)).equals(Buffer.from(encodeModel(rebuilt.model)))).toBe(true);
    // A QDQ Gemm's bias is int32 in the int8 model: no float to patch, so the caller rebuilds.
    const qdq = await quantizeModel(fp32, { type: "static", format: "qdq", ranges: base.ranges });
    expect(patchedBiases(qdq.model, sites, measured.corrections)).toBeUndefined();
  });

  test("a rebuild keeping the classifier fp32 leaves its bias as it was and corrects the others", async () => {
    const kept = await requantize(fp32, { ...base, biasCorrections: measured.corrections }, [
      "/classifier/Gemm",
    ]);
    expect(Array.from(biasValues(kept.model, "classifier.bias"))).toEqual(
      Array.from(biasValues(lowered, "classifier.bias")),
    );
    const mapping = "albert.encoder.embedding_hidden_mapping_in.bias";
    expect(Array.from(biasValues(kept.model, mapping))).not.toEqual(Array.from(biasValues(lowered, mapping)));
  });
});

describe("bias correction on BERT (no shared bias)", () => {
  test("one pass in graph order leaves each layer's mean output error a small part of what it was", async () => {
    const fixture = await writeEncoderFixture("bert", join(dir, "bert"));
    const model = await loadModel(fixture.model);
    const graph = planningGraph(model).model;
    const tok = await loadTokenizer(fixture.dir, { maxLength: modelMaxPositions(model)! });
    const rows = await readSampleTsv(join(repoRoot, "calib/samples/sst2-train-4k.tsv"));
    const batches = encodeSamples(tok, rows.slice(0, 48), 8, tok.maxLength).batches;
    const built = await quantizeModel(model, { type: "static", calibration: batches });
    const bertSites = biasSites(graph, built.plan.quantized);
    expect(bertSites.every((s) => s.readers.length === 1)).toBe(true);
    // Query, key and value of a layer read one input and feed none of each other: one run.
    const steps = measurementSteps(graph, bertSites);
    expect(steps.some((s) => s.length === 3)).toBe(true);
    const r = await measureBiasCorrections(
      graph,
      bertSites,
      batches,
      async (c) => (await requantize(model, { ...built, biasCorrections: c }, [])).model,
      { session },
    );
    expect(r.sweeps).toBe(1);
    // Measured with the layers before it corrected, a layer's correction does not count their error again:
    // what is left is rounding. Measured all at once from the uncorrected build, the later layers' errors grew
    // (up to 2.6 times what they were).
    for (const s of r.sites) expect(s.after).toBeLessThan(0.05 * s.before + 1e-6);
  });
});

describe("bias correction on ALBERT as onnxruntime's extended optimizer saves it", () => {
  test("the FFN bias FastGelu holds is a site, compared at the MatMul's output, and its corrected error falls", async () => {
    const extDir = join(dir, "albert-ext");
    const fixture = await writeEncoderFixture("albert", extDir);
    await saveOrtOptimized(fixture.model, "extended", fixture.model);
    const model = await loadModel(fixture.model);
    const graph = planningGraph(model).model;
    const built = await quantizeModel(model, { type: "static", calibration });
    const extSites = biasSites(graph, built.plan.quantized);
    const ffn = extSites.find((s) => s.bias === `${LAYER}.ffn.bias`)!;
    expect(ffn).toBeDefined();
    expect(ffn.included).toBe(false);
    expect(ffn.readers).toHaveLength(4);
    // The compared tensors are the MatMuls' outputs, each read by the FastGelu that adds the bias.
    for (const o of ffn.outputs) {
      expect(graph.graph.node.filter((n) => n.input.includes(o)).map((n) => n.opType)).toEqual(["FastGelu"]);
    }
    const r = await measureBiasCorrections(
      graph,
      extSites,
      calibration,
      async (c) => (await requantize(model, { ...built, biasCorrections: c }, [])).model,
      { session },
    );
    const site = r.sites.find((s) => s.bias === ffn.bias)!;
    // The error after counts the correction the FastGelu adds: without it, it would read as the error before.
    expect(site.after).toBeLessThan(0.5 * site.before);
    for (const s of r.sites) expect(s.after).toBeLessThanOrEqual(s.before);
  });
});

describe("the fallback's bias-correction step", () => {
  test("ALBERT with default flags meets the gate with its biases corrected: nothing fp32, within 27 %", async () => {
    const fixtureDir = join(dir, "albert");
    const rows = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").trim().split("\n");
    const tsv = join(dir, "gate-samples.tsv");
    writeFileSync(tsv, `${rows.slice(0, 1 + 128 + 1024).join("\n")}\n`);
    // quantize's defaults as the encoders bench runs them: 128 calibration rows, 1,024 held out.
    const { report } = await runQuantization({
      model: fixtureDir,
      calib: tsv,
      out: join(dir, "albert-int8.onnx"),
      samples: 128,
      validationSamples: 1024,
      threads: 1,
    });
    const b = report.fallback.biasCorrection;
    expect(b).toBeDefined();
    expect(b!.used).toBe(true);
    expect(b!.passed).toBe(true);
    expect(b!.bought.bytes).toBe(0);
    expect(b!.meanBiasAfter).toBeLessThan(b!.meanBiasBefore);
    expect(b!.perBias.filter((p) => p.readers > 1)).toHaveLength(b!.shared);
    // Before this step the gate was missed (the methods' trials did not pass), and no node went fp32 after it.
    expect(report.fallback.methods?.some((m) => m.passed)).toBe(false);
    expect(report.fallback.trials).toEqual([]);
    expect(report.keptFp32).toEqual([]);
    expect(report.model.sizeRatio!).toBeLessThanOrEqual(0.27);
  });
});
