/**
 * DeBERTa-v3 as onnxruntime's optimizer saves it (`extended`): constant
 * folding turns each layer's relative-position projections (relative
 * embeddings → LayerNorm → key/query projections → Reshape/Transpose) into
 * [heads, d, positions] constants that MatMul reads as its B. Quantized with
 * default flags through `runQuantization`, static and dynamic, those stacks
 * are int8 on disk (weight-only: the MatMuls compute in fp32, and the report
 * says so for each), the file meets the 27 % size target, agreement holds on
 * held-out sentences, the fallback's probe ranks them with what keeping them
 * fp32 costs, and an exclusion reverts one to fp32.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel } from "../../src/onnx/codec.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { DataType } from "../../src/onnx/types.ts";
import { runQuantization } from "../../src/quant/pipeline.ts";
import { architectureEncoderFixtures } from "../fixtures/exporters/index.ts";
import { repoRoot } from "../helpers/paths.ts";

setDefaultTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-weight-only-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const CALIB = 128;
const VAL = 400;
const SIZE_TARGET = 0.27;
const samples = join(dir, "samples.tsv");
let fp32Path: string;
/** MatMuls of the fp32 model whose B is a constant of rank ≥ 3, and that constant. */
let stackReaders: { node: string; weight: string }[];

function stackMatMuls(model: ModelProto): { node: string; weight: string }[] {
  const stacks = new Set(model.graph.initializer.filter((t) => t.dims.length >= 3).map((t) => t.name));
  return model.graph.node
    .filter((n) => n.opType === "MatMul" && stacks.has(n.input[1] ?? ""))
    .map((n) => ({ node: n.name, weight: n.input[1]! }));
}

beforeAll(async () => {
  const pool = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").trim().split("\n");
  writeFileSync(samples, `${pool.slice(0, 1 + CALIB + VAL).join("\n")}\n`);
  const fixture = architectureEncoderFixtures().find((f) => f.name === "arch-deberta-v3-ort-extended")!;
  fp32Path = await fixture.build(join(dir, "fp32"), "");
  stackReaders = stackMatMuls(await loadModel(fp32Path));
});

const quantize = (mode: "static" | "dynamic", exclude: string[] = []) =>
  runQuantization({
    model: fp32Path,
    calib: samples,
    out: join(dir, `int8-${mode}-${exclude.length}.onnx`),
    mode,
    samples: CALIB,
    validationSamples: VAL,
    decideOn: "point",
    threads: 1,
    exclude,
  });

test("onnxruntime folded the relative-position projections into rank-3 constants read by MatMul", () => {
  // 4 layers × (c2p key, p2c query): the premise of every test below.
  expect(stackReaders).toHaveLength(8);
});

describe.each(["static", "dynamic"] as const)("%s, default flags", (mode) => {
  test("the stacks are int8 on disk, each named weight-only; size and agreement targets hold", async () => {
    const { out, report } = await quantize(mode);
    expect(report.outcome).toBe("written");
    expect(report.metrics.agreement).toBeGreaterThanOrEqual(0.995);
    expect(report.model.sizeRatio!).toBeLessThanOrEqual(SIZE_TARGET);
    const int8 = await loadModel(out);
    const floats = int8.graph.initializer.filter((t) => t.dataType === DataType.FLOAT && t.dims.length >= 3);
    expect(floats.map((t) => t.name)).toEqual([]);
    const weightOnly = report.keptFp32.filter((k) => k.reason === "weight-only");
    expect(weightOnly.map((k) => k.node).sort()).toEqual(stackReaders.map((s) => s.node).sort());
    for (const k of weightOnly) {
      expect(k.opType).toBe("MatMul");
      expect(k.detail).toContain("stored int8");
    }
    // The fallback's probe measures each one and knows what keeping it fp32 would cost.
    const probed = new Map(report.layerError.map((e) => [e.node, e]));
    for (const s of stackReaders) expect(probed.get(s.node)?.fp32CostBytes).toBe(4 * 64 * 32 * 3);
  });
});

test("an excluded stack reader stays fp32 (its stack too); the others stay int8", async () => {
  const [first, ...rest] = stackReaders;
  const { out, report } = await quantize("dynamic", [first!.node]);
  expect(report.keptFp32).toContainEqual(
    expect.objectContaining({ node: first!.node, reason: "user-exclude" }),
  );
  const weightOnly = report.keptFp32.filter((k) => k.reason === "weight-only").map((k) => k.node);
  expect(weightOnly.sort()).toEqual(rest.map((s) => s.node).sort());
  const int8 = await loadModel(out);
  const floats = int8.graph.initializer.filter((t) => t.dataType === DataType.FLOAT && t.dims.length >= 3);
  expect(floats.map((t) => t.name)).toEqual([first!.weight]);
  const reader = int8.graph.node.find((n) => n.name === first!.node);
  expect(reader?.input[1]).toBe(first!.weight);
});
