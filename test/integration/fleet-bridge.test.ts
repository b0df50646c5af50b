/**
 * Beyond one broker: devices on an edge mosquitto bridged (MQTT 5, QoS 1,
 * both directions for `quantd/v1/#`) to a core mosquitto where the controller
 * and the operator are. Status, commands with request/response properties,
 * job progress and reports all cross the bridge; the controller assumes
 * nothing about which node a device is connected to. The same bridge section
 * is what docs/fleet.md gives for a site broker.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { createFleetRequester, type FleetRequester } from "../../src/fleet/operator/requester.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey, OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

/** The bridge section an edge broker needs to join a core broker at `host:port`. */
function bridgeConfig(name: string, coreAddress: string): string[] {
  return [
    `connection ${name}`,
    `address ${coreAddress}`,
    "bridge_protocol_version mqttv50",
    "topic quantd/v1/# both 1",
    "cleansession false",
    `remote_clientid ${name}`,
    "try_private true",
    "notifications false",
    "restart_timeout 1",
  ];
}

const handler: FleetCommandHandler = {
  async recalibrate(params, ctx) {
    ctx.progress("calibrating", 0.5);
    return { agreement: 0.993, int8P50Ms: 2.9, fp32P50Ms: 7.7, params };
  },
  quantizeDynamic: async () => ({}),
  bench: async () => ({}),
  rollback: async () => ({}),
  status: async () => ({ site: "edge" }),
  setConfig: async (p) => ({ ...p }),
  collect: async () => ({}),
};

describe.skipIf(!hasMosquitto)("fleet across a mosquitto bridge", () => {
  let core: Mosquitto;
  let edge: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let device: { link: FleetLink; store: Store };
  let op: MqttConnection;
  let req: FleetRequester;

  beforeAll(async () => {
    core = await startMosquitto();
    edge = await startMosquitto({ extraConfig: bridgeConfig("edge-1", `127.0.0.1:${core.port}`) });
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-bridge-"));
    store = await openSqliteFleetStore(join(dir, "controller.db"));
    controller = startController({ broker: core.url, store, clientId: "core-controller" });
    expect(await controller.waitReady(5000)).toBe(true);
    // Give the bridge a moment to connect before the device publishes its retained status.
    const deadline = Date.now() + 5000;
    while (!edge.log().includes("edge-1") && Date.now() < deadline) await Bun.sleep(50);
    await Bun.sleep(300);
    const s = await openStore(join(dir, "edge-device.db"));
    const deviceKey = newDeviceKey();
    await enroll(store, "sites", [["edge-pi", deviceKey.publicKey]]);
    const link = createFleetLink(
      { broker: edge.url, fleet: "sites", device: "edge-pi", operatorKeys: OPERATOR_KEYS },
      {
        store: s,
        deviceKey,
        handler,
        status: () => ({ agentVersion: "0.1.0", model: { version: "3", kind: "int8-static" } }),
      },
    );
    expect(await link.waitConnected(5000)).toBe(true);
    device = { link, store: s };
    op = await connectMqttOnce({ url: core.url, clientId: "core-operator" });
    req = await createFleetRequester(op, "sites", { signer: operator });
  }, 30_000);
  afterAll(async () => {
    await req?.close();
    await op?.close();
    await device?.link.stop({ flushMs: 500 });
    device?.store.close();
    await controller?.stop();
    await store?.close();
    await edge?.dispose();
    await core?.dispose();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test("the core controller sees the edge device's status", async () => {
    const deadline = Date.now() + 8000;
    while ((await store.device("sites", "edge-pi"))?.online !== true && Date.now() < deadline)
      await Bun.sleep(50);
    expect(await store.device("sites", "edge-pi")).toMatchObject({
      online: true,
      model: { version: "3", kind: "int8-static" },
    });
  });

  test("a command from the core reaches the edge device; its reply, progress and report come back", async () => {
    const reportP = req.waitForReport("edge-pi", "bridge-1", 10_000);
    const status = await req.request("edge-pi", "status", {}, { timeoutMs: 8000 });
    expect(status).toMatchObject({ ok: true, result: { site: "edge", device: "edge-pi" } });
    const reply = await req.request(
      "edge-pi",
      "recalibrate",
      { samples: 32 },
      { id: "bridge-1", timeoutMs: 8000 },
    );
    expect(reply).toMatchObject({ ok: true, result: { jobId: "bridge-1" } });
    const done = await reportP;
    expect(done.state).toBe("SUCCEEDED");
    expect(done.report.result).toMatchObject({ agreement: 0.993, params: { samples: 32 } });
    const deadline = Date.now() + 5000;
    while (
      (await store.job("sites", "edge-pi", "bridge-1"))?.state !== "SUCCEEDED" &&
      Date.now() < deadline
    ) {
      await Bun.sleep(50);
    }
    expect((await store.job("sites", "edge-pi", "bridge-1"))?.state).toBe("SUCCEEDED");
  });
});
