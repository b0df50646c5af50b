import { describe, expect, test } from "bun:test";
import { expectClose } from "../helpers/expect-close.ts";

function message(fn: () => void): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  return "passed";
}

describe("expectClose", () => {
  test("passes within atol + rtol·|expected|", () => {
    expect(message(() => expectClose([1, 2, 3], [1, 2.00005, 3], { atol: 1e-4 }))).toBe("passed");
    expect(message(() => expectClose(new Float32Array([100.5]), [100], { atol: 0, rtol: 0.01 }))).toBe(
      "passed",
    );
    expect(message(() => expectClose([Number.NaN, Infinity], [Number.NaN, Infinity], { atol: 0 }))).toBe(
      "passed",
    );
  });

  test("fails naming the worst index, its values, and the count", () => {
    const m = message(() => expectClose([1, 2.5, 3, 4.2], [1, 2, 3, 4], { atol: 0.1, what: "logits" }));
    expect(m).toContain("logits");
    expect(m).toContain("2/4");
    expect(m).toContain("index 1");
    expect(m).toContain("actual 2.5");
    expect(m).toContain("expected 2");
  });

  test("fails on length mismatch, NaN against a number, and opposite infinities", () => {
    expect(message(() => expectClose([1, 2], [1], { atol: 1 }))).toContain("length");
    expect(message(() => expectClose([Number.NaN], [0], { atol: 1 }))).toContain("index 0");
    expect(message(() => expectClose([0], [Number.NaN], { atol: 1 }))).toContain("index 0");
    expect(message(() => expectClose([Infinity], [-Infinity], { atol: 1 }))).toContain("index 0");
  });
});
