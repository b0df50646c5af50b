/**
 * Every encoder fixture (`test/fixtures/exporters/index.ts`: the synthetic
 * BERT in each exporter's graph shape, onnxruntime-optimized copies,
 * external data, the shipped BERT-Mini and its optimized copy) through what a
 * user runs with defaults: static int8 (default flags) and dynamic int8,
 * each validated against fp32 on held-out sentences and held to the default
 * gate's 99.5 % on the point estimate (one flip in 200 allowed; 200 samples
 * cannot certify it on the bound, which quant-gate tests), then the static model served by
 * the agent and classified through its socket, labels equal to fp32's.
 *
 * "No unexplained fp32 nodes": every MatMul/Gemm/Gather that still reads a
 * float weight in the int8 model is named in the report's keptFp32 list.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { loadModel } from "../../src/onnx/codec.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { runQuantization } from "../../src/quant/pipeline.ts";
import type { QuantizeReport } from "../../src/quant/report.ts";
import { loadClassifier } from "../../src/runtime/classifier.ts";
import {
  type EncoderFixture,
  shippedEncoderFixtures,
  syntheticEncoderFixtures,
} from "../fixtures/exporters/index.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { classifyOverSocket, TEXTS, testConfig } from "./agent-harness.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-encoders-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const CALIB = 32;
const VAL = 200;
const samplesPath = join(dir, "samples.tsv");
const fixtures: EncoderFixture[] = [
  ...syntheticEncoderFixtures(),
  ...shippedEncoderFixtures(shippedModelPath),
];

beforeAll(() => {
  const pool = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").trim().split("\n");
  writeFileSync(samplesPath, `${pool.slice(0, 1 + CALIB + VAL).join("\n")}\n`);
});

/**
 * MatMul/Gemm/Gather nodes of `model` that still read a float initializer as
 * their weight or table (per-row embedding scales, [rows, 1], are not weights).
 */
function floatWeightNodes(model: ModelProto): string[] {
  const floats = new Set(
    model.graph.initializer
      .filter((t) => t.dataType === 1 && t.dims.length === 2 && t.dims[1] !== 1)
      .map((t) => t.name),
  );
  return model.graph.node
    .filter((n) => {
      if (n.opType === "Gather") return floats.has(n.input[0] ?? "");
      if (
        n.opType === "MatMul" ||
        n.opType === "Gemm" ||
        n.opType === "FusedMatMul" ||
        n.opType === "FusedGemm"
      )
        return floats.has(n.input[1] ?? "");
      if (n.opType === "Attention" || n.opType === "EmbedLayerNormalization") return true;
      return false;
    })
    .map((n) => n.name);
}

function expectExplained(report: QuantizeReport, model: ModelProto): void {
  const kept = new Set(report.keptFp32.map((k) => k.node));
  const unexplained = floatWeightNodes(model).filter((n) => !kept.has(n));
  expect(unexplained).toEqual([]);
}

/** Contrib ops each onnxruntime-optimized fixture must have had lowered before quantizing. */
const LOWERED: Readonly<Record<string, readonly string[]>> = {
  "ort-extended": ["FusedGemm"],
  "ort-all": ["FusedGemm"],
  "ts-opset11-ort-extended": ["FusedGemm", "FusedMatMul"],
  "dynamo-opset18-ort-extended": ["FusedGemm"],
  "ort-transformers-attention": ["EmbedLayerNormalization"],
  "ort-transformers-int32": ["EmbedLayerNormalization"],
  "optimum-o2-raw-mask": ["EmbedLayerNormalization"],
  "ort-transformers-mha": ["EmbedLayerNormalization"],
  "shipped-ort-extended": ["FusedGemm"],
};

describe.each(fixtures.map((f) => [f.name, f] as const))("%s", (name, fixture) => {
  const fixtureDir = join(dir, name);
  let modelPath: string;
  beforeAll(async () => {
    modelPath = await fixture.build(fixtureDir, shippedModelDir);
  });

  const quantize = (mode: "static" | "dynamic") =>
    runQuantization({
      model: modelPath,
      calib: samplesPath,
      out: join(fixtureDir, `int8-${mode}.onnx`),
      mode,
      samples: CALIB,
      validationSamples: VAL,
      decideOn: "point",
      threads: 1,
    });

  test("static int8 with default flags meets the gate; every fp32 weight left is explained", async () => {
    const { out, report } = await quantize("static");
    expect(report.outcome).toBe("written");
    expect(report.metrics.agreement).toBeGreaterThanOrEqual(0.995);
    expect(report.model.sizeRatio ?? 1).toBeLessThan(0.32);
    const model = await loadModel(out);
    expectExplained(report, model);
    expect(new Set(report.graph?.lowered.map((l) => l.opType))).toEqual(new Set(LOWERED[name] ?? []));
    expect(report.graph?.opset.to).toBe(Math.max(13, report.graph?.opset.from ?? 0));
    expect(model.opsetImport.find((o) => o.domain === "")?.version).toBe(report.graph?.opset.to);
  });

  test("dynamic int8 meets the gate", async () => {
    const { out, report } = await quantize("dynamic");
    expect(report.outcome).toBe("written");
    expect(report.metrics.agreement).toBeGreaterThanOrEqual(0.995);
    expectExplained(report, await loadModel(out));
  });

  test("the agent serves the static int8 model; labels match fp32 through the socket", async () => {
    const int8 = join(fixtureDir, "int8-static.onnx");
    const fp32 = await loadClassifier(modelPath);
    const expected = (await fp32.classify(TEXTS)).map((c) => c.label);
    await fp32.release();
    const config = testConfig(join(dir, `${name}-agent`), {}, { model: int8 });
    let agent: Agent | undefined;
    try {
      agent = await startAgent(config);
      const r = await classifyOverSocket(config.socketPath, TEXTS);
      expect(r.status).toBe(200);
      const results = r.body["results"] as { label: string }[];
      expect(results.map((x) => x.label)).toEqual(expected);
    } finally {
      await agent?.stop();
    }
  });
});
