/**
 * The accuracy gate's fallback, triggered by a planted outlier.
 *
 * The outlier is planted in the shipped (trained) BERT-Mini, the way real
 * transformers grow them: one channel of layer 2's FFN input projection is
 * scaled ×1000 and the matching row of the FFN output projection ÷1000, so the
 * fp32 model computes nearly the same function, but the activation between the
 * two (`…/layer.2/output/dense/MatMul`'s input) now spans a range 1000× wider
 * than its other channels need; one uint8 scale for that tensor wipes them out.
 *
 * With one such channel, entropy calibration (its threshold clips the channel,
 * one of 1,024) comes closest, and the fallback's per-tensor step passes at no
 * byte by giving the other tensors back the methods that serve them better;
 * with sixteen, no range serves the tensor and the node it feeds is kept fp32.
 *
 * `quant-fallback-synthetic.test.ts` does the same on the synthetic BERT of
 * `test/fixtures`; this one shows it on a model trained on real text.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { makeTensor, tensorToFloat32 } from "../../src/onnx/tensor.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { assertReportShape, type QuantizeReport } from "../../src/quant/report.ts";
import { repoRoot, shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { type CliRun, runQuantd } from "../helpers/run-cli.ts";

// Two quantize runs of a 30 MB model with validation and rebuilds, on a busy 2-core machine.
setDefaultTimeout(180_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-fallback-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const LAYER = 2;
const CHANNEL = 7;
const SCALE = 1000;
/** Channels of the wide outlier: 16, spread over the FFN's 1,024. */
const WIDE_CHANNELS = Array.from({ length: 16 }, (_, k) => CHANNEL + k * 29);
const SENSITIVE = `/bert/encoder/layer.${LAYER}/output/dense/MatMul`;
const modelPath = join(dir, "outlier.onnx");
const wideModelPath = join(dir, "outlier-wide.onnx");
const calibTsv = join(repoRoot, "calib/samples/sst2-train-4k.tsv");
const calibRows = join(dir, "calib-64.tsv");
const validateRows = join(dir, "validate-256.tsv");

/** Scales one FFN channel up on the way in and down on the way out (see the file comment). */
function plantActivationOutlier(model: ModelProto, layer: number, channel: number, scale: number): void {
  const g = model.graph;
  const node = (name: string) => {
    const n = g.node.find((x) => x.name === name);
    if (n === undefined) throw new Error(`no node ${name}`);
    return n;
  };
  const index = (name: string): number => g.initializer.findIndex((t) => t.name === name);
  const edit = (name: string, fn: (v: Float32Array, dims: readonly number[]) => void): void => {
    const k = index(name);
    const t = g.initializer[k]!;
    const v = Float32Array.from(tensorToFloat32(t));
    fn(v, t.dims);
    g.initializer[k] = makeTensor(t.name, t.dataType, t.dims, v);
  };
  const ffnIn = node(`/bert/encoder/layer.${layer}/intermediate/dense/MatMul`);
  const ffnBias = node(`/bert/encoder/layer.${layer}/intermediate/dense/Add`).input.find(
    (i) => index(i) >= 0,
  )!;
  const ffnOut = node(`/bert/encoder/layer.${layer}/output/dense/MatMul`);
  edit(ffnIn.input[1]!, (w, [rows = 0, cols = 0]) => {
    for (let i = 0; i < rows; i++) w[i * cols + channel]! *= scale;
  });
  edit(ffnBias, (b) => {
    b[channel]! *= scale;
  });
  edit(ffnOut.input[1]!, (w, [, cols = 0]) => {
    for (let j = 0; j < cols; j++) w[channel * cols + j]! /= scale;
  });
}

function quantize(args: string[]): Promise<CliRun> {
  return runQuantd(["quantize", ...args]);
}

function readReport(path: string): QuantizeReport {
  const parsed: unknown = JSON.parse(readFileSync(path, "utf8"));
  assertReportShape(parsed);
  return parsed;
}

const args = (out: string, report: string, model = modelPath): string[] => [
  "--model",
  model,
  "--tokenizer",
  shippedModelDir,
  // The tensor ranges these tests reason about are those of the SST-2 file's first 64 rows, validated on the
  // next 256: given as two files, so the split's own row choice does not move them.
  "--calib",
  calibRows,
  "--validate",
  validateRows,
  // The fallback's mechanics, on a set small enough for several rebuilds: the point estimate decides
  // (256 samples cannot certify 99.5 %; the bound is tested in quant-gate and quantize-cli).
  "--gate-on",
  "point",
  "--out",
  out,
  "--report",
  report,
];

beforeAll(async () => {
  const [header, ...rows] = readFileSync(calibTsv, "utf8").trim().split("\n");
  writeFileSync(calibRows, `${[header, ...rows.slice(0, 64)].join("\n")}\n`);
  writeFileSync(validateRows, `${[header, ...rows.slice(64, 64 + 256)].join("\n")}\n`);
  const model = await loadModel(shippedModelPath);
  plantActivationOutlier(model, LAYER, CHANNEL, SCALE);
  await saveModel(model, modelPath);
  const wide = await loadModel(shippedModelPath);
  for (const c of WIDE_CHANNELS) plantActivationOutlier(wide, LAYER, c, SCALE);
  await saveModel(wide, wideModelPath);
});

describe("sensitivity fallback on a planted outlier", () => {
  test("without fallback the gate is not met: GATE_NOT_MET with the best figures, nothing written", async () => {
    const out = join(dir, "no-fallback.onnx");
    // A file already at --out must survive a failed run untouched.
    writeFileSync(out, "previous model");
    const reportPath = join(dir, "no-fallback.json");
    const r = await quantize([...args(out, reportPath), "--trials", "0", "--json"]);
    expect(r.code).toBe(1);
    const error = JSON.parse(r.stdout) as { code: string; message: string; details: Record<string, unknown> };
    expect(error.code).toBe("GATE_NOT_MET");
    expect(error.message).toContain("nothing written");
    const best = error.details["best"] as { agreement: number; n: number; meanAbsLogitDiff: number };
    expect(best.n).toBe(256);
    expect(best.agreement).toBeLessThan(0.995);
    expect(best.meanAbsLogitDiff).toBeGreaterThan(0);
    expect(readFileSync(out, "utf8")).toBe("previous model");

    const report = readReport(reportPath);
    expect(report.outcome).toBe("gate-not-met");
    expect(report.model.int8).toBeUndefined();
    expect(report.gate.passed).toBe(false);
    expect(report.gate.failures[0]).toContain("below the gate");
    expect(report.metrics.agreement).toBe(best.agreement);
    // The per-layer error points at the node the outlier feeds.
    expect(report.layerError[0]?.node).toBe(SENSITIVE);
  });

  test("a one-channel outlier: the best whole-model method clips it, the per-tensor step gives the other tensors back their best method, no byte kept fp32", async () => {
    const out = join(dir, "tensor-methods.onnx");
    const reportPath = join(dir, "tensor-methods.json");
    const r = await quantize(args(out, reportPath));
    expect(r.code).toBe(0);
    const report = readReport(reportPath);
    expect(report.outcome).toBe("written");
    expect(report.metrics.agreement).toBeGreaterThanOrEqual(0.995);
    // No whole-model method passed; entropy (its KL threshold clips the ×1000 channel) came closest.
    expect(report.fallback.methods?.some((m) => m.passed)).toBe(false);
    expect(report.method).toBe("entropy");
    // The per-tensor step passed and says what it bought.
    const used = report.fallback.tensorMethods?.find((t) => t.used === true);
    expect(used?.passed).toBe(true);
    expect(used?.bought.bytes).toBe(0);
    expect(used?.bought.agreement).toBeGreaterThan(0);
    // It moved other tensors (largest estimated gain first) and left the outlier's tensor on entropy.
    const fp32 = await loadModel(modelPath);
    const outlierTensor = fp32.graph.node.find((n) => n.name === SENSITIVE)!.input[0];
    const moved = used?.tensors ?? [];
    expect(moved.length).toBeGreaterThan(0);
    expect(moved.map((t) => t.tensor)).not.toContain(outlierTensor);
    expect(moved.map((t) => t.gain)).toEqual([...moved.map((t) => t.gain)].sort((x, y) => y - x));
    expect(report.keptFp32.filter((k) => k.reason === "sensitivity")).toEqual([]);
    expect(report.fallback.trials).toEqual([]);
    expect((await loadModel(out)).graph.node.some((n) => n.name === SENSITIVE)).toBe(false);
    expect(r.stdout).toMatch(
      /fallback: \d+ tensor\(s\) calibrated with [a-z/]+ instead \(no bytes, .*gate met/,
    );
  });

  test("a sixteen-channel outlier: the outlier's node is kept fp32, the gate holds, the report names it", async () => {
    const out = join(dir, "fallback.onnx");
    const reportPath = join(dir, "fallback.json");
    const r = await quantize(args(out, reportPath, wideModelPath));
    expect(r.stderr).not.toContain("error ");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`kept in fp32 for accuracy: ${SENSITIVE}`);
    const report = readReport(reportPath);
    expect(report.outcome).toBe("written");
    expect(report.metrics.agreement).toBeGreaterThanOrEqual(0.995);
    const sensitive = report.keptFp32.filter((k) => k.reason === "sensitivity");
    expect(sensitive[0]).toMatchObject({ node: SENSITIVE, opType: "MatMul" });
    expect(sensitive[0]?.detail).toContain("relative error");
    const trials = report.fallback.trials;
    expect(trials.length).toBeGreaterThanOrEqual(1);
    const met = trials.find((t) => t.passed);
    expect(met?.keptFp32).toEqual([SENSITIVE]);
    // Tried before it, if anything: nodes cheaper per byte (the 1.5 KB segment table), reverted as they did not help.
    for (const t of trials.slice(0, trials.indexOf(met!))) {
      expect(t.bought?.bytes).toBeLessThan(met?.bought?.bytes ?? 0);
      expect(t.reverted).toBe(true);
    }

    // In the written model that MatMul reads its fp32 weight; its neighbour is quantized
    // (the default static format writes it as MatMulIntegerToFloat).
    const written = await loadModel(out);
    const kept = written.graph.node.find((n) => n.name === SENSITIVE)!;
    expect(kept.opType).toBe("MatMul");
    expect(written.graph.initializer.some((t) => t.name === kept.input[1])).toBe(true);
    const neighbourName = `/bert/encoder/layer.${LAYER}/intermediate/dense/MatMul`;
    expect(written.graph.node.some((n) => n.name === neighbourName)).toBe(false);
    const neighbour = written.graph.node.find((n) => n.name.startsWith(`${neighbourName}_`))!;
    expect(neighbour.opType).toBe("MatMulIntegerToFloat");
  });
});
