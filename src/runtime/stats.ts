/**
 * Statistics shared by validation (`quant/task-metrics.ts`) and evaluation
 * (`task-eval.ts`): correlations and nearest-neighbour agreement.
 */

/** Pearson correlation of two series (0 when either is constant). */
export function pearson(a: readonly number[], b: readonly number[]): number {
  const n = a.length;
  const ma = a.reduce((s, x) => s + x, 0) / n;
  const mb = b.reduce((s, x) => s + x, 0) / n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    sab += (a[i]! - ma) * (b[i]! - mb);
    saa += (a[i]! - ma) ** 2;
    sbb += (b[i]! - mb) ** 2;
  }
  return saa === 0 || sbb === 0 ? 0 : sab / Math.sqrt(saa * sbb);
}

/** Samples whose neighbours are compared: a search among more would cost n² dot products for little more evidence. */
export const NEIGHBOUR_SAMPLES = 1024;

function unitRows(vectors: readonly Float32Array[]): Float32Array[] {
  return vectors.map((v) => {
    let sum = 0;
    for (const x of v) sum += x * x;
    const norm = Math.sqrt(sum) || 1;
    return v.map((x) => x / norm);
  });
}

/** Indices of the k most similar other vectors to each vector, by cosine (ties to the lower index). */
function neighbours(vectors: readonly Float32Array[], k: number): number[][] {
  const unit = unitRows(vectors);
  return unit.map((v, i) => {
    const best: { j: number; s: number }[] = [];
    for (const [j, w] of unit.entries()) {
      if (j === i) continue;
      let s = 0;
      for (let d = 0; d < v.length; d++) s += v[d]! * w[d]!;
      if (best.length === k && s <= best[k - 1]!.s) continue;
      let at = best.length;
      while (at > 0 && best[at - 1]!.s < s) at--;
      best.splice(at, 0, { j, s });
      if (best.length > k) best.pop();
    }
    return best.map((x) => x.j);
  });
}

/**
 * Mean overlap of each sample's top-k neighbour set among the other samples,
 * fp32's against the candidate's (1 when every search would return the same
 * results), over the first {@link NEIGHBOUR_SAMPLES} samples.
 */
export function neighbourOverlap(
  reference: readonly Float32Array[],
  candidate: readonly Float32Array[],
  k: number,
): number {
  const ref = reference.slice(0, NEIGHBOUR_SAMPLES);
  const kk = Math.min(k, ref.length - 1);
  if (kk < 1) return 1;
  const refN = neighbours(ref, kk);
  const candN = neighbours(candidate.slice(0, NEIGHBOUR_SAMPLES), kk);
  let sum = 0;
  for (const [i, r] of refN.entries()) {
    const c = new Set(candN[i]);
    sum += r.filter((j) => c.has(j)).length / kk;
  }
  return sum / refN.length;
}

/** Ranks of values (1-based), ties sharing their mean rank. */
function ranks(xs: readonly number[]): number[] {
  const order = xs.map((_, i) => i).sort((a, b) => xs[a]! - xs[b]!);
  const out = new Array<number>(xs.length);
  for (let i = 0; i < order.length; ) {
    let j = i;
    while (j + 1 < order.length && xs[order[j + 1]!] === xs[order[i]!]) j++;
    for (let k = i; k <= j; k++) out[order[k]!] = (i + j) / 2 + 1;
    i = j + 1;
  }
  return out;
}

/** Spearman's rank correlation (Pearson of the ranks, ties at their mean rank). */
export function spearman(a: readonly number[], b: readonly number[]): number {
  return pearson(ranks(a), ranks(b));
}
