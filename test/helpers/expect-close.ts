/**
 * Numeric comparison with tolerances, as onnxruntime's `assertTensorEqual`:
 * element i passes when `|actual[i] - expected[i]| <= atol + rtol * |expected[i]|`.
 * On failure it reports the worst element (largest excess over its tolerance),
 * how many elements failed, and the largest absolute difference.
 */

/** Options for {@link expectClose}. */
export interface ExpectCloseOptions {
  /** Absolute tolerance. */
  atol: number;
  /** Relative tolerance (times |expected|). @defaultValue 0 */
  rtol?: number;
  /** What is compared, for the failure message. @defaultValue "values" */
  what?: string;
}

/**
 * Fails (throws) unless `actual` and `expected` have the same length and are
 * element-wise close. NaN matches only NaN; infinities must match exactly.
 *
 * @throws Error naming the worst index, its values and the tolerance
 */
export function expectClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: ExpectCloseOptions,
): void {
  const what = opts.what ?? "values";
  const rtol = opts.rtol ?? 0;
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected length ${expected.length}`);
  }
  let failures = 0;
  let worst = -1;
  let worstExcess = -Infinity;
  let maxAbs = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    if (Number.isNaN(a) || Number.isNaN(e)) {
      if (Number.isNaN(a) && Number.isNaN(e)) continue;
      failures++;
      if (worstExcess < Infinity) {
        worstExcess = Infinity;
        worst = i;
      }
      continue;
    }
    if (a === e) continue;
    const diff = Math.abs(a - e);
    if (diff > maxAbs) maxAbs = diff;
    const excess = diff - (opts.atol + rtol * Math.abs(e));
    // `!(excess <= 0)` also catches Infinity - Infinity
    if (!(excess <= 0)) {
      failures++;
      const ex = Number.isNaN(excess) ? Infinity : excess;
      if (ex > worstExcess) {
        worstExcess = ex;
        worst = i;
      }
    }
  }
  if (failures > 0) {
    const a = actual[worst]!;
    const e = expected[worst]!;
    throw new Error(
      `${what}: ${failures}/${actual.length} elements not close (atol ${opts.atol}, rtol ${rtol}); ` +
        `worst at index ${worst}: actual ${a}, expected ${e}, |diff| ${Math.abs(a - e)}; max |diff| ${maxAbs}`,
    );
  }
}
