/**
 * `quantd bench` names each model's task below the table and, with `--data`
 * on models other than sentence classifiers, gives the task's own agreement
 * with the first model (tokens for a token classifier), in the table's lines
 * and in the JSON document; a sentence classifier keeps its accuracy columns.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { makeTensor, tensorToFloat32 } from "../../src/onnx/tensor.ts";
import { DataType } from "../../src/onnx/types.ts";
import { corpusSentences } from "../fixtures/encoders/tokenizers.ts";
import { writeTaskFixture } from "../fixtures/tasks/task-heads.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { envWithoutQuantd, runQuantd } from "../helpers/run-cli.ts";

const root = mkdtempSync(join(tmpdir(), "quantd-bench-tasks-"));
const base = join(root, "fp32");
const shifted = join(root, "shifted");
const texts = join(root, "texts.tsv");

beforeAll(async () => {
  await writeTaskFixture("token-classification", base);
  // The same head with its O bias raised: some tokens fp32 labels POS or NEG become O.
  mkdirSync(shifted);
  for (const f of readdirSync(base)) if (f !== "model.onnx") copyFileSync(join(base, f), join(shifted, f));
  const m = await loadModel(join(base, "model.onnx"));
  const at = m.graph.initializer.findIndex((t) => t.name === "classifier.bias");
  const old = m.graph.initializer[at]!;
  const bias = tensorToFloat32(old).map((x, k) => (k === 0 ? x + 1 : x));
  m.graph.initializer[at] = makeTensor(old.name, DataType.FLOAT, old.dims, bias);
  await saveModel(m, join(shifted, "model.onnx"));
  writeFileSync(texts, `sentence\n${corpusSentences().slice(0, 60).join("\n")}\n`);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const bench = (models: string[], extra: string[]) =>
  runQuantd(
    [
      "bench",
      ...models.flatMap((m) => ["--model", join(m, "model.onnx")]),
      "--seq",
      "16",
      "--threads",
      "1",
      "--runs",
      "2",
      "--warmup",
      "0",
      "--no-memory",
      ...extra,
    ],
    { env: envWithoutQuantd() },
  );

test("the task of each model below the table; --data gives a token classifier's token agreement with the first", async () => {
  const r = await bench([base, base, shifted], ["--data", texts]);
  expect(r.stderr).not.toContain("error");
  expect(r.code).toBe(0);
  const lines = r.stdout.trim().split("\n");
  expect(lines[0]).toMatch(/^model\s+shape\s+thr/);
  // No accuracy columns: a token classifier is not judged by sentence labels.
  expect(lines[0]).not.toMatch(/accuracy/);
  const tasks = lines.filter((l) => l.startsWith("task "));
  expect(tasks).toHaveLength(3);
  expect(tasks[0]).toBe("task fp32/model#1: token-classification (3 labels)");
  // The same file: every token agrees.
  expect(tasks[1]).toMatch(
    /^task fp32\/model#2: token-classification \(3 labels\); vs fp32\/model#1: token agreement 100\.0 % \(≥ 9\d\.\d % at 95 %, n = [\d,]+\); every token agrees on 100\.0 % of 60 samples$/,
  );
  const shiftedLine = tasks[2]!;
  const m = /token agreement (\d+\.\d) %.*every token agrees on (\d+\.\d) % of 60 samples/.exec(shiftedLine);
  expect(m).not.toBeNull();
  expect(Number(m![1])).toBeLessThan(100);
  expect(Number(m![2])).toBeLessThan(100);

  const json = await bench([base, shifted], ["--data", texts, "--json"]);
  const doc = JSON.parse(json.stdout) as {
    tasks: { model: string; task: string; versusFirst?: { unit: string; agreement: number; n: number } }[];
  };
  expect(doc.tasks.map((t) => t.task)).toEqual(["token-classification", "token-classification"]);
  expect(doc.tasks[0]!.versusFirst).toBeUndefined();
  expect(doc.tasks[1]!.versusFirst).toMatchObject({ unit: "token" });
  expect(doc.tasks[1]!.versusFirst!.agreement).toBeLessThan(1);
  expect(doc.tasks[1]!.versusFirst!.n).toBeGreaterThan(60);
}, 120_000);

test("data a task cannot take is said in its line, the latency rows still measured", async () => {
  const pairs = join(root, "pairs.tsv");
  writeFileSync(pairs, "premise\thypothesis\na film\tit is a film\n");
  const r = await bench([base], ["--data", pairs]);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/^model\s+b1×s16\s+1\s+\d/m);
  expect(r.stdout).toMatch(
    /^task model: token-classification \(3 labels\); on the data: error DATA_MISMATCH: input 0 is a pair of texts, but .* is a token-classification model/m,
  );
}, 120_000);

test("a sentence classifier is named too", async () => {
  const r = await bench([dirname(shippedModelPath)], []);
  expect(r.code).toBe(0);
  expect(r.stdout.trim().split("\n").at(-1)).toBe("task model: classification (2 labels)");
}, 120_000);
