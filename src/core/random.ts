/**
 * Small seeded generators, so that "pick 128 calibration samples with seed 7"
 * names the same samples on every board and every run, and every model of a
 * benchmark (and its memory child process) gets the same synthetic token ids.
 * Not for cryptography.
 */

/** A function returning uniform numbers in [0, 1). */
export type Random = () => number;

/** A seeded generator (mulberry32 over a 32-bit mix of the seed): fast, and plenty for sampling. */
export function createRandom(seed: number): Random {
  // Mix the seed (which may be any number, even a float) into 32 bits.
  let s = Math.imul(Math.floor(seed) ^ 0x9e3779b9, 0x85ebca6b) >>> 0;
  s = Math.imul(s ^ (s >>> 13), 0xc2b2ae35) >>> 0;
  return mulberry32(s);
}

/**
 * mulberry32 started from `state`'s low 32 bits as they are (no mixing: nearby seeds give unrelated
 * streams all the same). The synthetic benchmark feeds use it directly, so their token ids stay those
 * of earlier runs.
 */
export function mulberry32(state: number): Random {
  let s = state >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Shuffles `items` in place (Fisher–Yates) and returns it. */
export function shuffle<T>(items: T[], random: Random): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const tmp = items[i] as T;
    items[i] = items[j] as T;
    items[j] = tmp;
  }
  return items;
}
