/**
 * Length distributions and the drift counters: histograms and their distance,
 * the report's warnings, and the agent's monitor (coverage, counts, the
 * out-of-coverage texts kept for the pool, a recalibration asked for past
 * the configured share).
 */
import { describe, expect, test } from "bun:test";
import { coverageOf, createDriftMonitor, DRIFT_MIN_INPUTS } from "../../src/agent/drift.ts";
import {
  describeLengths,
  lengthBucket,
  lengthDistance,
  lengthHistogram,
  lengthWarnings,
} from "../../src/quant/drift.ts";
import type { TextInput } from "../../src/runtime/tokenizer.ts";
import { MetricsRegistry } from "../../src/server/metrics.ts";

const words = (n: number): string => Array.from({ length: n }, () => "w").join(" ");
/** Words of a text, or of a pair's two texts plus one separator, as a toy tokenizer counts them. */
const wordCount = (x: TextInput): number =>
  typeof x === "string" ? x.split(" ").length : x[0].split(" ").length + x[1].split(" ").length + 1;

describe("length histograms", () => {
  test("bucket by the store's edges, count and keep the longest", () => {
    expect([0, 7, 8, 15, 16, 255, 256, 5000].map(lengthBucket)).toEqual([0, 0, 1, 1, 2, 5, 6, 6]);
    const h = lengthHistogram([3, 9, 9, 40, 300]);
    expect(h).toEqual({ counts: [1, 2, 0, 1, 0, 0, 1], n: 5, max: 300 });
    expect(describeLengths(h)).toBe("n = 5, half < 16 tokens, 95 % ≥ 256, longest 300");
  });

  test("distance: 0 for the same shape, 1 for disjoint ones", () => {
    const short = lengthHistogram([5, 6, 7, 9, 10]);
    expect(lengthDistance(short, lengthHistogram([5, 6, 7, 9, 10, 5, 6, 7, 9, 10]))).toBeCloseTo(0, 12);
    expect(lengthDistance(short, lengthHistogram([40, 50, 60]))).toBeCloseTo(1, 12);
    expect(lengthDistance(short, lengthHistogram([]))).toBe(0);
  });

  test("phrases calibrated, sentences validated and served: each difference is a warning", () => {
    const phrases = lengthHistogram(Array.from({ length: 128 }, (_, i) => 4 + (i % 6)));
    const sentences = lengthHistogram(Array.from({ length: 512 }, (_, i) => 20 + (i % 30)));
    const warnings = lengthWarnings(
      { calibration: phrases, validation: phrases, live: sentences },
      { maxTokens: phrases.max, basis: "calibration" },
    );
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/^validation samples and live traffic differ in length \(distance 1\.00\)/);
    expect(warnings[1]).toBe("live inputs reach 49 tokens, longer than any calibration sample (9)");
    expect(lengthWarnings({ calibration: sentences, validation: sentences }, undefined)).toEqual([]);
  });
});

describe("the agent's drift monitor", () => {
  test("counts every input and those longer than the coverage, exported on /metrics", () => {
    const metrics = new MetricsRegistry();
    const m = createDriftMonitor({ countTokens: wordCount, metrics });
    m.observe([words(3), words(12)]);
    // No coverage (an fp32 model): nothing is out of coverage.
    expect(m.snapshot()).toMatchObject({ inputs: 2, outOfCoverage: 0, share: 0 });
    m.setCoverage({ maxTokens: 10, basis: "calibration" });
    m.observe([words(3), words(12), words(30), words(10)]);
    expect(m.snapshot()).toMatchObject({ inputs: 4, outOfCoverage: 2, share: 0.5 });
    expect(m.snapshot().lengths.max).toBe(30);
    const text = metrics.render();
    expect(text).toContain('quantd_inputs_out_of_coverage_total{reason="length"} 2');
    expect(text).toContain("quantd_input_tokens_count 6");
    expect(text).toContain('quantd_input_tokens_bucket{le="8"} 2');
  });

  test("past the share, after enough inputs, a recalibration is due once and the texts go to the pool", () => {
    const kept: TextInput[] = [];
    const m = createDriftMonitor({
      countTokens: wordCount,
      recalibrateShare: 0.05,
      onOutOfCoverage: (texts) => kept.push(...texts),
    });
    m.setCoverage({ maxTokens: 10, basis: "calibration" });
    m.observe(Array.from({ length: DRIFT_MIN_INPUTS - 1 }, (_, i) => (i % 5 === 0 ? words(20) : words(4))));
    // Not enough inputs yet to trust the share.
    expect(m.recalibrationDue()).toBeUndefined();
    m.observe([words(4)]);
    const why = m.recalibrationDue();
    expect(why).toMatch(
      /^drift: 20\.0 % of 200 live inputs are longer than the 10 tokens the active model's calibration covered \(limit 5\.0 %\)$/,
    );
    expect(kept).toHaveLength(40);
    // The counts restart: the queued job answers them.
    expect(m.recalibrationDue()).toBeUndefined();
    expect(m.snapshot().inputs).toBe(0);
  });

  test("without recalibrateOnDrift nothing is due and no text is kept", () => {
    const kept: TextInput[] = [];
    const m = createDriftMonitor({ countTokens: () => 50, onOutOfCoverage: (t) => kept.push(...t) });
    m.setCoverage({ maxTokens: 10, basis: "validation" });
    m.observe(Array.from({ length: 500 }, () => "x"));
    expect(m.snapshot().share).toBe(1);
    expect(m.recalibrationDue()).toBeUndefined();
    expect(kept).toEqual([]);
  });

  test("a model version's coverage is read from its metrics, malformed ones ignored", () => {
    expect(coverageOf({ coverage: { maxTokens: 61, basis: "calibration" } })).toEqual({
      maxTokens: 61,
      basis: "calibration",
    });
    expect(coverageOf({ coverage: { maxTokens: "61" } })).toBeUndefined();
    expect(coverageOf({})).toBeUndefined();
    expect(coverageOf(undefined)).toBeUndefined();
  });

  test("a pair counts once, at the length of its two texts together; kept for the pool as a pair", () => {
    const kept: TextInput[] = [];
    const counted: TextInput[] = [];
    const m = createDriftMonitor({
      countTokens: (x) => {
        counted.push(x);
        return wordCount(x);
      },
      // Two texts of 1 + n words and a separator: the two single-text specials become the pair's three.
      pairTokens: (a, b) => a + b - 2 + 3,
      recalibrateShare: 0.05,
      onOutOfCoverage: (inputs) => kept.push(...inputs),
    });
    m.setCoverage({ maxTokens: 10, basis: "calibration" });
    // Each text alone (6 words) is inside the coverage; the pair (13 tokens) is not.
    const long: TextInput = [words(6), words(6)];
    const short: TextInput = [words(2), words(2)];
    m.observe([long, short]);
    expect(m.snapshot()).toMatchObject({ inputs: 2, outOfCoverage: 1 });
    expect(m.snapshot().lengths.max).toBe(13);
    expect(kept).toEqual([long]);
    expect(counted).toEqual([long, short]);
    // The caller's per-text counts (a pair gives two, with single-text specials) serve without a second count.
    counted.length = 0;
    m.observe([long, words(3), short], [8, 8, 5, 4, 4]);
    expect(counted).toEqual([]);
    expect(m.snapshot()).toMatchObject({ inputs: 5, outOfCoverage: 2 });
    expect(m.snapshot().lengths.max).toBe(17);
    // Counts that do not line up with the texts are not trusted.
    m.observe([long], [8]);
    expect(counted).toEqual([long]);
  });

  test("a tokenizer that throws never fails the request", () => {
    const m = createDriftMonitor({
      countTokens: () => {
        throw new Error("boom");
      },
    });
    expect(() => m.observe(["a"])).not.toThrow();
  });
});
