/**
 * Which tokenizer a version registered before copies were kept (no
 * `tokenizer` metric) serves with: the configured one when configured, else
 * the one beside its source, else, for a recalibration whose source was a
 * job's file, its fp32 base's; else the agent's.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { versionTokenizerDir } from "../../src/agent/version-tokenizer.ts";
import type { ModelVersion, RecordedKind } from "../../src/store/models.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-version-tok-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function tokenizerIn(name: string): string {
  const d = join(root, name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "tokenizer.json"), `{"name":"${name}"}`);
  return d;
}

function version(id: number, path: string, metrics: Record<string, unknown>): ModelVersion {
  const kind: RecordedKind = metrics["base"] === undefined ? "fp32" : "int8-static";
  return {
    id,
    sha256: `${id}`.padStart(64, "0"),
    path,
    kind,
    state: "retired",
    metrics,
    reason: null,
    createdAt: 0,
    updatedAt: 0,
    activatedAt: 0,
  };
}

const agentTok = tokenizerIn("agent");
const exportDir = tokenizerIn("export");
const modelsDir = join(root, "state", "models");
const base = version(1, join(modelsDir, "a.onnx"), { source: join(exportDir, "model.onnx") });
const recalibrated = version(2, join(modelsDir, "b.onnx"), {
  source: join(root, "jobs", "gone", "model.onnx"),
  base: base.path,
});
const served = { models: { list: () => [base, recalibrated] }, modelsDir, tokenizerDir: agentTok };

test("a legacy version serves with the tokenizer beside its source", () => {
  expect(versionTokenizerDir(base, served)).toBe(exportDir);
});

test("a legacy recalibration (its source a job's file, gone) serves with its fp32 base's tokenizer", () => {
  expect(versionTokenizerDir(recalibrated, served)).toBe(exportDir);
  // Its base not in the store: the agent's.
  expect(versionTokenizerDir(recalibrated, { ...served, models: { list: () => [recalibrated] } })).toBe(
    agentTok,
  );
});

test("a configured tokenizer serves every legacy version", () => {
  expect(versionTokenizerDir(recalibrated, { ...served, tokenizerExplicit: true })).toBe(agentTok);
  expect(versionTokenizerDir(base, { ...served, tokenizerExplicit: true })).toBe(agentTok);
});

test("a version whose copy is gone is TOKENIZER_NOT_FOUND naming it", () => {
  const kept = version(3, join(modelsDir, "c.onnx"), { tokenizer: "f".repeat(64) });
  expect(() => versionTokenizerDir(kept, served)).toThrow(/model version 3 .*tokenizer\.json is gone/);
});
