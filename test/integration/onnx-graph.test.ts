import { beforeAll, describe, expect, test } from "bun:test";
import { makeNode } from "../../src/onnx/builder.ts";
import { encodeModel, loadModel } from "../../src/onnx/codec.ts";
import { GraphIndex } from "../../src/onnx/graph.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { DataType } from "../../src/onnx/types.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import type { Tensor } from "../../src/runtime/types.ts";
import { shippedModelPath } from "../helpers/paths.ts";

const ids = [101, 1996, 3185, 2001, 2307, 102];
const dims = [1, ids.length];
const feeds: Record<string, Tensor> = {
  input_ids: { type: "int64", data: BigInt64Array.from(ids, (v) => BigInt(v)), dims },
  attention_mask: { type: "int64", data: new BigInt64Array(ids.length).fill(1n), dims },
  token_type_ids: { type: "int64", data: new BigInt64Array(ids.length), dims },
};

async function run(model: ModelProto): Promise<Record<string, Tensor>> {
  const s = await createOrtSession(encodeModel(model));
  try {
    return await s.run(feeds);
  } finally {
    await s.release();
  }
}

describe("graph edits on the shipped BERT, checked by ORT", () => {
  let reference: Float32Array;
  beforeAll(async () => {
    reference = (await run(await loadModel(shippedModelPath)))["logits"]!.data as Float32Array;
  });

  test("intermediate tensors added as graph outputs come back from ORT with the inferred type", async () => {
    const model = await loadModel(shippedModelPath);
    const ix = new GraphIndex(model.graph);
    const softmax = "/bert/encoder/layer.0/attention/self/Softmax_output_0";
    const mask = "/bert/Cast_output_0";
    ix.addGraphOutput(softmax);
    ix.addGraphOutput(mask);
    expect(model.graph.output.find((o) => o.name === mask)?.type?.tensorType?.elemType).toBe(DataType.BOOL);
    const out = await run(model);
    expect(out[softmax]!.dims).toEqual([1, 4, ids.length, ids.length]);
    expect(out[mask]!.type).toBe("bool");
    // Attention rows are probability distributions.
    const p = out[softmax]!.data as Float32Array;
    let row = 0;
    for (let k = 0; k < ids.length; k++) row += p[k]!;
    expect(Math.abs(row - 1)).toBeLessThan(1e-5);
    expect(out["logits"]!.data).toEqual(reference);
  });

  test("a node inserted into a shuffled graph and rewired in leaves the logits unchanged", async () => {
    const model = await loadModel(shippedModelPath);
    const g = model.graph;
    let s = 11;
    for (let k = g.node.length - 1; k > 0; k--) {
      s = (s * 48271) % 2147483647;
      const j = s % (k + 1);
      [g.node[k], g.node[j]] = [g.node[j]!, g.node[k]!];
    }
    const ix = new GraphIndex(g);
    expect(ix.isSorted()).toBe(false);
    ix.sortTopologically();
    expect(ix.isSorted()).toBe(true);

    const target = "/bert/encoder/layer.1/intermediate/dense/Add_output_0";
    const copy = ix.uniqueName(`${target}_copy`);
    const node = makeNode("Identity", [target], [copy], {}, { name: ix.uniqueName("/quantd/Identity") });
    ix.insertNode(node);
    expect(ix.replaceAllUses(target, copy, [node])).toBe(2); // GELU's Div and Mul
    expect(ix.isSorted()).toBe(true);
    const out = await run(model);
    expect(out["logits"]!.data).toEqual(reference);
  });
});
