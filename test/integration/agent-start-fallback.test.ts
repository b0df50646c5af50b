/**
 * `quantd agent --model FILE` when FILE cannot serve (truncated, an operator
 * onnxruntime has no kernel for, float16 weights, missing, in a directory that
 * is gone with its tokenizer) and the state directory already serves a model:
 * the agent keeps serving the store's active version (the store unchanged),
 * logs the failure with its code naming the file, and says it is degraded on
 * `/v2/health/ready` and in `quantd agent models`; with nothing stored, the
 * start fails as before. A promotion of such a file is recorded with kind
 * `unknown`, not fp32. Real processes, real socket, real ONNX files.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { startAgent } from "../../src/agent/agent.ts";
import { defaultModelName } from "../../src/agent/config.ts";
import { makeNode } from "../../src/onnx/builder.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { connectMqttOnce } from "../../src/fleet/mqtt-client.ts";
import { decodeJson, type StatusMessage } from "../../src/fleet/protocol.ts";
import { toFloat16Initializer } from "../fixtures/exporters/graph-edit.ts";
import { OPERATOR_KEY_FILE, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { until } from "../helpers/until.ts";
import { shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { cliMain, runQuantd } from "../helpers/run-cli.ts";
import {
  call,
  classifyOverSocket,
  makeHeadVariant,
  makeInt8Model,
  tempDir,
  testConfig,
} from "./agent-harness.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

// Every case starts an agent process that loads the 30 MB model; a busy 2-core machine needs the margin.
setDefaultTimeout(120_000);

const ENV = { ...process.env, QUANTD_THREADS: "1", QUANTD_CONFIG: "" };
/** The OIP name of the shipped model, which a start without --model serves. */
const SHIPPED_NAME = defaultModelName(shippedModelPath);

let dir: string;
/** A model directory as a user keeps one: tokenizer and config beside each broken model. */
let badDir: string;
beforeAll(() => {
  dir = tempDir("quantd-agent-start-");
  badDir = join(dir, "bad");
  mkdirSync(badDir);
  for (const f of ["tokenizer.json", "config.json"]) copyFileSync(join(shippedModelDir, f), join(badDir, f));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** The shipped model cut in half. */
function truncatedModel(): string {
  const path = join(badDir, "truncated.onnx");
  const bytes = readFileSync(shippedModelPath);
  writeFileSync(path, bytes.subarray(0, Math.floor(bytes.length / 2)));
  return path;
}

/** The shipped model with a `com.acme:Mystery` node before its first query MatMul. */
async function customOpModel(): Promise<string> {
  const m = await loadModel(shippedModelPath);
  const mm = m.graph.node.find((n) => n.name === "/bert/encoder/layer.0/attention/self/query/MatMul")!;
  const node = makeNode(
    "Mystery",
    [mm.input[0]!],
    ["mystery_out"],
    {},
    { name: "acme_mystery", domain: "com.acme" },
  );
  m.graph.node.splice(m.graph.node.indexOf(mm), 0, node);
  mm.input[0] = "mystery_out";
  m.opsetImport.push({ domain: "com.acme", version: 1 });
  const path = join(badDir, "custom-op.onnx");
  await saveModel(m, path);
  return path;
}

/** The shipped model with its classifier weight in float16 (the rest fp32). */
async function fp16Model(): Promise<string> {
  const m = await loadModel(shippedModelPath);
  toFloat16Initializer(m, "classifier.weight");
  const path = join(badDir, "fp16.onnx");
  await saveModel(m, path);
  return path;
}

interface Started {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  stderr: () => string;
}

function spawnAgent(stateDir: string, socket: string, model?: string): Started {
  const args = ["bun", cliMain, "agent", "--state-dir", stateDir, "--socket", socket];
  const proc = Bun.spawn([...args, ...(model === undefined ? [] : ["--model", model])], {
    env: ENV,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let text = "";
  void (async () => {
    for await (const chunk of proc.stderr) text += new TextDecoder().decode(chunk);
  })();
  return { proc, stderr: () => text };
}

async function waitReady(
  socket: string,
  agent: Started,
  timeoutMs = 90_000,
): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (agent.proc.exitCode !== null)
      throw new Error(`agent exited with ${agent.proc.exitCode}: ${agent.stderr()}`);
    try {
      const r = await call(socket, "/v2/health/ready");
      if (r.status === 200) return r.body;
    } catch {
      // not listening yet
    }
    await Bun.sleep(100);
  }
  throw new Error(`agent not ready in time: ${agent.stderr()}`);
}

async function stop(agent: Started): Promise<number> {
  agent.proc.kill("SIGTERM");
  return agent.proc.exited;
}

describe("an explicit --model that does not load, with a model already in the store", () => {
  const stateDir = () => join(dir, "state");
  const socket = () => join(dir, "q.sock");

  beforeAll(async () => {
    // Earlier runs: the shipped model became version 1, active.
    const first = spawnAgent(stateDir(), socket());
    await waitReady(socket(), first);
    expect(await stop(first)).toBe(0);
  });

  const cases: [string, () => string | Promise<string>, RegExp][] = [
    ["a truncated file", truncatedModel, /^MODEL_TRUNCATED$/],
    ["a custom-domain op onnxruntime has no kernel for", customOpModel, /^MODEL_/],
    ["float16 weights", fp16Model, /^MODEL_/],
    [
      "a missing file in a directory that is gone (tokenizer too)",
      () => join(dir, "gone", "model.onnx"),
      /^FILE_NOT_FOUND$/,
    ],
  ];
  for (const [name, make, code] of cases) {
    test(`${name}: the stored version serves, the failure is logged and shown, the store unchanged`, async () => {
      const bad = await make();
      const agent = spawnAgent(stateDir(), socket(), bad);
      try {
        const health = await waitReady(socket(), agent);
        const rejected = (health["degraded"] as { rejectedAtStart: Record<string, unknown> }).rejectedAtStart;
        expect(rejected["path"]).toBe(bad);
        expect(rejected["servingVersion"]).toBe(1);
        const error = rejected["error"] as { code: string; message: string };
        expect(error.code).toMatch(code);
        expect(error.message).toContain(bad);

        const classified = await classifyOverSocket(socket(), ["a fine film"]);
        expect(classified.status).toBe(200);
        expect(classified.body["model"]).toEqual({ version: 1, kind: "fp32" });

        // The inference routes name the version served, as a start without --model does, not the file that failed.
        const metadata = await call(socket(), `/v2/models/${SHIPPED_NAME}`);
        expect(metadata.status).toBe(200);
        expect(metadata.body["name"]).toBe(SHIPPED_NAME);
        const badName = basename(dirname(bad));
        expect(badName).not.toBe(SHIPPED_NAME);
        expect((await call(socket(), `/v2/models/${badName}`)).status).toBe(404);
        expect(agent.stderr()).toContain(`ready: serving ${SHIPPED_NAME} version 1 (fp32)`);

        const models = await runQuantd(["agent", "models", "--socket", socket(), "--json"], { env: ENV });
        expect(models.code).toBe(0);
        const reply = JSON.parse(models.stdout) as { active: number; rejectedAtStart: { path: string } };
        expect(reply.active).toBe(1);
        expect(reply.rejectedAtStart.path).toBe(bad);
        const table = await runQuantd(["agent", "models", "--socket", socket()], { env: ENV });
        expect(table.stdout).toContain(`degraded: started with ${bad}, which did not load (${error.code}`);

        // One log line says what failed, with its code and the file, and what serves instead.
        expect(agent.stderr()).toMatch(
          new RegExp(
            `degraded: ${bad.replaceAll(".", "\\.")} was not served, error ${error.code}: .*serving stored version 1`,
          ),
        );
      } finally {
        expect(await stop(agent)).toBe(0);
      }
      // The store's active version is still 1: a start without --model serves it, not degraded.
      const again = spawnAgent(stateDir(), socket());
      try {
        const health = await waitReady(socket(), again);
        expect(health).toEqual({ ready: true });
        expect((await classifyOverSocket(socket(), ["a fine film"])).body["model"]).toEqual({
          version: 1,
          kind: "fp32",
        });
      } finally {
        expect(await stop(again)).toBe(0);
      }
    });
  }
});

test("with nothing stored, a --model that does not load stops the start with its code", async () => {
  const bad = truncatedModel();
  const r = await runQuantd(
    ["agent", "--state-dir", join(dir, "empty-state"), "--socket", join(dir, "e.sock"), "--model", bad],
    { env: ENV },
  );
  expect(r.code).toBe(1);
  expect(r.stderr.trim().split("\n").at(-1)).toMatch(/^error MODEL_TRUNCATED: .*truncated\.onnx/);
});

test("the active version's file damaged too: the version active before it serves, and becomes active", async () => {
  const base = join(dir, "inproc");
  mkdirSync(base);
  const int8 = await makeInt8Model(base);
  // Version 1 (fp32, the shipped model), then version 2 (int8) promoted: 1 is retired, 2 active.
  let agent = await startAgent(testConfig(base));
  const promoted = await agent.registry.promote(int8);
  expect(promoted.id).toBe(2);
  const activePath = promoted.path;
  await agent.stop();
  unlinkSync(activePath);

  const events: string[] = [];
  agent = await startAgent(testConfig(base, {}, { model: truncatedModel() }), {
    log: (line) => events.push(line),
  });
  try {
    expect(agent.registry.activeVersion()?.id).toBe(1);
    expect(agent.store.models.active()?.id).toBe(1);
    expect(agent.registry.startupRejection()?.error.code).toBe("MODEL_TRUNCATED");
    const reply = await classifyOverSocket(agent.config.socketPath, ["a fine film"]);
    expect(reply.body["model"]).toEqual({ version: 1, kind: "fp32" });
    expect(events.join("\n")).toContain("rejected model version 2");
    expect(events.join("\n")).toMatch(/degraded: .*truncated\.onnx was not served, error MODEL_TRUNCATED/);
  } finally {
    await agent.stop();
  }
});

test.skipIf(!hasMosquitto)(
  "the fleet status names the model that did not load beside the one serving; `fleet devices` and `fleet report` show the device degraded",
  async () => {
    const base = join(dir, "fleet");
    mkdirSync(base);
    const broker = await startMosquitto();
    const conn = await connectMqttOnce({ url: broker.url, clientId: "status-reader" });
    const statuses: StatusMessage[] = [];
    conn.onMessage((m) => statuses.push(decodeJson(m.payload) as StatusMessage));
    await conn.subscribe(["quantd/v1/lab/board-9/status"], { qos: 1 });
    const fleet = { broker: broker.url, device: "board-9", fleet: "lab" };
    let agent = await startAgent(testConfig(base));
    await agent.stop();
    const bad = truncatedModel();
    agent = await startAgent(
      testConfig(base, { QUANTD_FLEET_OPERATOR_KEYS: operator.publicKey }, { model: bad, ...fleet }),
    );
    try {
      await until(() => statuses.some((s) => s.state === "online"), 10_000);
      const online = statuses.find((s) => s.state === "online")!;
      expect(online.model).toMatchObject({
        version: "1",
        kind: "fp32",
        rejectedAtStart: { path: bad, code: "MODEL_TRUNCATED" },
      });
      expect(online.model?.rejectedAtStart?.message).toContain(bad);
      // The operator's view of the fleet says so, beside the version that serves.
      const listed = await runQuantd(["fleet", "devices", "--broker", broker.url, "--fleet", "lab"], {
        env: ENV,
      });
      expect(listed.code).toBe(0);
      expect(listed.stdout).toMatch(/^board-9 +online .* 1 +fp32 .* degraded$/m);
      expect(listed.stdout).toContain(
        `board-9 degraded: started with ${bad}, which did not load (MODEL_TRUNCATED: `,
      );
      expect(listed.stdout).toContain("; version 1 serves instead");
      // And the device's own answer, asked with the operator's key.
      const asked = await runQuantd(
        ["fleet", "report", "board-9", "--broker", broker.url, "--fleet", "lab", "--key", OPERATOR_KEY_FILE],
        { env: ENV },
      );
      expect(asked.code).toBe(0);
      expect(asked.stdout).toMatch(/^model +1 \(fp32\)$/m);
      expect(asked.stdout).toMatch(
        new RegExp(
          `^degraded +started with ${bad}, which did not load \\(MODEL_TRUNCATED: .*; version 1 serves instead$`,
          "m",
        ),
      );
    } finally {
      await agent.stop();
      await conn.close();
      await broker.dispose();
    }
  },
);

describe("a promotion of a file that does not load is recorded with an honest kind", () => {
  test("truncated, custom-op and float16 fp32 files: kind unknown in /v1/models and `agent models`; a file that loads and fails its probe keeps fp32", async () => {
    const base = join(dir, "promote-kinds");
    mkdirSync(base);
    const agent = await startAgent(testConfig(base));
    const sock = agent.config.socketPath;
    try {
      const unloadable = [truncatedModel(), await customOpModel(), await fp16Model()];
      for (const path of unloadable) {
        const r = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path }) });
        expect(r.status).toBe(400);
      }
      const nan = await makeHeadVariant(base, "nan-logits");
      const probed = await call(sock, "/v1/models/promote", { body: JSON.stringify({ path: nan }) });
      expect((probed.body["error"] as { code: string }).code).toBe("MODEL_PROBE_FAILED");

      const listed = await call(sock, "/v1/models");
      const versions = listed.body["versions"] as {
        id: number;
        kind: string;
        state: string;
        metrics: Record<string, unknown>;
      }[];
      const bySource = (p: string) => versions.find((v) => v.metrics["source"] === p)!;
      for (const path of unloadable)
        expect(bySource(path)).toMatchObject({ state: "rejected", kind: "unknown" });
      expect(bySource(nan)).toMatchObject({ state: "rejected", kind: "fp32" });
      expect(bySource(shippedModelPath)).toMatchObject({ state: "active", kind: "fp32" });

      const table = await runQuantd(["agent", "models", "--socket", sock], { env: ENV });
      expect(table.code).toBe(0);
      const rows = table.stdout.split("\n").filter((l) => /\brejected\b/.test(l));
      expect(rows.filter((l) => /\brejected\s+unknown\b/.test(l))).toHaveLength(3);
      expect(rows.filter((l) => /\brejected\s+fp32\b/.test(l))).toHaveLength(1);
    } finally {
      await agent.stop();
    }
  });
});
