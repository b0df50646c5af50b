/**
 * The micro-batcher's concurrency on a backend that records its calls: one
 * batch at a time by default, up to `concurrency` batches at once when the
 * backend has that many worker threads, results always in request order, and
 * `drain` waiting for every running batch.
 */
import { expect, test } from "bun:test";
import type { TaskResult } from "../../src/runtime/task-model.ts";
import type { TextInput } from "../../src/runtime/tokenizer.ts";
import { MicroBatcher } from "../../src/server/batcher.ts";
import type { ActiveModelInfo, BatchResult, InferenceBackend } from "../../src/server/types.ts";

/** A backend whose batches end when the test says so; the label of a text is the text. */
class GatedBackend implements InferenceBackend {
  running = 0;
  maxRunning = 0;
  readonly batches: string[][] = [];
  readonly #open: (() => void)[] = [];

  active(): ActiveModelInfo {
    return {
      version: 1,
      kind: "fp32",
      sha256: "0",
      labels: ["a", "b"],
      task: { kind: "classification", output: "logits", labels: ["a", "b"], source: "test" },
    };
  }

  async classify(inputs: readonly TextInput[]): Promise<BatchResult> {
    const texts = inputs.map(String);
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    this.batches.push([...texts]);
    await new Promise<void>((resolve) => this.#open.push(resolve));
    this.running--;
    const results = texts.map(
      (t): TaskResult => ({
        task: "classification",
        label: t,
        labelId: 0,
        score: 1,
        logits: [0, 0],
        probabilities: [1, 0],
      }),
    );
    return { results, model: { version: 1, kind: "fp32" }, inferenceMs: 1 };
  }

  /** Ends the oldest running batch. */
  finishOne(): boolean {
    const f = this.#open.shift();
    f?.();
    return f !== undefined;
  }
}

/** The label the gated backend gave a result (its text). */
const labelOf = (r: TaskResult): string | undefined => ("label" in r ? r.label : undefined);

/** Lets queued microtasks and the batcher's scheduling run. */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 0));

async function runAll(backend: GatedBackend, work: Promise<unknown>): Promise<void> {
  let done = false;
  void work.finally(() => {
    done = true;
  });
  while (!done) {
    await settle();
    backend.finishOne();
  }
}

for (const concurrency of [1, 2, 3]) {
  test(`concurrency ${concurrency}: at most ${concurrency} batches at once, and that many when texts wait`, async () => {
    const backend = new GatedBackend();
    const batcher = new MicroBatcher(backend, { maxBatch: 4, maxDelayMs: 0, maxQueue: 1000, concurrency });
    const requests = Array.from({ length: 24 }, (_, i) => batcher.submit([`t${i}`, `u${i}`]));
    await settle();
    // Everything is queued: as many batches as allowed have started, full ones.
    expect(backend.running).toBe(concurrency);
    expect(backend.batches.every((b) => b.length === 4)).toBe(true);
    await runAll(backend, Promise.all(requests));
    expect(backend.maxRunning).toBe(concurrency);
    const results = await Promise.all(requests);
    for (const [i, r] of results.entries()) expect(r.results.map(labelOf)).toEqual([`t${i}`, `u${i}`]);
    expect(backend.batches.flat()).toHaveLength(48);
    expect(batcher.depth).toBe(0);
    expect(batcher.busy).toBe(false);
  });
}

test("a lone request runs at once even with free slots left", async () => {
  const backend = new GatedBackend();
  const batcher = new MicroBatcher(backend, { maxBatch: 16, maxDelayMs: 0, maxQueue: 100, concurrency: 2 });
  const one = batcher.submit(["alone"]);
  await settle();
  expect(backend.batches).toEqual([["alone"]]);
  backend.finishOne();
  expect(labelOf((await one).results[0]!)).toBe("alone");
});

test("drain waits for every running batch", async () => {
  const backend = new GatedBackend();
  const batcher = new MicroBatcher(backend, { maxBatch: 2, maxDelayMs: 0, maxQueue: 100, concurrency: 2 });
  const a = batcher.submit(["a1", "a2"]);
  const b = batcher.submit(["b1", "b2"]);
  await settle();
  expect(backend.running).toBe(2);
  let drained = false;
  const d = batcher.drain().then(() => {
    drained = true;
  });
  backend.finishOne();
  await settle();
  expect(drained).toBe(false);
  backend.finishOne();
  await d;
  expect(drained).toBe(true);
  await Promise.all([a, b]);
});

test("a large request is interleaved with later ones: each waiting request gets an equal share of a batch", async () => {
  const backend = new GatedBackend();
  const batcher = new MicroBatcher(backend, { maxBatch: 4, maxDelayMs: 0, maxQueue: 1000 });
  const big = batcher.submit(Array.from({ length: 20 }, (_, i) => `big${i}`));
  await settle();
  expect(backend.batches).toEqual([["big0", "big1", "big2", "big3"]]);
  const small = [batcher.submit(["s1"]), batcher.submit(["s2", "s2b"]), batcher.submit(["s3"])];
  backend.finishOne();
  await settle();
  // Not the big request's next four: one text of each waiting request.
  expect(backend.batches[1]).toEqual(["big4", "s1", "s2", "s3"]);
  backend.finishOne();
  await settle();
  // Two requests left waiting: two texts each, the big one filling what the other cannot.
  expect(backend.batches[2]).toEqual(["big5", "big6", "s2b", "big7"]);
  await runAll(backend, Promise.all([big, ...small]));
  const results = await Promise.all([big, ...small]);
  expect(results[0]!.results.map(labelOf)).toEqual(Array.from({ length: 20 }, (_, i) => `big${i}`));
  expect(results[2]!.results.map(labelOf)).toEqual(["s2", "s2b"]);
  expect(batcher.depth).toBe(0);
});
