import { expect, test } from "bun:test";
import type { InputRow } from "../../src/runtime/input-tsv.ts";
import { scoreTaskResults } from "../../src/runtime/task-eval.ts";
import type { TaskSpec } from "../../src/runtime/task.ts";
import type { TaskResult } from "../../src/runtime/task-model.ts";

const regression: TaskSpec = { kind: "regression", output: "logits", labels: ["score"], source: "test" };
const value = (v: number): TaskResult => ({ task: "regression", value: v }) as TaskResult;

test("results of every row are scored on the labelled ones only, each against its own row", () => {
  const rows: InputRow[] = [
    { line: 2, input: "a", label: "1" },
    { line: 3, input: "b" },
    { line: 4, input: "c", label: "2" },
    { line: 5, input: "d", label: "3" },
  ];
  // The unlabelled row's far-off value would break every figure were it scored or shifted the others.
  const r = scoreTaskResults(regression, rows, [1, 100, 2, 3].map(value), true);
  expect(r).toMatchObject({
    task: "regression",
    n: 4,
    labelled: 3,
    spearman: 1,
    pearson: 1,
    meanAbsError: 0,
  });
});

test("without a comparison an unlabelled row is an error naming its line; with one and no labels, skipped", () => {
  const rows: InputRow[] = [
    { line: 2, input: "a", label: "1" },
    { line: 3, input: "b" },
  ];
  expect(() => scoreTaskResults(regression, rows, [1, 2].map(value), false)).toThrow("line 3: no label");
  const none = scoreTaskResults(regression, [rows[1]!], [value(2)], true);
  expect(none).toMatchObject({ n: 1, labelled: 0, skipped: expect.stringContaining("no labelled rows") });
});
