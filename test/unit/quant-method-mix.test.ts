/**
 * The per-tensor calibration method step of the fallback (`method-mix.ts`):
 * which tensors move to which method and in what order, the ranges a mixed
 * build gets, and which nodes read a tensor. The real builds and validations
 * run in test/integration/quant-fallback-synthetic.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { chooseTensorMethods, mixRanges, tensorReaders } from "../../src/quant/method-mix.ts";
import type { CalibrationMethod } from "../../src/quant/methods.ts";
import type { TensorRange } from "../../src/quant/plan.ts";
import type { LayerErrorEntry } from "../../src/quant/report.ts";

const entry = (node: string, addedError: number): LayerErrorEntry => ({
  node,
  opType: "MatMul",
  tensor: `${node}_out`,
  relError: Math.abs(addedError),
  addedError,
});

const errors = (m: Record<string, Record<string, number>>): Map<CalibrationMethod, LayerErrorEntry[]> =>
  new Map(
    Object.entries(m).map(([method, nodes]) => [
      method as CalibrationMethod,
      Object.entries(nodes).map(([n, e]) => entry(n, e)),
    ]),
  );

describe("chooseTensorMethods", () => {
  // ln feeds q, k, v (one tensor, three readers); ctx feeds o; act feeds down.
  const readers = new Map([
    ["ln", ["q", "k", "v"]],
    ["ctx", ["o"]],
    ["act", ["down"]],
  ]);

  test("each tensor takes the method whose readers add the least error; the largest gain first", () => {
    const choices = chooseTensorMethods(
      "percentile",
      errors({
        percentile: { q: 0.01, k: 0.01, v: 0.01, o: 0.5, down: 0.02 },
        mse: { q: 0.02, k: 0.02, v: 0.02, o: 0.1, down: 0.015 },
        // Better for q and k, not for the three readers of ln together (0.034 against 0.03).
        entropy: { q: 0.005, k: 0.004, v: 0.025, o: 0.3, down: 0.03 },
      }),
      readers,
    );
    expect(choices.map((c) => [c.tensor, c.method, c.from])).toEqual([
      ["ctx", "mse", "percentile"],
      ["act", "mse", "percentile"],
    ]);
    expect(choices[0]!.gain).toBeCloseTo(0.4, 12);
    expect(choices[1]!.gain).toBeCloseTo(0.005, 12);
  });

  test("a tensor is scored over all its readers, not its worst one", () => {
    // entropy is better for q and k, worse for v; summed over the three it wins (0.03 vs 0.035).
    const choices = chooseTensorMethods(
      "percentile",
      errors({ percentile: { q: 0.01, k: 0.01, v: 0.015 }, entropy: { q: 0.002, k: 0.002, v: 0.026 } }),
      new Map([["ln", ["q", "k", "v"]]]),
    );
    expect(choices).toHaveLength(1);
    expect(choices[0]).toMatchObject({ tensor: "ln", method: "entropy" });
    expect(choices[0]!.gain).toBeCloseTo(0.005, 12);
  });

  test("the current method wins ties and tensors it already serves best; negative added errors still compare", () => {
    const choices = chooseTensorMethods(
      "entropy",
      errors({ entropy: { o: 0.1, down: -0.01 }, mse: { o: 0.1, down: -0.03 } }),
      new Map([
        ["ctx", ["o"]],
        ["act", ["down"]],
      ]),
    );
    expect(choices.map((c) => [c.tensor, c.method])).toEqual([["act", "mse"]]);
  });

  test("a method whose probe did not measure every reader is not scored for that tensor", () => {
    const choices = chooseTensorMethods(
      "percentile",
      errors({ percentile: { q: 0.01, k: 0.01 }, mse: { q: 0.001 } }),
      new Map([["ln", ["q", "k"]]]),
    );
    expect(choices).toEqual([]);
  });
});

describe("mixRanges", () => {
  test("moved tensors take their method's range; the rest keep the base's", () => {
    const r = (min: number, max: number): TensorRange => ({ min, max }) as TensorRange;
    const base = new Map([
      ["ln", r(-1, 1)],
      ["ctx", r(-100, 100)],
    ]);
    const byMethod = new Map<CalibrationMethod, Map<string, TensorRange>>([
      [
        "mse",
        new Map([
          ["ln", r(-2, 2)],
          ["ctx", r(-5, 5)],
        ]),
      ],
    ]);
    const mixed = mixRanges(base, byMethod, [{ tensor: "ctx", method: "mse", from: "percentile", gain: 1 }]);
    expect(mixed.get("ctx")).toEqual(r(-5, 5));
    expect(mixed.get("ln")).toEqual(r(-1, 1));
    expect(base.get("ctx")).toEqual(r(-100, 100));
  });
});

describe("tensorReaders", () => {
  test("weight MatMuls and fused attention read their activation; attention MatMuls both inputs; Gathers nothing", () => {
    const readers = tensorReaders({
      quantized: [
        {
          kind: "weight-matmul",
          node: "q",
          opType: "MatMul",
          activation: "ln",
          weight: "wq",
          channelAxis: 1,
          bias: undefined,
        },
        {
          kind: "weight-matmul",
          node: "k",
          opType: "MatMul",
          activation: "ln",
          weight: "wk",
          channelAxis: 1,
          bias: undefined,
        },
        { kind: "attention-matmul", node: "qk", opType: "MatMul", inputs: ["qh", "kh"] },
        { kind: "attention-matmul", node: "self", opType: "MatMul", inputs: ["x", "x"] },
        {
          kind: "packed-attention",
          node: "att",
          opType: "Attention",
          activation: "h",
          weight: "w",
          bias: "b",
        },
        { kind: "embedding", node: "emb", opType: "Gather", table: "t" },
      ],
    });
    expect([...readers]).toEqual([
      ["ln", ["q", "k"]],
      ["qh", ["qk"]],
      ["kh", ["qk"]],
      ["x", ["self"]],
      ["h", ["att"]],
    ]);
  });
});
