import { describe, expect, test } from "bun:test";
import { isQuantdError } from "../../../src/errors.ts";
import {
  matMulIntegerReference,
  matMulIntegerToFloatReference,
  qlinearMatMulReference,
  requantize,
} from "../../helpers/qnnpack-reference.ts";
import { expectClose } from "../../helpers/expect-close.ts";

// A [2, 3] uint8 with zero point 128: A - 128 = [[1, 2, -2], [0, 127, -128]]
const A = new Uint8Array([129, 130, 126, 128, 255, 0]);
// B [3, 2] int8: [[1, -1], [2, 0], [3, 5]]
const B = new Int8Array([1, -1, 2, 0, 3, 5]);

describe("matMulIntegerReference", () => {
  test("subtracts zero points and accumulates in int32 (hand-computed)", () => {
    const acc = matMulIntegerReference(A, 128, B, new Int8Array([0]), 2, 3, 2);
    // [1+4-6, -1+0-10; 0+254-384, 0+0-640]
    expect([...acc]).toEqual([-1, -11, -130, -640]);
  });

  test("per-column weight zero points", () => {
    // column 1 becomes [-2, -1, 4]
    const acc = matMulIntegerReference(A, 128, B, new Int8Array([0, 1]), 2, 3, 2);
    expect([...acc]).toEqual([-1, -12, -130, -639]);
  });

  test("extremes of u8 × s8 do not overflow int32", () => {
    const K = 1024;
    const acc = matMulIntegerReference(
      new Uint8Array(K).fill(255),
      0,
      new Int8Array(K).fill(-128),
      new Int8Array([0]),
      1,
      K,
      1,
    );
    expect(acc[0]).toBe(255 * -128 * K);
  });

  test("size mismatches are QUANT_FAILED", () => {
    for (const fn of [
      () => matMulIntegerReference(A, 128, B, new Int8Array([0]), 2, 2, 2),
      () => matMulIntegerReference(A, 300, B, new Int8Array([0]), 2, 3, 2),
      () => matMulIntegerReference(A, 128, B, new Int8Array([0, 0, 0]), 2, 3, 2),
    ]) {
      let ok = false;
      try {
        fn();
      } catch (err) {
        ok = isQuantdError(err, "QUANT_FAILED");
      }
      expect(ok).toBe(true);
    }
  });
});

describe("requantize", () => {
  test("rounds half to even, adds the zero point and saturates", () => {
    const out = requantize(new Int32Array([-1, -11, -130, -640]), new Float32Array([0.5]), 100, 2);
    // -0.5 → 0, -5.5 → -6, -65, -320 → saturates at 0
    expect([...out]).toEqual([100, 94, 35, 0]);
    const pc = requantize(new Int32Array([2, 3, 6, 200]), new Float32Array([0.25, 2]), 10, 2);
    // 0.5 → 0, 6, 1.5 → 2, 400 → saturates at 255
    expect([...pc]).toEqual([10, 16, 12, 255]);
  });
});

describe("qlinearMatMulReference", () => {
  test("accumulators and requantized output (multiplier 0.5·0.25/0.0625 = 2)", () => {
    const r = qlinearMatMulReference(
      A,
      { scale: 0.5, zeroPoint: 128 },
      B,
      new Float32Array([0.25]),
      new Int8Array([0]),
      2,
      3,
      2,
      { scale: 0.0625, zeroPoint: 200 },
    );
    expect([...r.acc]).toEqual([-1, -11, -130, -640]);
    expect([...r.output!]).toEqual([198, 178, 0, 0]);
    const noOut = qlinearMatMulReference(
      A,
      { scale: 0.5, zeroPoint: 128 },
      B,
      new Float32Array([0.25]),
      new Int8Array([0]),
      2,
      3,
      2,
    );
    expect(noOut.output).toBeUndefined();
  });

  test("matches the float matmul of the dequantized operands within half an output step", () => {
    const M = 3;
    const K = 8;
    const N = 4;
    const a = new Uint8Array(M * K);
    const b = new Int8Array(K * N);
    for (let i = 0; i < a.length; i++) a[i] = (i * 37 + 11) % 256;
    for (let i = 0; i < b.length; i++) b[i] = ((i * 53 + 7) % 255) - 127;
    const aP = { scale: 0.02, zeroPoint: 120 };
    const bS = new Float32Array([0.01, 0.02, 0.005, 0.03]);
    const outP = { scale: 0.05, zeroPoint: 128 };
    const r = qlinearMatMulReference(a, aP, b, bS, new Int8Array([0]), M, K, N, outP);
    const want: number[] = [];
    const got: number[] = [];
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += (a[m * K + k]! - aP.zeroPoint) * aP.scale * (b[k * N + n]! * bS[n]!);
        const q = Math.min(255, Math.max(0, Math.round(s / outP.scale) + outP.zeroPoint));
        want.push((q - outP.zeroPoint) * outP.scale);
        got.push((r.output![m * N + n]! - outP.zeroPoint) * outP.scale);
      }
    }
    expectClose(got, want, { atol: outP.scale * 1.001 });
  });
});

describe("matMulIntegerToFloatReference", () => {
  test("acc × aScale × bScale[n] + bias[n]", () => {
    const acc = new Int32Array([-1, -11, -130, -640]);
    const f = matMulIntegerToFloatReference(
      acc,
      0.5,
      new Float32Array([0.25, 0.125]),
      2,
      new Float32Array([1, -1]),
    );
    expectClose(f, [-0.125 + 1, -11 * 0.0625 - 1, -130 * 0.125 + 1, -640 * 0.0625 - 1], { atol: 1e-6 });
    const noBias = matMulIntegerToFloatReference(acc, 0.5, new Float32Array([0.25]), 2);
    expect([...noBias]).toEqual([-0.125, -1.375, -16.25, -80]);
  });
});
