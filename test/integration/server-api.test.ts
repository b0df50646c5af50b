/**
 * The inference API over a real Unix socket with the shipped BERT-Mini:
 * health, results equal to the direct classifier's, OIP tensors, every bad
 * input as a 4xx JSON error, concurrent clients batched together, and the
 * bounded queue answering 503 with Retry-After.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync, statSync } from "node:fs";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { type Classifier, loadClassifier } from "../../src/runtime/classifier.ts";
import { expectClose } from "../helpers/expect-close.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { call, classifyOverSocket, metricValue, TEXTS, tempDir, testConfig } from "./agent-harness.ts";

let dir: string;
let agent: Agent;
let direct: Classifier;
let sock: string;

beforeAll(async () => {
  dir = tempDir();
  agent = await startAgent(
    testConfig(dir, {
      QUANTD_LIMITS_MAX_BODY_BYTES: "4096",
      QUANTD_LIMITS_MAX_TEXTS: "64",
      QUANTD_LIMITS_MAX_REQUEST_TOKENS: "400",
    }),
  );
  sock = agent.config.socketPath;
  direct = await loadClassifier(shippedModelPath);
});

afterAll(async () => {
  await agent?.stop();
  await direct?.release();
  rmSync(dir, { recursive: true, force: true });
});

describe("health and metadata", () => {
  test("live and ready once the model is loaded; socket mode 0660", async () => {
    expect((await call(sock, "/v2/health/live")).status).toBe(200);
    const ready = await call(sock, "/v2/health/ready");
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({ ready: true });
    expect(statSync(sock).mode & 0o777).toBe(0o660);
  });

  test("model metadata names the BYTES input and the three outputs", async () => {
    const r = await call(sock, "/v2/models/sst2-bert-mini");
    expect(r.status).toBe(200);
    expect(r.body["name"]).toBe("sst2-bert-mini");
    expect(r.body["inputs"]).toEqual([{ name: "text", datatype: "BYTES", shape: [-1] }]);
    const outputs = r.body["outputs"] as { name: string; shape: number[] }[];
    expect(outputs.map((o) => o.name)).toEqual(["logits", "label", "probabilities"]);
    expect(outputs[0]!.shape).toEqual([-1, 2]);
    expect((r.body["parameters"] as Record<string, unknown>)["kind"]).toBe("fp32");
  });
});

describe("inference", () => {
  test("/v1/classify equals the direct classifier within 1e-5", async () => {
    const r = await classifyOverSocket(sock, TEXTS);
    expect(r.status).toBe(200);
    const results = r.body["results"] as { label: string; score: number; logits: number[] }[];
    const want = await direct.classify(TEXTS);
    expect(results).toHaveLength(TEXTS.length);
    for (const [i, w] of want.entries()) {
      expect(results[i]!.label).toBe(w.label);
      expectClose(results[i]!.logits, w.logits, { atol: 1e-5, rtol: 0 });
      expectClose([results[i]!.score], [w.score], { atol: 1e-5, rtol: 0 });
    }
    expect(r.body["model"]).toEqual({ version: 1, kind: "fp32" });
    const timing = /^inference;dur=([\d.]+)$/.exec(r.headers.get("server-timing") ?? "");
    expect(Number(timing?.[1])).toBeGreaterThan(0);
  });

  test("OIP infer: BYTES in; logits [n,2], label [n], probabilities [n,2] out", async () => {
    const texts = TEXTS.slice(0, 3);
    const r = await call(sock, "/v2/models/sst2-bert-mini/infer", {
      body: JSON.stringify({
        id: "req-7",
        inputs: [{ name: "text", shape: [3], datatype: "BYTES", data: texts }],
      }),
    });
    expect(r.status).toBe(200);
    expect(r.body["id"]).toBe("req-7");
    expect(r.body["model_name"]).toBe("sst2-bert-mini");
    expect(r.body["model_version"]).toBe("1");
    const outs = r.body["outputs"] as { name: string; datatype: string; shape: number[]; data: unknown[] }[];
    expect(outs.map((o) => [o.name, o.datatype, o.shape])).toEqual([
      ["logits", "FP32", [3, 2]],
      ["label", "BYTES", [3]],
      ["probabilities", "FP32", [3, 2]],
    ]);
    const want = await direct.classify(texts);
    expectClose(
      outs[0]!.data as number[],
      want.flatMap((w) => w.logits),
      { atol: 1e-5, rtol: 0 },
    );
    expect(outs[1]!.data).toEqual(want.map((w) => w.label));
    const probs = outs[2]!.data as number[];
    for (let i = 0; i < 3; i++) expect(probs[2 * i]! + probs[2 * i + 1]!).toBeCloseTo(1, 6);
  });

  test("OIP infer returns only the outputs asked for", async () => {
    const r = await call(sock, "/v2/models/sst2-bert-mini/infer", {
      body: JSON.stringify({
        inputs: [{ name: "text", shape: [1, 1], datatype: "BYTES", data: [["fine"]] }],
        outputs: [{ name: "label" }],
      }),
    });
    expect(r.status).toBe(200);
    expect((r.body["outputs"] as { name: string }[]).map((o) => o.name)).toEqual(["label"]);
  });
});

describe("bad input is a 4xx with the error code, and the server keeps serving", () => {
  const cases: [string, () => Promise<{ status: number; body: Record<string, unknown> }>, number, string][] =
    [
      ["malformed JSON", () => call(sock, "/v1/classify", { body: '{"texts": [' }), 400, "REQUEST_INVALID"],
      [
        "wrong content type",
        () => call(sock, "/v1/classify", { body: '{"texts":["a"]}', contentType: "text/plain" }),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
      ],
      ["oversized body", () => classifyOverSocket(sock, ["x".repeat(5000)]), 413, "REQUEST_TOO_LARGE"],
      [
        "too many texts",
        () =>
          classifyOverSocket(
            sock,
            Array.from({ length: 65 }, () => "a"),
          ),
        413,
        "REQUEST_TOO_LARGE",
      ],
      [
        "unknown model",
        () =>
          call(sock, "/v2/models/nope/infer", {
            body: JSON.stringify({ inputs: [{ name: "text", shape: [1], datatype: "BYTES", data: ["a"] }] }),
          }),
        404,
        "NOT_FOUND",
      ],
      ["unknown route", () => call(sock, "/v3/whatever"), 404, "NOT_FOUND"],
      ["empty texts list", () => classifyOverSocket(sock, []), 400, "REQUEST_INVALID"],
      ["texts not a list", () => classifyOverSocket(sock, "hello"), 400, "REQUEST_INVALID"],
      ["missing texts", () => call(sock, "/v1/classify", { body: "{}" }), 400, "REQUEST_INVALID"],
      ["empty text", () => classifyOverSocket(sock, ["fine", ""]), 400, "TEXT_EMPTY"],
      ["whitespace text", () => classifyOverSocket(sock, ["  \n"]), 400, "TEXT_EMPTY"],
      ["non-string text", () => classifyOverSocket(sock, ["fine", 42]), 400, "TEXT_NOT_STRING"],
      ["null text", () => classifyOverSocket(sock, [null]), 400, "TEXT_NOT_STRING"],
      [
        "OIP wrong datatype",
        () =>
          call(sock, "/v2/models/sst2-bert-mini/infer", {
            body: JSON.stringify({ inputs: [{ name: "text", shape: [1], datatype: "FP32", data: [1] }] }),
          }),
        400,
        "REQUEST_INVALID",
      ],
      [
        "OIP shape does not match data",
        () =>
          call(sock, "/v2/models/sst2-bert-mini/infer", {
            body: JSON.stringify({ inputs: [{ name: "text", shape: [2], datatype: "BYTES", data: ["a"] }] }),
          }),
        400,
        "REQUEST_INVALID",
      ],
      ["GET on classify", () => call(sock, "/v1/classify"), 405, "REQUEST_INVALID"],
      ["a bad %-escape in a model name", () => call(sock, "/v2/models/%ZZ"), 400, "REQUEST_INVALID"],
      ["a lone % in a model name", () => call(sock, "/v2/models/a%/infer"), 400, "REQUEST_INVALID"],
    ];
  for (const [name, send, status, code] of cases) {
    test(name, async () => {
      const r = await send();
      expect(r.status).toBe(status);
      expect((r.body["error"] as { code: string }).code).toBe(code);
      expect(typeof (r.body["error"] as { message: string }).message).toBe("string");
    });
  }

  test("pairs sent to a single-text classifier (SST-2, token_type_ids and all) are DATA_MISMATCH naming what it takes", async () => {
    const r = await call(sock, "/v1/classify", {
      body: JSON.stringify({ pairs: [["a fine film", "it is good"]] }),
    });
    expect(r.status).toBe(400);
    const error = r.body["error"] as { code: string; message: string };
    expect(error.code).toBe("DATA_MISMATCH");
    expect(error.message).toMatch(
      /input 0 is a pair of texts, but .* is a classification model .*: each input is one text/,
    );
    expect(error.message).toContain("--task pair-classification");
  });

  test("invalid UTF-8 in the body is REQUEST_INVALID", async () => {
    const res = await fetch("http://localhost/v1/classify", {
      unix: sock,
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new Uint8Array([0x7b, 0x22, 0x74, 0x22, 0x3a, 0xff, 0xfe, 0x7d]),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("REQUEST_INVALID");
  });

  test("an oversized body sent chunked, without Content-Length, is refused while reading", async () => {
    const chunk = new TextEncoder().encode(`"${"y".repeat(1000)}",`);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent === 0) controller.enqueue(new TextEncoder().encode('{"texts": ['));
        if (sent++ < 10) controller.enqueue(chunk);
        else {
          controller.enqueue(new TextEncoder().encode('"z"]}'));
          controller.close();
        }
      },
    });
    const res = await fetch("http://localhost/v1/classify", {
      unix: sock,
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("REQUEST_TOO_LARGE");
  });

  test("a request over limits.maxRequestTokens is 413 naming the limit; each text counts up to the model's limit", async () => {
    const words = "a quiet sentence about nothing in particular ".repeat(22);
    const r = await classifyOverSocket(sock, [words, words, words]);
    expect(r.status).toBe(413);
    const error = r.body["error"] as { code: string; message: string; details: Record<string, number> };
    expect(error.code).toBe("REQUEST_TOO_LARGE");
    expect(error.message).toContain("limits.maxRequestTokens");
    expect(error.details["maxRequestTokens"]).toBe(400);
    expect(error.details["tokens"]).toBeGreaterThan(400);
    // One of them fits.
    expect((await classifyOverSocket(sock, [words])).status).toBe(200);
  });

  test("still serving after every bad request", async () => {
    expect((await classifyOverSocket(sock, ["still fine"])).status).toBe(200);
  });
});

describe("batching and metrics", () => {
  test("16 concurrent clients all succeed and share batches", async () => {
    const before = await (await fetch("http://localhost/metrics", { unix: sock })).text();
    const batchesBefore = metricValue(before, "quantd_batch_size_count") ?? 0;
    const textsBefore = metricValue(before, "quantd_batch_size_sum") ?? 0;
    const replies = await Promise.all(
      Array.from({ length: 16 }, async (_, c) => {
        const out: number[] = [];
        for (let i = 0; i < 4; i++)
          out.push((await classifyOverSocket(sock, [TEXTS[(c + i) % TEXTS.length]!])).status);
        return out;
      }),
    );
    expect(replies.flat().every((s) => s === 200)).toBe(true);
    const res = await fetch("http://localhost/metrics", { unix: sock });
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    const batches = metricValue(text, "quantd_batch_size_count")! - batchesBefore;
    const texts = metricValue(text, "quantd_batch_size_sum")! - textsBefore;
    expect(texts).toBe(64);
    // 64 single-text requests in fewer batches than texts: some batches held more than one.
    expect(batches).toBeLessThan(64);
    expect(metricValue(text, 'quantd_batch_size_bucket{le="1"}')).toBeLessThan(
      metricValue(text, "quantd_batch_size_count")!,
    );
  });

  test("/metrics has requests, errors, latency, queue depth, model and RSS", async () => {
    const text = await (await fetch("http://localhost/metrics", { unix: sock })).text();
    expect(text).toContain("# TYPE quantd_requests_total counter");
    expect(text).toMatch(/quantd_requests_total\{route="POST \/v1\/classify",status="200"\} \d+/);
    expect(text).toMatch(/quantd_errors_total\{code="TEXT_EMPTY"\} \d+/);
    expect(text).toContain('quantd_request_duration_seconds_bucket{route="POST /v1/classify",le="+Inf"}');
    expect(metricValue(text, "quantd_queue_depth")).toBe(0);
    expect(metricValue(text, 'quantd_active_model_info{version="1",kind="fp32"}')).toBe(1);
    expect(metricValue(text, "quantd_process_resident_memory_bytes")).toBeGreaterThan(10 * 1024 * 1024);
  });
});

describe("bounded queue", () => {
  let small: Agent;
  let smallDir: string;
  beforeAll(async () => {
    smallDir = tempDir();
    small = await startAgent(
      testConfig(smallDir, { QUANTD_BATCHING_MAX_BATCH: "1", QUANTD_BATCHING_MAX_QUEUE: "2" }),
    );
  });
  afterAll(async () => {
    await small?.stop();
    rmSync(smallDir, { recursive: true, force: true });
  });

  test("a full queue answers 503 with Retry-After; the rest succeed", async () => {
    const replies = await Promise.all(
      Array.from({ length: 24 }, () => classifyOverSocket(small.config.socketPath, [TEXTS[4]!, TEXTS[1]!])),
    );
    const statuses = replies.map((r) => r.status);
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    expect(statuses.filter((s) => s === 503).length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThan(0);
    const refused = replies.find((r) => r.status === 503)!;
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect((refused.body["error"] as { code: string }).code).toBe("OVERLOADED");
    // And it recovers once the burst is over.
    expect((await classifyOverSocket(small.config.socketPath, ["ok"])).status).toBe(200);
  });
});
