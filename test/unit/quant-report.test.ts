import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  assertReportShape,
  describeBytes,
  describeFile,
  type QuantizeReport,
  REPORT_SCHEMA,
  renderReport,
  writeReport,
} from "../../src/quant/report.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-report-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function sampleReport(): QuantizeReport {
  return {
    schema: REPORT_SCHEMA,
    createdAt: "2026-01-01T00:00:00.000Z",
    outcome: "written",
    versions: { quantd: "0.1.0", onnxruntime: "1.30.0" },
    model: {
      fp32: { path: "a.onnx", sha256: "00", bytes: 400 },
      int8: { path: "b.onnx", sha256: "11", bytes: 100 },
      sizeRatio: 0.25,
    },
    requestedMode: "auto",
    mode: "static",
    method: "minmax",
    options: {
      perChannel: true,
      reduceRange: false,
      quantizeEmbeddings: true,
      quantizeAttentionMatMuls: false,
      exclude: [],
    },
    samples: {
      source: "calib.tsv",
      validationSource: "calib.tsv",
      available: 10,
      calibration: 6,
      validation: 4,
      truncated: { calibration: 1, validation: 0 },
      maxSequenceLength: 512,
    },
    gate: { minAgreement: 0.995, passed: true, failures: [] },
    metrics: {
      n: 4,
      agreement: 1,
      disagreements: 0,
      maxAbsLogitDiff: Number.POSITIVE_INFINITY,
      meanAbsLogitDiff: 0.01,
      labelled: 0,
      gateN: 4,
      gateAgreements: 4,
      confidence: 0.95,
      agreementLower: 0.47,
      margin: { threshold: 0.01, nearTies: 0, nearTieFlips: 0, confidentFlips: 0, ignored: false },
    },
    ranges: { x: { min: -1, max: 2, scale: 3 / 255, zeroPoint: 85 } },
    layerError: [{ node: "mm", opType: "MatMul", tensor: "y", relError: 0.01, addedError: 0.005 }],
    keptFp32: [{ node: "mm2", opType: "MatMul", reason: "sensitivity", detail: "added error 0.3" }],
    skipped: [{ node: "ln", opType: "LayerNormalization", reason: "kept fp32 by default" }],
    fallback: {
      budget: 8,
      trials: [{ keptFp32: ["mm2"], agreement: 1, meanAbsLogitDiff: 0.01, passed: true }],
    },
    candidates: [],
    timings: {
      calibrationMs: 1,
      quantizationMs: 2,
      validationMs: 3,
      fallbackMs: 0,
      benchmarkMs: 0,
      totalMs: 6,
    },
    peakRssBytes: 1 << 20,
    warnings: [],
  };
}

describe("report JSON", () => {
  test("renders with the schema tag, non-finite numbers as null, and parses back to the same shape", () => {
    const text = renderReport(sampleReport());
    const parsed: unknown = JSON.parse(text);
    assertReportShape(parsed);
    expect(parsed.schema).toBe("quantd.quantize-report/1");
    expect(parsed.metrics.maxAbsLogitDiff).toBeNull();
    expect(parsed.model.int8?.bytes).toBe(100);
    expect(parsed.keptFp32[0]?.reason).toBe("sensitivity");
  });

  test("assertReportShape names the first bad field", () => {
    const bad = JSON.parse(renderReport(sampleReport())) as Record<string, unknown>;
    bad["schema"] = "quantd.quantize-report/0";
    expect(() => assertReportShape(bad)).toThrow(expect.objectContaining({ code: "DATA_MALFORMED" }));
    const noRanges = JSON.parse(renderReport(sampleReport())) as Record<string, unknown>;
    delete noRanges["ranges"];
    expect(() => assertReportShape(noRanges)).toThrow(/ranges/);
    const badMode = { ...sampleReport(), mode: "fp16" };
    expect(() => assertReportShape(badMode)).toThrow(/mode/);
  });
});

describe("file facts", () => {
  test("sha256 and size of a file and of bytes agree with known digests", async () => {
    const p = join(dir, "abc.bin");
    writeFileSync(p, "abc");
    const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    expect(await describeFile(p)).toEqual({ path: p, sha256: abc, bytes: 3 });
    expect(describeBytes("x", new TextEncoder().encode("abc")).sha256).toBe(abc);
  });

  test("a missing file is FILE_NOT_FOUND", async () => {
    await expect(describeFile(join(dir, "nope"))).rejects.toMatchObject({ code: "FILE_NOT_FOUND" });
  });
});

describe("writeReport", () => {
  test("writes the whole report and leaves no temporary file", async () => {
    const p = join(dir, "r.json");
    await writeReport(p, sampleReport());
    expect(JSON.parse(readFileSync(p, "utf8")).schema).toBe(REPORT_SCHEMA);
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  test("an unwritable destination is FILE_WRITE_FAILED", async () => {
    const file = join(dir, "plain-file");
    writeFileSync(file, "x");
    await expect(writeReport(join(file, "r.json"), sampleReport())).rejects.toMatchObject({
      code: "FILE_WRITE_FAILED",
    });
  });
});
