/**
 * Models built for CLI error tests with quantd's own ONNX builder and codec.
 */
import { makeGraph, makeModel, makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { encodeModel } from "../../src/onnx/codec.ts";
import { DataType } from "../../src/onnx/types.ts";

/**
 * A valid ONNX model that onnxruntime loads but that is no BERT: its input is
 * `tokens` (not `input_ids`), and it just casts it to float.
 */
export function buildModelWithOtherInputs(): Uint8Array {
  const graph = makeGraph({
    name: "not-a-bert",
    nodes: [makeNode("Cast", ["tokens"], ["logits"], { to: { int: DataType.FLOAT } })],
    inputs: [makeValueInfo("tokens", DataType.INT64, ["batch", "seq"])],
    outputs: [makeValueInfo("logits", DataType.FLOAT, ["batch", "seq"])],
  });
  return encodeModel(makeModel({ graph }));
}
