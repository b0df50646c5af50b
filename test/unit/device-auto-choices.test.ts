/**
 * The board record of `--mode auto` winners (`<stateDir>/board-profile.json`):
 * one entry per model, the latest run replacing the earlier one, newest first,
 * bounded, written whole, and a damaged file reported rather than thrown.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type AutoOutcome,
  autoChoiceOf,
  boardRecordPath,
  readBoardRecord,
  recordAutoOutcome,
} from "../../src/device/auto-choices.ts";
import { profileFor } from "../../src/device/profiles.ts";
import { runQuantd } from "../helpers/run-cli.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-board-record-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const pi4 = profileFor("rpi4", {
  model: "Raspberry Pi 4 Model B Rev 1.4",
  arch: "arm64",
  cores: 4,
  memTotalMb: 3800,
  features: ["asimd"],
  cpuParts: ["0xd08"],
  glibc: "2.36",
});

function outcome(decision: string, activations?: string): AutoOutcome {
  return {
    mode: "static",
    method: "percentile",
    format: "fused",
    ...(activations !== undefined ? { activations } : {}),
    auto: { why: pi4.auto.why, decision },
    candidates: [
      {
        mode: "static",
        method: "percentile",
        format: "fused",
        activations: "int8",
        p50Ms: 9.5,
        passed: true,
      },
      { mode: "static", method: "percentile", format: "qdq", p50Ms: 11, passed: true },
      { mode: "dynamic", passed: false },
    ],
  };
}

describe("board record of auto winners", () => {
  test("a report of a run that was not --mode auto records nothing", () => {
    const { auto: _, ...plain } = outcome("x");
    expect(autoChoiceOf(plain, "/m/model.onnx", "rpi4")).toBeUndefined();
    const dir = join(root, "plain");
    expect(recordAutoOutcome(dir, "/m/model.onnx", plain, pi4)).toBeUndefined();
    expect(readBoardRecord(dir)).toEqual({ choices: [] });
  });

  test("the winner, why it won and every candidate's p50 are kept per model, the latest run first", () => {
    const dir = join(root, "runs");
    expect(recordAutoOutcome(dir, "/m/a/model.onnx", outcome("first a", "int8"), pi4)).toBe(
      boardRecordPath(dir),
    );
    recordAutoOutcome(dir, "/m/b/model.onnx", outcome("b"), pi4);
    recordAutoOutcome(dir, "/m/a/model.onnx", outcome("second a", "int8"), pi4);
    const { choices, problem } = readBoardRecord(dir);
    expect(problem).toBeUndefined();
    expect(choices.map((c) => [c.model, c.decision])).toEqual([
      ["/m/a/model.onnx", "second a"],
      ["/m/b/model.onnx", "b"],
    ]);
    expect(choices[0]).toMatchObject({
      board: "rpi4",
      winner: "static/percentile/fused/s8s8",
      why: pi4.auto.why,
    });
    expect(choices[1]!.winner).toBe("static/percentile/fused");
    expect(choices[0]!.candidates).toEqual([
      { form: "static/percentile/fused/s8s8", p50Ms: 9.5, passed: true },
      { form: "static/percentile/qdq", p50Ms: 11, passed: true },
      { form: "dynamic", passed: false },
    ]);
    // Written whole: no temporary file left beside it.
    expect(readdirSync(dir)).toEqual(["board-profile.json"]);
  });

  test("the agent's registry copy is the key; the user's file is kept beside it, and a record with a bad one is skipped", () => {
    const dir = join(root, "copy");
    const copy = `/var/lib/quantd/models/${"87bb".padEnd(64, "0")}.onnx`;
    recordAutoOutcome(dir, copy, outcome("a"), pi4, undefined, "/opt/models/sst2/model.onnx");
    recordAutoOutcome(dir, copy, outcome("again"), pi4, "fp32 keeps serving", "/opt/models/sst2/model.onnx");
    const { choices } = readBoardRecord(dir);
    expect(choices.map((c) => [c.model, c.source, c.decision, c.vsFp32])).toEqual([
      [copy, "/opt/models/sst2/model.onnx", "again", "fp32 keeps serving"],
    ]);
    writeFileSync(boardRecordPath(dir), JSON.stringify({ auto: [{ ...choices[0], source: 7 }] }));
    expect(readBoardRecord(dir).choices).toEqual([]);
  });

  test("at most 16 models, the oldest dropped", () => {
    const dir = join(root, "many");
    for (let i = 0; i < 20; i++) recordAutoOutcome(dir, `/m/${i}.onnx`, outcome(`run ${i}`), pi4);
    const { choices } = readBoardRecord(dir);
    expect(choices).toHaveLength(16);
    expect(choices[0]!.model).toBe("/m/19.onnx");
    expect(choices[15]!.model).toBe("/m/4.onnx");
  });

  test("a damaged record is reported, not thrown, and the next run rewrites it", () => {
    const dir = join(root, "damaged");
    recordAutoOutcome(dir, "/m/x.onnx", outcome("x"), pi4);
    writeFileSync(boardRecordPath(dir), "{ not json");
    const damaged = readBoardRecord(dir);
    expect(damaged.choices).toEqual([]);
    expect(damaged.problem).toContain("is not JSON");
    recordAutoOutcome(dir, "/m/y.onnx", outcome("y"), pi4);
    expect(readBoardRecord(dir).choices.map((c) => c.decision)).toEqual(["y"]);
  });

  test("a recalibration's verdict against fp32 is kept beside the winner and `quantd device` shows it", async () => {
    const dir = join(root, "vs-fp32");
    const verdict = "no int8 form beats fp32 on this board (latency ratio 1.210 to fp32): fp32 keeps serving";
    recordAutoOutcome(dir, "/m/pi/model.onnx", outcome("fastest that met the gate"), pi4, verdict);
    expect(readBoardRecord(dir).choices[0]?.vsFp32).toBe(verdict);
    const table = await runQuantd(["device", "--state-dir", dir]);
    expect(table.code).toBe(0);
    expect(table.stdout).toContain("auto winner (pi)");
    expect(table.stdout).toContain(`fastest that met the gate; ${verdict}`);
    // A later quantize run of the same model, with no benchmark against fp32, says nothing of one.
    recordAutoOutcome(dir, "/m/pi/model.onnx", outcome("again"), pi4);
    expect(readBoardRecord(dir).choices[0]?.vsFp32).toBeUndefined();
  });

  test("an entry whose verdict against fp32 is not text is left out, as any malformed entry is", () => {
    const dir = join(root, "vs-fp32-damaged");
    recordAutoOutcome(dir, "/m/a.onnx", outcome("a"), pi4, "beats fp32");
    recordAutoOutcome(dir, "/m/b.onnx", outcome("b"), pi4);
    const body = JSON.parse(readFileSync(boardRecordPath(dir), "utf8")) as {
      auto: Record<string, unknown>[];
    };
    body.auto[1]!["vsFp32"] = 5;
    writeFileSync(boardRecordPath(dir), JSON.stringify(body));
    expect(readBoardRecord(dir).choices.map((c) => c.decision)).toEqual(["b"]);
  });
});
