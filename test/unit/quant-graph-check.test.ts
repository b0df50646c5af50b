/**
 * The graph check quantize runs before any sample is read: which domains and
 * inputs it refuses, and that it names a node as `--exclude` does (an unnamed
 * node by its op and index), so the name in the error is one the user can use.
 */
import { describe, expect, test } from "bun:test";
import { isQuantdError, type QuantdError } from "../../src/errors.ts";
import { makeGraph, makeModel, makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { DataType, type ModelProto, type NodeProto } from "../../src/onnx/types.ts";
import { assertRunnableGraph } from "../../src/quant/graph-check.ts";

/** x → nodes → y, nodes as given (in any order). */
function modelOf(nodes: NodeProto[]): ModelProto {
  return makeModel({
    graph: makeGraph({
      name: "g",
      nodes,
      inputs: [makeValueInfo("x", DataType.FLOAT, [1, 4])],
      outputs: [makeValueInfo("y", DataType.FLOAT, [1, 4])],
    }),
  });
}

function failure(model: ModelProto): QuantdError {
  try {
    assertRunnableGraph(model);
  } catch (err) {
    if (isQuantdError(err)) return err;
    throw err;
  }
  throw new Error("assertRunnableGraph accepted the model");
}

describe("assertRunnableGraph", () => {
  test("standard and com.microsoft ops pass, whatever the node order", () => {
    const relu = makeNode("Relu", ["h"], ["y"], {}, { name: "relu" });
    const gelu = makeNode("Gelu", ["x"], ["h"], {}, { name: "gelu", domain: "com.microsoft" });
    expect(() => assertRunnableGraph(modelOf([relu, gelu]))).not.toThrow();
  });

  test("an unnamed custom-domain node is named as --exclude names it (op#index)", () => {
    const relu = makeNode("Relu", ["x"], ["h"], {}, { name: "relu" });
    const mystery = makeNode("Mystery", ["h"], ["y"], {}, { name: "", domain: "com.acme" });
    const err = failure(modelOf([relu, mystery]));
    expect(err.code).toBe("QUANT_UNSUPPORTED");
    expect(err.details).toMatchObject({ node: "Mystery#1", opType: "Mystery", domain: "com.acme" });
    expect(err.message).toStartWith("node Mystery#1 is com.acme:Mystery");
  });

  test("a custom-domain op the model defines as a local function passes", () => {
    const m = modelOf([makeNode("Mystery", ["x"], ["y"], {}, { name: "m", domain: "com.acme" })]);
    m.functions = [
      {
        name: "Mystery",
        domain: "com.acme",
        input: ["a"],
        output: ["b"],
        attribute: [],
        attributeProto: [],
        node: [makeNode("Relu", ["a"], ["b"])],
        opsetImport: [{ domain: "", version: 17 }],
        valueInfo: [],
      },
    ];
    expect(() => assertRunnableGraph(m)).not.toThrow();
  });

  test("a node reading a tensor nothing makes is MODEL_INVALID naming both; an omitted optional input is not", () => {
    const clip = makeNode("Clip", ["x", "", "hi"], ["y"], {}, { name: "" });
    const err = failure(modelOf([clip]));
    expect(err.code).toBe("MODEL_INVALID");
    expect(err.details).toEqual({ node: "Clip#0", opType: "Clip", tensor: "hi" });
    clip.input = ["x", ""];
    expect(() => assertRunnableGraph(modelOf([clip]))).not.toThrow();
  });
});
