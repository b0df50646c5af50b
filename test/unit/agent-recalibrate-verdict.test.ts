/**
 * The board record's verdict of an auto winner against fp32 (`quantd device`
 * shows it): "beats" only when it is faster; within the job's latency ratio it
 * is "within X % of fp32", not said to beat it.
 */
import { expect, test } from "bun:test";
import { againstFp32, type BenchFigures } from "../../src/agent/recalibrate.ts";

function figures(latencyRatio: number): BenchFigures {
  return {
    shape: { batch: 1, seq: 32 },
    threads: 1,
    runs: 20,
    activeP50Ms: 10,
    candidateP50Ms: 10 * latencyRatio,
    activeP90Ms: 11,
    candidateP90Ms: 11 * latencyRatio,
    latencyRatio,
    activeBytes: 4_000_000,
    candidateBytes: 1_000_000,
  };
}

test("faster than fp32: beats it", () => {
  expect(againstFp32(figures(0.62), {}, undefined)).toBe(
    "beats fp32 on this board (latency ratio 0.620 to fp32)",
  );
});

test("3 % slower, within the default 1.05: within 3.0 % of fp32, never 'beats'", () => {
  const verdict = againstFp32(figures(1.03), {}, undefined);
  expect(verdict).toBe(
    "within 3.0 % of fp32 on this board (latency ratio 1.030 to fp32, allowed up to 1.05)",
  );
  expect(verdict).not.toContain("beats");
});

test("as fast as fp32 (ratio 1): within 0.0 %, and the job's own ratio is named", () => {
  expect(againstFp32(figures(1), { maxLatencyRatio: 1.2 }, undefined)).toBe(
    "within 0.0 % of fp32 on this board (latency ratio 1.000 to fp32, allowed up to 1.2)",
  );
});

test("slower than allowed: fp32 keeps serving, or int8 serves as prefer = size asks", () => {
  expect(againstFp32(figures(1.3), {}, "slower")).toBe(
    "no int8 form beats fp32 on this board (latency ratio 1.300 to fp32): fp32 keeps serving",
  );
  expect(againstFp32(figures(1.3), { prefer: "size" }, undefined)).toBe(
    "slower than fp32 (latency ratio 1.300 to fp32), served as quantize.prefer = size asks",
  );
});
