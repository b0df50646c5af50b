/**
 * The OIP name of a stored version serving in place of an explicit --model
 * that did not load: the name of the file it was registered from, a
 * recalibrated version's by its fp32 base (its own source is the job's work
 * file in the state directory).
 */
import { expect, test } from "bun:test";
import { storedVersionName } from "../../src/agent/agent.ts";
import type { ModelVersion } from "../../src/store/models.ts";

const STATE = "/var/lib/quantd";

function version(id: number, path: string, metrics: Record<string, unknown>): ModelVersion {
  return {
    id,
    sha256: String(id).repeat(64).slice(0, 64),
    path,
    kind: id === 1 ? "fp32" : "int8-static",
    state: "retired",
    metrics,
    reason: null,
    createdAt: id,
    updatedAt: id,
    activatedAt: id,
  };
}

const fp32 = version(1, `${STATE}/models/a.onnx`, { source: "/opt/models/sst2/model.onnx" });
const int8 = version(2, `${STATE}/models/b.onnx`, {
  source: `${STATE}/jobs/7/candidate.onnx`,
  base: `${STATE}/models/a.onnx`,
});

test("a version promoted from a user's file is named by that file, as a start with it is", () => {
  expect(storedVersionName(fp32, [int8, fp32], STATE)).toBe("sst2");
});

test("a recalibrated version is named by its fp32 base's file, not the job's work directory", () => {
  expect(storedVersionName(int8, [int8, fp32], STATE)).toBe("sst2");
});

test("no file outside the state directory recorded (a base gone from the store, a loop): undefined", () => {
  expect(storedVersionName(int8, [int8], STATE)).toBeUndefined();
  const loop = version(3, `${STATE}/models/c.onnx`, {
    source: `${STATE}/jobs/8/candidate.onnx`,
    base: `${STATE}/models/c.onnx`,
  });
  expect(storedVersionName(loop, [loop], STATE)).toBeUndefined();
  expect(storedVersionName(version(4, `${STATE}/models/d.onnx`, {}), [], STATE)).toBeUndefined();
});

test("a file whose name starts with `..` inside the state directory is inside it", () => {
  const odd = version(5, `${STATE}/models/e.onnx`, { source: `${STATE}/..work.onnx` });
  expect(storedVersionName(odd, [odd], STATE)).toBeUndefined();
});
