/**
 * `kill -9` of an agent in the middle of a release's download: the agent
 * (a `quantd agent` process) is killed while its download, paced by a
 * throttling proxy in front of the controller, is under way; started again,
 * its job runner resumes the interrupted job and the download continues from
 * the bytes already on disk, so the release is fetched about once, verified
 * and promoted.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { publishRelease } from "../../src/fleet/controller/release-routes.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import { connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { buildRelease, releaseBytes } from "../../src/fleet/release.ts";
import { createFleetRequester, type FleetRequester } from "../../src/fleet/operator/requester.ts";
import { writeNewSigningKey } from "../../src/fleet/signing.ts";
import {
  type AgentProcess,
  type ReleaseProxy,
  seedSamples,
  spawnAgent,
  startReleaseProxy,
} from "../helpers/fleet-agents.ts";
import { enroll, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { writeRetrainedModel } from "../helpers/release-fixtures.ts";
import { until } from "../helpers/until.ts";
import { tempDir } from "./agent-harness.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

describe.skipIf(!hasMosquitto)("kill -9 during a release download", () => {
  let broker: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  let proxy: ReleaseProxy;
  let conn: MqttConnection;
  let req: FleetRequester;
  let agent: AgentProcess | undefined;

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = tempDir("quantd-release-kill-");
    store = await openSqliteFleetStore(join(dir, "fleet.db"));
    controller = startController({ broker: broker.url, store, clientId: "kill-controller" });
    dashboard = startDashboard(controller, "127.0.0.1:0", { releasesDir: join(dir, "releases") });
    // About 10 s for the 29 MB model: long enough to be killed in the middle.
    proxy = startReleaseProxy(dashboard.url, 3 * 1024 * 1024);
    conn = await connectMqttOnce({ url: broker.url, clientId: "kill-operator" });
    req = await createFleetRequester(conn, "lab", { signer: operator });
  }, 60_000);
  afterAll(async () => {
    agent?.proc.kill("SIGKILL");
    await req?.close();
    await conn?.close();
    proxy?.stop();
    dashboard?.stop();
    await controller?.stop();
    await store?.close();
    await broker?.dispose();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test("the download resumes where it stopped and the release is promoted", async () => {
    const releaseKey = writeNewSigningKey(join(dir, "release.key"));
    const src = await writeRetrainedModel(join(dir, "v2"), 0.05);
    const rel = await buildRelease(src, { key: releaseKey, version: "v2" });
    await publishRelease(store, join(dir, "releases"), src, rel);
    const deviceKeyFile = join(dir, "board-1.key");
    await enroll(store, "lab", [["board-1", writeNewSigningKey(deviceKeyFile).publicKey]]);
    const options = {
      dir,
      name: "board-1",
      broker: broker.url,
      fleet: "lab",
      operatorKey: operator.publicKey,
      releaseKey: releaseKey.publicKey,
      deviceKeyFile,
    };
    await seedSamples(join(dir, "board-1", "state"));
    agent = spawnAgent(options);
    await until(
      async () => (await store.device("lab", "board-1"))?.online === true,
      60_000,
      "board-1 online",
    );

    const done = req.waitForReport("board-1", "rel-kill", 300_000);
    const params = {
      release: rel.id,
      url: proxy.url,
      samples: 32,
      gate: { minAgreement: 0.9 },
      maxLatencyRatio: 3,
    };
    const reply = await req.request("board-1", "release", params, { id: "rel-kill" });
    expect(reply.ok).toBe(true);
    const model = rel.manifest.files.find((f) => f.path === "model.onnx")!;
    const partial = join(agent.stateDir, "releases", `${rel.id}.part`, "model.onnx");
    const size = (): number => (existsSync(partial) ? statSync(partial).size : 0);
    await until(async () => size() > model.size * 0.3, 60_000, "a third of the model downloaded");
    agent.proc.kill("SIGKILL");
    await agent.proc.exited;
    const atKill = size();
    expect(atKill).toBeLessThan(model.size);

    agent = spawnAgent(options);
    const finished = await done;
    expect(finished.state).toBe("SUCCEEDED");
    const result = finished.report.result as {
      decision: string;
      download: { bytes: number; attempts: number };
    };
    expect(result.decision).toBe("promoted");
    expect(result.download.attempts).toBe(2);
    const total = releaseBytes(rel.manifest);
    // What the proxy sent: the release once, plus what was in flight when the agent died.
    console.log(
      `kill -9 at ${atKill} of ${model.size} model bytes: ${proxy.servedBytes} bytes served for a ${total}-byte release ` +
        `(${(proxy.servedBytes / total).toFixed(3)}×); the device counted ${result.download.bytes}`,
    );
    expect(proxy.servedBytes).toBeLessThan(total * 1.05);
    expect(proxy.servedBytes).toBeGreaterThanOrEqual(total);
    expect(result.download.bytes).toBeLessThanOrEqual(proxy.servedBytes);
  }, 400_000);
});
