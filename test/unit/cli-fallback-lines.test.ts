/**
 * The quantize summary's fallback lines: each kind of trial (kept fp32, kept
 * then reverted, put back in int8 by the size phase, put back then undone)
 * reads as what it did, what it paid or saved, and what came of it.
 */
import { expect, test } from "bun:test";
import { fallbackLines } from "../../src/cli/commands/quantize.ts";
import type { QuantizationResult } from "../../src/quant/pipeline.ts";
import type { FallbackTrial } from "../../src/quant/report.ts";

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
