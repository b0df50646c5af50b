/**
 * How sure a measured agreement is: one-sided Clopper–Pearson bounds on a
 * binomial proportion, and the sample counts a gate needs.
 *
 * Clopper–Pearson rather than Wilson because it is exact: its coverage is at
 * least the nominal level for every true proportion and every n, which is what
 * a gate that "certifies 99.5 % at 95 %" has to promise. Near 100 % Wilson's
 * coverage dips below nominal, exactly where quantization gates live. With no
 * flips the bound is `α^(1/n)`, the rule of three's exact form (598 samples for
 * 99.5 % at 95 %).
 *
 * The bound is found by bisection on the binomial tail, summed in log space
 * over the shorter side, so n in the hundreds of thousands stays exact and fast.
 */

/** Default confidence level of the gate's bound. */
export const DEFAULT_CONFIDENCE = 0.95;

// Lanczos approximation (g = 7, n = 9): ~15 significant digits for x > 0.
const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
  12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

/** ln Γ(x) for x > 0. */
export function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  const z = x - 1;
  let a = LANCZOS[0]!;
  const t = z + 7.5;
  for (let i = 1; i < 9; i++) a += LANCZOS[i]! / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

function logChoose(n: number, k: number): number {
  return logGamma(n + 1) - logGamma(k + 1) - logGamma(n - k + 1);
}

/** log(e^a + e^b) without overflow. */
function logAdd(a: number, b: number): number {
  if (a === Number.NEGATIVE_INFINITY) return b;
  if (b === Number.NEGATIVE_INFINITY) return a;
  const m = Math.max(a, b);
  return m + Math.log(Math.exp(a - m) + Math.exp(b - m));
}

/** P(X ≥ k) for X ~ Binomial(n, p), summing the shorter side. */
export function binomialUpperTail(k: number, n: number, p: number): number {
  if (k <= 0) return 1;
  if (k > n) return 0;
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  const lp = Math.log(p);
  const lq = Math.log1p(-p);
  const term = (i: number): number => logChoose(n, i) + i * lp + (n - i) * lq;
  let acc = Number.NEGATIVE_INFINITY;
  if (n - k + 1 <= k) {
    for (let i = k; i <= n; i++) acc = logAdd(acc, term(i));
    return Math.min(1, Math.exp(acc));
  }
  for (let i = 0; i < k; i++) acc = logAdd(acc, term(i));
  return Math.max(0, 1 - Math.exp(acc));
}

/**
 * One-sided lower confidence bound of a proportion: the smallest p for which
 * seeing `k` or more successes in `n` still has probability ≥ 1 − confidence.
 * Returns 0 when `n` is 0 (nothing is known).
 */
export function clopperPearsonLower(k: number, n: number, confidence = DEFAULT_CONFIDENCE): number {
  if (n <= 0 || k <= 0) return 0;
  const alpha = 1 - confidence;
  if (k >= n) return alpha ** (1 / n);
  let lo = 0;
  let hi = k / n;
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (binomialUpperTail(k, n, mid) < alpha) lo = mid;
    else hi = mid;
  }
  return lo;
}

/**
 * Smallest n whose lower bound clears `gate` when at most `flips` samples
 * disagree: with `flips = 0`, the least validation set that can certify the
 * gate at all. `Infinity` when the gate is 1 (nothing finite certifies 100 %).
 */
export function samplesToCertify(gate: number, confidence = DEFAULT_CONFIDENCE, flips = 0): number {
  if (gate <= 0) return 1 + flips;
  if (gate >= 1) return Number.POSITIVE_INFINITY;
  // Zero flips has a closed form; flips only ever raise it, so search upward from there.
  let n = Math.max(1 + flips, Math.ceil(Math.log(1 - confidence) / Math.log(gate)));
  if (flips === 0) return n;
  let step = n;
  while (clopperPearsonLower(n + step - flips, n + step, confidence) < gate) step *= 2;
  let lo = n;
  let hi = n + step;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (clopperPearsonLower(mid - flips, mid, confidence) >= gate) hi = mid;
    else lo = mid + 1;
  }
  n = lo;
  return n;
}
