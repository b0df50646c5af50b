/**
 * The human summaries of job reports and device statuses: a recalibration's
 * report (as the agent sends it over MQTT) reads as the local `quantd job`
 * summary does; any other job's result becomes a table with units; nothing
 * falls back to a line of JSON.
 */
import { describe, expect, test } from "bun:test";
import type { RecalibrationResult } from "../../src/agent/recalibrate.ts";
import {
  describeDeviceStatus,
  describeFleetDevices,
  describeFleetOutcome,
  describeJob,
  describeModelVersions,
  fieldRows,
} from "../../src/cli/summaries.ts";

const RESULT: RecalibrationResult = {
  decision: "promoted",
  reasons: [],
  samples: { calibration: 256, validation: 128, pool: 3000 },
  candidate: { sha256: "ab".repeat(32), bytes: 3_500_000, kind: "int8-static", version: 4 },
  active: { path: "/var/lib/quantd/models/x.onnx", version: 3, kind: "fp32", bytes: 11_200_000 },
  validation: {
    n: 128,
    agreement: 0.9921875,
    disagreements: 1,
    maxAbsLogitDiff: 0.4,
    meanAbsLogitDiff: 0.05,
    labelled: 128,
    gateN: 128,
    gateAgreements: 127,
    confidence: 0.95,
    agreementLower: 0.96365,
    margin: { threshold: 0.01, nearTies: 2, nearTieFlips: 1, confidentFlips: 0, ignored: false },
    gate: { minAgreement: 0.98, decideOn: "point", passed: true, failures: [] },
  },
  bench: {
    shape: { batch: 1, seq: 64 },
    threads: 2,
    runs: 40,
    activeP50Ms: 9.5,
    candidateP50Ms: 4.25,
    activeP90Ms: 10,
    candidateP90Ms: 5,
    latencyRatio: 0.45,
    activeBytes: 11_200_000,
    candidateBytes: 3_500_000,
  },
  stageMs: { pick: 12, quantize: 20_500, benchmark: 4_000, promote: 300, report: 2 },
};

describe("summaries", () => {
  test("a fleet report of a recalibration reads like the local job summary: decision, agreement, latency, size, stages", () => {
    const lines = describeFleetOutcome({
      device: "pi-7",
      id: "recalibrate-1",
      state: "SUCCEEDED",
      report: { id: "recalibrate-1", type: "recalibrate", state: "SUCCEEDED", result: RESULT },
    });
    const text = lines.join("\n");
    expect(lines[0]).toBe("pi-7:");
    expect(lines[1]).toBe("  job recalibrate-1: SUCCEEDED");
    expect(text).toMatch(/decision\s+promoted/);
    expect(text).toMatch(
      /agreement\s+99\.2 % \(≥ 96\.3 % at 95 %, n = 128\), gate 98 % on the point estimate/,
    );
    expect(text).toMatch(
      /latency p50\s+active 9\.50 ms, candidate 4\.25 ms \(median paired ratio 0\.45, b1×s64\)/,
    );
    expect(text).toMatch(/model version\s+4 \(int8-static\), serving/);
    expect(text).toMatch(/size\s+active 10\.7 MB, candidate 3\.3 MB/);
    expect(text).toMatch(/stages\s+pick 12\.0 ms, quantize 20500 ms, benchmark 4000 ms/);
    expect(text).not.toContain("{");
  });

  test("a rejected candidate's version is named as rejected, not as the model version; its ratio as the median of paired runs", () => {
    const rejected: RecalibrationResult = {
      ...RESULT,
      decision: "rejected",
      reasons: ["slower than the active model: median paired ratio 1.120 > 1.1 (p50 6.66 vs 5.97 ms)"],
      candidate: { ...RESULT.candidate!, version: 5 },
      bench: { ...RESULT.bench!, activeP50Ms: 5.97, candidateP50Ms: 6.66, latencyRatio: 1.0 },
    };
    const text = describeJob({ id: "j5", type: "recalibrate", state: "SUCCEEDED", result: rejected }).join(
      "\n",
    );
    expect(text).toMatch(/decision\s+rejected/);
    expect(text).toMatch(/candidate version\s+5 \(int8-static\), rejected: not serving/);
    expect(text).not.toMatch(/model version/);
    expect(text).toMatch(/latency p50\s+active 5\.97 ms, candidate 6\.66 ms \(median paired ratio 1\.00,/);
    expect(text).not.toContain("(ratio");
  });

  test("a failed job shows its error; a refused command its reason", () => {
    const failed = describeJob({
      id: "rb-1",
      type: "rollback",
      state: "FAILED",
      error: { code: "NOT_FOUND", message: "no earlier version" },
    });
    expect(failed).toEqual([
      "job rb-1 (rollback): FAILED (NOT_FOUND)",
      "  error  NOT_FOUND: no earlier version",
    ]);
    expect(
      describeFleetOutcome({
        device: "pi-2",
        id: "x",
        state: "REFUSED",
        error: { code: "FLEET_UNAVAILABLE", message: "no reply from pi-2 within 10 s" },
      }),
    ).toEqual(["pi-2: job x REFUSED FLEET_UNAVAILABLE: no reply from pi-2 within 10 s"]);
  });

  test("other results become rows with units; a status names the serving model and the last job", () => {
    expect(fieldRows({ p50Ms: 3.2, rssBytes: 2048, batch: 8, model: { version: "7" } })).toEqual([
      ["p50Ms", "3.20 ms"],
      ["rssBytes", "2.0 KB"],
      ["batch", "8"],
      ["model.version", "7"],
    ]);
    const lines = describeDeviceStatus("pi-1", {
      state: "online",
      agentVersion: "0.1.0",
      serving: { version: 4, kind: "int8-static" },
      queueDepth: 0,
      lastJob: { id: "j9", type: "recalibrate", state: "SUCCEEDED", result: RESULT, error: null },
    });
    expect(lines).toContain("model     4 (int8-static)");
    expect(lines).toContain("last job  j9 (recalibrate)");
    expect(lines).toContain("job j9: SUCCEEDED");
  });

  test("a degraded device: a row in `fleet report`, a mark and a line in `fleet devices`", () => {
    const rejectedAtStart = { path: "/opt/m/model.onnx", code: "MODEL_TRUNCATED", message: "cut short" };
    const model = { version: "1", kind: "fp32", rejectedAtStart };
    const said =
      "started with /opt/m/model.onnx, which did not load (MODEL_TRUNCATED: cut short); version 1 serves instead";
    expect(describeDeviceStatus("pi-1", { state: "online", model })).toContain(`degraded  ${said}`);
    expect(
      describeDeviceStatus("pi-2", { state: "online", model: { version: "1" } }).join("\n"),
    ).not.toContain("degraded");
    const at = 1_700_000_000_000;
    const status = (device: string, over: object = {}) => ({
      state: "online" as const,
      fleet: "lab",
      device,
      at: at - 5000,
      agentVersion: "0.1.0",
      model,
      ...over,
    });
    const lines = describeFleetDevices(
      [
        status("pi-1"),
        status("pi-2", { model: { version: "3", kind: "int8-static" } }),
        status("pi-3", { state: "offline" }),
      ],
      at,
    );
    expect(lines[0]).toMatch(/^device +state +agent +model +kind +outbox +since$/);
    expect(lines[1]).toMatch(/^pi-1 +online +0\.1\.0 +1 +fp32 +- +5s ago +degraded$/);
    expect(lines[2]).toMatch(/^pi-2 +online +0\.1\.0 +3 +int8-static +- +5s ago$/);
    expect(lines[3]).toMatch(/^pi-3 +offline .* 5s ago$/);
    expect(lines.slice(4)).toEqual([`pi-1 degraded: ${said}`]);
  });

  test("the registry's table gives a validated version's agreement with the bound it was gated on", () => {
    const version = (id: number, metrics: Record<string, unknown>) => ({
      id,
      sha256: `${id}`.repeat(64),
      path: `/m/${id}.onnx`,
      kind: id === 1 ? "fp32" : "int8-static",
      state: id === 3 ? "active" : "retired",
      metrics,
      reason: null,
    });
    const lines = describeModelVersions(
      [
        version(1, {}),
        version(2, { validation: { agreement: 0.9975 } }),
        version(3, { validation: RESULT.validation, bench: RESULT.bench }),
      ],
      3,
    );
    expect(lines[1]).toMatch(/^\*\s+3\s+active\s+int8-static\s+99\.2 % \(≥ 96\.3 %\)\s+4\.25 ms\s+3{12}$/);
    // Recorded before the bound existed: the point estimate alone, as it was.
    expect(lines[2]).toMatch(/^\s+2\s+retired\s+int8-static\s+99\.75%\s+-/);
    expect(lines[3]).toMatch(/^\s+1\s+retired\s+fp32\s+-\s+-/);
  });
});
