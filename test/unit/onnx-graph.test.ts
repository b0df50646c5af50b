import { describe, expect, test } from "bun:test";
import {
  INT64_MAX,
  makeAttribute,
  makeGraph,
  makeModel,
  makeNode,
  makeValueInfo,
} from "../../src/onnx/builder.ts";
import { decodeModel, encodeModel } from "../../src/onnx/codec.ts";
import {
  GraphIndex,
  getAttrFloat,
  getAttrInt,
  getAttrInts,
  getAttrString,
  getOpsetVersion,
  tokenEmbeddingTable,
} from "../../src/onnx/graph.ts";
import { makeTensor, tensorToArray } from "../../src/onnx/tensor.ts";
import type { GraphProto, NodeProto } from "../../src/onnx/types.ts";
import { AttributeType, DataType } from "../../src/onnx/types.ts";
import { buildTransformerOptimizedBert } from "../fixtures/exporters/transformer-optimizer.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { codeOf } from "../helpers/error-code.ts";

/** x → MatMul(W) → Add(b) → Relu → y, plus a Constant feeding a Mul on the side. */
function smallGraph(): GraphProto {
  return makeGraph({
    name: "g",
    nodes: [
      makeNode("MatMul", ["x", "W"], ["h"], {}, { name: "mm" }),
      makeNode("Add", ["h", "b"], ["h2"], {}, { name: "add" }),
      makeNode("Constant", [], ["two"], { value_float: { float: 2 } }, { name: "c2" }),
      makeNode("Mul", ["h2", "two"], ["h3"], {}, { name: "mul" }),
      makeNode("Relu", ["h3"], ["y"], {}, { name: "relu" }),
      makeNode("Cast", ["h2"], ["h2_i"], { to: DataType.INT32 }, { name: "cast" }),
      makeNode("Greater", ["h2", "h3"], ["gt"], {}, { name: "gt" }),
    ],
    inputs: [makeValueInfo("x", DataType.FLOAT, ["n", 4])],
    outputs: [makeValueInfo("y", DataType.FLOAT, ["n", 3])],
    initializers: [
      makeTensor("W", DataType.FLOAT, [4, 3], new Float32Array(12).fill(0.5)),
      makeTensor("b", DataType.FLOAT, [3], Float32Array.of(1, 2, 3)),
    ],
  });
}

function names(nodes: readonly NodeProto[]): string[] {
  return nodes.map((n) => n.name);
}

describe("GraphIndex queries", () => {
  test("producers, consumers, initializers", () => {
    const ix = new GraphIndex(smallGraph());
    expect(ix.producer("h2")?.name).toBe("add");
    expect(ix.producer("x")).toBeUndefined();
    expect(names(ix.consumers("h2")).sort()).toEqual(["cast", "gt", "mul"]);
    expect(ix.consumers("y")).toEqual([]);
    expect(ix.initializer("W")?.dims).toEqual([4, 3]);
    expect(ix.isGraphInput("x")).toBe(true);
    expect(ix.isGraphOutput("y")).toBe(true);
  });

  test("a node reading the same tensor twice is one consumer", () => {
    const g = smallGraph();
    g.node.push(makeNode("Mul", ["y", "y"], ["y2"], {}, { name: "sq" }));
    const ix = new GraphIndex(g);
    expect(names(ix.consumers("y"))).toEqual(["sq"]);
  });

  test("topological order of a shuffled graph, and cycle detection", () => {
    const g = smallGraph();
    const sorted = names(g.node);
    let s = 7;
    for (let k = g.node.length - 1; k > 0; k--) {
      s = (s * 48271) % 2147483647;
      const j = s % (k + 1);
      [g.node[k], g.node[j]] = [g.node[j]!, g.node[k]!];
    }
    g.node.reverse(); // make sure it starts out of order
    const ix = new GraphIndex(g);
    expect(ix.isSorted()).toBe(false);
    const order = names(ix.topologicalOrder());
    expect(order.slice().sort()).toEqual(sorted.slice().sort());
    const at = (n: string): number => order.indexOf(n);
    expect(at("mm")).toBeLessThan(at("add"));
    expect(at("add")).toBeLessThan(at("mul"));
    expect(at("c2")).toBeLessThan(at("mul"));
    expect(at("mul")).toBeLessThan(at("relu"));
    expect(at("mul")).toBeLessThan(at("gt"));
    ix.sortTopologically();
    expect(ix.isSorted()).toBe(true);
    expect(ix.isAcyclic()).toBe(true);

    const cyclic = smallGraph();
    cyclic.node[0]!.input[0] = "y"; // MatMul reads Relu's output
    const cix = new GraphIndex(cyclic);
    expect(cix.isAcyclic()).toBe(false);
    expect(codeOf(() => cix.topologicalOrder())).toBe("MODEL_INVALID");
  });

  test("a sorted graph keeps its order", () => {
    const g = smallGraph();
    const ix = new GraphIndex(g);
    expect(ix.isSorted()).toBe(true);
    expect(names(ix.topologicalOrder())).toEqual(names(g.node));
  });

  test("uniqueName avoids node, tensor, initializer and value-info names, and never repeats", () => {
    const g = smallGraph();
    g.valueInfo.push(makeValueInfo("vi", DataType.FLOAT));
    const ix = new GraphIndex(g);
    for (const taken of ["mm", "h2", "W", "x", "y", "vi"]) expect(ix.uniqueName(taken)).not.toBe(taken);
    expect(ix.uniqueName("fresh")).toBe("fresh");
    const a = ix.uniqueName("fresh");
    const b = ix.uniqueName("fresh");
    expect(new Set(["fresh", a, b]).size).toBe(3);
    g.node.push(makeNode("Identity", ["y"], ["later"], {}, { name: "later_node" }));
    ix.rebuild();
    expect(ix.uniqueName("later")).not.toBe("later");
  });

  test("element types: declared, from initializers and constants, inferred from producers", () => {
    const ix = new GraphIndex(smallGraph());
    expect(ix.elemType("x")).toBe(DataType.FLOAT);
    expect(ix.elemType("W")).toBe(DataType.FLOAT);
    expect(ix.elemType("h3")).toBe(DataType.FLOAT);
    expect(ix.elemType("two")).toBe(DataType.FLOAT);
    expect(ix.elemType("h2_i")).toBe(DataType.INT32);
    expect(ix.elemType("gt")).toBe(DataType.BOOL);
    expect(ix.elemType("nowhere")).toBeUndefined();
  });

  test("constants: initializers and Constant nodes, not run-time values", () => {
    const g = smallGraph();
    g.node.push(
      makeNode("Constant", [], ["ints"], { value_ints: [1, INT64_MAX] }, { name: "ci" }),
      makeNode("Constant", [], ["t"], { value: makeTensor("t", DataType.INT8, [2], Int8Array.of(-1, 1)) }),
    );
    const ix = new GraphIndex(g);
    expect(tensorToArray(ix.constant("b")!)).toEqual(Float32Array.of(1, 2, 3));
    expect(ix.constantArray("two")).toEqual(Float32Array.of(2));
    expect(ix.constantArray("ints")).toEqual(BigInt64Array.of(1n, 2n ** 63n - 1n));
    expect(ix.constantArray("t")).toEqual(Int8Array.of(-1, 1));
    expect(ix.constant("h2")).toBeUndefined();
    expect(ix.constant("x")).toBeUndefined();
    // An initializer that is also a graph input can be fed at run time: not a constant.
    g.input.push(makeValueInfo("b", DataType.FLOAT, [3]));
    ix.rebuild();
    expect(ix.constant("b")).toBeUndefined();
  });
});

describe("GraphIndex edits", () => {
  test("insert a node between a tensor and its consumers, then remove it again", () => {
    const g = smallGraph();
    const ix = new GraphIndex(g);
    const q = ix.uniqueName("h2_q");
    const node = makeNode("Identity", ["h2"], [q], {}, { name: ix.uniqueName("h2_Identity") });
    ix.insertNode(node);
    expect(g.node.indexOf(node)).toBe(g.node.findIndex((n) => n.name === "add") + 1);
    expect(ix.replaceAllUses("h2", q, [node])).toBe(3);
    expect(names(ix.consumers("h2"))).toEqual([node.name]);
    expect(names(ix.consumers(q)).sort()).toEqual(["cast", "gt", "mul"]);
    expect(ix.producer(q)).toBe(node);
    expect(ix.isSorted()).toBe(true);

    // Undo: rewire back and remove.
    ix.replaceAllUses(q, "h2");
    expect(ix.removeNode(node)).toBe(true);
    expect(ix.removeNode(node)).toBe(false);
    expect(ix.producer(q)).toBeUndefined();
    expect(names(ix.consumers("h2")).sort()).toEqual(["cast", "gt", "mul"]);
    expect(g.node.map((n) => n.input)).toEqual(smallGraph().node.map((n) => n.input));
  });

  test("insert before / after a given node", () => {
    const g = smallGraph();
    const ix = new GraphIndex(g);
    const relu = g.node.find((n) => n.name === "relu")!;
    const before = makeNode("Identity", ["h3"], ["pre"], {}, { name: "pre" });
    const after = makeNode("Identity", ["y"], ["post"], {}, { name: "post" });
    ix.insertNode(before, { before: relu });
    ix.insertNode(after, { after: relu });
    const order = names(g.node);
    expect(order.indexOf("pre")).toBe(order.indexOf("relu") - 1);
    expect(order.indexOf("post")).toBe(order.indexOf("relu") + 1);
    expect(
      codeOf(() => ix.insertNode(makeNode("Identity", ["y"], ["z"]), { after: makeNode("X", [], []) })),
    ).toBe("INTERNAL");
  });

  test("setNodeInput keeps consumers right", () => {
    const g = smallGraph();
    const ix = new GraphIndex(g);
    const mul = g.node.find((n) => n.name === "mul")!;
    ix.setNodeInput(mul, 1, "b");
    expect(names(ix.consumers("b")).sort()).toEqual(["add", "mul"]);
    expect(ix.consumers("two")).toEqual([]);
  });

  test("initializers: replace in place, add, remove (with their IR<4 graph input)", () => {
    const g = smallGraph();
    g.input.push(makeValueInfo("b", DataType.FLOAT, [3]));
    const ix = new GraphIndex(g);
    ix.setInitializer(makeTensor("W", DataType.INT8, [4, 3], new Int8Array(12)));
    expect(g.initializer[0]!.dataType).toBe(DataType.INT8);
    ix.setInitializer(makeTensor("W_scale", DataType.FLOAT, [], Float32Array.of(0.1)));
    expect(g.initializer.map((t) => t.name)).toEqual(["W", "b", "W_scale"]);
    expect(ix.removeInitializer("b")).toBe(true);
    expect(ix.removeInitializer("b")).toBe(false);
    expect(g.input.map((i) => i.name)).toEqual(["x"]);
    expect(ix.initializer("b")).toBeUndefined();
  });

  test("addGraphOutput with an inferred or given type, refusing unknown tensors", () => {
    const g = smallGraph();
    const ix = new GraphIndex(g);
    const v = ix.addGraphOutput("h2_i");
    expect(v.type?.tensorType?.elemType).toBe(DataType.INT32);
    expect(ix.addGraphOutput("h2_i")).toBe(v);
    expect(ix.addGraphOutput("h3", DataType.FLOAT).name).toBe("h3");
    expect(g.output.map((o) => o.name)).toEqual(["y", "h2_i", "h3"]);
    expect(codeOf(() => ix.addGraphOutput("nowhere"))).toBe("MODEL_INVALID");
  });

  test("subgraph reads from the outer scope count as consumers", () => {
    const g = smallGraph();
    const body = makeGraph({
      name: "then",
      nodes: [makeNode("Identity", ["h3"], ["t_out"], {}, { name: "inner" })],
      inputs: [],
      outputs: [makeValueInfo("t_out", DataType.FLOAT)],
    });
    g.node.push(
      makeNode("If", ["gt_any"], ["if_out"], { then_branch: body, else_branch: body }, { name: "if" }),
    );
    const ix = new GraphIndex(g);
    expect(names(ix.consumers("h3")).sort()).toEqual(["gt", "if", "relu"]);
  });
});

describe("builders and lookups", () => {
  test("attribute type inference and explicit wrappers", () => {
    const types = (v: Parameters<typeof makeAttribute>[1]) => makeAttribute("a", v).type;
    expect(types(1)).toBe(AttributeType.INT);
    expect(types(0.5)).toBe(AttributeType.FLOAT);
    expect(types({ float: 1 })).toBe(AttributeType.FLOAT);
    expect(types(true)).toBe(AttributeType.INT);
    expect(types("x")).toBe(AttributeType.STRING);
    expect(types([1, 2])).toBe(AttributeType.INTS);
    expect(types([1, 2.5])).toBe(AttributeType.FLOATS);
    expect(types({ floats: [1, 2] })).toBe(AttributeType.FLOATS);
    expect(types({ ints: [] })).toBe(AttributeType.INTS);
    expect(types(["a", "b"])).toBe(AttributeType.STRINGS);
    expect(types(makeTensor("t", DataType.FLOAT, [], Float32Array.of(1)))).toBe(AttributeType.TENSOR);
    expect(types(smallGraph())).toBe(AttributeType.GRAPH);
    expect(codeOf(() => makeAttribute("a", []))).toBe("USAGE");

    const n = makeNode("LayerNormalization", ["x", "g", "b"], ["y"], {
      axis: -1,
      epsilon: { float: 1e-12 },
      perm: [0, 2, 1, 3],
      mode: "constant",
      skip: undefined,
    });
    expect(n.name).toBe("y");
    expect(n.attribute.map((a) => a.name)).toEqual(["axis", "epsilon", "perm", "mode"]);
    expect(getAttrInt(n, "axis")).toBe(-1);
    expect(getAttrInt(n, "missing", 7)).toBe(7);
    expect(getAttrFloat(n, "epsilon")).toBe(1e-12);
    expect(getAttrInts(n, "perm")).toEqual([0, 2, 1, 3]);
    expect(getAttrString(n, "mode")).toBe("constant");
  });

  test("makeModel / opsets; a built model survives the codec", () => {
    const m = makeModel({
      graph: smallGraph(),
      opsets: [
        { domain: "ai.onnx", version: 17 },
        { domain: "com.microsoft", version: 1 },
      ],
    });
    expect(m.irVersion).toBe(10);
    expect(m.producerName).toBe("quantd");
    expect(getOpsetVersion(m)).toBe(17);
    expect(getOpsetVersion(m, "ai.onnx")).toBe(17);
    expect(getOpsetVersion(m, "com.microsoft")).toBe(1);
    expect(getOpsetVersion(m, "ai.onnx.ml")).toBeUndefined();
    expect(decodeModel(encodeModel(m))).toEqual(m);
  });
});

describe("tokenEmbeddingTable", () => {
  const ids = new Set(["input_ids"]);
  const tiny = SYNTHETIC_BERT_PRESETS.tiny;
  const table = { name: "bert.embeddings.word_embeddings.weight", rows: tiny.vocab };

  test("the table a Gather reads at the ids (the exporters' graphs)", () => {
    expect(tokenEmbeddingTable(buildSyntheticBert(tiny), ids)).toEqual(table);
  });

  test("EmbedLayerNormalization's word embedding (onnxruntime's transformer optimizer)", () => {
    for (const model of [
      buildTransformerOptimizedBert(tiny, "attention"),
      buildTransformerOptimizedBert(tiny, "mha", { int32Inputs: true }),
    ]) {
      const embed = model.graph.node.find((n) => n.opType === "EmbedLayerNormalization");
      expect(embed?.input[2]).toBe(table.name);
      expect(tokenEmbeddingTable(model, ids)).toEqual(table);
    }
  });

  test("through a Cast of the ids, the int8 data behind a DequantizeLinear; none when nothing reads the ids", () => {
    const graph = makeGraph({
      name: "g",
      nodes: [
        makeNode("Cast", ["input_ids"], ["ids32"], { to: DataType.INT32 }),
        makeNode("DequantizeLinear", ["emb_q", "s"], ["emb"]),
        makeNode("Gather", ["emb", "ids32"], ["h"]),
      ],
      inputs: [makeValueInfo("input_ids", DataType.INT64, ["b", "s"])],
      outputs: [makeValueInfo("h", DataType.FLOAT, ["b", "s", 2])],
      initializers: [
        makeTensor("emb_q", DataType.INT8, [7, 2], new Int8Array(14)),
        makeTensor("s", DataType.FLOAT, [], new Float32Array([0.1])),
      ],
    });
    const model = makeModel({ graph });
    expect(tokenEmbeddingTable(model, ids)).toEqual({ name: "emb_q", rows: 7 });
    expect(tokenEmbeddingTable(model, new Set(["other"]))).toBeUndefined();
  });
});
