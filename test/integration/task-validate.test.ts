/**
 * Validation of other tasks at scale, on the code-built task heads: fp32's
 * task outputs come from the cache on the next run (under a key of the model
 * and what shapes its outputs; a damaged row is computed again); a candidate
 * that breaks the task stops early as failed, with the reason in the gate's
 * words; one that already certifies the gate stops at the first look as
 * passed, its bound at the looks' stricter level; early stopping judges as
 * the whole set does; the agent's SQLite store keeps the outputs for the next run.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel } from "../../src/onnx/codec.ts";
import { makeTensor, tensorToFloat32 } from "../../src/onnx/tensor.ts";
import { DataType, type ModelProto } from "../../src/onnx/types.ts";
import { checkGate, type GateSpec } from "../../src/quant/gate.ts";
import type { QuantSample } from "../../src/quant/pipeline.ts";
import { quantizeModel } from "../../src/quant/quantize.ts";
import { planLooks } from "../../src/quant/split.ts";
import { createTaskValidator, referenceKey } from "../../src/quant/task-validate.ts";
import type { ReferenceLogitsCache } from "../../src/quant/validate.ts";
import type { TaskSpec } from "../../src/runtime/task.ts";
import { openStore } from "../../src/store/store.ts";
import { loadTaskModel } from "../../src/runtime/task-model.ts";
import type { Tokenizer } from "../../src/runtime/tokenizer.ts";
import { type TaskFixtureKind, writeTaskFixture } from "../fixtures/tasks/task-heads.ts";
import { repoRoot } from "../helpers/paths.ts";

setDefaultTimeout(120_000);

const root = mkdtempSync(join(tmpdir(), "quantd-task-validate-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Fixture {
  path: string;
  sha256: string;
  model: ModelProto;
  task: TaskSpec;
  tokenizer: Tokenizer;
}
const fixtures = {} as Record<"token-classification" | "multi-label" | "embedding", Fixture>;
let samples: QuantSample[];
const session = { intraOpThreads: 1 };
// A gate small sets can certify: 95 % at 95 % has looks at 104, 208 and 400 of 400 samples.
const gate: GateSpec = { minAgreement: 0.95, confidence: 0.95 };

beforeAll(async () => {
  for (const kind of ["token-classification", "multi-label", "embedding"] as const) {
    const written = await writeTaskFixture(kind as TaskFixtureKind, join(root, kind));
    const loaded = await loadTaskModel(written.dir, { session });
    await loaded.release();
    fixtures[kind] = {
      path: written.model,
      sha256: createHash("sha256").update(readFileSync(written.model)).digest("hex"),
      model: await loadModel(written.model),
      task: loaded.task,
      tokenizer: loaded.tokenizer,
    };
  }
  samples = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8")
    .trim()
    .split("\n")
    .slice(1, 801)
    .map((l, i) => ({ text: l.split("\t")[1]!, origin: `train:${i + 2}`, id: i + 1 }));
});

function validator(
  kind: keyof typeof fixtures,
  opts: { n: number; cache?: ReferenceLogitsCache; earlyStop?: boolean; gate?: GateSpec },
) {
  const f = fixtures[kind];
  return createTaskValidator({
    task: f.task,
    tokenizer: f.tokenizer,
    maxLength: 128,
    samples: samples.slice(0, opts.n),
    gate: opts.gate ?? gate,
    fp32: { path: f.path, sha256: f.sha256 },
    session,
    earlyStop: opts.earlyStop ?? false,
    ...(opts.cache !== undefined ? { cache: opts.cache } : {}),
  });
}

/** A cache in memory, as the agent's store keys it. */
function memoryCache(): ReferenceLogitsCache & { rows: Map<string, Float32Array> } {
  const rows = new Map<string, Float32Array>();
  return {
    rows,
    get(key, ids) {
      const out = new Map<number, Float32Array>();
      for (const id of ids) {
        const r = rows.get(`${key}/${id}`);
        if (r !== undefined) out.set(id, r);
      }
      return out;
    },
    put(key, put) {
      for (const r of put) rows.set(`${key}/${r.id}`, r.logits);
    },
  };
}

/** The fixture's model with the classifier bias of its first label moved by `shift`: the head decides differently. */
function shiftedBias(m: ModelProto, shift: number): ModelProto {
  const copy = structuredClone(m);
  const at = copy.graph.initializer.findIndex((t) => t.name === "classifier.bias");
  const old = copy.graph.initializer[at]!;
  const data = tensorToFloat32(old).map((x, k) => (k === 0 ? x + shift : x));
  copy.graph.initializer[at] = makeTensor(old.name, DataType.FLOAT, old.dims, data);
  return copy;
}

describe("fp32's task outputs are cached", () => {
  test("computed once, from the cache on the next run, under a key of the model and its outputs' shape", async () => {
    const cache = memoryCache();
    const f = fixtures["token-classification"];
    const first = validator("token-classification", { n: 150, cache });
    const a = await first.validate(f.model, false);
    expect(first.summary().reference).toMatchObject({ computed: 150, fromCache: 0 });
    const key = referenceKey(f.sha256, f.task, 128);
    expect(key).not.toBe(f.sha256);
    expect(key).not.toBe(referenceKey(f.sha256, f.task, 64));
    expect([...cache.rows.keys()].every((k) => k.startsWith(`${key}/`))).toBe(true);
    expect(cache.rows.size).toBe(150);
    // fp32 against itself: every token agrees, and the trials are the tokens.
    expect(a.metrics.agreement).toBe(1);
    expect(a.metrics.n).toBeGreaterThan(150 * 3);
    expect(a.metrics.planned).toBe(a.metrics.n);

    // A damaged row (another length) is not trusted: that sample is computed again.
    cache.rows.set(`${key}/3`, new Float32Array(5));
    const second = validator("token-classification", { n: 200, cache });
    const broken = shiftedBias(f.model, 1);
    const b = await second.validate(broken, false);
    expect(second.summary().reference).toMatchObject({ computed: 51, fromCache: 149 });
    const fresh = await validator("token-classification", { n: 200 }).validate(broken, false);
    expect(b.metrics.gateAgreements).toBe(fresh.metrics.gateAgreements);
    expect(b.metrics.n).toBe(fresh.metrics.n);
    expect(b.metrics.agreement).toBeLessThan(1);
  });
});

test("the agent's store keeps a task's fp32 outputs: the next validator reads them from SQLite", async () => {
  const store = await openStore(join(root, "agent.db"));
  try {
    store.samples.add(
      samples.slice(0, 120).map((s) => ({
        text: s.text,
        tokenCount: fixtures.embedding.tokenizer.encode(s.text).inputIds.length,
      })),
      { source: "test" },
    );
    const pooled = store.samples
      .pick({ n: 120, seed: 1 })
      .map((s) => ({ text: s.text, origin: `store#${s.id}`, id: s.id }));
    const f = fixtures.embedding;
    const make = () =>
      createTaskValidator({
        task: f.task,
        tokenizer: f.tokenizer,
        maxLength: 128,
        samples: pooled,
        gate,
        fp32: { path: f.path, sha256: f.sha256 },
        session,
        earlyStop: false,
        cache: store.logits,
      });
    const first = make();
    const a = await first.validate(f.model, false);
    expect(first.summary().reference).toMatchObject({ computed: 120, fromCache: 0 });
    expect(store.logits.count(referenceKey(f.sha256, f.task, 128))).toBe(120);
    const second = make();
    const b = await second.validate(f.model, false);
    expect(second.summary().reference).toMatchObject({ computed: 0, fromCache: 120 });
    expect(b.metrics).toEqual(a.metrics);
  } finally {
    store.close();
  }
});

test("a dynamic int8 candidate is validated on every sample, in its serving batch and alone, its labels held", async () => {
  const f = fixtures["token-classification"];
  const dynamic = (await quantizeModel(f.model, { type: "dynamic" })).model;
  const v = validator("token-classification", { n: 200 });
  const r = await v.validate(dynamic, true);
  expect(r.samples).toBe(200);
  expect(r.metrics.n).toBe(r.metrics.planned!);
  // Each sample ran alone too, and a token counts as agreeing only when it agrees in both forms.
  expect(v.summary().aloneSamples).toBe(200);
  const forms = r.metrics.servingForms!;
  expect(Number.isInteger(forms.batchedFlips) && Number.isInteger(forms.aloneFlips)).toBe(true);
  expect(
    (await validator("token-classification", { n: 200 }).validate(dynamic, false)).metrics.servingForms,
  ).toBe(undefined);
  // int8 moved the logits, yet the labels of almost every token hold.
  expect(r.metrics.meanAbsLogitDiff).toBeGreaterThan(0);
  expect(r.metrics.agreement).toBeGreaterThan(0.95);
});

describe("early stopping", () => {
  test("a candidate that breaks the task stops early as failed, and the gate says after how much", async () => {
    const v = validator("multi-label", { n: 400, earlyStop: true });
    const r = await v.validate(shiftedBias(fixtures["multi-label"].model, 12), false);
    expect(r.stopped).toBe("failed");
    expect(r.samples).toBeLessThan(200);
    // The trials planned are the label decisions of the whole set.
    expect(r.metrics.planned).toBe(400 * 4);
    expect(r.metrics.n).toBe(r.samples * 4);
    const verdict = checkGate(r.metrics, gate);
    expect(verdict.passed).toBe(false);
    expect(verdict.failures[0]).toContain(`stopped after ${r.metrics.n} of 1,600 label decisions`);
    expect(v.summary().earlyStops).toEqual({ passed: 0, failed: 1 });
    // The whole set gives the same verdict.
    const whole = await validator("multi-label", { n: 400 }).validate(
      shiftedBias(fixtures["multi-label"].model, 12),
      false,
    );
    expect(checkGate(whole.metrics, gate).passed).toBe(false);
  });

  test("a candidate that certifies the gate and the task's checks stops at the first look, the bound corrected", async () => {
    const looks = planLooks(400, gate, true);
    expect(looks).toEqual([104, 208, 400]);
    for (const kind of ["embedding", "token-classification"] as const) {
      const v = validator(kind, { n: 400, earlyStop: true });
      const r = await v.validate(fixtures[kind].model, false);
      expect(r.stopped).toBe("passed");
      expect(r.samples).toBe(104);
      // The looks before the last share a fifth of α: the bound at look 1 of 3 is at 1 − 0.01 / 2.
      expect(r.metrics.boundLevel).toBeCloseTo(0.995, 12);
      expect(r.metrics.agreementLower).toBeCloseTo(0.005 ** (1 / r.metrics.n), 10);
      expect(checkGate(r.metrics, gate).passed).toBe(true);
      // Only the samples run needed fp32's outputs.
      expect(v.summary().reference.computed).toBe(104);
      if (kind === "embedding") expect(r.metrics.task?.checks.every((c) => c.passed)).toBe(true);
    }
  });

  test("a task check that fails keeps a candidate from passing early: the whole set is run", async () => {
    const f = fixtures.embedding;
    const v = createTaskValidator({
      task: f.task,
      tokenizer: f.tokenizer,
      maxLength: 128,
      samples: samples.slice(0, 400),
      gate,
      fp32: { path: f.path, sha256: f.sha256 },
      session,
      thresholds: { meanCosine: 1.5 },
    });
    const r = await v.validate(f.model, false);
    expect(r.stopped).toBeUndefined();
    expect(r.samples).toBe(400);
    expect(checkGate(r.metrics, gate).failures.join("; ")).toMatch(/mean cosine 1\.0000 is below 1\.5/);
  });
});
