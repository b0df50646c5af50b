/**
 * A release on a real agent: a real mosquitto, a controller serving releases
 * over HTTP, and `startAgent` on the shipped BERT-Mini. A release of a
 * retrained fp32 (the shipped model with its classifier bias moved, so a
 * different model with the same tokenizer and labels) is downloaded,
 * verified, recalibrated on the board's own samples and promoted, and its
 * int8 version records the new fp32 base; a tampered file and a manifest
 * signed by an unknown key are refused before anything is loaded; a partial
 * download is resumed rather than fetched again.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { createReleaseHandler, RELEASE_JOB, releaseOf } from "../../src/agent/release.ts";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { publishRelease } from "../../src/fleet/controller/release-routes.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import { connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { buildRelease, type SignedRelease } from "../../src/fleet/release.ts";
import type { Job } from "../../src/store/jobs.ts";
import { createFleetRequester, type FleetRequester } from "../../src/fleet/operator/requester.ts";
import { type SigningKey, writeNewSigningKey } from "../../src/fleet/signing.ts";
import { enroll, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { trainingRows, writeRetrainedModel } from "../helpers/release-fixtures.ts";
import { tempDir, testConfig } from "./agent-harness.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

/** What a release job needs in its command: a small, fast recalibration. */
const FAST = { samples: 32, gate: { minAgreement: 0.9 }, maxLatencyRatio: 3 };

describe.skipIf(!hasMosquitto)("a release on a real agent", () => {
  let broker: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  let agent: Agent;
  let conn: MqttConnection;
  let req: FleetRequester;
  let releaseKey: SigningKey;
  const releasesDir = (): string => join(dir, "controller-releases");

  const publish = async (name: string, shift: number, key = releaseKey, rows = 0): Promise<SignedRelease> => {
    const src = await writeRetrainedModel(join(dir, name), shift, rows);
    const rel = await buildRelease(src, { key, version: name, notes: `shift ${shift}` });
    await publishRelease(store, releasesDir(), src, rel);
    return rel;
  };
  const send = async (rel: SignedRelease, id: string) => {
    const done = req.waitForReport("board-1", id, 300_000);
    const reply = await req.request(
      "board-1",
      "release",
      { release: rel.id, url: dashboard.url, ...FAST },
      { id },
    );
    expect(reply.ok).toBe(true);
    return await done;
  };

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = tempDir("quantd-release-agent-");
    releaseKey = writeNewSigningKey(join(dir, "release.key"));
    store = await openSqliteFleetStore(join(dir, "fleet.db"));
    controller = startController({ broker: broker.url, store, clientId: "release-agent-controller" });
    dashboard = startDashboard(controller, "127.0.0.1:0", { releasesDir: releasesDir() });
    const deviceKeyFile = join(dir, "board-1.key");
    await enroll(store, "lab", [["board-1", writeNewSigningKey(deviceKeyFile).publicKey]]);
    agent = await startAgent(
      testConfig(
        dir,
        {
          QUANTD_FLEET_OPERATOR_KEYS: operator.publicKey,
          QUANTD_FLEET_RELEASE_KEYS: releaseKey.publicKey,
          QUANTD_FLEET_DEVICE_KEY_FILE: deviceKeyFile,
          QUANTD_FLEET_KEEP_RELEASES: "1",
        },
        { broker: broker.url, device: "board-1", fleet: "lab" },
      ),
    );
    agent.store.samples.add(trainingRows(400), { source: "file" });
    expect(await agent.fleet!.waitConnected(5000)).toBe(true);
    conn = await connectMqttOnce({ url: broker.url, clientId: "release-operator" });
    req = await createFleetRequester(conn, "lab", { signer: operator });
  }, 60_000);
  afterAll(async () => {
    await agent?.stop();
    await req?.close();
    await conn?.close();
    dashboard?.stop();
    await controller?.stop();
    await store?.close();
    await broker?.dispose();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test("a good release is downloaded once, recalibrated on the board's samples and served as int8", async () => {
    const rel = await publish("v2", 0.05, releaseKey, 120);
    const before = agent.registry.activeVersion()!;
    const done = await send(rel, "rel-good");
    expect(done.state).toBe("SUCCEEDED");
    const result = done.report.result as Record<string, unknown>;
    expect(result).toMatchObject({ decision: "promoted", release: { id: rel.id, version: "v2" } });
    const total = rel.manifest.files.reduce((a, f) => a + f.size, 0);
    expect(result.download).toMatchObject({ bytes: total, attempts: 1, releaseBytes: total });
    // Validated against the release's labels as well as against the new fp32.
    expect(result.labelled).toMatchObject({ samples: 120 });
    const active = agent.registry.activeVersion()!;
    expect(active.id).not.toBe(before.id);
    expect(active.kind).toMatch(/^int8-/);
    const base = join(agent.config.stateDir, "releases", rel.id, "model.onnx");
    expect(releaseOf(active.metrics)).toEqual({ id: rel.id, base });
    expect(existsSync(base)).toBe(true);
  }, 300_000);

  test("a tampered file is refused after download, before anything loads; the serving model stays", async () => {
    const rel = await publish("v3-tampered", 0.08);
    // The controller's copy changes after signing: same size, one byte different.
    const path = join(releasesDir(), rel.id, "model.onnx");
    const bytes = readFileSync(path);
    const at = bytes.length - 100;
    bytes.writeUInt8(bytes.readUInt8(at) ^ 0xff, at);
    writeFileSync(path, bytes);
    const serving = agent.registry.activeVersion()!.id;
    const done = await send(rel, "rel-tampered");
    expect(done.state).toBe("REJECTED");
    expect(done.report.error?.code).toBe("DATA_MISMATCH");
    expect(String(done.report.error?.message)).toContain("model.onnx");
    expect(agent.registry.activeVersion()!.id).toBe(serving);
    expect(existsSync(join(agent.config.stateDir, "releases", rel.id))).toBe(false);
    expect(existsSync(join(agent.config.stateDir, "releases", `${rel.id}.part`, "model.onnx"))).toBe(false);
  }, 120_000);

  test("a manifest signed by an unknown key is refused before any download", async () => {
    const stranger = writeNewSigningKey(join(dir, "stranger.key"));
    const rel = await publish("v4-stranger", 0.02, stranger);
    const done = await send(rel, "rel-stranger");
    expect(done.state).toBe("REJECTED");
    expect(done.report.error).toMatchObject({
      code: "COMMAND_UNAUTHORIZED",
      details: { reason: "unknown-key" },
    });
    expect(existsSync(join(agent.config.stateDir, "releases", `${rel.id}.part`))).toBe(false);
  }, 60_000);

  test("a partial download resumes from where it stopped; at most keepReleases are kept", async () => {
    const rel = await publish("v5", 0.03);
    const model = readFileSync(join(releasesDir(), rel.id, "model.onnx"));
    const part = join(agent.config.stateDir, "releases", `${rel.id}.part`);
    mkdirSync(part, { recursive: true });
    const half = Math.floor(model.byteLength / 2);
    writeFileSync(join(part, "model.onnx"), model.subarray(0, half));
    const done = await send(rel, "rel-resume");
    expect(done.state).toBe("SUCCEEDED");
    const total = rel.manifest.files.reduce((a, f) => a + f.size, 0);
    expect((done.report.result as { download: { bytes: number } }).download.bytes).toBe(total - half);
    // v2 is the rollback target: kept with v5 although only one release is kept beyond those in use.
    const first = releaseOf(agent.store.models.list("retired")[0]?.metrics);
    expect(first).toBeDefined();
    expect(existsSync(join(agent.config.stateDir, "releases", first!.id))).toBe(true);
  }, 300_000);
  test("a disk that cannot hold the release fails the job before any download", async () => {
    const rel = await publish("v6-big", 0.01);
    const stateDir = join(dir, "small-disk");
    mkdirSync(stateDir, { recursive: true });
    // The agent's own parts, with a file system that reports 1 MiB free.
    const handler = createReleaseHandler({
      store: agent.store,
      promoter: agent.registry,
      baseModel: agent.config.model,
      stateDir,
      releaseKeys: [releaseKey.publicKey],
      keep: 3,
      servingLabels: () => agent.registry.active()?.labels,
      servingTokenizerDir: () => agent.config.tokenizerDir,
      freeBytes: () => 1024 * 1024,
    });
    // The job as the runner would hand it over (not queued in the agent's table, whose runner would take it).
    const job: Job = {
      id: "rel-disk",
      type: RELEASE_JOB,
      state: "IN_PROGRESS",
      stage: null,
      progress: 0,
      params: { release: rel.id, url: dashboard.url, ...FAST },
      result: null,
      error: null,
      cancelRequested: false,
      attempts: 1,
      createdAt: Date.now(),
      updatedAt: Date.now(),
      startedAt: Date.now(),
      finishedAt: null,
    };
    const stages: string[] = [];
    const err = await handler
      .run({
        job,
        workDir: join(stateDir, "work"),
        signal: new AbortController().signal,
        stage: (name) => stages.push(name),
        check: () => {},
        readCheckpoint: () => undefined,
        writeCheckpoint: () => {},
        log: () => {},
      })
      .then(
        () => undefined,
        (e: unknown) => e as { code?: string; details?: Record<string, unknown> },
      );
    expect(err?.code).toBe("DISK_FULL");
    expect(err?.details?.free).toBe(1024 * 1024);
    expect(stages).toEqual(["manifest", "download"]);
    expect(existsSync(join(stateDir, "releases", `${rel.id}.part`, "model.onnx"))).toBe(false);
  }, 60_000);
});
