/**
 * Formats per board: `--mode auto` builds the int8 forms the detected board's
 * profile lists (recorded /proc files of each board), validates each, times
 * the passing ones and records why those candidates and why the winner won.
 * S8S8 (int8 activations) is built and run for real here: onnxruntime runs it
 * on x86 too, only slowly, which is why x86 profiles do not list it.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { detectDevice } from "../../src/device/detect.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { DataType } from "../../src/onnx/types.ts";
import { runQuantization } from "../../src/quant/pipeline.ts";
import { TEST_BERT } from "../fixtures/exporters/index.ts";
import { buildSyntheticBert } from "../fixtures/synthetic-bert.ts";
import { repoRoot, shippedModelDir } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";

setDefaultTimeout(60_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-auto-formats-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const boards = join(import.meta.dir, "../fixtures/boards");
const profile = (board: string) => detectDevice({ root: join(boards, board), glibc: "2.36" }).profile;

describe("the candidates each board's profile lists", () => {
  test("arm64 boards time U8S8 and S8S8, fused and QDQ, and dynamic; x86 only U8S8", () => {
    const labels = (board: string) =>
      profile(board).auto.candidates.map((c) => [c.mode, c.format, c.activations].filter(Boolean).join("/"));
    const arm = ["static/fused/uint8", "static/fused/int8", "static/qdq/uint8", "static/qdq/int8", "dynamic"];
    expect(labels("rpi4")).toEqual(arm);
    expect(labels("rpi5")).toEqual(arm);
    expect(labels("jetson-orin-nano")).toEqual(arm);
    expect(labels("generic-x64")).toEqual(["static/fused/uint8", "static/qdq/uint8", "dynamic"]);
    expect(profile("rpi4").auto.why).toContain("without dot product");
    expect(profile("rpi5").auto.why).toContain("asimddp");
  });
});

describe("--mode auto with a board's candidates", () => {
  const modelPath = join(dir, "model.onnx");
  const samples = join(dir, "samples.tsv");
  beforeAll(async () => {
    await saveModel(buildSyntheticBert(TEST_BERT), modelPath);
    const pool = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8").trim().split("\n");
    writeFileSync(samples, `${pool.slice(0, 1 + 32 + 200).join("\n")}\n`);
  });

  test("with validateAll a Pi 5's five candidates are built, validated and timed; the report says why the winner won", async () => {
    const auto = profile("rpi5").auto;
    const out = join(dir, "int8.onnx");
    const { report } = await runQuantization({
      model: modelPath,
      tokenizerDir: shippedModelDir,
      calib: samples,
      out,
      mode: "auto",
      autoCandidates: auto,
      validateAll: true,
      samples: 32,
      validationSamples: 200,
      decideOn: "point",
      threads: 1,
    });
    const built = report.candidates.map((c) => [c.mode, c.format, c.activations].filter(Boolean).join("/"));
    expect(built).toEqual([
      "static/fused/uint8",
      "static/fused/int8",
      "static/qdq/uint8",
      "static/qdq/int8",
      "dynamic",
    ]);
    const passing = report.candidates.filter((c) => c.passed);
    expect(passing.length).toBe(5);
    for (const c of passing) expect(c.p50Ms).toBeGreaterThan(0);
    const chosen = report.candidates.filter((c) => c.chosen);
    expect(chosen.length).toBe(1);
    expect(chosen[0]!.p50Ms).toBe(Math.min(...passing.map((c) => c.p50Ms!)));
    expect(report.auto?.why).toBe(auto.why);
    expect(report.auto?.decision).toContain("fastest candidate that met the gate");
    expect(report.auto?.decision).toContain(`${chosen[0]!.p50Ms!.toFixed(2)} ms`);
    // What was written is the winner: int8 activations show as int8 QuantizeLinear zero points.
    const model = await loadModel(out);
    const zeroPoints = model.graph.node
      .filter((n) => n.opType === "QuantizeLinear")
      .map((n) => model.graph.initializer.find((t) => t.name === n.input[2])?.dataType);
    if (chosen[0]!.mode === "static") {
      const want = chosen[0]!.activations === "int8" ? DataType.INT8 : DataType.UINT8;
      expect(zeroPoints.length).toBeGreaterThan(0);
      expect(new Set(zeroPoints)).toEqual(new Set([want]));
    }
  });

  test("quantize --activations int8 writes S8S8 static int8 (what an arm64 board may pick by hand)", async () => {
    const out = join(dir, "s8s8.onnx");
    const r = await runQuantd([
      ...["quantize", "--model", modelPath, "--tokenizer", shippedModelDir, "--calib", samples, "--out", out],
      ...[
        "--activations",
        "int8",
        "--samples",
        "32",
        "--val-samples",
        "200",
        "--gate-on",
        "point",
        "--threads",
        "1",
      ],
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("static/percentile/fused/s8s8");
    const model = await loadModel(out);
    const zeroPoints = model.graph.node
      .filter((n) => n.opType === "QuantizeLinear")
      .map((n) => model.graph.initializer.find((t) => t.name === n.input[2])?.dataType);
    expect(zeroPoints.length).toBeGreaterThan(0);
    expect(new Set(zeroPoints)).toEqual(new Set([DataType.INT8]));
  });
});
