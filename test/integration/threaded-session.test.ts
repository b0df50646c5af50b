/**
 * A session in a worker thread answers exactly as one in the calling thread,
 * keeps the calling thread free while it runs, reports ORT's errors with
 * quantd's codes, finishes queued runs before a release, and does not keep an
 * idle process alive.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadClassifier } from "../../src/runtime/classifier.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import { createSessionPool, createThreadedSession } from "../../src/runtime/threaded-session.ts";
import type { InferenceSession, Tensor } from "../../src/runtime/types.ts";
import { codeOfAsync } from "../helpers/error-code.ts";
import { repoRoot, shippedModelPath } from "../helpers/paths.ts";

let dir: string;
let threaded: InferenceSession;
let local: InferenceSession;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "quantd-threaded-"));
  threaded = await createThreadedSession(shippedModelPath, { intraOpThreads: 1 });
  local = await createOrtSession(shippedModelPath, { intraOpThreads: 1 });
}, 60_000);

afterAll(async () => {
  await Promise.all([threaded?.release(), local?.release()]);
  rmSync(dir, { recursive: true, force: true });
});

/** Feeds of `rows` sequences of `len` tokens (ids from a small range, all attended). */
function feeds(rows: number, len: number, seed = 1): Record<string, Tensor> {
  const n = rows * len;
  const ids = new BigInt64Array(n);
  for (let i = 0; i < n; i++) ids[i] = BigInt(1000 + ((i * 7919 + seed * 104729) % 5000));
  for (let r = 0; r < rows; r++) {
    ids[r * len] = 101n;
    ids[r * len + len - 1] = 102n;
  }
  return {
    input_ids: { type: "int64", data: ids, dims: [rows, len] },
    attention_mask: { type: "int64", data: new BigInt64Array(n).fill(1n), dims: [rows, len] },
    token_type_ids: { type: "int64", data: new BigInt64Array(n), dims: [rows, len] },
  };
}

test("same metadata and identical logits as a session in this thread", async () => {
  expect(threaded.inputNames).toEqual(local.inputNames);
  expect(threaded.outputNames).toEqual(local.outputNames);
  expect(threaded.outputs).toEqual(local.outputs);
  for (const [rows, len] of [
    [1, 8],
    [4, 33],
  ] as const) {
    const a = (await threaded.run(feeds(rows, len)))["logits"]!;
    const b = (await local.run(feeds(rows, len)))["logits"]!;
    expect(a.dims).toEqual([rows, 2]);
    expect(a.type).toBe("float32");
    expect(Array.from(a.data as Float32Array)).toEqual(Array.from(b.data as Float32Array));
  }
}, 60_000);

test("the calling thread keeps running while a batch runs", async () => {
  // A long batch: the local session would block this thread for all of it.
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    const t0 = performance.now();
    await threaded.run(feeds(32, 256));
    const ms = performance.now() - t0;
    // A 1 ms timer fires many times during a run of tens of ms (at least a few, however loaded the machine).
    expect(ms).toBeGreaterThan(10);
    expect(ticks).toBeGreaterThanOrEqual(3);
  } finally {
    clearInterval(timer);
  }
}, 60_000);

test("concurrent runs each get their own outputs", async () => {
  const lens = [5, 9, 17, 30, 64];
  const outs = await Promise.all(lens.map((len, i) => threaded.run(feeds(1 + i, len, i))));
  for (const [i, len] of lens.entries()) {
    const want = (await local.run(feeds(1 + i, len, i)))["logits"]!;
    expect(Array.from(outs[i]!["logits"]!.data as Float32Array)).toEqual(
      Array.from(want.data as Float32Array),
    );
  }
}, 60_000);

test("ORT's errors come back as INFERENCE_FAILED and the session goes on", async () => {
  const bad = feeds(1, 4);
  bad["input_ids"] = { type: "int64", data: new BigInt64Array([1n, 2n, 3n]), dims: [1, 4] };
  expect(await codeOfAsync(threaded.run(bad))).toBe("INFERENCE_FAILED");
  const missing = feeds(1, 4);
  delete missing["token_type_ids"];
  expect(await codeOfAsync(threaded.run(missing))).toBe("INFERENCE_FAILED");
  expect((await threaded.run(feeds(1, 4)))["logits"]!.dims).toEqual([1, 2]);
}, 60_000);

test("a file ORT cannot load is MODEL_LOAD_FAILED, naming it", async () => {
  const junk = join(dir, "junk.onnx");
  writeFileSync(junk, "not a model at all");
  let message = "";
  const code = await codeOfAsync(
    createThreadedSession(junk).catch((e: Error) => {
      message = e.message;
      throw e;
    }),
  );
  expect(code).toBe("MODEL_LOAD_FAILED");
  expect(message).toContain(junk);
}, 60_000);

test("release finishes the runs posted before it; later runs are refused", async () => {
  const s = await createThreadedSession(shippedModelPath, { intraOpThreads: 1 });
  const runs = [s.run(feeds(8, 64)), s.run(feeds(8, 64, 2))];
  const released = s.release();
  const outs = await Promise.all(runs);
  expect(outs.map((o) => o["logits"]!.dims)).toEqual([
    [8, 2],
    [8, 2],
  ]);
  await released;
  expect(await codeOfAsync(s.run(feeds(1, 4)))).toBe("INFERENCE_FAILED");
}, 60_000);

test("a classifier loaded off-thread classifies like one on this thread", async () => {
  const texts = ["a gorgeous, witty, seductive movie.", "unflinchingly bleak and desperate"];
  const a = await loadClassifier(shippedModelPath, { workers: 1, session: { intraOpThreads: 1 } });
  const b = await loadClassifier(shippedModelPath, { session: { intraOpThreads: 1 } });
  try {
    expect(await a.classify(texts)).toEqual(await b.classify(texts));
  } finally {
    await Promise.all([a.release(), b.release()]);
  }
}, 60_000);

test("a pool of threads answers like one session, refuses a size below 1, and ends every thread on a bad model", async () => {
  const pool = await createSessionPool(shippedModelPath, { intraOpThreads: 1 }, 3);
  try {
    expect(pool.outputNames).toEqual(local.outputNames);
    const lens = [3, 7, 12, 20, 31, 45];
    const outs = await Promise.all(lens.map((len, i) => pool.run(feeds(2, len, i))));
    for (const [i, len] of lens.entries()) {
      const want = (await local.run(feeds(2, len, i)))["logits"]!;
      expect(Array.from(outs[i]!["logits"]!.data as Float32Array)).toEqual(
        Array.from(want.data as Float32Array),
      );
    }
  } finally {
    await pool.release();
  }
  expect(await codeOfAsync(pool.run(feeds(1, 4)))).toBe("INFERENCE_FAILED");
  expect(await codeOfAsync(createSessionPool(shippedModelPath, {}, 0))).toBe("USAGE");
  const junk = join(dir, "junk-pool.onnx");
  writeFileSync(junk, "not a model either");
  expect(await codeOfAsync(createSessionPool(junk, {}, 2))).toBe("MODEL_LOAD_FAILED");
}, 60_000);

test("an idle threaded session does not keep the process alive", async () => {
  const script = join(dir, "idle.ts");
  writeFileSync(
    script,
    `import { createThreadedSession } from ${JSON.stringify(join(repoRoot, "src/runtime/threaded-session.ts"))};
     const s = await createThreadedSession(${JSON.stringify(shippedModelPath)}, { intraOpThreads: 1 });
     const n = 4;
     const t = (v: bigint) => ({ type: "int64" as const, data: new BigInt64Array(n).fill(v), dims: [1, n] });
     const out = await s.run({ input_ids: t(101n), attention_mask: t(1n), token_type_ids: t(0n) });
     console.log(out["logits"]!.dims.join("x"));`,
  );
  const p = Bun.spawn(["bun", script], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
  const code = await p.exited;
  clearTimeout(timer);
  expect(await new Response(p.stderr).text()).toBe("");
  expect(code).toBe(0);
  expect((await new Response(p.stdout).text()).trim()).toBe("1x2");
}, 60_000);
