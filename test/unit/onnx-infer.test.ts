/**
 * Type and shape inference rules one by one (onnxruntime's view of whole
 * graphs is compared in `test/integration/onnx-infer.test.ts`).
 */
import { describe, expect, test } from "bun:test";
import { makeGraph, makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { GraphIndex } from "../../src/onnx/graph.ts";
import { formatInferredType, inferTypes } from "../../src/onnx/infer.ts";
import { makeTensor } from "../../src/onnx/tensor.ts";
import { DataType } from "../../src/onnx/types.ts";

const i64 = (v: number[]) =>
  makeTensor(
    "",
    DataType.INT64,
    [v.length],
    BigInt64Array.from(v, (x) => BigInt(x)),
  );

describe("inferTypes", () => {
  const graph = makeGraph({
    name: "g",
    nodes: [
      makeNode("Constant", [], ["shape"], { value: i64([0, 0, 2, -1]) }, { name: "c" }),
      makeNode("Reshape", ["x", "shape"], ["heads"], {}, { name: "reshape" }),
      makeNode("Transpose", ["heads"], ["t"], { perm: [0, 2, 1, 3] }, { name: "transpose" }),
      makeNode("MatMul", ["x", "W"], ["mm"], {}, { name: "mm" }),
      makeNode("Add", ["mm", "bias"], ["sum"], {}, { name: "add" }),
      makeNode("Unsqueeze", ["mask"], ["m1"], { axes: [1] }, { name: "unsq_attr" }),
      makeNode("Unsqueeze", ["m1", "axes"], ["m2"], {}, { name: "unsq_input" }),
      makeNode("Cast", ["m2"], ["mf"], { to: DataType.FLOAT }, { name: "cast" }),
      makeNode("Where", ["gt", "x", "zero"], ["w"], {}, { name: "where" }),
      makeNode("Greater", ["x", "zero"], ["gt"], {}, { name: "gt_late" }),
      makeNode("ReduceMean", ["x"], ["mean"], { axes: [-1], keepdims: 1 }, { name: "mean" }),
      makeNode("Shape", ["x"], ["shp"], {}, { name: "shape_of" }),
      makeNode("Gather", ["shp", "one"], ["seq"], { axis: 0 }, { name: "seq" }),
      makeNode("FusedMatMul", ["x", "x"], ["qk"], { transB: 1 }, { name: "qk", domain: "com.microsoft" }),
      makeNode("Mystery", ["x"], ["y_known"], {}, { name: "mystery", domain: "com.example" }),
      makeNode("Mystery", ["x"], ["y_unknown"], {}, { name: "mystery2", domain: "com.example" }),
    ],
    inputs: [
      makeValueInfo("x", DataType.FLOAT, ["batch", "seq", 8]),
      makeValueInfo("mask", DataType.INT64, ["batch", "seq"]),
    ],
    outputs: [makeValueInfo("sum", DataType.FLOAT)],
    initializers: [
      makeTensor("W", DataType.FLOAT, [8, 6], new Float32Array(48)),
      makeTensor("bias", DataType.FLOAT, [6], new Float32Array(6)),
      makeTensor("axes", DataType.INT64, [1], BigInt64Array.of(2n)),
      makeTensor("zero", DataType.FLOAT, [], Float32Array.of(0)),
      makeTensor("one", DataType.INT64, [], BigInt64Array.of(1n)),
    ],
  });
  // A stale value_info entry for a known op must not win; one behind an unknown op is all there is.
  graph.valueInfo.push(
    makeValueInfo("mm", DataType.INT32, [1]),
    makeValueInfo("y_known", DataType.FLOAT16, [3]),
  );
  const { types, unknownOps } = inferTypes(graph);
  const t = (name: string) => {
    const x = types.get(name);
    return x === undefined ? undefined : formatInferredType(x);
  };

  test("shapes through Reshape (0 copies, -1 stays unknown with symbolic dims), Transpose, MatMul, broadcast", () => {
    expect(t("heads")).toBe("FLOAT[batch,seq,2,?]");
    expect(t("t")).toBe("FLOAT[batch,2,seq,?]");
    expect(t("mm")).toBe("FLOAT[batch,seq,6]");
    expect(t("sum")).toBe("FLOAT[batch,seq,6]");
    expect(t("mean")).toBe("FLOAT[batch,seq,1]");
    expect(t("qk")).toBe("FLOAT[batch,seq,seq]");
  });

  test("Unsqueeze with axes as an attribute (opset < 13) or an input; Cast; comparisons; Shape and Gather", () => {
    expect(t("m1")).toBe("INT64[batch,1,seq]");
    expect(t("m2")).toBe("INT64[batch,1,1,seq]");
    expect(t("mf")).toBe("FLOAT[batch,1,1,seq]");
    expect(t("gt")).toBe("BOOL[batch,seq,8]");
    expect(t("shp")).toBe("INT64[3]");
    expect(t("seq")).toBe("INT64[]");
  });

  test("a node read before its producer is typed once the producer is", () => {
    expect(t("w")).toBe("FLOAT[batch,seq,8]");
  });

  test("unknown ops are listed; value_info types their outputs only there", () => {
    expect(unknownOps.map((u) => `${u.domain}:${u.opType}:${u.node}`)).toEqual([
      "com.example:Mystery:mystery",
      "com.example:Mystery:mystery2",
    ]);
    expect(t("y_known")).toBe("FLOAT16[3]");
    expect(t("y_unknown")).toBeUndefined();
  });

  test("GraphIndex answers from inference and drops it after an edit", () => {
    const ix = new GraphIndex(graph);
    expect(ix.elemType("mm")).toBe(DataType.FLOAT);
    expect(ix.elemType("y_unknown")).toBeUndefined();
    // A probe output for a tensor of unknown type carries no type: onnxruntime fills it in.
    expect(ix.addProbeOutput("y_unknown").type).toBeUndefined();
    expect(ix.addProbeOutput("mm").type?.tensorType?.elemType).toBe(DataType.FLOAT);
    const cast = graph.node.find((n) => n.name === "cast")!;
    ix.setNodeInput(cast, 0, "mask");
    expect(ix.tensorType("mf")?.shape).toEqual(["batch", "seq"]);
  });
});
