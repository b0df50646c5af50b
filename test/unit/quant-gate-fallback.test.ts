/**
 * The fallback search of `sensitivity.ts` on a model whose accuracy is a known
 * function of which nodes are quantized: each node costs a fixed amount of
 * agreement. The real build/validate/rank are exercised end to end in
 * test/integration/quant-fallback.test.ts; here the search order and the budget,
 * so the gate decides on the point estimate (the bound is tested in quant-gate).
 */
import { describe, expect, test } from "bun:test";
import { clopperPearsonLower } from "../../src/quant/confidence.ts";
import type { GateMetrics } from "../../src/quant/gate.ts";
import type { LayerErrorEntry } from "../../src/quant/report.ts";
import { type FallbackHooks, runFallback } from "../../src/quant/sensitivity.ts";

const cost: Record<string, number> = { a: 0.0005, b: 0.02, c: 0.001, d: 0.004, e: 0.0002, f: 0.003 };

function metricsFor(kept: readonly string[]): GateMetrics {
  const lost = Object.entries(cost)
    .filter(([n]) => !kept.includes(n))
    .reduce((s, [, c]) => s + c, 0);
  const agree = 10000 - Math.round(lost * 10000);
  return {
    n: 10000,
    agreement: agree / 10000,
    disagreements: 10000 - agree,
    maxAbsLogitDiff: lost * 10,
    meanAbsLogitDiff: lost,
    labelled: 0,
    gateN: 10000,
    gateAgreements: agree,
    confidence: 0.95,
    agreementLower: clopperPearsonLower(agree, 10000),
    margin: { threshold: 0.01, nearTies: 0, nearTieFlips: 0, confidentFlips: 10000 - agree, ignored: false },
  };
}

/** `m` with `fewer` agreements less (of its 10,000). */
function lowered(m: GateMetrics, fewer: number): GateMetrics {
  const agree = m.gateAgreements - fewer;
  return {
    ...m,
    agreement: agree / 10000,
    gateAgreements: agree,
    agreementLower: clopperPearsonLower(agree, 10000),
  };
}

/** A ranking entry whose node adds `error` (relative) and costs `bytes` to keep fp32. */
function entry(node: string, error: number, bytes?: number): LayerErrorEntry {
  return {
    node,
    opType: "MatMul",
    tensor: `${node}_out`,
    relError: error,
    addedError: error,
    ...(bytes !== undefined ? { fp32CostBytes: bytes } : {}),
  };
}

function hooks(log: string[][]): FallbackHooks<string[]> {
  return {
    rebuild: async (keep) => {
      log.push([...keep]);
      return [...keep];
    },
    validate: async (kept) => metricsFor(kept),
    rank: async (kept): Promise<LayerErrorEntry[]> =>
      Object.entries(cost)
        .filter(([n]) => !kept.includes(n))
        .sort((x, y) => y[1] - x[1])
        .map(([node, c]) => entry(node, c)),
  };
}

/** {@link hooks} whose ranking prices each node at `bytes[node]`, else `otherwise`. */
function pricedHooks(
  log: string[][],
  bytes: Readonly<Record<string, number>>,
  otherwise: number,
): FallbackHooks<string[]> {
  return {
    ...hooks(log),
    rank: async (kept) =>
      (await hooks([]).rank(kept)).map((e) => ({ ...e, fp32CostBytes: bytes[e.node] ?? otherwise })),
  };
}

/**
 * {@link hooks} with `group` (the readers of shared weights) ranked first and measured harmful: a build
 * that keeps any of them fp32 agrees on 30 fewer samples than the same build without them.
 */
function harmfulGroupHooks(log: string[][], group: readonly string[]): FallbackHooks<string[]> {
  return {
    ...hooks(log),
    validate: async (kept) => {
      const m = metricsFor(kept.filter((n) => !group.includes(n)));
      return kept.some((n) => group.includes(n)) ? lowered(m, 30) : m;
    },
    rank: async (kept) => [...(await hooks([]).rank(kept)), ...group.map((node) => entry(node, 1))],
  };
}

describe("runFallback", () => {
  test("a candidate that already passes is returned untouched, without ranking or rebuilding", async () => {
    const log: string[][] = [];
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, hooks(log), {
      gate: { minAgreement: 0.9, decideOn: "point" },
    });
    expect(r.passed).toBe(true);
    expect(r.trials).toEqual([]);
    expect(log).toEqual([]);
    expect(r.ranking).toEqual([]);
  });

  test("keeps the worst nodes first until the gate holds", async () => {
    const log: string[][] = [];
    // 99.8 % needs the loss at most 0.002: keep b (0.02), d (0.004), f (0.003) → 0.0017 left
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, hooks(log), {
      gate: { minAgreement: 0.998, decideOn: "point" },
    });
    expect(r.passed).toBe(true);
    expect(r.keptFp32.map((k) => k.node)).toEqual(["b", "d", "f"]);
    expect(log).toEqual([["b"], ["b", "d"], ["b", "d", "f"]]);
    expect(r.trials.map((t) => t.passed)).toEqual([false, false, true]);
    expect(r.best.metrics.agreement).toBeCloseTo(1 - 0.0017, 12);
  });

  test("adds more nodes per trial as the list grows", async () => {
    const log: string[][] = [];
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, hooks(log), {
      gate: { minAgreement: 0.99999, decideOn: "point" },
    });
    // step sizes 1, 1, 1, 1, 2 → every node kept after five rebuilds
    expect(log.map((k) => k.length)).toEqual([1, 2, 3, 4, 6]);
    expect(r.passed).toBe(true);
  });

  test("an exhausted budget returns the best candidate seen and says it did not pass", async () => {
    const log: string[][] = [];
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, hooks(log), {
      gate: { minAgreement: 0.9999, decideOn: "point" },
      budget: 2,
    });
    expect(r.passed).toBe(false);
    expect(r.trials).toHaveLength(2);
    expect(r.best.model).toEqual(["b", "d"]);
    expect(r.keptFp32.map((k) => k.node)).toEqual(["b", "d"]);
  });

  test("each trial says what it bought and paid; a costly node goes after a cheap one of similar gain", async () => {
    const log: string[][] = [];
    // b is an embedding-sized table: 12 MB to keep fp32 for 0.02; d a small projection for 0.004.
    const priced = pricedHooks(log, { b: 12 * 2 ** 20 }, 196_608);
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, priced, {
      gate: { minAgreement: 0.99, decideOn: "point" },
    });
    expect(log[0]).toEqual(["d"]);
    expect(r.trials[0]!.added).toEqual(["d"]);
    expect(r.trials[0]!.bought?.bytes).toBe(196_608);
    expect(r.trials[0]!.bought?.agreement).toBeCloseTo(0.004, 12);
    expect(r.trials[0]!.bought?.agreementLower).toBeGreaterThan(0);
    expect(r.trials.some((t) => t.added?.includes("b"))).toBe(true);
  });

  test("a node is priced at its own bytes: a 768-byte table goes before a projection with a larger error", async () => {
    const log: string[][] = [];
    // d is a segment-sized table (2 × 128 floats), b a 256 × 256 projection adding five times its error:
    // per byte the table buys 50 times more. The cost floor prices only nodes with no weight (and so no
    // bytes of their own), which otherwise rank first on a cost of 0; added to every node, it priced the
    // table like a 257 KB projection, and b went first.
    const priced = pricedHooks(log, { b: 196_608, d: 768 }, 786_432);
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, priced, {
      gate: { minAgreement: 0.99, decideOn: "point" },
    });
    expect(log[0]).toEqual(["d"]);
    expect(r.trials[0]!.bought?.bytes).toBe(768);
    expect(log[1]).toEqual(["d", "b"]);
    expect(r.passed).toBe(true);
  });

  test("once the gate holds, rebuilds left put kept nodes back in int8, the most bytes first, a drop kept only while the gate holds", async () => {
    const priced = (log: string[][]) => pricedHooks(log, { b: 196_608, d: 768 }, 786_432);
    // d (768 B) helps first, b meets the gate; without b is d alone, already validated (not built again);
    // without d, b alone loses 0.0087: within 99 %, so d goes back to int8 and its bytes are saved.
    const log: string[][] = [];
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, priced(log), {
      gate: { minAgreement: 0.99, decideOn: "point" },
    });
    expect(log).toEqual([["d"], ["d", "b"], ["b"]]);
    expect(r.trials[2]).toMatchObject({ added: [], dropped: ["d"], passed: true });
    expect(r.trials[2]!.bought?.bytes).toBe(-768);
    expect(r.trials[2]!.reverted).toBeUndefined();
    expect(r.passed).toBe(true);
    expect(r.keptFp32.map((k) => k.node)).toEqual(["b"]);
    expect(r.best.model).toEqual(["b"]);
    // At 99.5 % b alone misses: the drop is undone (reverted), d stays fp32, the build that passed is the result.
    const strict: string[][] = [];
    const s = await runFallback({ model: [], metrics: metricsFor([]) }, priced(strict), {
      gate: { minAgreement: 0.995, decideOn: "point" },
    });
    expect(strict).toEqual([["d"], ["d", "b"], ["b"]]);
    expect(s.trials[2]).toMatchObject({ dropped: ["d"], passed: false, reverted: true });
    expect(s.passed).toBe(true);
    expect(s.best.model).toEqual(["d", "b"]);
    expect(s.keptFp32.map((k) => k.node)).toEqual(["d", "b"]);
    // No rebuild left after the gate held: no size phase.
    const tight: string[][] = [];
    await runFallback({ model: [], metrics: metricsFor([]) }, priced(tight), {
      gate: { minAgreement: 0.99, decideOn: "point" },
      budget: 2,
    });
    expect(tight).toEqual([["d"], ["d", "b"]]);
  });

  test("ignored nodes (user excludes) are never picked", async () => {
    const log: string[][] = [];
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, hooks(log), {
      gate: { minAgreement: 0.985, decideOn: "point" },
      ignore: ["b"],
    });
    expect(log.flat()).not.toContain("b");
    expect(r.passed).toBe(false);
  });

  test("a trial that lowers agreement is reverted: its node goes back to int8, is not tried again, and is reported", async () => {
    const log: string[][] = [];
    // Keeping d in fp32 is ranked best but costs agreement (its int8 rounding happened to cancel another's).
    const harmful: FallbackHooks<string[]> = {
      ...hooks(log),
      validate: async (kept) => {
        const m = metricsFor(kept.filter((n) => n !== "d"));
        if (!kept.includes("d")) return m;
        return lowered(m, 30);
      },
      rank: async (kept) =>
        (await hooks([]).rank(kept)).map((e) => (e.node === "d" ? { ...e, addedError: 1 } : e)),
    };
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, harmful, {
      gate: { minAgreement: 0.99, decideOn: "point" },
    });
    expect(log[0]).toEqual(["d"]);
    expect(r.trials[0]).toMatchObject({ added: ["d"], reverted: true, passed: false });
    expect(r.trials[0]!.bought!.agreement).toBeLessThan(0);
    expect(log.slice(1).flat()).not.toContain("d");
    expect(r.keptFp32.map((k) => k.node)).not.toContain("d");
    expect(r.best.model).not.toContain("d");
    expect(r.passed).toBe(true);
    expect(r.trials.filter((t) => t.reverted !== true).every((t) => t.bought!.agreement > 0)).toBe(true);
  });

  test("the readers of a shared weight are one choice: weighed by their summed error, tried and reverted together", async () => {
    const log: string[][] = [];
    // s1..s4 read one shared weight (ALBERT's layer called four times): keeping one fp32 keeps all four
    // (the planner's rule), which the validator below mirrors. Each reader alone ranks below d, together above.
    const shared = ["s1", "s2", "s3", "s4"];
    const readerCost = 0.0015;
    const expand = (kept: readonly string[]): string[] =>
      kept.some((n) => shared.includes(n)) ? [...kept, ...shared] : [...kept];
    const lostBy = (kept: readonly string[]) => metricsFor(expand(kept).filter((n) => !shared.includes(n)));
    const sharedHooks: FallbackHooks<string[]> = {
      rebuild: async (keep) => {
        log.push([...keep]);
        return [...keep];
      },
      validate: async (kept) => {
        const m = lostBy(kept);
        const all = expand(kept);
        const lost = shared.filter((n) => !all.includes(n)).length * readerCost;
        return lowered(m, Math.round(lost * 10000));
      },
      rank: async (kept) => [
        ...(await hooks([]).rank(expand(kept))).map((e) => ({ ...e, fp32CostBytes: 196_608 })),
        ...shared.filter((n) => !expand(kept).includes(n)).map((node) => entry(node, readerCost, 196_608)),
      ],
    };
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, sharedHooks, {
      gate: { minAgreement: 0.99, decideOn: "point" },
      weightReaders: { w: shared, other: ["b"] },
    });
    // b (0.02) first; then the shared weight (4 × 0.0015 = 0.006) before d (0.004), tried once for all four.
    expect(log[0]).toEqual(["b"]);
    expect(log[1]!.filter((n) => shared.includes(n))).toHaveLength(1);
    expect(
      log
        .slice(2)
        .flat()
        .filter((n) => shared.includes(n) && !log[1]!.includes(n)),
    ).toEqual([]);
    expect(r.trials[1]!.bought?.bytes).toBe(196_608);
    const unit = r.keptFp32.find((k) => shared.includes(k.node));
    expect(unit?.sharedReaders).toBe(4);
    expect(unit?.addedError).toBeCloseTo(4 * readerCost, 12);
    expect(r.passed).toBe(true);
  });

  test("a reverted reader of a shared weight takes its fellow readers with it: no build is validated twice", async () => {
    const log: string[][] = [];
    const shared = ["s1", "s2"];
    // Keeping the shared weight fp32 costs agreement (it is ranked best, measured harmful).
    const harmful = harmfulGroupHooks(log, shared);
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, harmful, {
      gate: { minAgreement: 0.9999, decideOn: "point" },
      weightReaders: { w: shared },
    });
    expect(r.trials[0]).toMatchObject({ reverted: true });
    expect(log[0]!.filter((n) => shared.includes(n))).toHaveLength(1);
    expect(
      log
        .slice(1)
        .flat()
        .filter((n) => shared.includes(n)),
    ).toEqual([]);
    const builds = log.map((k) => [...k].sort().join(","));
    expect(new Set(builds).size).toBe(builds.length);
  });

  test("readers chained through two shared weights are one choice: a reverted one takes the whole chain with it", async () => {
    const log: string[][] = [];
    // x reads A (with y) and B (with z): keeping any of them fp32 keeps A and B, so all three.
    const chain = ["y", "x", "z"];
    const harmful = harmfulGroupHooks(log, chain);
    const r = await runFallback({ model: [], metrics: metricsFor([]) }, harmful, {
      gate: { minAgreement: 0.9999, decideOn: "point" },
      weightReaders: { A: ["y", "x"], B: ["x", "z"] },
    });
    expect(r.trials[0]).toMatchObject({ reverted: true });
    expect(log[0]!.filter((n) => chain.includes(n))).toHaveLength(1);
    expect(
      log
        .slice(1)
        .flat()
        .filter((n) => chain.includes(n)),
    ).toEqual([]);
  });
});
