import { describe, expect, test } from "bun:test";
import { mulberry32 as rng } from "../../../src/core/random.ts";
import { isQuantdError } from "../../../src/errors.ts";
import {
  createObserver,
  Histogram,
  klThresholdBins,
  type ObserverSpec,
  SENTINEL_ABS,
  scanValues,
} from "../../../src/quant/observers/index.ts";
import { computeActivationQParams, dequantizeValue, quantizeValue } from "../../../src/quant/qparams.ts";

function gaussian(n: number, sigma: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - r();
    out[i] = sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r());
  }
  return out;
}

function laplacian(n: number, b: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = r() - 0.5;
    out[i] = -b * Math.sign(u) * Math.log(1 - 2 * Math.abs(u));
  }
  return out;
}

function uniform(n: number, lo: number, hi: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

function concat(...parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const FLOAT_MIN = -3.4028234663852886e38;
const POLLUTION = new Float32Array([
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  FLOAT_MIN,
  FLOAT_MIN,
  3.4e38,
  SENTINEL_ABS,
]);

const ALL_SPECS: ObserverSpec[] = [
  { type: "minmax" },
  { type: "moving-average-minmax" },
  { type: "percentile" },
  { type: "percentile", symmetric: true },
  { type: "entropy" },
  { type: "mse" },
  { type: "mse", symmetric: true },
];

describe("scanValues", () => {
  test("separates usable values, non-finite values and mask sentinels", () => {
    const s = scanValues(concat(new Float32Array([-2, 0.5, 7, 1e29, -1e29]), POLLUTION));
    expect(s.count).toBe(5);
    expect(s.min).toBe(Math.fround(-1e29));
    expect(s.max).toBe(Math.fround(1e29));
    expect(s.nonFinite).toBe(3);
    expect(s.sentinel).toBe(4);
  });

  test("an empty or all-excluded tensor has no range", () => {
    const s = scanValues(POLLUTION);
    expect(s.count).toBe(0);
    expect(s.min).toBe(Number.POSITIVE_INFINITY);
    expect(scanValues(new Float32Array(0)).count).toBe(0);
  });
});

describe("Histogram", () => {
  test("first batch spans its range exactly", () => {
    const h = new Histogram({ bins: 100 });
    h.update(new Float32Array([0, 25, 50, 99.5, 100]));
    expect(h.lo).toBe(0);
    expect(h.hi).toBeGreaterThanOrEqual(100);
    expect(h.width).toBeCloseTo(1, 9);
    expect(h.counts[0]).toBe(1);
    expect(h.counts[25]).toBe(1);
    expect(h.counts[50]).toBe(1);
    expect(h.counts[99]).toBe(2);
    expect(h.total).toBe(5);
  });

  test("growth merges bins, keeps the total and approximately the CDF", () => {
    const h = new Histogram({ bins: 512 });
    const parts = [
      gaussian(5000, 0.1, 1),
      gaussian(5000, 1, 2),
      uniform(5000, -10, 30, 3),
      new Float32Array([-0.001, 0.001]),
      uniform(5000, 100, 120, 4),
    ];
    for (const p of parts) h.update(p);
    const all = concat(...parts);
    expect(h.total).toBe(all.length);
    let sum = 0;
    for (const c of h.counts) sum += c;
    expect(sum).toBe(all.length);
    expect(h.lo).toBeLessThanOrEqual(-10);
    expect(h.hi).toBeGreaterThan(120);
    const sorted = Float64Array.from(all).sort();
    for (const q of [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]) {
      const exact = sorted[Math.floor(q * (sorted.length - 1))]!;
      expect(Math.abs(h.quantile(q) - exact)).toBeLessThanOrEqual(h.width * 1.01);
    }
  });

  test("a single repeated value, then wider data", () => {
    const h = new Histogram({ bins: 64 });
    h.update(new Float32Array([3, 3, 3]));
    expect(h.width).toBeGreaterThan(0);
    expect(h.quantile(0.5)).toBeCloseTo(3, 4);
    h.update(new Float32Array([-1000, 1000]));
    expect(h.total).toBe(5);
    expect(h.lo).toBeLessThanOrEqual(-1000);
    expect(h.hi).toBeGreaterThan(1000);
  });

  test("memory is independent of the number of updates", () => {
    const few = new Histogram();
    const many = new Histogram();
    for (let i = 0; i < 10; i++) few.update(gaussian(64, 1 + i, i));
    for (let i = 0; i < 10_000; i++) many.update(gaussian(64, 1 + (i % 50), i));
    expect(few.counts.length).toBe(2048);
    expect(many.counts.length).toBe(2048);
    expect(many.total).toBe(640_000);
  });

  test("abs mode bins magnitudes from 0", () => {
    const h = new Histogram({ bins: 10, abs: true });
    h.update(new Float32Array([-10, -5, 5, 1]));
    expect(h.lo).toBe(0);
    expect(h.counts[5]).toBe(2);
    expect(h.counts[1]).toBe(1);
    expect(h.counts[9]).toBe(1);
  });

  test("excluded values never stretch the range", () => {
    const h = new Histogram({ bins: 128 });
    h.update(concat(new Float32Array([-1, 1]), POLLUTION));
    expect(h.total).toBe(2);
    expect(h.hi - h.lo).toBeLessThan(2.1);
  });
});

describe("minmax", () => {
  test("exact extremes over variable-length batches, ignoring NaN/inf/sentinels", () => {
    const o = createObserver({ type: "minmax" });
    o.update(new Float32Array([0.5, -0.25]));
    o.update(concat(new Float32Array([3, 2, 1, 0, -1.5]), POLLUTION));
    o.update(new Float32Array(0));
    o.update(new Float32Array([2.75]));
    const r = o.result();
    expect(r.min).toBe(-1.5);
    expect(r.max).toBe(3);
    expect(r.count).toBe(8);
    expect(r.nonFinite).toBe(3);
    expect(r.sentinel).toBe(4);
  });

  test("nothing usable gives an empty range", () => {
    const o = createObserver({ type: "minmax" });
    o.update(POLLUTION);
    const r = o.result();
    expect([r.min, r.max, r.count]).toEqual([0, 0, 0]);
  });
});

describe("moving-average-minmax", () => {
  test("follows the EMA recurrence", () => {
    const o = createObserver({ type: "moving-average-minmax" });
    o.update(new Float32Array([-1, 0, 1]));
    o.update(new Float32Array([-3, 5]));
    o.update(POLLUTION); // no usable value: no step
    o.update(new Float32Array([-2, 2, 0.5]));
    const r = o.result();
    // min: -1 → -1 + 0.01(-3 + 1) = -1.02 → -1.02 + 0.01(-2 + 1.02) = -1.0298
    expect(r.min).toBeCloseTo(-1.0298, 12);
    // max: 1 → 1.04 → 1.04 + 0.01(2 - 1.04) = 1.0496
    expect(r.max).toBeCloseTo(1.0496, 12);
    expect(r.observedMin).toBe(-3);
    expect(r.observedMax).toBe(5);
  });

  test("averaging constant 1 is the last batch", () => {
    const o = createObserver({ type: "moving-average-minmax", averagingConstant: 1 });
    o.update(new Float32Array([-3, 5]));
    o.update(new Float32Array([-2, 2]));
    expect([o.result().min, o.result().max]).toEqual([-2, 2]);
  });
});

describe("percentile", () => {
  const N = 100_000;
  const ramp = new Float32Array(N);
  for (let i = 0; i < N; i++) ramp[i] = i;

  test("symmetric 99 % of uniform 0..N is 0.99 N within a bin", () => {
    const o = createObserver({ type: "percentile", percentile: 99, symmetric: true });
    for (let i = 0; i < N; i += 1000) o.update(ramp.subarray(i, i + 1000));
    const r = o.result();
    const width = r.histogram!.width;
    expect(Math.abs(r.max - 0.99 * N)).toBeLessThanOrEqual(width);
    expect(r.min).toBe(0); // -t clamped to the observed minimum
  });

  test("asymmetric cuts half of the excluded mass from each tail", () => {
    const o = createObserver({ type: "percentile", percentile: 99 });
    o.update(ramp);
    const r = o.result();
    const width = r.histogram!.width;
    expect(Math.abs(r.max - 0.995 * N)).toBeLessThanOrEqual(width);
    expect(Math.abs(r.min - 0.005 * N)).toBeLessThanOrEqual(width);
  });

  test("default 99.999 keeps a Gaussian's body and drops rare outliers", () => {
    const o = createObserver({ type: "percentile" });
    const g = gaussian(200_000, 1, 7);
    o.update(g);
    o.update(new Float32Array([-500, 500]));
    const r = o.result();
    expect(r.max).toBeGreaterThan(3.5);
    expect(r.max).toBeLessThan(6);
    expect(r.min).toBeLessThan(-3.5);
    expect(r.min).toBeGreaterThan(-6);
  });
});

describe("entropy", () => {
  test("KL search on a hand-made histogram", () => {
    const h = new Float64Array(16);
    for (let k = 0; k < 10; k++) h[k] = 5;
    // keeping exactly the 10 non-empty bins reproduces P; fewer clips mass, more cannot do better
    expect(klThresholdBins(h, 4)).toBe(10);
    const tail = Float64Array.from(h);
    for (let k = 10; k < 16; k++) tail[k] = 0.001;
    // a thin tail is not worth keeping: i = 11..13 put a full bin and tail bins in one group (Q smears
    // mass over both), i = 14..16 cost p·ln(p/q) ≈ 6.6e-5 for the clipped tail, while clipping at 10
    // costs only second order (~1e-7)
    expect(klThresholdBins(tail, 4)).toBe(10);
    // an outlier alone in its group costs nothing to keep (Q = P there): KL's known blind spot
    const far = Float64Array.from(h);
    far[15] = 0.001;
    expect(klThresholdBins(far, 4)).toBe(16);
  });

  test("prefix-sum search equals a direct evaluation of the described algorithm", () => {
    // P = h[0..i) with the clipped mass added to bin i-1; Q = h[0..i) merged into nq groups and spread
    // evenly over each group's non-empty bins; KL(P‖Q) over bins where P > 0 (q = 1e-7 where Q = 0)
    const naive = (h: Float64Array, nq: number): number => {
      let best = h.length;
      let bestKl = Number.POSITIVE_INFINITY;
      const total = h.reduce((a, b) => a + b, 0);
      for (let i = nq; i <= h.length; i++) {
        const P = Array.from(h.subarray(0, i));
        let kept = 0;
        for (const v of P) kept += v;
        if (kept === 0) continue;
        P[i - 1]! += total - kept;
        const Q = new Array<number>(i).fill(0);
        for (let g = 0; g < nq; g++) {
          const s = Math.floor((g * i) / nq);
          const e = Math.floor(((g + 1) * i) / nq);
          let t = 0;
          let n = 0;
          for (let k = s; k < e; k++) {
            t += h[k]!;
            if (h[k]! > 0) n++;
          }
          for (let k = s; k < e; k++) Q[k] = h[k]! > 0 ? t / n : 0;
        }
        let kl = 0;
        for (let k = 0; k < i; k++) {
          if (P[k]! <= 0) continue;
          const p = P[k]! / total;
          const q = Q[k]! > 0 ? Q[k]! / kept : 1e-7;
          kl += p * Math.log(p / q);
        }
        if (kl < bestKl - 1e-12) {
          bestKl = kl;
          best = i;
        }
      }
      return best;
    };
    const r = rng(77);
    for (let trial = 0; trial < 6; trial++) {
      const h = new Float64Array(256);
      const sigma = 20 + 30 * r();
      for (let k = 0; k < h.length; k++) {
        const v = 1000 * Math.exp(-((k / sigma) ** 2) / 2) * (0.5 + r());
        h[k] = r() < 0.15 ? 0 : Math.floor(v);
      }
      h[200 + Math.floor(50 * r())]! += 3;
      expect(klThresholdBins(h, 32)).toBe(naive(h, 32));
    }
  });

  test("clips the outliers of a Gaussian", () => {
    const o = createObserver({ type: "entropy" });
    for (let b = 0; b < 10; b++) o.update(gaussian(10_000, 1, 100 + b));
    o.update(new Float32Array([-50, -45, 40, 42, 48, 50]));
    const r = o.result();
    expect(r.observedMax).toBe(50);
    expect(r.max).toBeGreaterThan(3);
    expect(r.max).toBeLessThan(20);
    expect(r.min).toBeCloseTo(-r.max, 9);
  });

  test("one-signed data gives [0, t]", () => {
    const o = createObserver({ type: "entropy" });
    const g = gaussian(50_000, 1, 9);
    for (let i = 0; i < g.length; i++) g[i] = Math.abs(g[i]!);
    o.update(g);
    o.update(new Float32Array([60]));
    const r = o.result();
    expect(r.min).toBe(r.observedMin);
    expect(r.max).toBeGreaterThan(3);
    expect(r.max).toBeLessThan(30);
  });
});

describe("mse", () => {
  test("a Laplacian with outliers gets a range well inside its extremes", () => {
    // 1M values (one BERT-Mini activation over ~128 sentences): clipping 3 outliers costs ~3·50² while the
    // full range would cost 1e6·(120/255)²/12 in rounding noise
    const o = createObserver({ type: "mse" });
    const parts: Float32Array[] = [];
    for (let b = 0; b < 10; b++) parts.push(laplacian(100_000, 1, 11 + b));
    parts.push(new Float32Array([-60, 60, 59]));
    for (const p of parts) o.update(p);
    const r = o.result();
    expect(r.observedMax).toBe(60);
    expect(r.max).toBeLessThan(0.6 * 60);
    expect(r.max).toBeGreaterThan(3);
    expect(r.min).toBeGreaterThan(-0.6 * 60);
    expect(r.min).toBeLessThan(-3);
    // the measured error of real uint8 quantization agrees: the chosen range beats the full one
    const all = concat(...parts);
    const measured = (min: number, max: number): number => {
      const q = computeActivationQParams(min, max);
      let e = 0;
      for (let i = 0; i < all.length; i++) {
        const x = all[i]!;
        e += (dequantizeValue(quantizeValue(x, q), q) - x) ** 2;
      }
      return e;
    };
    expect(measured(r.min, r.max)).toBeLessThan(0.8 * measured(r.observedMin, r.observedMax));
  });

  test("uniform data keeps (nearly) its full range", () => {
    const o = createObserver({ type: "mse" });
    const u = uniform(100_000, 0, 1, 12);
    o.update(u);
    const r = o.result();
    expect(r.max).toBeGreaterThanOrEqual(0.99 * r.observedMax);
    expect(r.min).toBe(r.observedMin);
    const s = createObserver({ type: "mse", symmetric: true });
    s.update(uniform(100_000, -1, 1, 13));
    expect(s.result().max).toBeGreaterThanOrEqual(0.99 * s.result().observedMax);
  });
});

describe("robustness, every observer", () => {
  for (const spec of ALL_SPECS) {
    const name = JSON.stringify(spec);
    test(`${name}: NaN, ±inf and -3.4e38 neither crash nor skew`, () => {
      const clean = createObserver(spec);
      const dirty = createObserver(spec);
      for (let b = 0; b < 8; b++) {
        // variable-length batches, as tensors of different sequence lengths
        const g = gaussian(500 + 97 * b, 1 + b / 4, 200 + b);
        clean.update(g);
        dirty.update(concat(POLLUTION, g, POLLUTION));
      }
      const rc = clean.result();
      const rd = dirty.result();
      expect(rd.min).toBe(rc.min);
      expect(rd.max).toBe(rc.max);
      expect(rd.count).toBe(rc.count);
      expect(rd.nonFinite).toBe(8 * 6);
      expect(rd.sentinel).toBe(8 * 8);
      expect(Number.isFinite(rd.min) && Number.isFinite(rd.max)).toBe(true);
      expect(rd.min).toBeLessThanOrEqual(0);
      expect(rd.max).toBeGreaterThanOrEqual(0);
    });

    test(`${name}: all-excluded input gives an empty, finite range`, () => {
      const o = createObserver(spec);
      o.update(POLLUTION);
      const r = o.result();
      expect([r.min, r.max, r.count]).toEqual([0, 0, 0]);
    });
  }

  test("bad options are USAGE errors", () => {
    const bad: ObserverSpec[] = [
      { type: "percentile", percentile: 0 },
      { type: "percentile", percentile: 101 },
      { type: "percentile", bins: 3 },
      { type: "moving-average-minmax", averagingConstant: 0 },
      { type: "entropy", quantizedBins: 1 },
      { type: "mse", levels: 0 },
    ];
    for (const spec of bad) {
      let code: string | undefined;
      try {
        createObserver(spec);
      } catch (err) {
        code = isQuantdError(err) ? err.code : "not a QuantdError";
      }
      expect(code).toBe("USAGE");
    }
  });
});
