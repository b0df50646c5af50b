/**
 * The registry's hot swap on real models over a real socket: fp32 → an int8
 * model made by quantd's quantizer while clients hammer the server (no request
 * may fail), corrupt and unusable candidates rejected while serving goes on,
 * rollback on command and automatically after a failed post-swap check, and a
 * restart serving the store's active version.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { until } from "../helpers/until.ts";
import { ONNX_FLOAT, tinyOnnxModel } from "../helpers/tiny-onnx.ts";
import {
  call,
  classifyOverSocket,
  makeHeadVariant,
  makeInt8Model,
  metricValue,
  TEXTS,
  tempDir,
  testConfig,
} from "./agent-harness.ts";

let dir: string;
let int8Path: string;

beforeAll(async () => {
  dir = tempDir();
  int8Path = await makeInt8Model(dir);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function modelOf(r: { body: Record<string, unknown> }): { version: number; kind: string } {
  return r.body["model"] as { version: number; kind: string };
}

// Both places the serving session can run: the server's JS thread (the default), and a pool of two worker
// threads with two batches running at once.
describe.each([
  ["JS thread", "0"],
  ["2 inference workers", "2"],
])("swap, reject, rollback, restart (one agent, in order; %s)", (_where, workers) => {
  let agent: Agent;
  let sock: string;
  let stateDir: string;
  const env = { QUANTD_SWAP_WINDOW: "1000000", QUANTD_INFERENCE_WORKERS: workers };
  let agentDir: string;

  beforeAll(async () => {
    agentDir = join(dir, `a-${workers}`);
    // A window no test reaches: the automatic checks are tested separately below.
    const config = testConfig(agentDir, { ...env, QUANTD_BATCHING_MAX_BATCH: "8" });
    stateDir = config.stateDir;
    agent = await startAgent(config);
    sock = config.socketPath;
  });
  afterAll(async () => {
    await agent?.stop();
  });

  test("zero failed requests while fp32 is swapped for int8 under load", async () => {
    let stop = false;
    const seen = new Map<string, number>();
    const failures: string[] = [];
    const client = async (c: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const texts = [TEXTS[(c + i) % TEXTS.length]!, TEXTS[(c * 3 + i) % TEXTS.length]!];
        try {
          const r = await classifyOverSocket(sock, texts);
          if (r.status !== 200) failures.push(`${r.status} ${JSON.stringify(r.body)}`);
          else {
            const m = modelOf(r);
            const key = `${m.version}:${m.kind}`;
            seen.set(key, (seen.get(key) ?? 0) + 1);
          }
        } catch (err) {
          failures.push(String(err));
        }
      }
    };
    const clients = Array.from({ length: 8 }, (_, c) => client(c));
    await Bun.sleep(400);
    const promoted = await call(sock, "/v1/models/promote", {
      body: JSON.stringify({ path: int8Path, metrics: { agreement: 0.99 } }),
    });
    await Bun.sleep(600);
    stop = true;
    await Promise.all(clients);

    expect(failures).toEqual([]);
    expect(promoted.status).toBe(200);
    const version = promoted.body["version"] as {
      id: number;
      kind: string;
      state: string;
      metrics: Record<string, unknown>;
    };
    expect(version).toMatchObject({ id: 2, kind: "int8-dynamic", state: "active" });
    expect(version.metrics["agreement"]).toBe(0.99);
    // Requests were served by both versions: the swap happened during the load.
    expect(seen.get("1:fp32") ?? 0).toBeGreaterThan(0);
    expect(seen.get("2:int8-dynamic") ?? 0).toBeGreaterThan(0);
    expect(agent.store.models.get(1)!.state).toBe("retired");
    expect(agent.store.models.active()!.id).toBe(2);
    // The registry's copy is named by content and identical to the candidate.
    const copy = agent.store.models.get(2)!.path;
    expect(copy.startsWith(join(stateDir, "models"))).toBe(true);
    expect(readFileSync(copy).equals(readFileSync(int8Path))).toBe(true);
    const metrics = await (await fetch("http://localhost/metrics", { unix: sock })).text();
    expect(metricValue(metrics, 'quantd_active_model_info{version="2",kind="int8-dynamic"}')).toBe(1);
    expect(metricValue(metrics, "quantd_model_swaps_total")).toBe(1);
  });

  test("a truncated candidate is rejected with MODEL_TRUNCATED and serving continues", async () => {
    const bytes = readFileSync(int8Path);
    const truncated = join(dir, "truncated.onnx");
    writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const during = classifyOverSocket(sock, TEXTS);
    const r = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: truncated }) });
    expect(r.status).toBe(400);
    expect((r.body["error"] as { code: string }).code).toBe("MODEL_TRUNCATED");
    expect((await during).status).toBe(200);
    const after = await classifyOverSocket(sock, ["still serving"]);
    expect(after.status).toBe(200);
    expect(modelOf(after)).toEqual({ version: 2, kind: "int8-dynamic" });
    expect(agent.store.models.active()!.id).toBe(2);
    // Recorded as rejected, with the codec's diagnosis, and its copy removed.
    const rejected = agent.store.models.list("rejected");
    expect(rejected).toHaveLength(1);
    expect(rejected[0]!.reason).toContain("MODEL_TRUNCATED");
    expect(existsSync(rejected[0]!.path)).toBe(false);
  });

  test("a valid ONNX file that is not a classifier is recorded as rejected, never active", async () => {
    const other = join(dir, "identity.onnx");
    writeFileSync(
      other,
      tinyOnnxModel(
        [{ opType: "Identity", inputs: ["x"], outputs: ["y"] }],
        [{ name: "x", elemType: ONNX_FLOAT, dims: [1, 2] }],
        [{ name: "y", elemType: ONNX_FLOAT, dims: [1, 2] }],
      ),
    );
    const r = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: other }) });
    expect(r.status).toBe(400);
    expect((r.body["error"] as { code: string }).code).toBe("MODEL_INPUTS_MISMATCH");
    const rejected = agent.store.models
      .list("rejected")
      .filter((v) => v.reason?.includes("MODEL_INPUTS_MISMATCH"));
    expect(rejected).toHaveLength(1);
    expect(existsSync(rejected[0]!.path)).toBe(false);
    // Offered again: refused at once, naming the earlier rejection.
    const again = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: other }) });
    expect((again.body["error"] as { code: string; message: string }).message).toContain("rejected before");
    expect(modelOf(await classifyOverSocket(sock, ["ok"])).version).toBe(2);
  });

  test("rollback on command restores the previous version", async () => {
    const r = await call(sock, "/v1/models/rollback", { body: JSON.stringify({ reason: "test" }) });
    expect(r.status).toBe(200);
    expect(r.body["version"]).toMatchObject({ id: 1, kind: "fp32", state: "active" });
    expect(modelOf(await classifyOverSocket(sock, TEXTS))).toEqual({ version: 1, kind: "fp32" });
    const v2 = agent.store.models.get(2)!;
    expect(v2.state).toBe("retired");
    expect(v2.reason).toContain("test");
  });

  test("after a restart the store's active version serves", async () => {
    // Promote int8 again (a retired version can come back), then restart on the same state dir.
    const r = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: int8Path }) });
    expect(r.status).toBe(200);
    await agent.stop();
    expect(existsSync(sock)).toBe(false);
    agent = await startAgent(testConfig(agentDir, env));
    const after = await classifyOverSocket(sock, ["back again"]);
    expect(after.status).toBe(200);
    expect(modelOf(after)).toEqual({ version: 2, kind: "int8-dynamic" });
  });
});

test("a failed post-swap check rolls back automatically", async () => {
  // p95Ratio 0.01: any candidate slower than 1 % of the old model's p95 fails, so the rule must fire.
  const agent = await startAgent(
    testConfig(join(dir, "b"), { QUANTD_SWAP_WINDOW: "5", QUANTD_SWAP_P95_RATIO: "0.01" }),
  );
  const sock = agent.config.socketPath;
  try {
    for (let i = 0; i < 6; i++) expect((await classifyOverSocket(sock, [TEXTS[i]!])).status).toBe(200);
    const promoted = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: int8Path }) });
    expect(promoted.status).toBe(200);
    const versions: number[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await classifyOverSocket(sock, [TEXTS[i % TEXTS.length]!]);
      expect(r.status).toBe(200);
      versions.push(modelOf(r).version);
    }
    for (let i = 0; i < 50 && agent.registry.active()?.version !== 1; i++) await Bun.sleep(20);
    expect(versions).toContain(2);
    expect(agent.registry.active()?.version).toBe(1);
    const v2 = agent.store.models.get(2)!;
    expect(v2.state).toBe("retired");
    expect(v2.reason).toContain("post-swap check failed: p95 batch latency");
    expect((v2.metrics["postSwap"] as { batches: number }).batches).toBeGreaterThanOrEqual(5);
    const metrics = await (await fetch("http://localhost/metrics", { unix: sock })).text();
    expect(metricValue(metrics, 'quantd_model_rollbacks_total{trigger="auto"}')).toBe(1);
  } finally {
    await agent.stop();
  }
});

test("an error rate above the limit after a swap rolls back automatically", async () => {
  // A real fault: the candidate's position table is cut to 32 rows, so onnxruntime fails (Gather out of
  // bounds) on any text longer than 32 tokens, while the short probe batch still passes verification.
  const model = await loadModel(shippedModelPath);
  const positions = model.graph.initializer.find((t) => /position_embeddings/i.test(t.name))!;
  const width = positions.dims[1]!;
  positions.dims = [32, width];
  positions.rawData = positions.rawData!.slice(0, 32 * width * 4);
  const faulty = join(dir, "short-positions.onnx");
  await saveModel(model, faulty);

  const agent = await startAgent(
    testConfig(join(dir, "c"), { QUANTD_SWAP_WINDOW: "20", QUANTD_SWAP_ERROR_RATE: "0.05" }),
  );
  const sock = agent.config.socketPath;
  const long = `${TEXTS[4]} ${TEXTS[4]}`;
  try {
    const promoted = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: faulty }) });
    expect(promoted.status).toBe(200);
    expect((await classifyOverSocket(sock, ["short and fine"])).status).toBe(200);
    // window 20 × 5 % allows one failed batch; the second triggers the rollback.
    const failed = [await classifyOverSocket(sock, [long]), await classifyOverSocket(sock, [long])];
    expect(failed.map((r) => r.status)).toEqual([500, 500]);
    expect((failed[0]!.body["error"] as { code: string }).code).toBe("INFERENCE_FAILED");
    for (let i = 0; i < 50 && agent.registry.active()?.version !== 1; i++) await Bun.sleep(20);
    expect(agent.registry.active()?.version).toBe(1);
    const after = await classifyOverSocket(sock, [long]);
    expect(after.status).toBe(200);
    expect(modelOf(after)).toEqual({ version: 1, kind: "fp32" });
    expect(agent.store.models.get(2)!.reason).toContain("post-swap check failed: error rate");
  } finally {
    await agent.stop();
  }
});

test("old retired int8 files are pruned, keeping the two most recent and every fp32", async () => {
  const agent = await startAgent(testConfig(join(dir, "d"), { QUANTD_SWAP_WINDOW: "1000000" }), {
    runJobs: false,
  });
  try {
    // Variants of the int8 model that differ only in their doc string: distinct files, same behaviour.
    const base = await loadModel(int8Path);
    for (let i = 1; i <= 4; i++) {
      base.docString = `variant ${i}`;
      const path = join(dir, `variant-${i}.onnx`);
      await saveModel(base, path);
      const r = await call(agent.config.socketPath, "/v1/models/promote", { body: JSON.stringify({ path }) });
      expect(r.status).toBe(200);
    }
    // Pruning runs after the swap, off the request path.
    await until(() => !existsSync(agent.store.models.get(2)!.path), 5000, "version 2's file to be pruned");
    const versions = agent.store.models.list();
    expect(versions.map((v) => [v.id, v.kind, v.state])).toEqual([
      [5, "int8-dynamic", "active"],
      [4, "int8-dynamic", "retired"],
      [3, "int8-dynamic", "retired"],
      [2, "int8-dynamic", "retired"],
      [1, "fp32", "retired"],
    ]);
    expect(versions.map((v) => existsSync(v.path))).toEqual([true, true, true, false, true]);
    // The rollback target is kept and still loads.
    const back = await call(agent.config.socketPath, "/v1/models/rollback", { body: "{}" });
    expect(back.status).toBe(200);
    expect((back.body["version"] as { id: number }).id).toBe(4);
  } finally {
    await agent.stop();
  }
});

describe("promote refuses what it cannot serve, with a 4xx and its code, and keeps serving", () => {
  let agent: Agent;
  let sock: string;
  beforeAll(async () => {
    agent = await startAgent(
      testConfig(join(dir, "refuse"), {
        QUANTD_SWAP_WINDOW: "1000000",
        QUANTD_LIMITS_MAX_MODEL_BYTES: "40000000",
      }),
      { runJobs: false },
    );
    sock = agent.config.socketPath;
    agent.store.samples.add(
      TEXTS.map((text) => ({ text })),
      { source: "file" },
    );
  });
  afterAll(async () => {
    await agent.stop();
  });

  const promote = (path: string) => call(sock, "/v1/models/promote", { body: JSON.stringify({ path }) });
  const expectRefused = async (path: string, status: number, code: string): Promise<string> => {
    const r = await promote(path);
    const error = r.body["error"] as { code: string; message: string };
    expect({ status: r.status, code: error.code }).toEqual({ status, code });
    const still = await classifyOverSocket(sock, ["still serving"]);
    expect(still.status).toBe(200);
    expect(modelOf(still).version).toBe(1);
    return error.message;
  };

  test("a FIFO is refused at once (it would block the registry), and the next promotion is not held up", async () => {
    const fifo = join(dir, "model.fifo");
    Bun.spawnSync(["mkfifo", fifo]);
    expect(await expectRefused(fifo, 400, "FILE_UNREADABLE")).toContain("a FIFO");
    expect((await call(sock, "/v1/models")).status).toBe(200);
    expect(await expectRefused(fifo, 400, "FILE_UNREADABLE")).toContain("only a regular file");
  });

  test("a symlink to /dev/zero is refused, nothing is copied", async () => {
    const link = join(dir, "zero.onnx");
    symlinkSync("/dev/zero", link);
    expect(await expectRefused(link, 400, "FILE_UNREADABLE")).toContain("a device");
    expect(readdirSync(join(agent.config.stateDir, "models")).filter((n) => n.startsWith("."))).toEqual([]);
  });

  test("a file over limits.maxModelBytes is refused with 413 naming the limit", async () => {
    const big = join(dir, "big.onnx");
    writeFileSync(big, "");
    truncateSync(big, 40_000_001);
    expect(await expectRefused(big, 413, "MODEL_TOO_LARGE")).toContain("limits.maxModelBytes");
  });

  test("a model with another label set is MODEL_TASK_MISMATCH (422)", async () => {
    const path = await makeHeadVariant(dir, "three-labels");
    expect(await expectRefused(path, 422, "MODEL_TASK_MISMATCH")).toContain("3");
  });

  test("NaN logits and input-independent logits fail the probe: MODEL_PROBE_FAILED (422)", async () => {
    expect(
      await expectRefused(await makeHeadVariant(dir, "nan-logits"), 422, "MODEL_PROBE_FAILED"),
    ).toContain("NaN logits");
    expect(
      await expectRefused(await makeHeadVariant(dir, "constant-logits"), 422, "MODEL_PROBE_FAILED"),
    ).toContain(`same logits for all ${2 + TEXTS.length} probe texts`);
    const rejected = agent.store.models.list("rejected").map((v) => v.reason ?? "");
    expect(rejected.filter((r) => r.startsWith("MODEL_PROBE_FAILED"))).toHaveLength(2);
  });

  test("a model onnxruntime cannot load names the user's file, not the registry's copy, and onnxruntime's reason, the second time too", async () => {
    // A well-formed ONNX file (the codec decodes it) with an operator onnxruntime has no kernel for.
    const model = await loadModel(shippedModelPath);
    model.graph.node.find((n) => n.opType === "Tanh")!.opType = "NoSuchOperator";
    const path = join(dir, "unknown-op.onnx");
    await saveModel(model, path);
    const first = await promote(path);
    const error = first.body["error"] as { code: string; message: string; causes?: string[] };
    expect(first.status).toBe(400);
    expect(error.code).toBe("MODEL_LOAD_FAILED");
    const said = [error.message, ...(error.causes ?? [])].join("\n");
    expect(error.message).toContain(path);
    expect(said).toContain("NoSuchOperator");
    expect(said).not.toContain(join(agent.config.stateDir, "models"));
    // The same file again: refused from the record, still with onnxruntime's reason and the user's file.
    const again = await expectRefused(path, 400, "MODEL_INVALID");
    expect(again).toContain(`${path} (model `);
    expect(again).toContain("was rejected before: MODEL_LOAD_FAILED");
    expect(again).toContain("NoSuchOperator");
    expect(again).not.toContain(join(agent.config.stateDir, "models"));
  });
});

test("an external-data model (model.onnx + model.onnx_data) serves from the start and is promoted: the registry keeps it as one self-contained file", async () => {
  const src = join(dir, "external-data");
  mkdirSync(src);
  for (const f of ["tokenizer.json", "tokenizer_config.json", "config.json"]) {
    copyFileSync(join(shippedModelDir, f), join(src, f));
  }
  const external = join(src, "model.onnx");
  await saveModel(await loadModel(shippedModelPath), external, {
    externalData: { location: "model.onnx_data" },
  });
  const config = testConfig(
    join(dir, "external-agent"),
    { QUANTD_SWAP_WINDOW: "1000000" },
    { model: external },
  );
  const agent = await startAgent(config, { runJobs: false });
  try {
    const served = await classifyOverSocket(config.socketPath, ["a fine film"]);
    expect(served.status).toBe(200);
    const modelsDir = join(config.stateDir, "models");
    const files = readdirSync(modelsDir);
    expect(files.filter((f) => !f.endsWith(".onnx"))).toEqual([]);
    const copy = await loadModel(join(modelsDir, files[0]!), { loadExternalData: false });
    expect(copy.graph.initializer.filter((t) => (t.externalData ?? []).length > 0)).toEqual([]);
    // The same model through a promotion: the same inlined bytes, so the version already serving.
    const r = await call(config.socketPath, "/v1/models/promote", {
      body: JSON.stringify({ path: external }),
    });
    expect(r.status).toBe(200);
    expect((r.body["version"] as { id: number }).id).toBe(1);
    expect(readdirSync(modelsDir)).toEqual(files);
  } finally {
    await agent.stop();
  }
});
