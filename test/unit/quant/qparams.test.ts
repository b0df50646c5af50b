import { describe, expect, test } from "bun:test";
import { isQuantdError } from "../../../src/errors.ts";
import {
  computeActivationQParams,
  computeWeightQParams,
  dequantizeValue,
  quantizeBias,
  quantizeValue,
  quantizeWeights,
  quantRange,
  roundHalfToEven,
} from "../../../src/quant/qparams.ts";
import { expectClose } from "../../helpers/expect-close.ts";

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (err) {
    expect(isQuantdError(err)).toBe(true);
    expect((err as { code: string }).code).toBe(code);
    return;
  }
  throw new Error(`expected ${code}, nothing was thrown`);
}

describe("roundHalfToEven", () => {
  test("ties go to the even neighbour", () => {
    const xs = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 0.49999, 0.50001, -0.50001, 7, -7];
    const want = [0, 2, 2, 0, -2, -2, 4, 0, 1, -1, 7, -7];
    expect(xs.map(roundHalfToEven)).toEqual(want);
    expect(Object.is(roundHalfToEven(-0.5), 0)).toBe(true);
    expect(Number.isNaN(roundHalfToEven(Number.NaN))).toBe(true);
  });
});

describe("quantRange", () => {
  test("matches onnxruntime's get_qmin_qmax_for_qType", () => {
    expect(quantRange("uint8")).toEqual({ qmin: 0, qmax: 255 });
    expect(quantRange("uint8", { reduceRange: true })).toEqual({ qmin: 0, qmax: 127 });
    expect(quantRange("int8")).toEqual({ qmin: -128, qmax: 127 });
    expect(quantRange("int8", { symmetric: true })).toEqual({ qmin: -127, qmax: 127 });
    expect(quantRange("int8", { reduceRange: true })).toEqual({ qmin: -64, qmax: 64 });
    expect(quantRange("int8", { reduceRange: true, symmetric: true })).toEqual({ qmin: -64, qmax: 64 });
  });
});

describe("computeActivationQParams", () => {
  test("uint8 asymmetric, hand-computed", () => {
    const q = computeActivationQParams(-1, 3);
    expect(q.type).toBe("uint8");
    expect(q.scale).toBe(Math.fround(4 / 255));
    expect(q.zeroPoint).toBe(64); // round(1 / (4/255)) = round(63.75)
  });

  test("range is widened to include zero", () => {
    const pos = computeActivationQParams(2, 5);
    expect(pos.scale).toBe(Math.fround(5 / 255));
    expect(pos.zeroPoint).toBe(0);
    const neg = computeActivationQParams(-5, -2);
    expect(neg.scale).toBe(Math.fround(5 / 255));
    expect(neg.zeroPoint).toBe(255);
  });

  test("reduce range, int8 and symmetric variants", () => {
    const r = computeActivationQParams(-1, 3, { reduceRange: true });
    expect(r.scale).toBe(Math.fround(4 / 127));
    expect(r.zeroPoint).toBe(32); // round(31.75)
    const i8 = computeActivationQParams(-1, 3, { type: "int8" });
    expect(i8.scale).toBe(Math.fround(4 / 255));
    expect(i8.zeroPoint).toBe(-64); // round(-128 + 63.75)
    const su8 = computeActivationQParams(-1, 3, { symmetric: true });
    expect(su8.scale).toBe(Math.fround(6 / 255));
    expect(su8.zeroPoint).toBe(128); // round(127.5) ties to even
    const si8 = computeActivationQParams(-1, 3, { type: "int8", symmetric: true });
    expect(si8.scale).toBe(Math.fround(6 / 254));
    expect(si8.zeroPoint).toBe(0);
  });

  test("degenerate ranges give a positive scale", () => {
    expect(computeActivationQParams(0, 0)).toEqual({ scale: 1, zeroPoint: 0, type: "uint8" });
    expect(computeActivationQParams(0, 0, { type: "int8" })).toEqual({
      scale: 1,
      zeroPoint: 0,
      type: "int8",
    });
    const same = computeActivationQParams(3, 3);
    expect(same.scale).toBe(Math.fround(3 / 255));
    expect(same.zeroPoint).toBe(0);
    const denormal = computeActivationQParams(0, 1e-40);
    expect(denormal.scale).toBe(1);
  });

  test("non-finite or inverted ranges are QUANT_FAILED", () => {
    expectCode(() => computeActivationQParams(Number.NaN, 1), "QUANT_FAILED");
    expectCode(() => computeActivationQParams(0, Number.POSITIVE_INFINITY), "QUANT_FAILED");
    expectCode(() => computeActivationQParams(Number.NEGATIVE_INFINITY, 0), "QUANT_FAILED");
    expectCode(() => computeActivationQParams(2, 1), "QUANT_FAILED");
  });

  test("real zero is exact and the ends are within half a step, for arbitrary ranges", () => {
    let seed = 12345;
    const rand = (): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    for (let i = 0; i < 2000; i++) {
      const a = (rand() - 0.5) * 10 ** (rand() * 8 - 3);
      const b = (rand() - 0.5) * 10 ** (rand() * 8 - 3);
      const min = Math.fround(Math.min(a, b));
      const max = Math.fround(Math.max(a, b));
      for (const type of ["uint8", "int8"] as const) {
        const q = computeActivationQParams(min, max, { type });
        expect(q.scale).toBeGreaterThan(0);
        expect(Math.fround(q.scale)).toBe(q.scale);
        expect(Number.isInteger(q.zeroPoint)).toBe(true);
        expect(quantizeValue(0, q)).toBe(q.zeroPoint);
        expect(dequantizeValue(q.zeroPoint, q)).toBe(0);
        const lo = Math.min(min, 0);
        const hi = Math.max(max, 0);
        expect(Math.abs(dequantizeValue(quantizeValue(lo, q), q) - lo)).toBeLessThanOrEqual(q.scale * 0.5001);
        expect(Math.abs(dequantizeValue(quantizeValue(hi, q), q) - hi)).toBeLessThanOrEqual(q.scale * 0.5001);
      }
    }
  });
});

describe("quantizeValue / dequantizeValue", () => {
  test("half-to-even and saturation, as QuantizeLinear", () => {
    const i8 = { scale: 1, zeroPoint: 0, type: "int8" as const };
    const xs = [0.5, 1.5, -0.5, 2.5, -1.5, 300, -300, 127.5, -128.5];
    expect(xs.map((x) => quantizeValue(x, i8))).toEqual([0, 2, 0, 2, -2, 127, -128, 127, -128]);
    const u8 = { scale: 0.5, zeroPoint: 10, type: "uint8" as const };
    expect(quantizeValue(-20, u8)).toBe(0);
    expect(quantizeValue(1000, u8)).toBe(255);
    expect(quantizeValue(0.25, u8)).toBe(10); // 0.5 → 0
    expect(quantizeValue(0.75, u8)).toBe(12); // 1.5 → 2
    expect(quantizeValue(Number.NaN, u8)).toBe(10);
    expect(quantizeValue(Number.POSITIVE_INFINITY, u8)).toBe(255);
    expect(dequantizeValue(12, u8)).toBe(1);
    expect(dequantizeValue(0, u8)).toBe(-5);
  });
});

describe("weights", () => {
  test("per-tensor symmetric int8: scale max|w|/127, ties to even", () => {
    const w = new Float32Array([127, -63.5, 0.5, 1.5, -0.5, 2.5]);
    const q = computeWeightQParams(w, [2, 3]);
    expect(q.axis).toBeUndefined();
    expect([...q.scales]).toEqual([1]);
    expect([...q.zeroPoints]).toEqual([0]);
    expect([...quantizeWeights(w, [2, 3], q)]).toEqual([127, -64, 0, 2, 0, 2]);
  });

  test("reduce range uses [-64, 64]", () => {
    const w = new Float32Array([64, -32.5, 10]);
    const q = computeWeightQParams(w, [3], { reduceRange: true });
    expect([...q.scales]).toEqual([1]);
    expect([...quantizeWeights(w, [3], q)]).toEqual([64, -32, 10]);
    const q7 = computeWeightQParams(new Float32Array([127]), [1], { reduceRange: true });
    expect(q7.scales[0]).toBe(Math.fround(127 / 64));
  });

  test("per-channel along the last axis (MatMul B [K, N]) vs per-tensor", () => {
    // K = 2, N = 3; column absmax 2, 10, 0
    const w = new Float32Array([1, 10, 0, -2, 5, 0]);
    const pc = computeWeightQParams(w, [2, 3], { axis: -1 });
    expect(pc.axis).toBe(1);
    expect([...pc.scales]).toEqual([Math.fround(2 / 127), Math.fround(10 / 127), 1]);
    const qpc = quantizeWeights(w, [2, 3], pc);
    expect([...qpc]).toEqual([64, 127, 0, -127, 64, 0]);
    const pt = computeWeightQParams(w, [2, 3]);
    expect([...pt.scales]).toEqual([Math.fround(10 / 127)]);
    const qpt = quantizeWeights(w, [2, 3], pt);
    expect([...qpt]).toEqual([13, 127, 0, -25, 64, 0]);
    // per-channel reconstructs the small column better
    const err = (q: Int8Array, s: (i: number) => number): number => {
      let e = 0;
      for (let i = 0; i < w.length; i++) e += (q[i]! * s(i) - w[i]!) ** 2;
      return e;
    };
    expect(err(qpc, (i) => pc.scales[i % 3]!)).toBeLessThan(err(qpt, () => pt.scales[0]!));
  });

  test("per-channel along axis 0 of a rank-3 tensor", () => {
    const w = new Float32Array([1, -1, 2, -2, 4, 4, -4, 4]);
    const q = computeWeightQParams(w, [2, 2, 2], { axis: 0 });
    expect([...q.scales]).toEqual([Math.fround(2 / 127), Math.fround(4 / 127)]);
    const qw = quantizeWeights(w, [2, 2, 2], q);
    expect([...qw]).toEqual([64, -64, 127, -127, 127, 127, -127, 127]);
  });

  test("bad weights and shapes are QUANT_FAILED", () => {
    expectCode(() => computeWeightQParams(new Float32Array([1, Number.NaN]), [2]), "QUANT_FAILED");
    expectCode(
      () => computeWeightQParams(new Float32Array([1, Number.POSITIVE_INFINITY]), [2]),
      "QUANT_FAILED",
    );
    expectCode(() => computeWeightQParams(new Float32Array(5), [2, 3]), "QUANT_FAILED");
    expectCode(() => computeWeightQParams(new Float32Array(6), [2, 3], { axis: 2 }), "QUANT_FAILED");
    const q = computeWeightQParams(new Float32Array(6), [2, 3], { axis: 1 });
    expectCode(() => quantizeWeights(new Float32Array(6), [3, 2], q), "QUANT_FAILED");
  });
});

describe("quantizeBias", () => {
  test("int32 with scale inputScale*weightScale, saturating", () => {
    const b = new Float32Array([1, -1, 1e10, -1e10, 0.0625, 0.1875]);
    const q = quantizeBias(b, 0.5, new Float32Array([0.25]));
    // 0.0625/0.125 = 0.5 → 0; 0.1875/0.125 = 1.5 → 2
    expect([...q]).toEqual([8, -8, 2147483647, -2147483648, 0, 2]);
  });

  test("per-channel scales", () => {
    const q = quantizeBias(new Float32Array([1, 1]), 0.5, new Float32Array([0.25, 0.5]));
    expect([...q]).toEqual([8, 4]);
    const s = Math.fround(0.02 * Math.fround(0.3 / 127));
    const qb = quantizeBias(new Float32Array([0.123]), 0.02, new Float32Array([0.3 / 127]));
    expectClose([qb[0]! * s], [Math.fround(0.123)], { atol: s / 2 + 1e-12 });
  });

  test("mismatched scales are QUANT_FAILED", () => {
    expectCode(() => quantizeBias(new Float32Array(3), 1, new Float32Array(2)), "QUANT_FAILED");
    expectCode(() => quantizeBias(new Float32Array(1), 0, new Float32Array(1)), "QUANT_FAILED");
  });
});
