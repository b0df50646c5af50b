/**
 * A job's heavy work in a supervised child process, on the shipped model:
 * the child quantizes and answers with the quantizer's result and progress
 * lines; an abort stops it at once (SIGTERM) with the abort's reason; a child
 * killed from outside fails with its exit reason; the child's own errors come
 * back with their codes and details.
 */
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runInJobChild, runQuantizationInChild } from "../../src/agent/job-child.ts";
import { isQuantdError, QuantdError } from "../../src/errors.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import type { PoolSample } from "../../src/quant/pipeline.ts";
import { processAlive } from "../../src/jobs/runner-lock.ts";
import { shippedDevTsv, shippedModelPath } from "../helpers/paths.ts";
import { tempDir } from "./agent-harness.ts";

const dir = tempDir("quantd-job-child-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sentences: PoolSample[] = readFileSync(shippedDevTsv, "utf8")
  .split("\n")
  .slice(1, 97)
  .map((line, id) => ({ text: line.split("\t")[1]!, id }));
const pool = {
  name: "test",
  count: () => sentences.length,
  pickDisjoint: () => ({ calibration: sentences.slice(0, 32), validation: sentences.slice(32, 96) }),
};

test("quantizes in a child: the candidate and the quantizer's result, progress lines on the way", async () => {
  const out = join(dir, "int8.onnx");
  const progress: string[] = [];
  const r = await runQuantizationInChild({
    model: shippedModelPath,
    calib: pool,
    out,
    mode: "dynamic",
    // 64 held-out samples certify nothing at 95 %: decide on the measured agreement.
    decideOn: "point",
    gate: 0.9,
    samples: 32,
    validationSamples: 64,
    threads: 1,
    onProgress: (line) => progress.push(line),
  });
  expect(existsSync(out)).toBe(true);
  expect(r.out).toBe(out);
  expect(r.report.metrics).toBeDefined();
  expect(progress.length).toBeGreaterThan(0);
}, 60_000);

test("an abort stops the child at once with the abort's reason; a timeout kills it", async () => {
  for (const code of ["JOB_CANCELLED", "JOB_TIMED_OUT"] as const) {
    const abort = new AbortController();
    const t0 = performance.now();
    const run = runQuantizationInChild({
      model: shippedModelPath,
      calib: pool,
      out: join(dir, `stopped-${code}.onnx`),
      samples: 32,
      validationSamples: 64,
      threads: 1,
      signal: abort.signal,
      onProgress: () => abort.abort(new QuantdError(code, "stop")),
    });
    let err: unknown;
    try {
      await run;
    } catch (e) {
      err = e;
    }
    expect(isQuantdError(err, code)).toBe(true);
    expect(performance.now() - t0).toBeLessThan(30_000);
  }
}, 60_000);

test("a child killed from outside fails with its exit reason; the child's own errors keep code and details", async () => {
  let pid = 0;
  const run = runInJobChild(
    {
      op: "compare",
      active: shippedModelPath,
      candidate: shippedModelPath,
      options: { runs: 100_000, memory: false },
    },
    { crashCode: "BENCH_FAILED", onSpawn: (p) => (pid = p) },
  );
  await Bun.sleep(1500);
  expect(processAlive(pid)).toBe(true);
  process.kill(pid, "SIGKILL");
  let err: unknown;
  try {
    await run;
  } catch (e) {
    err = e;
  }
  expect(isQuantdError(err, "BENCH_FAILED")).toBe(true);
  expect((err as QuantdError).message).toContain("was killed by SIGKILL");
  expect(processAlive(pid)).toBe(false);

  let own: unknown;
  try {
    await runInJobChild(
      {
        op: "compare",
        active: join(dir, "missing.onnx"),
        candidate: shippedModelPath,
        options: { runs: 1, memory: false },
      },
      { crashCode: "BENCH_FAILED" },
    );
  } catch (e) {
    own = e;
  }
  expect(isQuantdError(own)).toBe(true);
  expect((own as QuantdError).code).not.toBe("BENCH_FAILED");
  expect((own as QuantdError).message).toContain("missing.onnx");

  // A file that is not ONNX at all: named by its framing, as classify and quantize name it.
  const garbage = join(dir, "garbage.onnx");
  writeFileSync(garbage, "not a model\n".repeat(10));
  const compare = (active: string) =>
    runInJobChild(
      { op: "compare", active, candidate: shippedModelPath, options: { runs: 1, memory: false } },
      { crashCode: "BENCH_FAILED" },
    ).then(
      () => undefined,
      (e: unknown) => e,
    );
  const junk = await compare(garbage);
  expect(isQuantdError(junk, "MODEL_NOT_ONNX")).toBe(true);
  expect((junk as QuantdError).message).toContain(garbage);

  // A well-framed model onnxruntime refuses (an operator it has no kernel for): its own reason comes back as the cause.
  const unloadable = join(dir, "unknown-op.onnx");
  const model = await loadModel(shippedModelPath);
  model.graph.node.find((n) => n.opType === "Tanh")!.opType = "NoSuchOperator";
  await saveModel(model, unloadable);
  const refused = await compare(unloadable);
  expect(isQuantdError(refused, "MODEL_LOAD_FAILED")).toBe(true);
  expect((refused as QuantdError).message).toBe(`active model: onnxruntime could not load ${unloadable}`);
  expect((refused as QuantdError).causeMessages().join(" ")).toContain("NoSuchOperator");
}, 60_000);

test("a child's error comes back as its wire form says: code, message, details and the library's own words as causes", async () => {
  // A tokenizer @huggingface/tokenizers refuses: quantd's error, with the library's message as its cause.
  const tok = join(dir, "bad-tokenizer");
  mkdirSync(tok, { recursive: true });
  writeFileSync(join(tok, "tokenizer.json"), JSON.stringify({ model: { type: "WordPiece", vocab: {} } }));
  let err: unknown;
  try {
    await runQuantizationInChild({
      model: shippedModelPath,
      calib: pool,
      out: join(dir, "never.onnx"),
      samples: 32,
      validationSamples: 64,
      tokenizerDir: tok,
    });
  } catch (e) {
    err = e;
  }
  expect(isQuantdError(err, "TOKENIZER_INVALID")).toBe(true);
  const json = (err as QuantdError).toJSON();
  expect(json.details).toEqual({ dir: tok });
  expect(json.causes?.length).toBe(1);
  expect(json.message).toContain(json.causes![0]!);
  expect((err as QuantdError).toLine()).toBe(QuantdError.fromJSON(json).toLine());
}, 60_000);

test("a child whose agent is killed (kill -9) stops by itself instead of working on for nobody", async () => {
  const script = `
    const { runInJobChild } = await import(${JSON.stringify(join(import.meta.dir, "../../src/agent/job-child.ts"))});
    void runInJobChild(
      { op: "compare", active: ${JSON.stringify(shippedModelPath)}, candidate: ${JSON.stringify(shippedModelPath)}, options: { runs: 100000, memory: false } },
      { crashCode: "BENCH_FAILED", onSpawn: (pid) => console.log(pid) },
    ).catch(() => undefined);
    await Bun.sleep(600000);
  `;
  const agent = Bun.spawn(["bun", "-e", script], { stdout: "pipe", stderr: "ignore" });
  const reader = agent.stdout.getReader();
  const childPid = Number(new TextDecoder().decode((await reader.read()).value).trim());
  expect(processAlive(childPid)).toBe(true);
  agent.kill("SIGKILL");
  await agent.exited;
  // Exited: gone, or a zombie until init reaps it.
  const running = (): boolean => {
    try {
      const stat = readFileSync(`/proc/${childPid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
    } catch {
      return false;
    }
  };
  const t0 = Date.now();
  while (running() && Date.now() - t0 < 20_000) await Bun.sleep(100);
  expect(running()).toBe(false);
}, 60_000);

test("an operation the child does not have is a USAGE error, an inherited name included", async () => {
  for (const op of ["frobnicate", "constructor", "toString"]) {
    let err: unknown;
    try {
      await runInJobChild({ op } as unknown as Parameters<typeof runInJobChild>[0], {
        crashCode: "INTERNAL",
      });
    } catch (e) {
      err = e;
    }
    expect({ op, code: (err as QuantdError).code }).toEqual({ op, code: "USAGE" });
    expect((err as QuantdError).message).toContain(`unknown job child operation "${op}"`);
  }
}, 30_000);
