/**
 * A stored model version serves with the tokenizer and config.json it was
 * registered with, kept in the state directory: an agent restarted without
 * --model serves the store's RoBERTa version with RoBERTa's byte-level BPE
 * (not the shipped model's WordPiece), even with the directory it came from
 * moved away; a configured tokenizer of the same vocabulary size (DeBERTa-v3's)
 * is refused rather than served silently; `quantd job recalibrate` with no
 * agent recalibrates that version, not the shipped model; a recalibrated version
 * registered before copies were kept serves with its fp32 base's; `quantd collect`
 * counts tokens with its tokenizer; a store lost to corruption registers its
 * versions again with their tokenizers (and recalibrates from the fp32 one); a lost copy stops
 * the start with a code naming the version and the file, the store unchanged;
 * a recalibration in the restarted agent quantizes RoBERTa with its tokenizer.
 * Real agents, real socket, real ONNX fixtures, the real CLI.
 */
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, renameSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { defaultModelName } from "../../src/agent/config.ts";
import { RECALIBRATE_JOB, type RecalibrationResult } from "../../src/agent/recalibrate.ts";
import { TOKENIZER_METRIC, tokenizersDir } from "../../src/agent/version-tokenizer.ts";
import { sha256FileSync } from "../../src/core/hash.ts";
import { isQuantdError } from "../../src/errors.ts";
import { loadTokenizer } from "../../src/runtime/tokenizer.ts";
import type { ModelVersion } from "../../src/store/models.ts";
import { databasePath } from "../../src/store/store.ts";
import { writeEncoderFixture } from "../fixtures/encoders/write-fixture.ts";
import { shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";
import { call, classifyOverSocket, TEXTS, tempDir, testConfig } from "./agent-harness.ts";
import { FAST_PARAMS, forgetTokenizerCopies, openTestStore, seedSamples } from "./jobs-harness.ts";

// Each agent loads a 16 MB fixture and the job quantizes it: a busy 2-core machine needs the margin.
setDefaultTimeout(240_000);

let dir: string;
let roberta: string;
let deberta: string;
/** Where the RoBERTa directory is moved after its registration. */
let moved: string;
let agent: Agent | undefined;

const stateDir = () => join(dir, "state");

beforeAll(async () => {
  dir = tempDir("quantd-agent-tok-");
  roberta = (await writeEncoderFixture("roberta", join(dir, "roberta"))).dir;
  deberta = (await writeEncoderFixture("deberta-v3", join(dir, "deberta"))).dir;
  moved = join(dir, "moved-roberta");
});
afterEach(async () => {
  await agent?.stop();
  agent = undefined;
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The store's versions, read with the agent stopped. */
async function versions(): Promise<ModelVersion[]> {
  const store = await openTestStore(stateDir());
  try {
    return store.models.list();
  } finally {
    store.close();
  }
}

/** `quantd classify --model DIR --json`'s probabilities for {@link TEXTS}. */
async function cliProbabilities(model: string): Promise<number[][]> {
  const run = await runQuantd(["classify", "--model", model, "--threads", "1", "--json", "--", ...TEXTS]);
  expect(run.code).toBe(0);
  const out = JSON.parse(run.stdout) as { results: { probabilities: number[] }[] };
  return out.results.map((r) => r.probabilities);
}

/** `quantd job recalibrate --wait --json` (dynamic int8, small and fast) on the state directory, no agent running. */
async function recalibrateWithoutAgent() {
  const run = await runQuantd(
    [
      "job",
      "recalibrate",
      ...["--state-dir", stateDir(), "--wait", "--json", "--mode", "dynamic"],
      ...["--samples", "64", "--validation-samples", "64", "--gate", "0.9", "--gate-on", "point"],
    ],
    { env: { ...process.env, QUANTD_THREADS: "1", QUANTD_CONFIG: "" } },
  );
  const { job } = JSON.parse(run.stdout) as { job: { state: string; result: RecalibrationResult } };
  return { run, job };
}

/** Probabilities of a row of logits, as `classify` computes them. */
function softmax(logits: readonly number[]): number[] {
  const top = Math.max(...logits);
  const e = logits.map((l) => Math.exp(l - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** The error `start` failed with. */
async function startError(start: Promise<Agent>): Promise<{ code: string; message: string }> {
  try {
    agent = await start;
  } catch (err) {
    if (isQuantdError(err)) return { code: err.code, message: err.message };
    throw err;
  }
  throw new Error("the agent started");
}

describe("a stored version serves with the tokenizer it was registered with", () => {
  test("restart without --model, its source moved away: RoBERTa's own tokenizer, the answers of classify --model DIR", async () => {
    agent = await startAgent(testConfig(dir, {}, { model: roberta }));
    expect(agent.registry.active()?.version).toBe(1);
    await seedSamples(agent.store, 300);
    await agent.stop();
    agent = undefined;
    renameSync(roberta, moved);

    agent = await startAgent(testConfig(dir));
    expect(agent.registry.active()?.version).toBe(1);
    expect(agent.registry.tokenizerDir().startsWith(tokenizersDir(join(stateDir(), "models")))).toBe(true);
    const reply = await classifyOverSocket(agent.config.socketPath, TEXTS);
    expect(reply.status).toBe(200);
    expect(reply.body["model"]).toEqual({ version: 1, kind: "fp32" });
    // The routes name the model served, from the directory it was registered from, not the shipped model's.
    expect((await call(agent.config.socketPath, "/v2/models/roberta")).status).toBe(200);
    expect(
      (await call(agent.config.socketPath, `/v2/models/${defaultModelName(shippedModelPath)}`)).status,
    ).toBe(404);
    const served = (reply.body["results"] as { logits: number[] }[]).map((r) => softmax(r.logits));
    const expected = await cliProbabilities(moved);
    expect(served.length).toBe(expected.length);
    for (const [i, row] of served.entries()) {
      for (const [j, p] of row.entries()) expect(p).toBeCloseTo(expected[i]![j]!, 6);
    }
    await agent.stop();
    agent = undefined;
    // Nothing else was registered: the shipped model never became a version.
    expect((await versions()).map((v) => v.id)).toEqual([1]);
  });

  test("a configured tokenizer of the same vocabulary size is refused (MODEL_INPUTS_MISMATCH), nothing registered", async () => {
    const size = (d: string) =>
      Object.keys(
        (JSON.parse(readFileSync(join(d, "tokenizer.json"), "utf8")) as { model: { vocab: object } }).model
          .vocab,
      ).length;
    // The case a probe cannot catch: DeBERTa-v3's ids fit RoBERTa's embedding table.
    expect(size(deberta)).toBe(size(moved));
    const error = await startError(startAgent(testConfig(dir, { QUANTD_TOKENIZER_DIR: deberta })));
    expect(error.code).toBe("MODEL_INPUTS_MISMATCH");
    expect(error.message).toContain("model version 1");
    expect(error.message).toContain(join(deberta, "tokenizer.json"));
    expect((await versions()).map((v) => [v.id, v.state])).toEqual([[1, "active"]]);
  });

  test("quantd job recalibrate --wait with no agent recalibrates the stored RoBERTa version with its tokenizer", async () => {
    const { run, job } = await recalibrateWithoutAgent();
    const all = await versions();
    const v1 = all.find((v) => v.id === 1)!;
    const shipped = sha256FileSync(shippedModelPath);
    expect(all.some((v) => v.sha256 === shipped)).toBe(false);
    // The quantizer read RoBERTa's fp32 version, with RoBERTa's tokenizer counting the validation rows' tokens.
    expect(job.result.report?.model.fp32.sha256).toBe(v1.sha256);
    expect(job.state).toBe("SUCCEEDED");
    expect(run.code).toBe(0);
    const int8 = all.find((v) => v.state === "active")!;
    expect(int8.id).toBe(2);
    expect(int8.kind).toBe("int8-dynamic");
    expect(int8.metrics[TOKENIZER_METRIC]).toBe(v1.metrics[TOKENIZER_METRIC]);
    expect(int8.metrics["base"]).toBe(v1.path);
  });

  test("versions registered before copies were kept: a recalibrated one serves with its fp32 base's tokenizer, then keeps a copy", async () => {
    const before = await versions();
    const kept = before.find((v) => v.state === "active")!.metrics[TOKENIZER_METRIC];
    // As an earlier quantd left them: no record of a tokenizer copy; the int8's source was a job's file.
    await forgetTokenizerCopies(stateDir());
    renameSync(moved, roberta); // the fp32 base's source directory, where the earlier quantd found it
    try {
      agent = await startAgent(testConfig(dir));
      expect(agent.registry.active()?.version).toBe(2);
      expect(agent.registry.tokenizerDir()).toBe(roberta);
      expect(agent.store.models.get(2)!.metrics[TOKENIZER_METRIC]).toBe(kept);
      const reply = await classifyOverSocket(agent.config.socketPath, TEXTS);
      expect(reply.status).toBe(200);
      expect(reply.body["model"]).toEqual({ version: 2, kind: "int8-dynamic" });
    } finally {
      await agent?.stop();
      agent = undefined;
      renameSync(roberta, moved);
    }
  });

  test("quantd collect with no agent counts tokens with the stored version's tokenizer, not the shipped one", async () => {
    const text = "an unforeseeably idiosyncratic, overwrought melodrama";
    const file = join(dir, "collect.tsv");
    writeFileSync(file, `label\tsentence\n1\t${text}\n`);
    const run = await runQuantd(["collect", file, "--state-dir", stateDir(), "--json"], {
      env: { ...process.env, QUANTD_CONFIG: "" },
    });
    expect(run.code).toBe(0);
    const count = async (d: string) => {
      const t = await loadTokenizer(d);
      return t.tokenIds(text).length + t.specialsSingle;
    };
    const [own, shipped] = [await count(moved), await count(shippedModelDir)];
    expect(own).not.toBe(shipped);
    const store = await openTestStore(stateDir());
    try {
      const sample = store.samples.pick({ n: 10_000, seed: 1 }).find((s) => s.text === text);
      expect(sample?.tokenCount).toBe(own);
    } finally {
      store.close();
    }
  });

  test("a store lost to corruption: its versions registered again from their files keep their tokenizers", async () => {
    const before = await versions();
    const active = before.find((v) => v.state === "active")!;
    truncateSync(databasePath(stateDir()), 0);
    const logs: string[] = [];
    agent = await startAgent(testConfig(dir), { runJobs: false, log: (l) => logs.push(l) });
    expect(logs.join("\n")).toContain("store: registered 2 model file(s) again");
    const again = agent.store.models.active()!;
    expect(again.sha256).toBe(active.sha256);
    expect(again.metrics[TOKENIZER_METRIC]).toBe(active.metrics[TOKENIZER_METRIC]);
    expect(
      agent.store.models
        .list()
        .every((v) => v.metrics[TOKENIZER_METRIC] === active.metrics[TOKENIZER_METRIC]),
    ).toBe(true);
    const reply = await classifyOverSocket(agent.config.socketPath, TEXTS);
    expect(reply.status).toBe(200);
    expect(reply.body["model"]).toEqual({ version: again.id, kind: "int8-dynamic" });
    // The int8's base was not in the model files: the fp32 version with its tokenizer is, not the shipped model.
    const fp32 = agent.store.models.list().find((v) => v.kind === "fp32")!;
    await seedSamples(agent.store, 300);
    await agent.stop();
    agent = undefined;
    const { job } = await recalibrateWithoutAgent();
    expect(job.result.report?.model.fp32.sha256).toBe(fp32.sha256);
    expect((await versions()).some((v) => v.sha256 === sha256FileSync(shippedModelPath))).toBe(false);
  });

  test("its tokenizer's copy gone: the start fails naming the version and the file, nothing retired or registered", async () => {
    const before = await versions();
    const active = before.find((v) => v.state === "active")!;
    const copy = join(tokenizersDir(join(stateDir(), "models")), active.metrics[TOKENIZER_METRIC] as string);
    rmSync(copy, { recursive: true });
    const error = await startError(startAgent(testConfig(dir)));
    expect(error.code).toBe("TOKENIZER_NOT_FOUND");
    expect(error.message).toContain(`model version ${active.id}`);
    expect(error.message).toContain(join(copy, "tokenizer.json"));
    const after = await versions();
    expect(after.map((v) => [v.id, v.state])).toEqual(before.map((v) => [v.id, v.state]));
  });
});

test("a recalibration in an agent restarted without --model quantizes the stored RoBERTa with its tokenizer", async () => {
  const own = join(dir, "in-agent");
  const source = (await writeEncoderFixture("roberta", join(own, "roberta"))).dir;
  agent = await startAgent(testConfig(own, {}, { model: source }));
  await seedSamples(agent.store, 300);
  await agent.stop();
  agent = await startAgent(testConfig(own));
  const v1 = agent.store.models.get(1)!;
  agent.store.jobs.create({
    id: "in-agent",
    type: RECALIBRATE_JOB,
    params: { ...FAST_PARAMS, mode: "dynamic", gate: 0.9, maxLatencyRatio: 99 },
  });
  const ended = () =>
    ["SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"].includes(agent!.store.jobs.require("in-agent").state);
  await until(ended, 180_000, "the recalibration's end");
  const job = agent.store.jobs.require("in-agent");
  expect((job.result as RecalibrationResult).report?.model.fp32.sha256).toBe(v1.sha256);
  expect(job.state).toBe("SUCCEEDED");
  const int8 = agent.store.models.active()!;
  expect(int8.kind).toBe("int8-dynamic");
  expect(int8.metrics[TOKENIZER_METRIC]).toBe(v1.metrics[TOKENIZER_METRIC]);
  const reply = await classifyOverSocket(agent.config.socketPath, TEXTS);
  expect(reply.status).toBe(200);
  expect(reply.body["model"]).toEqual({ version: int8.id, kind: "int8-dynamic" });
});
