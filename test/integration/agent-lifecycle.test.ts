/**
 * The agent's start, stop and traffic capture: the socket answers `live` at
 * once but `ready` only once the model is loaded, a stopping agent finishes
 * what it accepted, and with capture on, classified texts land in the sample
 * store as `live` samples.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { startAgent } from "../../src/agent/agent.ts";
import { ModelRegistry } from "../../src/agent/registry.ts";
import { MicroBatcher } from "../../src/server/batcher.ts";
import { startListeners } from "../../src/server/listen.ts";
import { createRoutes } from "../../src/server/routes.ts";
import { ServerMetrics } from "../../src/server/server-metrics.ts";
import { openSqlDatabase } from "../../src/store/open.ts";
import { databasePath, openStore } from "../../src/store/store.ts";
import { call, classifyOverSocket, TEXTS, tempDir, testConfig } from "./agent-harness.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

test("live at once, ready only after the model is loaded", async () => {
  // The agent's own parts, started in its order, with the check in between: listening, then the model.
  const config = testConfig(join(dir, "a"));
  const store = await openStore(databasePath(config.stateDir));
  const registry = new ModelRegistry({
    models: store.models,
    modelsDir: join(config.stateDir, "models"),
    tokenizerDir: config.tokenizerDir,
    threads: 1,
    swap: config.swap,
  });
  const batcher = new MicroBatcher(registry, config.batching);
  const metrics = new ServerMetrics({ queueDepth: () => batcher.depth, active: () => registry.active() });
  const listeners = await startListeners({
    socketPath: config.socketPath,
    maxRequestBodySize: config.limits.maxBodyBytes,
    handler: createRoutes({ modelName: "m", backend: registry, batcher, limits: config.limits, metrics }),
  });
  try {
    expect((await call(config.socketPath, "/v2/health/live")).status).toBe(200);
    const before = await call(config.socketPath, "/v2/health/ready");
    expect(before.status).toBe(503);
    expect((before.body["error"] as { code: string }).code).toBe("NOT_READY");
    expect(before.headers.get("retry-after")).toBe("1");
    const early = await classifyOverSocket(config.socketPath, ["too early"]);
    expect(early.status).toBe(503);
    expect((early.body["error"] as { code: string }).code).toBe("NOT_READY");

    await registry.start(config.model, false);
    expect((await call(config.socketPath, "/v2/health/ready")).status).toBe(200);
    expect((await classifyOverSocket(config.socketPath, ["now"])).status).toBe(200);
  } finally {
    await listeners.stop();
    await registry.close();
    store.close();
  }
});

test("a stopping agent finishes the requests it received, then removes its socket", async () => {
  // A long batching delay keeps the request queued, so the agent is seen holding it before it stops.
  const agent = await startAgent(testConfig(join(dir, "d"), { QUANTD_BATCHING_MAX_DELAY_MS: "500" }));
  const sock = agent.config.socketPath;
  let settled = false;
  const inflight = classifyOverSocket(sock, TEXTS).finally(() => {
    settled = true;
  });
  // Stop only once the server holds the request (queued or running), however slow the machine.
  while (!settled && agent.batcher.depth === 0 && !agent.batcher.busy) await Bun.sleep(0);
  expect(settled).toBe(false);
  const stopping = agent.stop();
  expect((await inflight).status).toBe(200);
  await stopping;
  expect(existsSync(sock)).toBe(false);
});

test("capture on: classified texts become live samples in the store", async () => {
  const agent = await startAgent(
    testConfig(join(dir, "b"), { QUANTD_CAPTURE_ENABLED: "true", QUANTD_CAPTURE_RATE: "1" }),
  );
  try {
    const texts = TEXTS.slice(0, 5);
    expect((await classifyOverSocket(agent.config.socketPath, texts)).status).toBe(200);
    // A rejected request captures nothing.
    expect((await classifyOverSocket(agent.config.socketPath, ["fine", ""])).status).toBe(400);
    // Capture is written in groups, at most a second later.
    for (let i = 0; i < 40 && agent.store.samples.count() < texts.length; i++) await Bun.sleep(50);
    const picked = agent.store.samples.pick({ n: 100, seed: 1 });
    expect(picked.map((s) => s.text).sort()).toEqual([...texts].sort());
    expect(picked.every((s) => s.source === "live" && s.tokenCount > 2)).toBe(true);
  } finally {
    await agent.stop();
  }
});

test("capture while another process holds the store's write lock: serving goes on, the samples wait", async () => {
  const agent = await startAgent(
    testConfig(join(dir, "e"), { QUANTD_CAPTURE_ENABLED: "true", QUANTD_CAPTURE_RATE: "1" }),
    { runJobs: false },
  );
  // A second connection, as `quantd collect` in another process would hold it.
  const other = await openSqlDatabase(databasePath(agent.config.stateDir));
  try {
    other.exec("BEGIN IMMEDIATE");
    const texts = TEXTS.slice(0, 3);
    const t0 = performance.now();
    expect((await classifyOverSocket(agent.config.socketPath, texts)).status).toBe(200);
    await Bun.sleep(1300); // past the first capture flush, which meets the lock
    // Far below the store's 5 s busy timeout: the flush did not block the server waiting for the lock.
    expect((await classifyOverSocket(agent.config.socketPath, ["during the lock"])).status).toBe(200);
    expect(performance.now() - t0).toBeLessThan(4000);
    expect(agent.store.samples.count()).toBe(0); // the lock really kept the first flush out
    other.exec("COMMIT");
    for (let i = 0; i < 60 && agent.store.samples.count() < 4; i++) await Bun.sleep(50);
    const kept = agent.store.samples.pick({ n: 100, seed: 1 }).map((s) => s.text);
    expect(kept.sort()).toEqual([...texts, "during the lock"].sort());
  } finally {
    if (other.inTransaction) other.exec("ROLLBACK");
    other.close();
    await agent.stop();
  }
});

test("capture off by default", async () => {
  const agent = await startAgent(testConfig(join(dir, "c")));
  try {
    expect((await classifyOverSocket(agent.config.socketPath, TEXTS.slice(0, 3))).status).toBe(200);
    await Bun.sleep(1100);
    expect(agent.store.samples.count()).toBe(0);
  } finally {
    await agent.stop();
  }
});

test("a job interrupted by the last stop is resumed at start and its change reaches the fleet outbox", async () => {
  const config = testConfig(join(dir, "resume"), {
    // Nothing listens there: the link keeps its messages in the outbox until a broker answers.
    QUANTD_FLEET_BROKER: "mqtt://127.0.0.1:9",
    QUANTD_FLEET_DEVICE: "board-1",
    QUANTD_FLEET_FLEET: "lab",
  });
  const before = await openStore(databasePath(config.stateDir));
  before.jobs.create({ type: "recalibrate", id: "cut-short" });
  expect(before.jobs.claimNext()?.id).toBe("cut-short");
  before.close();
  const logs: string[] = [];
  const agent = await startAgent(config, { log: (l) => logs.push(l) });
  try {
    expect(logs.join("\n")).toContain("job cut-short was interrupted");
    expect(logs.join("\n")).not.toContain("before initialization");
    const jobMessages = agent.store.outbox
      .peek(1000)
      .filter((m) => m.topic.includes("/job") && new TextDecoder().decode(m.payload).includes("cut-short"));
    expect(jobMessages.length).toBeGreaterThan(0);
  } finally {
    await agent.stop();
  }
});
