/**
 * The task of a model about to be quantized, read from its graph's outputs: an
 * output that is not a task's is named with its element type as classify names it.
 */
import { expect, test } from "bun:test";
import { makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { DataType } from "../../src/onnx/types.ts";
import { taskOfModel } from "../../src/quant/task-validate.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { shippedModelDir } from "../helpers/paths.ts";

const files = { model: "/nonexistent/model.onnx", tokenizerDir: shippedModelDir };

test("logits are a classification; an int64 label output is MODEL_TASK_MISMATCH naming its type", () => {
  const model = buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny);
  expect(taskOfModel(model, files).kind).toBe("classification");
  const logits = model.graph.output[0]!.name;
  model.graph.node.push(makeNode("ArgMax", [logits], ["label"], { axis: 1, keepdims: 0 }));
  model.graph.output = [makeValueInfo("label", DataType.INT64, ["batch"])];
  expect(() => taskOfModel(model, files)).toThrow(
    /has no output quantd can read as a task: it has label int64 \[batch\]/,
  );
});
