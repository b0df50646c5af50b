/**
 * The real agent on the fleet: `startAgent` with `--broker --device --fleet`
 * serving the shipped BERT-Mini, its job runner taking fleet recalibrations,
 * and the agent's command handler (bench on the live registry, rollback,
 * status). Measures command received → job IN_PROGRESS on loopback.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { reportFigures } from "../../src/fleet/controller/device-views.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import { connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { createFleetRequester, type FleetRequester } from "../../src/fleet/operator/requester.ts";
import {
  decodeJson,
  type JobMessage,
  type StatusMessage,
  type TelemetryMessage,
} from "../../src/fleet/protocol.ts";
import { writeNewSigningKey } from "../../src/fleet/signing.ts";
import { enroll, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { repoRoot } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";
import { classifyOverSocket, tempDir, testConfig } from "./agent-harness.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

describe.skipIf(!hasMosquitto)("the agent on the fleet", () => {
  let broker: Mosquitto;
  let dir: string;
  let agent: Agent;
  let conn: MqttConnection;
  /** A client of its own that counts every report message by id (the requester dedupes; this must not). */
  let counter: MqttConnection;
  const reportCounts = new Map<string, number>();
  let req: FleetRequester;
  let fleetStore: FleetStore;
  let controller: FleetController;
  const statuses: StatusMessage[] = [];
  const progress: { device: string; msg: JobMessage; t: number }[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = tempDir("quantd-fleet-agent-");
    conn = await connectMqttOnce({ url: broker.url, clientId: "operator" });
    conn.onMessage((m) => {
      if (m.topic === "quantd/v1/lab/board-1/status") statuses.push(decodeJson(m.payload) as StatusMessage);
    });
    await conn.subscribe(["quantd/v1/lab/board-1/status"], { qos: 1 });
    req = await createFleetRequester(conn, "lab", { signer: operator });
    counter = await connectMqttOnce({ url: broker.url, clientId: "report-counter" });
    counter.onMessage((m) => {
      const id = (decodeJson(m.payload) as { id: string }).id;
      reportCounts.set(id, (reportCounts.get(id) ?? 0) + 1);
    });
    await counter.subscribe(["quantd/v1/lab/board-1/report"], { qos: 1 });
    fleetStore = await openSqliteFleetStore(":memory:");
    controller = startController({
      broker: broker.url,
      store: fleetStore,
      clientId: "agent-test-controller",
    });
    expect(await controller.waitReady(5000)).toBe(true);
    // The board's key, made and enrolled before it first speaks, as an installer would.
    const deviceKeyFile = join(dir, "board-1.key");
    await enroll(fleetStore, "lab", [["board-1", writeNewSigningKey(deviceKeyFile).publicKey]]);
    req.onJobProgress((device, msg) => progress.push({ device, msg, t: performance.now() }));
    // Telemetry every 50 ms × 10 samples, so a message arrives within the test.
    agent = await startAgent(
      testConfig(
        dir,
        {
          QUANTD_FLEET_TELEMETRY_INTERVAL_MS: "50",
          // Room for the real recalibration's pool: the harness's 1,000 rows leave 936 to
          // validate, where a single flip already keeps the 95 % bound under 99.5 %.
          QUANTD_SAMPLE_POOL_MAX_ROWS: "4000",
          QUANTD_FLEET_OPERATOR_KEYS: operator.publicKey,
          QUANTD_FLEET_DEVICE_KEY_FILE: deviceKeyFile,
        },
        { broker: broker.url, device: "board-1", fleet: "lab" },
      ),
    );
    expect(await agent.fleet!.waitConnected(5000)).toBe(true);
  }, 60_000);
  afterAll(async () => {
    await agent?.stop();
    await controller?.stop();
    await fleetStore?.close();
    await req?.close();
    await conn?.close();
    await counter?.close();
    await broker?.dispose();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test("the retained status names the agent and the serving model", async () => {
    const deadline = Date.now() + 5000;
    while (!statuses.some((s) => s.state === "online") && Date.now() < deadline) await Bun.sleep(20);
    const online = statuses.find((s) => s.state === "online")!;
    const active = agent.registry.activeVersion()!;
    expect(online.model).toEqual({ version: String(active.id), kind: active.kind, sha256: active.sha256 });
    expect(online.agentVersion).toMatch(/^\d+\.\d+\.\d+/);
  });

  test("telemetry carries request rate, batch latency percentiles and RSS from the live server", async () => {
    const seen: TelemetryMessage[] = [];
    const off = conn.onMessage((m) => {
      if (m.topic === "quantd/v1/lab/board-1/telemetry") seen.push(decodeJson(m.payload) as TelemetryMessage);
    });
    await conn.subscribe(["quantd/v1/lab/board-1/telemetry"], { qos: 0 });
    const deadline = Date.now() + 10_000;
    while (!seen.some((t) => t.samples.some((x) => x.latencyMs !== undefined)) && Date.now() < deadline) {
      expect(
        (await classifyOverSocket(agent.config.socketPath, ["a fine film", "dull and slow"])).status,
      ).toBe(200);
      await Bun.sleep(100);
    }
    off();
    const busy = seen.flatMap((t) => t.samples).find((x) => x.latencyMs !== undefined);
    expect(busy?.latencyMs?.p50).toBeGreaterThan(0);
    // Real quantiles of the interval's batch times, not the histogram's bucket bounds (1, 2.5, 5, 10 … ms).
    const bounds = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];
    const { p50, p95, p99 } = busy!.latencyMs!;
    expect(bounds.includes(p50) && bounds.includes(p95) && bounds.includes(p99)).toBe(false);
    expect(p50).toBeLessThanOrEqual(p95);
    expect(p95).toBeLessThanOrEqual(p99);
    // The memory the agent may use (cgroup memory.max, else physical memory), for the dashboard's alert.
    expect(busy?.memoryLimitBytes).toBeGreaterThan(busy?.rssBytes ?? 0);
    expect(busy?.requestRate).toBeGreaterThan(0);
    expect(busy?.rssBytes).toBeGreaterThan(50 * 1048576);
    // The process_* figures of /metrics travel too, for boards no scraper reaches.
    const proc = busy?.["process"] as Record<string, number> | undefined;
    expect(proc?.["cpuSeconds"]).toBeGreaterThan(0);
    expect(proc?.["residentBytes"]).toBeGreaterThan(50 * 1048576);
    expect(proc?.["openFds"]).toBeGreaterThan(3);
    expect(Math.abs(proc!["startTimeSeconds"]! - (Date.now() / 1000 - process.uptime()))).toBeLessThan(5);
    // Live input lengths against the serving model's calibration (the fp32 model has none: nothing outside).
    const drift = busy?.["drift"] as Record<string, number> | undefined;
    expect(drift?.["inputs"]).toBeGreaterThan(0);
    expect(drift?.["outOfCoverage"]).toBe(0);
    expect(drift?.["longestTokens"]).toBeGreaterThanOrEqual(4);
    expect(seen[0]?.samples.length).toBe(10);
    expect(seen[0]?.outbox).toMatchObject({ dropped: 0 });
  }, 30_000);

  test("a bench sent over the fleet obeys quantd job cancel", async () => {
    const done = req.waitForReport("board-1", "bench-cancel", 60_000);
    const reply = await req.request("board-1", "bench", { iterations: 1000 }, { id: "bench-cancel" });
    expect(reply.ok).toBe(true);
    await until(
      () => agent.store.jobs.get("bench-cancel")?.state === "IN_PROGRESS",
      10_000,
      "the bench running",
    );
    const r = await runQuantd(["job", "cancel", "bench-cancel", "--state-dir", agent.config.stateDir]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const finished = await done;
    expect(finished.state).toBe("FAILED");
    expect(finished.report.error?.code).toBe("JOB_CANCELLED");
  }, 60_000);

  test("status and bench run on the live registry", async () => {
    const status = await req.request("board-1", "status");
    expect(status).toMatchObject({ ok: true, result: { jobs: "this agent", queueDepth: 0 } });
    const done = req.waitForReport("board-1", "bench-1", 60_000);
    expect(await req.request("board-1", "bench", { iterations: 5 }, { id: "bench-1" })).toMatchObject({
      ok: true,
    });
    const report = (await done).report;
    expect(report.state).toBe("SUCCEEDED");
    const r = report.result as { p50Ms: number; p95Ms: number; runs: number; kind: string };
    expect(r.runs).toBe(5);
    expect(r.p50Ms).toBeGreaterThan(0);
    expect(r.p95Ms).toBeGreaterThanOrEqual(r.p50Ms);
  }, 60_000);

  test("a fleet recalibration goes to the agent's job runner: IN_PROGRESS within 1 s, then its report", async () => {
    const sent = performance.now();
    const done = req.waitForReport("board-1", "recal-1", 120_000);
    const reply = await req.request("board-1", "recalibrate", { samples: 16 }, { id: "recal-1" });
    expect(reply).toMatchObject({ ok: true, result: { jobId: "recal-1", state: "QUEUED" } });
    const finished = await done;
    const started = progress.find((p) => p.msg.id === "recal-1" && p.msg.state === "IN_PROGRESS");
    expect(started).toBeDefined();
    const latency = started!.t - sent;
    console.log(`fleet command → job IN_PROGRESS (real agent, loopback): ${latency.toFixed(0)} ms`);
    // The ≤ 1 s target is the figure printed above; the bound only catches a command left for a later poll.
    expect(latency).toBeLessThan(5000);
    // The pool is empty: the job runs and fails cleanly with the store's code, reported to the fleet.
    expect(finished.state).toBe("FAILED");
    expect(finished.report.error?.code).toBe("CALIB_EMPTY");
    expect(agent.store.jobs.require("recal-1")).toMatchObject({ type: "recalibrate", state: "FAILED" });
    // One report per job: the runner queues it, the link only sends it (it used to queue a second one).
    await Bun.sleep(500);
    expect(reportCounts.get("recal-1")).toBe(1);
  }, 120_000);

  test("a rollback with no earlier version fails with NOT_FOUND; set-config refuses what cannot change live", async () => {
    const done = req.waitForReport("board-1", "rb-1", 30_000);
    await req.request("board-1", "rollback", {}, { id: "rb-1" });
    expect((await done).report.error?.code).toBe("NOT_FOUND");
    const set = await req.request("board-1", "set-config", { "batching.maxBatch": 4 });
    expect(set).toMatchObject({
      ok: false,
      error: { code: "CONFIG_INVALID", details: { key: "batching.maxBatch" } },
    });
  }, 30_000);

  test("a real recalibration over the fleet promotes an int8 model; the controller and the status follow", async () => {
    const rows = readFileSync(join(repoRoot, "calib/samples/sst2-train-4k.tsv"), "utf8")
      .split("\n")
      // 64 calibrate; the default gate's validation pool (2,752) needs the rest
      .slice(1, 2901)
      .filter((l) => l.includes("\t"))
      .map((l) => ({ text: l.split("\t")[1]! }));
    agent.store.samples.add(rows, { source: "file" });
    const done = req.waitForReport("board-1", "recal-real", 300_000);
    const reply = await req.request("board-1", "recalibrate", { samples: 64 }, { id: "recal-real" });
    expect(reply.ok).toBe(true);
    const finished = await done;
    // On a loaded machine the benchmark may refuse the candidate: say why, so a failure is not a mystery.
    if (finished.state !== "SUCCEEDED") {
      const why =
        (finished.report.result as { reasons?: unknown } | undefined)?.reasons ?? finished.report.error;
      console.log(`not promoted: ${JSON.stringify(why)}`);
    }
    expect(finished.state).toBe("SUCCEEDED");
    expect(finished.report.result).toMatchObject({ decision: "promoted" });
    await Bun.sleep(500);
    expect(reportCounts.get("recal-real")).toBe(1);
    const active = agent.registry.activeVersion()!;
    expect(active.kind).toMatch(/^int8-/);
    // The retained status follows the swap without a reconnect.
    const deadline = Date.now() + 5000;
    while (statuses.at(-1)?.model?.version !== String(active.id) && Date.now() < deadline)
      await Bun.sleep(50);
    expect(statuses.at(-1)?.model).toMatchObject({ version: String(active.id), kind: active.kind });
    // The controller stored the report; the dashboard's figures come out of the agent's result.
    while (
      (await fleetStore.device("lab", "board-1"))?.lastReport?.id !== "recal-real" &&
      Date.now() < deadline + 5000
    ) {
      await Bun.sleep(50);
    }
    const stored = await fleetStore.device("lab", "board-1");
    const figures = reportFigures(stored?.lastReport?.result);
    console.log(`real recalibration over MQTT: ${JSON.stringify(figures)}`);
    expect(figures.int8P50Ms).toBeGreaterThan(0);
    expect(figures.fp32P50Ms).toBeGreaterThan(0);
    expect(figures.agreement).toBeGreaterThanOrEqual(0.99);
    // The gate's figure travels with it: the bound cleared the 99.5 % gate.
    expect(figures.agreementLower).toBeGreaterThanOrEqual(0.995);
    expect(figures.agreementLower).toBeLessThan(figures.agreement!);
    expect(figures.modelVersion).toBe(String(active.id));

    // And back: a fleet rollback serves the fp32 version again.
    const back = req.waitForReport("board-1", "rb-2", 60_000);
    await req.request("board-1", "rollback", {}, { id: "rb-2" });
    expect((await back).state).toBe("SUCCEEDED");
    expect(agent.registry.activeVersion()?.kind).toBe("fp32");
  }, 300_000);

  test("stopping the agent publishes offline (shutdown)", async () => {
    await agent.stop();
    const deadline = Date.now() + 5000;
    while (statuses.at(-1)?.state !== "offline" && Date.now() < deadline) await Bun.sleep(20);
    expect(statuses.at(-1)).toMatchObject({ state: "offline", reason: "shutdown", device: "board-1" });
  });
});
