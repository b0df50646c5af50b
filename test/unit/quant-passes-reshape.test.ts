/**
 * The Reshape-shape simplification: kept when onnxruntime confirms the outputs
 * are unchanged, reverted when a copied dimension would come from the wrong
 * tensor. (The shipped BERT's 16 attention reshapes: `quant-fusion.test.ts`.)
 */
import { describe, expect, test } from "bun:test";
import { makeGraph, makeModel, makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { encodeModel } from "../../src/onnx/codec.ts";
import { makeTensor } from "../../src/onnx/tensor.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { DataType } from "../../src/onnx/types.ts";
import { simplifyReshapeShapes } from "../../src/quant/passes/constant-reshape.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";

/** Reshape(x [a, b, 6]) to [dim0(t), dim1(t), -1], shape computed at run time from `t`. */
function reshapeFromOtherTensor(tDims: readonly string[]): ModelProto {
  const i64 = (name: string, v: number[]) =>
    makeTensor(
      name,
      DataType.INT64,
      v.length === 1 ? [] : [v.length],
      BigInt64Array.from(v, (x) => BigInt(x)),
    );
  const nodes = [
    makeNode("Shape", ["t"], ["t_shape"]),
    makeNode("Gather", ["t_shape", "zero"], ["d0"], { axis: 0 }),
    makeNode("Gather", ["t_shape", "one"], ["d1"], { axis: 0 }),
    makeNode("Unsqueeze", ["d0", "axes"], ["d0u"]),
    makeNode("Unsqueeze", ["d1", "axes"], ["d1u"]),
    makeNode("Concat", ["d0u", "d1u", "minus_one"], ["shape"], { axis: 0 }),
    makeNode("Reshape", ["x", "shape"], ["y"], {}, { name: "reshape" }),
  ];
  return makeModel({
    graph: makeGraph({
      name: "r",
      nodes,
      inputs: [makeValueInfo("x", DataType.FLOAT, ["a", "b", 6]), makeValueInfo("t", DataType.FLOAT, tDims)],
      outputs: [makeValueInfo("y", DataType.FLOAT)],
      initializers: [
        i64("zero", [0]),
        i64("one", [1]),
        makeTensor("axes", DataType.INT64, [1], BigInt64Array.of(0n)),
        makeTensor("minus_one", DataType.INT64, [1], BigInt64Array.of(-1n)),
      ],
    }),
  });
}

describe("constant Reshape shapes", () => {
  test("kept when the copied dims are the input's own: the subgraph disappears", async () => {
    const m = reshapeFromOtherTensor(["a", "b"]);
    const r = await simplifyReshapeShapes(m, encodeModel);
    expect(r).toEqual({
      reshapes: 1,
      removedNodes: 6,
      signature: JSON.stringify([["reshape", ["0", "0", "-1"]]]),
    });
    expect(m.graph.node.map((n) => n.opType)).toEqual(["Reshape"]);
    expect(m.graph.initializer.map((t) => t.name)).toEqual(["reshape_shape"]);
  });

  test("reverted when the shape comes from a tensor whose dims differ", async () => {
    const m = reshapeFromOtherTensor(["b", "a"]);
    const before = m.graph.node.length;
    const r = await simplifyReshapeShapes(m, encodeModel);
    expect(r.reshapes).toBe(0);
    expect(r.reverted).toContain("outputs differ");
    expect(m.graph.node.length).toBe(before);
  });

  test("a trusted signature skips the onnxruntime check (rebuilds of one fp32 model)", async () => {
    const checked = await simplifyReshapeShapes(reshapeFromOtherTensor(["a", "b"]), encodeModel);
    // Same node names and shapes, so the same signature: applied unchecked (here wrongly, which shows the skip).
    const m = reshapeFromOtherTensor(["b", "a"]);
    const r = await simplifyReshapeShapes(m, encodeModel, checked.signature);
    expect(r.reverted).toBeUndefined();
    expect(r.reshapes).toBe(1);
  });

  test("a model whose shapes are already constant is left alone", async () => {
    const fp32 = buildSyntheticBert(SYNTHETIC_BERT_PRESETS.tiny);
    const before = fp32.graph.node.length;
    expect(await simplifyReshapeShapes(fp32, encodeModel)).toEqual({ reshapes: 0, removedNodes: 0 });
    expect(fp32.graph.node.length).toBe(before);
  });
});
