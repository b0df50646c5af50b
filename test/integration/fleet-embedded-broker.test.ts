/**
 * The embedded broker of `quantd demo` carries the fleet protocol as
 * mosquitto does: the link's retained status, an MQTT 5 request/response
 * round trip (Response Topic, Correlation Data), a job's report, the Last Will
 * after its delay, and a controller that finds no shared subscriptions and
 * subscribes plainly. Real parts throughout: the link, a SQLite store, the
 * requester, the controller with its SQLite fleet store.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startController } from "../../src/fleet/controller/controller.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import { type EmbeddedBroker, startEmbeddedBroker } from "../../src/fleet/embedded-broker.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqtt, connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { decodeJson, type StatusMessage } from "../../src/fleet/protocol.ts";
import { createFleetRequester } from "../../src/fleet/operator/requester.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey, OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { until } from "../helpers/until.ts";

const handler: FleetCommandHandler = {
  recalibrate: async () => ({ agreement: 1 }),
  quantizeDynamic: async () => ({ agreement: 1 }),
  bench: async (_p, ctx) => {
    ctx.progress("measuring", 0.5);
    return { p50Ms: 4.2 };
  },
  rollback: async () => ({}),
  status: async () => ({ queueDepth: 0 }),
  setConfig: async (p) => ({ ...p }),
  collect: async () => ({ capturing: false }),
};

describe("the embedded MQTT 5 broker", () => {
  let broker: EmbeddedBroker;
  let dir: string;

  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    dir = mkdtempSync(join(tmpdir(), "quantd-embedded-broker-"));
  });
  afterAll(async () => {
    await broker?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("listens on a random loopback port", () => {
    expect(broker.url).toMatch(/^mqtt:\/\/127\.0\.0\.1:\d+$/);
    expect(broker.port).toBeGreaterThan(0);
  });

  test("carries status, request/response, a job's report and the delayed will; the controller subscribes without $share", async () => {
    const fleetStore = await openSqliteFleetStore(join(dir, "fleet.db"));
    const logs: string[] = [];
    const controller = startController({
      broker: broker.url,
      store: fleetStore,
      clientId: "embedded-controller",
      log: (l) => logs.push(l),
    });
    const store: Store = await openStore(join(dir, "device.db"));
    let deviceConn: MqttConnection | undefined;
    const deviceKey = newDeviceKey();
    await enroll(fleetStore, "demo", [["board", deviceKey.publicKey]]);
    const link: FleetLink = createFleetLink(
      { broker: broker.url, fleet: "demo", device: "board", willDelaySec: 1, operatorKeys: OPERATOR_KEYS },
      {
        store,
        deviceKey,
        handler,
        status: () => ({ agentVersion: "0.1.0", model: { version: "1", kind: "fp32" } }),
        connect: (o) => {
          deviceConn = connectMqtt(o);
          return deviceConn;
        },
      },
    );
    const ops = await connectMqttOnce({ url: broker.url, clientId: "embedded-operator" });
    const statuses: StatusMessage[] = [];
    ops.onMessage((m) => {
      if (m.topic === "quantd/v1/demo/board/status") statuses.push(decodeJson(m.payload) as StatusMessage);
    });
    await ops.subscribe(["quantd/v1/demo/board/status"], { qos: 1 });
    const req = await createFleetRequester(ops, "demo", { signer: operator });
    try {
      expect(await controller.waitReady(5000)).toBe(true);
      expect(logs.join("\n")).toContain("no shared subscriptions");
      expect(await link.waitConnected(5000)).toBe(true);
      await until(async () => (await fleetStore.device("demo", "board"))?.online === true);

      // Request/response: the reply comes back on the Response Topic with the Correlation Data.
      const reply = await req.request("board", "status", {}, { timeoutMs: 3000 });
      expect(reply).toMatchObject({ ok: true, result: { state: "online", queueDepth: 0 } });

      const done = req.waitForReport("board", "bench-1", 5000);
      expect((await req.request("board", "bench", {}, { id: "bench-1" })).ok).toBe(true);
      expect((await done).report).toMatchObject({ state: "SUCCEEDED", result: { p50Ms: 4.2 } });
      await until(async () => (await fleetStore.reports("demo", "board")).length === 1);
      expect(controller.stats().duplicateReports).toBe(0);

      // The device vanishes: after the will delay the broker publishes `offline` (reason will).
      const gone = Date.now();
      await deviceConn!.close({ force: true });
      await until(() => statuses.at(-1)?.state === "offline", 5000);
      expect(statuses.at(-1)).toMatchObject({ state: "offline", reason: "will" });
      expect(Date.now() - gone).toBeGreaterThanOrEqual(900);
      await until(async () => (await fleetStore.device("demo", "board"))?.online === false);
    } finally {
      await req.close();
      await ops.close();
      await link.stop({ flushMs: 200 });
      store.close();
      await controller.stop();
      await fleetStore.close();
    }
  }, 30_000);

  test("a transient controller takes only its fleet's messages", async () => {
    const store = await openSqliteFleetStore(":memory:");
    const controller = startController({
      broker: broker.url,
      store,
      clientId: "transient-controller",
      transient: { fleet: "mine" },
    });
    const pub = await connectMqttOnce({ url: broker.url, clientId: "transient-publisher" });
    try {
      expect(await controller.waitReady(5000)).toBe(true);
      const key = newDeviceKey();
      for (const fleet of ["other", "mine"]) {
        await enroll(store, fleet, [["b1", key.publicKey]]);
        const status: StatusMessage = { state: "online", fleet, device: "b1", at: Date.now() };
        const topic = `quantd/v1/${fleet}/b1/status`;
        const body = JSON.stringify(status);
        await pub.publish(topic, body, {
          qos: 1,
          userProperties: key.sign(topic, new TextEncoder().encode(body)),
        });
      }
      await until(async () => (await store.devices()).length > 0);
      await Bun.sleep(200);
      expect((await store.devices()).map((d) => `${d.fleet}/${d.device}`)).toEqual(["mine/b1"]);
    } finally {
      await pub.close();
      await controller.stop();
      await store.close();
    }
  });

  test("close() ends every connection", async () => {
    const b = await startEmbeddedBroker();
    const c = await connectMqttOnce({ url: b.url, clientId: "closer", reconnectPeriodMs: 0 });
    expect(b.connectedClients()).toBe(1);
    const closed = new Promise<void>((r) => c.onClose(() => r()));
    await b.close();
    await closed;
    expect(c.connected).toBe(false);
    await c.close();
  });
});
