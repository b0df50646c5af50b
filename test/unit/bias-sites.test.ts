/**
 * Which biases the bias correction may change (`biasSites`), on small
 * hand-made graphs of the fused ops onnxruntime's optimizers leave: the
 * measurement takes a bias's error as the mean over its readers, which is
 * only right when the bias is added to each reader's output apart.
 */
import { expect, test } from "bun:test";
import { makeGraph, makeModel, makeNode, makeValueInfo } from "../../src/onnx/builder.ts";
import { makeTensor } from "../../src/onnx/tensor.ts";
import { DataType, type ModelProto, type NodeProto } from "../../src/onnx/types.ts";
import { biasSites } from "../../src/quant/bias-correction.ts";
import type { WeightMatMulTarget } from "../../src/quant/plan.ts";

const C = 4;

function node(name: string, opType: string, input: string[], output: string[], domain = ""): NodeProto {
  return makeNode(opType, input, output, {}, { name, domain });
}

function model(nodes: NodeProto[], tensors: [string, number[]][]): ModelProto {
  const initializers = tensors.map(([name, dims]) =>
    makeTensor(name, DataType.FLOAT, dims, new Float32Array(dims.reduce((a, d) => a * d, 1))),
  );
  return makeModel({ graph: makeGraph({ name: "g", nodes, initializers, inputs: [], outputs: [] }) });
}

function matmul(name: string, activation: string, weight: string): WeightMatMulTarget {
  return {
    kind: "weight-matmul",
    node: name,
    opType: "MatMul",
    activation,
    weight,
    channelAxis: 1,
    bias: undefined,
  };
}

const weights: [string, number[]][] = [
  ["wa", [C, C]],
  ["wb", [C, C]],
  ["gamma", [C]],
  ["beta", [C]],
  ["bias", [C]],
];

test("a fused op's bias added to one quantized MatMul's output is a site, compared at the MatMul's output", () => {
  const m = model(
    [
      node("A", "MatMul", ["x", "wa"], ["a"]),
      node("sln", "SkipLayerNormalization", ["a", "skip", "gamma", "beta", "bias"], ["y"], "com.microsoft"),
    ],
    weights,
  );
  expect(biasSites(m, [matmul("A", "x", "wa")])).toEqual([
    { bias: "bias", channels: C, readers: ["A"], outputs: ["a"], included: false },
  ]);
});

test("a SkipLayerNormalization adding one bias to two quantized MatMuls' outputs is no site: its error is their sum", () => {
  // Measured as the mean over two readers, the correction would take off half the error the bias sees.
  const m = model(
    [
      node("A", "MatMul", ["x", "wa"], ["a"]),
      node("B", "MatMul", ["x", "wb"], ["b"]),
      node("sln", "SkipLayerNormalization", ["a", "b", "gamma", "beta", "bias"], ["y"], "com.microsoft"),
    ],
    weights,
  );
  expect(biasSites(m, [matmul("A", "x", "wa"), matmul("B", "x", "wb")])).toEqual([]);
  // With one of them fp32, the other's error is all the bias sees: a site again.
  expect(biasSites(m, [matmul("B", "x", "wb")]).map((s) => s.readers)).toEqual([["B"]]);
});

test("a bias an If's branch also reads (from the outer scope) is no site: correcting it would move the branch's output", () => {
  const branch = (name: string) =>
    makeGraph({
      name,
      nodes: [makeNode("Identity", ["bias"], [`${name}_out`])],
      inputs: [],
      outputs: [makeValueInfo(`${name}_out`, DataType.FLOAT, [C])],
    });
  const add = node("add", "Add", ["a", "bias"], ["y"]);
  const plain = model([node("A", "MatMul", ["x", "wa"], ["a"]), add], weights);
  expect(biasSites(plain, [matmul("A", "x", "wa")]).map((s) => s.bias)).toEqual(["bias"]);
  const withIf = model(
    [
      node("A", "MatMul", ["x", "wa"], ["a"]),
      add,
      makeNode("If", ["cond"], ["z"], { then_branch: branch("then"), else_branch: branch("else") }),
    ],
    weights,
  );
  expect(biasSites(withIf, [matmul("A", "x", "wa")])).toEqual([]);
});
