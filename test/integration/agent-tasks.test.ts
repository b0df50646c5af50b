/**
 * Every task over the agent's real Unix socket, one agent per task fixture:
 * OIP v2 metadata and outputs per task, `/v1/classify` with texts and pairs,
 * `/v1/embed`, `/v1/tokens` with each aggregation, results equal to the model
 * run directly, concurrent requests batched together, request limits, bad input
 * as 4xx errors that name what was expected, and a promotion of another task
 * refused.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { isFinished } from "../../src/jobs/handler.ts";
import { loadTaskModel, type TaskModel } from "../../src/runtime/task-model.ts";
import { TASK_FIXTURES, type TaskFixtureKind, writeTaskFixture } from "../fixtures/tasks/task-heads.ts";
import { codeOf, codeOfAsync } from "../helpers/error-code.ts";
import { expectClose } from "../helpers/expect-close.ts";
import { call, metricValue, tempDir, testConfig } from "./agent-harness.ts";

const root = tempDir("quantd-agent-tasks-");
const agents = {} as Record<TaskFixtureKind, Agent>;
const direct = {} as Record<TaskFixtureKind, TaskModel>;
const dirs = {} as Record<TaskFixtureKind, string>;
const TEXTS = [
  "a wonderful, moving film",
  "a dull and tedious mess",
  "it is a film",
  "Café au lait in Paris",
];

beforeAll(async () => {
  for (const kind of TASK_FIXTURES) {
    dirs[kind] = (await writeTaskFixture(kind, join(root, kind, "model"))).dir;
    agents[kind] = await startAgent(
      testConfig(
        join(root, kind),
        {
          QUANTD_LIMITS_MAX_TEXTS: "16",
          QUANTD_LIMITS_MAX_REQUEST_TOKENS: "200",
          QUANTD_BATCHING_MAX_DELAY_MS: "20",
        },
        { model: join(dirs[kind], "model.onnx") },
      ),
    );
    direct[kind] = await loadTaskModel(dirs[kind], { session: { intraOpThreads: 1 } });
  }
});
afterAll(async () => {
  for (const a of Object.values(agents)) await a.stop();
  for (const m of Object.values(direct)) await m.release();
  rmSync(root, { recursive: true, force: true });
});

const sock = (kind: TaskFixtureKind) => agents[kind].config.socketPath;
const post = (kind: TaskFixtureKind, path: string, body: unknown) =>
  call(sock(kind), path, { body: JSON.stringify(body) });

/** The OIP model name the agent serves (from its metadata route's 404 message when unknown). */
async function oipName(kind: TaskFixtureKind): Promise<string> {
  const r = await call(sock(kind), "/v2/models/none");
  const models = (r.body["error"] as { details: { models: string[] } }).details.models;
  return models[0]!;
}

describe("OIP v2 per task", () => {
  test("metadata names each task's inputs and outputs", async () => {
    const want: Record<TaskFixtureKind, { input: number[]; outputs: string[] }> = {
      "token-classification": { input: [-1], outputs: ["entities", "logits", "offsets", "token_count"] },
      embedding: { input: [-1], outputs: ["embedding"] },
      "pair-classification": { input: [-1, 2], outputs: ["logits", "label", "probabilities"] },
      "multi-label": { input: [-1], outputs: ["logits", "probabilities", "active"] },
      regression: { input: [-1], outputs: ["logits", "value"] },
    };
    for (const kind of TASK_FIXTURES) {
      const name = await oipName(kind);
      const r = await call(sock(kind), `/v2/models/${name}`);
      expect(r.status).toBe(200);
      expect((r.body["inputs"] as { shape: number[] }[])[0]!.shape).toEqual(want[kind].input);
      expect((r.body["outputs"] as { name: string }[]).map((o) => o.name)).toEqual(want[kind].outputs);
      expect((r.body["parameters"] as Record<string, unknown>)["task"]).toBe(kind);
    }
  });

  test("infer: embeddings [n, width], entities as JSON texts, pairs as [n, 2], sigmoid and decisions", async () => {
    const infer = async (kind: TaskFixtureKind, shape: number[], data: string[]) =>
      call(sock(kind), `/v2/models/${await oipName(kind)}/infer`, {
        body: JSON.stringify({ inputs: [{ name: "text", shape, datatype: "BYTES", data }] }),
      });
    const emb = await infer("embedding", [2], TEXTS.slice(0, 2));
    expect(emb.status).toBe(200);
    const [e] = emb.body["outputs"] as { name: string; shape: number[]; data: number[] }[];
    const want = await direct.embedding.infer(TEXTS.slice(0, 2));
    const width = want[0]?.task === "embedding" ? want[0].embedding.length : 0;
    expect(e!.shape).toEqual([2, width]);
    expectClose(
      e!.data,
      want.flatMap((r) => (r.task === "embedding" ? r.embedding : [])),
      { atol: 1e-5, rtol: 0 },
    );

    const tok = await infer("token-classification", [1], [TEXTS[0]!]);
    const entities = JSON.parse((tok.body["outputs"] as { data: string[] }[])[0]!.data[0]!);
    expect(entities.length).toBeGreaterThan(0);
    for (const en of entities) expect(en.word).toBe(TEXTS[0]!.slice(en.start, en.end));
    // Per-token logits: [n, longest, labels], each input's rows those of the model run directly, the rest zeros.
    const perToken = await infer("token-classification", [2], [TEXTS[0]!, TEXTS[2]!]);
    const tensors = Object.fromEntries(
      (perToken.body["outputs"] as { name: string; shape: number[]; data: number[] }[]).map((o) => [
        o.name,
        o,
      ]),
    );
    const wantTokens = await direct["token-classification"].infer([TEXTS[0]!, TEXTS[2]!]);
    const infos = wantTokens.map((w) => (w.task === "token-classification" ? w.infos : []));
    const longest = Math.max(...infos.map((t) => t.length));
    expect(infos[1]!.length).toBeLessThan(longest);
    expect(tensors["token_count"]!.data).toEqual(infos.map((t) => t.length));
    expect(tensors["logits"]!.shape).toEqual([2, longest, 3]);
    expect(tensors["offsets"]!.shape).toEqual([2, longest, 2]);
    for (const [i, t] of infos.entries()) {
      for (let j = 0; j < longest; j++) {
        const at = (i * longest + j) * 3;
        const row = tensors["logits"]!.data.slice(at, at + 3);
        const span = tensors["offsets"]!.data.slice((i * longest + j) * 2, (i * longest + j) * 2 + 2);
        if (j < t.length) {
          expectClose(row, Array.from(t[j]!.logits), { atol: 1e-5, rtol: 0 });
          expect(span).toEqual(t[j]!.special ? [-1, -1] : [t[j]!.start!, t[j]!.end!]);
        } else {
          expect([row, span]).toEqual([
            [0, 0, 0],
            [-1, -1],
          ]);
        }
      }
    }
    expect(infos[0]![0]!.special).toBe(true);

    const pair = await infer("pair-classification", [2, 2], [TEXTS[0]!, TEXTS[1]!, TEXTS[1]!, TEXTS[0]!]);
    expect(pair.status).toBe(200);
    const labels = (pair.body["outputs"] as { name: string; data: string[] }[]).find(
      (o) => o.name === "label",
    )!;
    const wantPairs = await direct["pair-classification"].infer([
      [TEXTS[0]!, TEXTS[1]!],
      [TEXTS[1]!, TEXTS[0]!],
    ]);
    expect(labels.data).toEqual(wantPairs.map((r) => ("label" in r ? r.label : "")));
    const flat = await infer("pair-classification", [2], [TEXTS[0]!, TEXTS[1]!]);
    expect([flat.status, (flat.body["error"] as { code: string }).code]).toEqual([400, "DATA_MISMATCH"]);

    const ml = await infer("multi-label", [1], [TEXTS[0]!]);
    const outs = ml.body["outputs"] as { name: string; shape: number[]; data: (number | boolean)[] }[];
    const probs = outs.find((o) => o.name === "probabilities")!.data as number[];
    const active = outs.find((o) => o.name === "active")!.data as boolean[];
    expect(outs.find((o) => o.name === "active")!.shape).toEqual([1, 4]);
    for (const [k, p] of probs.entries()) expect(active[k]).toBe(p >= 0.5);

    const reg = await infer("regression", [1], [TEXTS[0]!]);
    const value = (reg.body["outputs"] as { name: string; data: number[] }[]).find(
      (o) => o.name === "value",
    )!;
    const [r] = await direct.regression.infer([TEXTS[0]!]);
    expectClose(value.data, [r?.task === "regression" ? r.value : Number.NaN], { atol: 1e-5, rtol: 0 });
  });
});

describe("simple routes", () => {
  test("/v1/embed: pooled, normalized vectors equal to the model run directly", async () => {
    const r = await post("embedding", "/v1/embed", { texts: TEXTS });
    expect(r.status).toBe(200);
    const got = r.body["embeddings"] as number[][];
    const want = await direct.embedding.infer(TEXTS);
    const width = want[0]?.task === "embedding" ? want[0].embedding.length : 0;
    expect(r.body).toMatchObject({ dimensions: width, normalized: true, pooling: "mean" });
    for (const [i, w] of want.entries()) {
      if (w.task !== "embedding") throw new Error("not an embedding");
      expectClose(got[i]!, w.embedding, { atol: 1e-5, rtol: 0 });
    }
    // base64 of little-endian float32: the same vectors, exactly as float32.
    const b64 = await post("embedding", "/v1/embed", { texts: TEXTS, encoding: "base64" });
    expect(b64.body["encoding"]).toBe("base64");
    for (const [i, e] of (b64.body["embeddings"] as string[]).entries()) {
      const bytes = Buffer.from(e, "base64");
      const v = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      expect(Array.from(v)).toEqual(Array.from(Float32Array.from(got[i]!)));
    }
    const bad = await post("embedding", "/v1/embed", { texts: TEXTS, encoding: "hex" });
    expect(bad.status).toBe(400);
  });

  test("/v1/tokens: entities by each aggregation, offsets into the text", async () => {
    for (const aggregation of ["none", "simple", "first", "average", "max"]) {
      const r = await post("token-classification", "/v1/tokens", { texts: TEXTS, aggregation });
      expect(r.status).toBe(200);
      const want = await direct["token-classification"].infer(TEXTS, {
        aggregation: aggregation as "none",
      });
      const results = r.body["results"] as { entities: { word: string; start: number; end: number }[] }[];
      for (const [i, w] of want.entries()) {
        if (w.task !== "token-classification") throw new Error("not tokens");
        expect(results[i]!.entities.map((e) => [e.word, e.start, e.end])).toEqual(
          w.entities.map((e) => [e.word, e.start, e.end]),
        );
        for (const e of results[i]!.entities) expect(e.word).toBe(TEXTS[i]!.slice(e.start, e.end));
      }
    }
    const bad = await post("token-classification", "/v1/tokens", { texts: TEXTS, aggregation: "mean" });
    expect(bad.status).toBe(400);
    expect((bad.body["error"] as { message: string }).message).toMatch(
      /aggregation must be one of none, simple/,
    );
  });

  test("/v1/classify: pairs for a pair classifier, decisions for multi-label, values for regression", async () => {
    const pairs = [
      [TEXTS[0], TEXTS[1]],
      [TEXTS[1], TEXTS[0]],
    ];
    const r = await post("pair-classification", "/v1/classify", { pairs });
    expect(r.status).toBe(200);
    const want = await direct["pair-classification"].infer(pairs as [string, string][]);
    const got = r.body["results"] as { label: string; logits: number[] }[];
    for (const [i, w] of want.entries()) {
      if (w.task !== "pair-classification") throw new Error("not a pair result");
      expect(got[i]!.label).toBe(w.label);
      expectClose(got[i]!.logits, w.logits, { atol: 1e-5, rtol: 0 });
    }
    const ml = await post("multi-label", "/v1/classify", { texts: TEXTS.slice(0, 1) });
    const m0 = (ml.body["results"] as { labels: { label: string; on: boolean }[]; active: string[] }[])[0]!;
    expect(m0.labels.map((l) => l.label)).toEqual(["positive", "very_positive", "negative", "topic"]);
    expect(m0.active).toEqual(m0.labels.filter((l) => l.on).map((l) => l.label));
    const reg = await post("regression", "/v1/classify", { texts: TEXTS.slice(0, 2) });
    expect((reg.body["results"] as { value: number }[]).map((x) => typeof x.value)).toEqual([
      "number",
      "number",
    ]);
  });

  test("micro-batching serves concurrent requests of every task together, each its own results", async () => {
    for (const kind of ["embedding", "token-classification", "pair-classification"] as const) {
      const before = metricValue(
        (await call(sock(kind), "/metrics")).body["text"] as string,
        "quantd_batch_size_count",
      );
      const path =
        kind === "embedding" ? "/v1/embed" : kind === "token-classification" ? "/v1/tokens" : "/v1/classify";
      const body = (t: string) =>
        kind === "pair-classification" ? { pairs: [[t, TEXTS[0]]] } : { texts: [t] };
      const replies = await Promise.all(TEXTS.map((t) => post(kind, path, body(t))));
      expect(replies.map((x) => x.status)).toEqual(TEXTS.map(() => 200));
      const after = metricValue(
        (await call(sock(kind), "/metrics")).body["text"] as string,
        "quantd_batch_size_count",
      );
      // Four requests in fewer batches: they waited for each other (maxDelayMs 20).
      expect((after ?? 0) - (before ?? 0)).toBeLessThan(TEXTS.length);
    }
  });
});

describe("bad input and limits", () => {
  test("a text where a pair is expected and the reverse; the route of another task", async () => {
    const texts = await post("pair-classification", "/v1/classify", { texts: ["one text"] });
    expect([texts.status, (texts.body["error"] as { code: string }).code]).toEqual([400, "DATA_MISMATCH"]);
    expect((texts.body["error"] as { message: string }).message).toMatch(
      /is one text, but .* pair-classification/,
    );
    const pairs = await post("multi-label", "/v1/classify", { pairs: [["a", "b"]] });
    expect(pairs.status).toBe(200);
    const embedPairs = await post("embedding", "/v1/classify", { pairs: [["a", "b"]] });
    expect((embedPairs.body["error"] as { message: string }).message).toMatch(
      /model does embedding: use POST \/v1\/embed/,
    );
    const tokensOnEmbed = await post("embedding", "/v1/tokens", { texts: ["a"] });
    expect([tokensOnEmbed.status, (tokensOnEmbed.body["error"] as { code: string }).code]).toEqual([
      400,
      "DATA_MISMATCH",
    ]);
    const badPair = await post("pair-classification", "/v1/classify", { pairs: [["a"]] });
    expect((badPair.body["error"] as { message: string }).message).toMatch(
      /pairs\[0\] must be a list of two texts/,
    );
    const both = await post("pair-classification", "/v1/classify", { pairs: [["a", "b"]], texts: ["a"] });
    expect(both.status).toBe(400);
  });

  test("limits: a pair counts two texts; tokens are counted for every task", async () => {
    const many = await post("pair-classification", "/v1/classify", {
      pairs: Array.from({ length: 9 }, () => ["a", "b"]),
    });
    expect([many.status, (many.body["error"] as { code: string }).code]).toEqual([413, "REQUEST_TOO_LARGE"]);
    const long = "a wonderful film ".repeat(40);
    const tokens = await post("embedding", "/v1/embed", { texts: [long, long] });
    expect([tokens.status, (tokens.body["error"] as { code: string }).code]).toEqual([
      413,
      "REQUEST_TOO_LARGE",
    ]);
  });

  test("a model of another task is refused on promotion, and the agent keeps serving", async () => {
    const r = await post("embedding", "/v1/models/promote", {
      path: join(dirs["token-classification"], "model.onnx"),
    });
    expect([r.status, (r.body["error"] as { code: string }).code]).toEqual([422, "MODEL_TASK_MISMATCH"]);
    expect((r.body["error"] as { message: string }).message).toMatch(
      /does token-classification \(3 labels\) but the serving model does embedding/,
    );
    expect((await post("embedding", "/v1/embed", { texts: ["a"] })).status).toBe(200);
  });
});

describe("the fleet's bench command", () => {
  test("runs a pair classifier on pairs and says the task it measured", async () => {
    const a = agents["pair-classification"];
    // The job a fleet `bench` command queues, run by the agent's own job engine.
    const job = a.store.jobs.create({ id: "bench-pairs", type: "bench", params: { iterations: 3 } });
    a.jobs?.wake();
    const deadline = Date.now() + 30_000;
    while (!isFinished(a.store.jobs.require(job.id)) && Date.now() < deadline) await Bun.sleep(20);
    const done = a.store.jobs.require(job.id);
    expect(done.state).toBe("SUCCEEDED");
    expect(done.result).toMatchObject({ task: "pair-classification", batch: 2, runs: 3, kind: "fp32" });
    expect((done.result as { p50Ms: number }).p50Ms).toBeGreaterThan(0);
  });
});

describe("the task in the agent's config", () => {
  test("task.normalize and task.kind override detection; a contradiction or a bad value stops the start", async () => {
    const dir = join(root, "config-override");
    const model = { model: join(dirs.embedding, "model.onnx") };
    const raw = await startAgent(testConfig(join(dir, "a"), { QUANTD_TASK_NORMALIZE: "off" }, model));
    try {
      const r = await call(raw.config.socketPath, "/v1/embed", {
        body: JSON.stringify({ texts: ["a film"] }),
      });
      expect(r.body["normalized"]).toBe(false);
      expect(Math.hypot(...(r.body["embeddings"] as number[][])[0]!)).toBeGreaterThan(1.5);
    } finally {
      await raw.stop();
    }
    expect(
      await codeOfAsync(
        startAgent(testConfig(join(dir, "b"), { QUANTD_TASK_KIND: "classification" }, model)),
      ),
    ).toBe("MODEL_TASK_MISMATCH");
    expect(codeOf(() => testConfig(join(dir, "c"), { QUANTD_TASK_KIND: "ner" }, model))).toBe(
      "CONFIG_INVALID",
    );
  });
});
