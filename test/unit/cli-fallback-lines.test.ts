/**
 * The quantize summary's fallback lines: each kind of trial (kept fp32, kept
 * then reverted, put back in int8 by the size phase, put back then undone)
 * reads as what it did, what it paid or saved, and what came of it.
 */
import { expect, test } from "bun:test";
import { fallbackLines } from "../../src/cli/commands/quantize.ts";
import type { QuantizationResult } from "../../src/quant/pipeline.ts";
import type { BiasCorrectionTrial, FallbackTrial } from "../../src/quant/report.ts";

function trial(t: Partial<FallbackTrial>, bytes: number): FallbackTrial {
  return {
    keptFp32: [],
    agreement: 0.998,
    meanAbsLogitDiff: 0.01,
    passed: false,
    bought: { agreement: 0.002, agreementLower: 0.003, meanAbsLogitDiff: -0.001, bytes },
    ...t,
  };
}

test("each fallback trial says what it changed, its bytes, and its outcome", () => {
  const trials = [
    trial({ added: ["a"], reverted: true }, 768),
    trial({ added: ["b", "c"] }, 1024 * 1024),
    trial({ added: ["d"], passed: true }, 2048),
    trial({ dropped: ["b"], passed: true }, -1024 * 1024),
    trial({ dropped: ["d"], reverted: true }, -2048),
  ];
  const report = { fallback: { trials } } as unknown as QuantizationResult["report"];
  const lines = fallbackLines(report);
  expect(lines).toHaveLength(5);
  expect(lines[0]).toMatch(
    /^ {2}fallback trial 1: tried a in fp32 \(\+768 B\): .*; did not help: reverted to int8$/,
  );
  expect(lines[1]).toMatch(/^ {2}fallback trial 2: kept b, c in fp32 \(\+1\.0 MB\): agreement [^;]*$/);
  expect(lines[1]).not.toMatch(/gate|reverted/);
  expect(lines[2]).toMatch(/^ {2}fallback trial 3: kept d in fp32 \(\+2\.0 KB\): .*, gate met$/);
  expect(lines[3]).toMatch(/^ {2}fallback trial 4: put b back in int8 \(−1\.0 MB\): .*, gate still met$/);
  expect(lines[4]).toMatch(
    /^ {2}fallback trial 5: tried d back in int8 \(−2\.0 KB\): .*; gate missed: stays fp32$/,
  );
});

test("the bias correction's line says how many biases, how many shared, its effect on the mean output bias, and whether it was used", () => {
  const bias = (t: Partial<BiasCorrectionTrial>): BiasCorrectionTrial => ({
    biases: 9,
    readers: 27,
    shared: 6,
    sweeps: 2,
    runs: 21,
    meanBiasBefore: 0.0076,
    meanBiasAfter: 0.001,
    perBias: [],
    agreement: 1,
    agreementLower: 0.997,
    meanAbsLogitDiff: 0.02,
    passed: true,
    ms: 5533,
    bought: { agreement: 0.0052, agreementLower: 0.0134, meanAbsLogitDiff: -0.017, bytes: 0 },
    used: true,
    ...t,
  });
  const line = (b: BiasCorrectionTrial) =>
    fallbackLines({ fallback: { trials: [], biasCorrection: b } } as unknown as QuantizationResult["report"]);
  expect(line(bias({}))).toEqual([
    "  fallback: 9 bias(es) corrected by their mean output error (27 MatMuls, 6 shared bias(es) by their " +
      "readers' mean; no bytes, 5533 ms): mean output bias 0.0076 → 0.0010, agreement +0.52 pt, bound +1.34 pt, gate met",
  ]);
  expect(line(bias({ passed: false, shared: 0 }))[0]).toMatch(/\(27 MatMuls; no bytes, .*bound \+1\.34 pt$/);
  expect(line(bias({ passed: false, used: undefined }))[0]).toMatch(/; did not help: not used$/);
});
