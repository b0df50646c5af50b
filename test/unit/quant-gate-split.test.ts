/**
 * The held-out split the gate validates on: disjoint from calibration (rows
 * spread over a TSV's lengths, the pool's disjoint pick for a store), and all
 * of it when nothing calibrates (dynamic int8).
 */
import { describe, expect, test } from "bun:test";
import {
  type QuantSample,
  type SamplePool,
  type SplitRequest,
  splitPool,
  splitSamples,
} from "../../src/quant/pipeline.ts";

/** A gate that needs `needed` held-out samples, with explicit counts where given. */
const req = (calibration?: number, validation?: number, needed = 1): SplitRequest => ({
  needed,
  gateWords: "the gate",
  ...(calibration !== undefined ? { calibration } : {}),
  ...(validation !== undefined ? { validation } : {}),
});

const samples = (n: number): QuantSample[] =>
  Array.from({ length: n }, (_, i) => ({ text: `sentence ${i}`, origin: `f.tsv:${i + 2}` }));

const texts = (xs: readonly QuantSample[]): string[] => xs.map((s) => s.text);

describe("splitSamples", () => {
  test("N calibrate, the next M of the rest validate in file order, nothing shared", () => {
    const s = splitSamples(samples(100), req(10, 20), false, "f.tsv");
    expect(s.calibration).toHaveLength(10);
    expect(s.validation).toHaveLength(20);
    const calib = new Set(texts(s.calibration));
    expect(texts(s.validation)).toEqual(
      texts(samples(100))
        .filter((t) => !calib.has(t))
        .slice(0, 20),
    );
    expect(s.available).toBe(100);
    expect(s.warnings).toEqual([]);
  });

  test("calibration rows are spread over the file's lengths, not its first rows (a file that starts short)", () => {
    // 1,000 rows, the first 200 short and the rest up to 10 times as long: the first 128 would cover none of them.
    const rows = Array.from({ length: 1000 }, (_, i) => ({
      text: "w ".repeat(i < 200 ? 3 : 3 + (i % 30)),
      pair: "v ".repeat(i < 200 ? 2 : 2 + (i % 7)),
      origin: `f.tsv:${i + 2}`,
    }));
    const s = splitSamples(rows, req(128, undefined, 598), false, "f.tsv");
    const size = (x: QuantSample) => x.text.length + (x.pair?.length ?? 0);
    const longest = Math.max(...rows.map(size));
    expect(Math.max(...s.calibration.map(size))).toBeGreaterThan(0.9 * longest);
    expect(s.calibration.filter((x) => size(x) <= 10).length).toBeLessThan(0.3 * 128);
    expect(s.calibration.filter((x) => size(x) <= 10).length).toBeGreaterThan(0.1 * 128);
    // file order within each set, and disjoint
    const line = (x: QuantSample) => Number(x.origin.split(":")[1]);
    expect(s.calibration.map(line)).toEqual(s.calibration.map(line).sort((a, b) => a - b));
    expect(s.validation).toHaveLength(872);
    expect(new Set([...s.calibration, ...s.validation].map(line)).size).toBe(1000);
  });

  test("a short file gives validation what is left, and says so", () => {
    const s = splitSamples(samples(25), req(10, 20), false, "f.tsv");
    expect(s.calibration).toHaveLength(10);
    expect(s.validation).toHaveLength(15);
    expect(s.warnings[0]).toContain("only 15 held-out samples");
  });

  test("a file no longer than --samples holds out its last quarter, and the line says why", () => {
    const s = splitSamples(samples(128), req(128, 512), false, "calibration-128.tsv");
    expect(s.calibration).toHaveLength(96);
    expect(s.validation).toHaveLength(32);
    expect(new Set([...texts(s.calibration), ...texts(s.validation)]).size).toBe(128);
    expect(s.line).toContain("--samples 128 leaves no row to validate on");
  });

  test("by default every row after calibration validates; scarce rows go to validation first", () => {
    const s = splitSamples(samples(1000), req(undefined, undefined, 598), false, "f.tsv");
    expect(s.calibration).toHaveLength(128);
    expect(s.validation).toHaveLength(872);
    expect(s.warnings).toEqual([]);
    const scarce = splitSamples(samples(700), req(undefined, undefined, 598), false, "f.tsv");
    expect(scarce.calibration).toHaveLength(102);
    expect(scarce.validation).toHaveLength(598);
  });

  test("dynamic int8 calibrates nothing: every row validates, and the line says why", () => {
    const s = splitSamples(
      samples(700),
      { ...req(undefined, undefined, 598), noCalibration: true },
      false,
      "f.tsv",
    );
    expect(s.calibration).toEqual([]);
    expect(texts(s.validation)).toEqual(texts(samples(700)));
    expect(s.line).toBe(
      "700 rows: 0 calibrate (dynamic int8 needs no calibration), 700 validate (every row; the gate needs ≥ 598)",
    );
    const asked = splitSamples(samples(700), { ...req(128, 600), noCalibration: true }, false, "f.tsv");
    expect([asked.calibration.length, asked.validation.length]).toEqual([0, 600]);
  });

  test("with a separate validation file, all rows may calibrate", () => {
    const s = splitSamples(samples(128), req(128, 512), true, "f.tsv");
    expect(s.calibration).toHaveLength(128);
    expect(s.validation).toEqual([]);
  });

  test("no samples, or one without a validation file, is CALIB_EMPTY", () => {
    expect(() => splitSamples([], req(10, 10), false, "f.tsv")).toThrow(
      expect.objectContaining({ code: "CALIB_EMPTY" }),
    );
    expect(() => splitSamples(samples(1), req(10, 10), false, "f.tsv")).toThrow(
      expect.objectContaining({ code: "CALIB_EMPTY" }),
    );
  });
});

describe("splitPool", () => {
  function pool(n: number): SamplePool & { asked: [number, number, number][] } {
    const asked: [number, number, number][] = [];
    return {
      name: "quantd.db",
      asked,
      count: () => n,
      pickDisjoint(nCalib, nVal, seed) {
        asked.push([nCalib, nVal, seed]);
        const rows = Array.from({ length: n }, (_, i) => ({
          id: i + 1,
          text: `t${i}`,
          label: i % 2 === 0 ? 1 : null,
        }));
        return { calibration: rows.slice(0, nCalib), validation: rows.slice(nCalib, nCalib + nVal) };
      },
    };
  }

  test("asks the pool for disjoint sets with the seed, labels kept where known", () => {
    const p = pool(1000);
    const s = splitPool(p, req(128, 256), 7);
    expect(p.asked).toEqual([[128, 256, 7]]);
    expect(s.calibration).toHaveLength(128);
    expect(s.validation).toHaveLength(256);
    expect(s.calibration[0]).toEqual({ text: "t0", origin: "quantd.db#1", label: 1, id: 1 });
    expect(s.calibration[1]).toEqual({ text: "t1", origin: "quantd.db#2", id: 2 });
  });

  test("a small pool gives validation what the gate needs first, at least a quarter", () => {
    const p = pool(40);
    const s = splitPool(p, req(undefined, undefined), 1);
    expect(p.asked).toEqual([[30, 10, 1]]);
    expect(s.line).toContain("40 samples: 30 calibrate, 10 validate");
    const q = pool(100);
    splitPool(q, req(undefined, undefined, 59), 1);
    expect(q.asked).toEqual([[41, 59, 1]]);
  });

  test("a pool of fewer than 2 samples is CALIB_EMPTY", () => {
    expect(() => splitPool(pool(1), req(128, 256), 1)).toThrow(
      expect.objectContaining({ code: "CALIB_EMPTY" }),
    );
  });
});
