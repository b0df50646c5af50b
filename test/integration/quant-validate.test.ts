/**
 * Validation at scale on the tiny synthetic BERT with the shipped tokenizer:
 * batched validation (length-bucketed) judges static int8 as one sample at a
 * time does, and dynamic int8 as serving's batches run it; fp32 logits come from the cache on a second run; a candidate that
 * cannot pass stops early as failed, one that already certifies the gate stops
 * early as passed, and in both cases the verdict is what the whole set gives.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { saveModel } from "../../src/onnx/codec.ts";
import type { ModelProto } from "../../src/onnx/types.ts";
import { loadTokenizer, type Tokenizer } from "../../src/runtime/tokenizer.ts";
import { encodeModel } from "../../src/onnx/codec.ts";
import {
  argmaxRows,
  checkGate,
  compareLogits,
  type GateSpec,
  type LogitMatrix,
} from "../../src/quant/gate.ts";
import { createOrtSession } from "../../src/runtime/ort-session.ts";
import type { TaskSpec } from "../../src/runtime/task.ts";
import { TaskModel } from "../../src/runtime/task-model.ts";
import { encodeSamples, type QuantSample } from "../../src/quant/pipeline.ts";
import { quantizeModel } from "../../src/quant/quantize.ts";
import { createValidator, planLooks, type ReferenceLogitsCache } from "../../src/quant/validate.ts";
import { buildSyntheticBert, SYNTHETIC_BERT_PRESETS } from "../fixtures/synthetic-bert.ts";
import { repoRoot, shippedModelDir } from "../helpers/paths.ts";

setDefaultTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), "quantd-validate-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config = { ...SYNTHETIC_BERT_PRESETS.tiny, vocab: 16384 };
const fp32Path = join(dir, "fp32.onnx");
let fp32: ModelProto;
let fp32Sha: string;
let staticInt8: ModelProto;
let tokenizer: Tokenizer;
let samples: QuantSample[];

beforeAll(async () => {
  fp32 = buildSyntheticBert(config);
  await saveModel(fp32, fp32Path);
  fp32Sha = createHash("sha256").update(readFileSync(fp32Path)).digest("hex");
  tokenizer = await loadTokenizer(shippedModelDir, { maxLength: 128 });
  samples = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8")
    .trim()
    .split("\n")
    .slice(1, 2401)
    .map((l, i) => ({ text: l.split("\t")[1]!, origin: `train:${i + 2}`, id: i + 1 }));
  const calib = encodeSamples(tokenizer, samples.slice(0, 32), 8, 128);
  staticInt8 = (await quantizeModel(fp32, { type: "static", calibration: calib.batches })).model;
});

const gate: GateSpec = { minAgreement: 0.99, confidence: 0.95 };
const session = { intraOpThreads: 1 };

function validator(opts: {
  n: number;
  batchSize?: number;
  cache?: ReferenceLogitsCache;
  earlyStop?: boolean;
}) {
  return createValidator({
    tokenizer,
    maxLength: 128,
    samples: samples.slice(200, 200 + opts.n),
    gate,
    fp32: { path: fp32Path, sha256: fp32Sha },
    session,
    earlyStop: opts.earlyStop ?? false,
    ...(opts.batchSize !== undefined ? { batchSize: opts.batchSize } : {}),
    ...(opts.cache !== undefined ? { cache: opts.cache } : {}),
  });
}

/** A cache in memory, counting what it was asked. */
function memoryCache(): ReferenceLogitsCache & { rows: Map<string, Float32Array>; hits: number } {
  const rows = new Map<string, Float32Array>();
  const cache = {
    rows,
    hits: 0,
    get(sha: string, ids: readonly number[]) {
      const out = new Map<number, Float32Array>();
      for (const id of ids) {
        const r = rows.get(`${sha}/${id}`);
        if (r !== undefined) out.set(id, r);
      }
      cache.hits += out.size;
      return out;
    },
    put(sha: string, put: readonly { id: number; logits: Float32Array }[]) {
      for (const r of put) rows.set(`${sha}/${r.id}`, r.logits);
    },
  };
  return cache;
}

describe("validator", () => {
  test("batched, length-bucketed validation judges static int8 as one sample at a time does", async () => {
    const batched = await validator({ n: 400 }).validate(staticInt8, false);
    const single = await validator({ n: 400, batchSize: 1 }).validate(staticInt8, false);
    expect(batched.samples).toBe(400);
    expect(batched.metrics.n).toBe(400);
    expect(batched.metrics.agreement).toBe(single.metrics.agreement);
    expect(Math.abs(batched.metrics.meanAbsLogitDiff - single.metrics.meanAbsLogitDiff)).toBeLessThan(1e-4);
    // int8 moved the logits: the comparison is not of a model with itself.
    expect(batched.metrics.meanAbsLogitDiff).toBeGreaterThan(0);
  });

  test("a dynamic candidate runs as serving runs it, in its batches (one token length, up to 16) and alone", async () => {
    const dynamic = (await quantizeModel(fp32, { type: "dynamic" })).model;
    const n = 400;
    const validated = (await validator({ n }).validate(dynamic, true)).metrics;
    // Serving's path: the micro-batch goes through TaskModel, which runs planBatches(…, "unpadded").
    // The validator sees the samples in its hash order; so does this run.
    const set = samples.slice(200, 200 + n);
    const key = set.map((x) => createHash("sha1").update(x.text).digest("hex"));
    const ordered = set
      .map((_, i) => i)
      .sort((a, b) => (key[a]! < key[b]! ? -1 : key[a]! > key[b]! ? 1 : a - b))
      .map((i) => set[i]!.text);
    const task: TaskSpec = { kind: "classification", output: "logits", labels: ["0", "1"], source: "test" };
    const served = async (model: string | Uint8Array, batchSize = 16): Promise<LogitMatrix> => {
      const s = await createOrtSession(model, session);
      try {
        const out = await new TaskModel("m", s, tokenizer, task).outputs(ordered, {
          batchSize,
          maxLength: 128,
        });
        const data = new Float32Array(out.rows * 2);
        out.data.forEach((row, i) => {
          data.set(row, i * 2);
        });
        return { data, rows: out.rows, cols: 2 };
      } finally {
        await s.release();
      }
    };
    const ref = argmaxRows(await served(fp32Path));
    const batchedLogits = await served(encodeModel(dynamic));
    const aloneLogits = await served(encodeModel(dynamic), 1);
    const inBatches = argmaxRows(batchedLogits);
    const alone = argmaxRows(aloneLogits);
    const flips = (top: Int32Array) => top.filter((t, i) => t !== ref[i]).length;
    const either = ref.filter((t, i) => t !== inBatches[i] || t !== alone[i]).length;
    expect(validated.n).toBe(n);
    expect(validated.servingForms).toEqual({ batchedFlips: flips(inBatches), aloneFlips: flips(alone) });
    // A sample agrees only when it agrees in both forms.
    expect(validated.disagreements).toBe(either);
    // Batch mates matter to dynamic int8: the two forms give other logits (the unit test has forms that flip).
    expect(compareLogits(aloneLogits, batchedLogits).meanAbsLogitDiff).toBeGreaterThan(1e-4);
  });

  test("the fp32 logits are computed once and come from the cache on the next run", async () => {
    const cache = memoryCache();
    const first = validator({ n: 300, cache });
    const a = await first.validate(staticInt8, false);
    const b = await first.validate(staticInt8, true);
    expect(first.summary().reference).toMatchObject({ computed: 300, fromCache: 0 });
    expect(cache.rows.size).toBe(300);
    const second = validator({ n: 300, cache });
    const c = await second.validate(staticInt8, false);
    expect(second.summary().reference).toMatchObject({ computed: 0, fromCache: 300 });
    expect(c.metrics).toEqual(a.metrics);
    expect(b.metrics.n).toBe(300);
    // A larger set: the 300 known rows come from the cache, only the 100 new ones are computed.
    const third = validator({ n: 400, cache });
    const d = await third.validate(staticInt8, false);
    expect(third.summary().reference).toMatchObject({ computed: 100, fromCache: 300 });
    const fresh = await validator({ n: 400 }).validate(staticInt8, false);
    expect(d.metrics.agreement).toBe(fresh.metrics.agreement);
    expect(Math.abs(d.metrics.meanAbsLogitDiff - fresh.metrics.meanAbsLogitDiff)).toBeLessThan(1e-5);
  });

  test("a candidate that cannot pass stops early, failed, with the reason in the gate's words", async () => {
    // Another random BERT: it flips far more often than a 99 % gate allows.
    const other = buildSyntheticBert({ ...config, seed: 7 });
    const v = validator({ n: 1000, earlyStop: true });
    const r = await v.validate(other, false);
    expect(r.stopped).toBe("failed");
    expect(r.samples).toBeLessThan(500);
    expect(r.metrics.agreement).toBeLessThan(0.98);
    expect(r.metrics.planned).toBe(1000);
    const verdict = checkGate(r.metrics, gate);
    expect(verdict.passed).toBe(false);
    expect(verdict.failures[0]).toContain(`stopped after ${r.samples} of 1,000 samples`);
    expect(v.summary().earlyStops).toEqual({ passed: 0, failed: 1 });
  });

  test("a candidate that already certifies the gate stops at an early look; the bound is corrected for the looks", async () => {
    const looks = planLooks(2000, gate, true);
    expect(looks.length).toBeGreaterThan(1);
    expect(looks.at(-1)).toBe(2000);
    const v = validator({ n: 2000, earlyStop: true });
    const r = await v.validate(fp32, false);
    expect(r.stopped).toBe("passed");
    const first = looks[0] ?? 0;
    expect(r.samples).toBe(first);
    // The earlier looks share a fifth of α: the bound at look 1 of 3 is at 1 − 0.01 / 2.
    expect(looks).toEqual([528, 1056, 2000]);
    expect(r.metrics.boundLevel).toBeCloseTo(0.995, 12);
    expect(r.metrics.agreementLower).toBeCloseTo(0.005 ** (1 / first), 10);
    expect(checkGate(r.metrics, gate).passed).toBe(true);
    // Only the samples run needed fp32 logits.
    expect(v.summary().reference.computed).toBe(first);
  });

  test("looks: doubling from what the first can certify, only when the set is at least twice that", () => {
    const g = { minAgreement: 0.995, confidence: 0.95 };
    expect(planLooks(3872, g, true)).toEqual([1058, 2116, 3872]);
    expect(planLooks(1024, g, true)).toEqual([1024]);
    expect(planLooks(3872, g, false)).toEqual([3872]);
    expect(planLooks(3872, { ...g, decideOn: "point" }, true)).toEqual([3872]);
  });
});
