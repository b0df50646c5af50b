/**
 * The values observed since the last look, for quantiles that are real
 * (computed from the observations) rather than a histogram's bucket bounds.
 * Memory stays bounded under any load: beyond `capacity` observations in one
 * interval it keeps a uniform sample of them (reservoir sampling), so the
 * quantiles stay unbiased.
 */
export class RecentValues {
  #values: number[] = [];
  #seen = 0;

  /** @param capacity - most values kept per interval */
  constructor(readonly capacity = 4096) {}

  /** Records one observation. */
  add(value: number): void {
    this.#seen++;
    if (this.#values.length < this.capacity) {
      this.#values.push(value);
      return;
    }
    // Algorithm R: the n-th value replaces a kept one with probability capacity / n.
    const j = Math.floor(Math.random() * this.#seen);
    if (j < this.capacity) this.#values[j] = value;
  }

  /** The values kept since the last call (a uniform sample when there were more than `capacity`), and how many were observed. */
  drain(): { values: number[]; observed: number } {
    const out = { values: this.#values, observed: this.#seen };
    this.#values = [];
    this.#seen = 0;
    return out;
  }
}
