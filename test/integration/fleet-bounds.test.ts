/**
 * Bounded messages against a real mosquitto: the Maximum Packet Size a
 * client announces in CONNECT keeps larger packets from reaching it at all;
 * below that, each kind of message has a cap (a command the device will not
 * parse, reports and statuses the controller refuses, telemetry cut to its
 * newest samples), every refusal counted. `/api/devices` lists summaries and
 * serves a full report on its own route. Broker passwords never reach a log
 * line or an error.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqtt, connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { MAX_COMMAND_BYTES, MAX_REPORT_BYTES, MAX_TELEMETRY_SAMPLES } from "../../src/fleet/protocol.ts";
import { createFleetRequester } from "../../src/fleet/operator/requester.ts";
import { QuantdError } from "../../src/errors.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { until } from "../helpers/until.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

const none = async (): Promise<unknown> => ({});
const handler: FleetCommandHandler = {
  recalibrate: none,
  quantizeDynamic: none,
  bench: none,
  rollback: none,
  status: async () => ({}),
  setConfig: async (p) => ({ ...p }),
  collect: none,
};

describe.skipIf(!hasMosquitto)("bounded fleet messages", () => {
  let broker: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  let device: { link: FleetLink; store: Store };
  let rogue: MqttConnection;
  const logs: string[] = [];
  const deviceKey = newDeviceKey();
  // What the rogue client sends is signed with the device's key: the caps alone must refuse it.
  const signed = (topic: string, body: string) => ({
    qos: 1 as const,
    userProperties: deviceKey.sign(topic, new TextEncoder().encode(body)),
  });

  beforeAll(async () => {
    broker = await startMosquitto({ users: { ctl: "ctl-secret-1", dev: "dev-secret-2", op: "op-secret-3" } });
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-bounds-"));
    store = await openSqliteFleetStore(join(dir, "controller.db"));
    const url = (user: string, pw: string): string => broker.url.replace("//", `//${user}:${pw}@`);
    controller = startController({
      broker: url("ctl", "ctl-secret-1"),
      store,
      clientId: "ctl",
      log: (l) => logs.push(l),
    });
    expect(await controller.waitReady(5000)).toBe(true);
    dashboard = startDashboard(controller, "127.0.0.1:0");
    const s = await openStore(join(dir, "device.db"));
    await enroll(store, "lab", [["pi-1", deviceKey.publicKey]]);
    const link = createFleetLink(
      { broker: url("dev", "dev-secret-2"), fleet: "lab", device: "pi-1" },
      {
        store: s,
        deviceKey,
        handler,
        status: () => ({ agentVersion: "0.1.0", model: null }),
        log: (l) => logs.push(l),
      },
    );
    expect(await link.waitConnected(5000)).toBe(true);
    device = { link, store: s };
    rogue = await connectMqttOnce({
      url: broker.url,
      clientId: "rogue",
      username: "op",
      password: "op-secret-3",
    });
    await until(async () => (await store.device("lab", "pi-1")) !== undefined, 5000, "the device's status");
  });
  afterAll(async () => {
    dashboard?.stop();
    await rogue?.close();
    await device?.link.stop({ flushMs: 200 });
    device?.store.close();
    await controller?.stop();
    await store?.close();
    await broker?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a packet over the Maximum Packet Size never reaches the device; a command over its cap is refused unread", async () => {
    const before = device.link.stats().commands;
    // 2 MiB: the broker drops it for this client (128 KiB announced in CONNECT).
    await rogue.publish("quantd/v1/lab/pi-1/cmd/bench", "x".repeat(2 * 1024 * 1024), { qos: 1 });
    const requester = await createFleetRequester(rogue, "lab");
    try {
      // A command just over the cap arrives and is answered without being parsed.
      const big = { pad: "y".repeat(MAX_COMMAND_BYTES) };
      const reply = await requester.request("pi-1", "bench", big, { timeoutMs: 5000 });
      expect(reply.ok).toBe(false);
      if (!reply.ok) expect(reply.error.code).toBe("REQUEST_TOO_LARGE");
      // Messages arrive in order: by now the 2 MiB one would have been seen too.
      expect(device.link.stats().commands - before).toBe(1);
    } finally {
      await requester.close();
    }
  });

  test("the controller refuses oversized reports and statuses, cuts telemetry to its newest samples, and counts both", async () => {
    const s0 = controller.stats();
    const huge = {
      id: "huge",
      jobId: "huge",
      type: "bench",
      state: "SUCCEEDED",
      result: { blob: "z".repeat(MAX_REPORT_BYTES) },
      startedAt: null,
      finishedAt: 1,
    };
    const hugeBody = JSON.stringify(huge);
    await rogue.publish("quantd/v1/lab/pi-1/report", hugeBody, signed("quantd/v1/lab/pi-1/report", hugeBody));
    const bigStatus = JSON.stringify({
      state: "online",
      fleet: "lab",
      device: "pi-1",
      at: 1,
      agentVersion: "v".repeat(20_000),
    });
    await rogue.publish(
      "quantd/v1/lab/pi-1/status",
      bigStatus,
      signed("quantd/v1/lab/pi-1/status", bigStatus),
    );
    const samples = Array.from({ length: 500 }, (_, i) => ({ at: 1_000 + i, requestRate: i }));
    const tel = JSON.stringify({
      device: "pi-1",
      at: 2_000,
      samples,
      outbox: { queued: 0, bytes: 0, dropped: 0 },
    });
    await rogue.publish("quantd/v1/lab/pi-1/telemetry", tel, signed("quantd/v1/lab/pi-1/telemetry", tel));
    await until(() => controller.stats().oversize - s0.oversize === 2, 5000, "two oversize refusals");
    await until(
      () => controller.stats().truncatedSamples - s0.truncatedSamples === 500 - MAX_TELEMETRY_SAMPLES,
      5000,
      "truncated samples",
    );
    expect(await store.report("lab", "pi-1", "huge")).toBeUndefined();
    expect((await store.device("lab", "pi-1"))?.agentVersion).toBe("0.1.0");
    await until(async () => (await store.telemetry("lab", "pi-1", 1_000)).length > 0, 5000, "telemetry");
    const kept = await store.telemetry("lab", "pi-1", 1_000);
    expect(kept.length).toBe(MAX_TELEMETRY_SAMPLES);
    expect(kept[0]?.at).toBe(1_000 + 500 - MAX_TELEMETRY_SAMPLES);
    const stats = (await (await fetch(`${dashboard.url}api/stats`)).json()) as { oversize: number };
    expect(stats.oversize).toBe(controller.stats().oversize);
  });

  test("a device cuts its own oversized result; /api/devices lists summaries, the report route serves it whole", async () => {
    device.link.report({
      id: "big-ok",
      jobId: "big-ok",
      type: "bench",
      state: "SUCCEEDED",
      result: { agreement: 0.99, notes: "n".repeat(100_000) },
      startedAt: 1,
      finishedAt: 2,
    });
    device.link.report({
      id: "too-big",
      jobId: "too-big",
      type: "bench",
      state: "SUCCEEDED",
      result: { notes: "n".repeat(MAX_REPORT_BYTES) },
      startedAt: 3,
      finishedAt: 4,
    });
    await until(
      async () => (await store.report("lab", "pi-1", "too-big")) !== undefined,
      5000,
      "the cut report",
    );
    expect((await store.report("lab", "pi-1", "too-big"))?.result).toMatchObject({ truncated: true });
    const res = await fetch(`${dashboard.url}api/devices`);
    const text = await res.text();
    expect(text.length).toBeLessThan(4096);
    const [d] = JSON.parse(text) as { lastReport: Record<string, unknown>; figures: unknown }[];
    expect(d?.lastReport).toMatchObject({ id: "too-big", state: "SUCCEEDED" });
    expect(d?.lastReport.result).toBeUndefined();
    const detail = await (await fetch(`${dashboard.url}api/devices/lab/pi-1`)).text();
    expect(detail.length).toBeLessThan(16_384);
    const full = (await (await fetch(`${dashboard.url}api/devices/lab/pi-1/reports/big-ok`)).json()) as {
      result: { notes: string };
      figures: { agreement: number };
    };
    expect(full.result.notes.length).toBe(100_000);
    expect(full.figures.agreement).toBe(0.99);
    expect((await fetch(`${dashboard.url}api/devices/lab/pi-1/reports/nope`)).status).toBe(404);
  });

  test("passwords never reach log lines or errors", async () => {
    const seen: string[] = [];
    const bad = connectMqtt({
      url: broker.url.replace("//", "//dev:wrong-secret-9@"),
      clientId: "bad-login",
      reconnectPeriodMs: 0,
    });
    bad.onError((e) => seen.push(e.toLine(), JSON.stringify(e.toJSON())));
    await until(() => seen.length > 0, 5000, "a refused login");
    await bad.close({ force: true });
    let err: unknown;
    try {
      await connectMqttOnce({ url: broker.url.replace("//", "//dev:wrong-secret-9@"), clientId: "bad-2" });
    } catch (e) {
      err = e;
    }
    const q = QuantdError.from(err);
    seen.push(q.toLine(), JSON.stringify(q.toJSON()));
    // A URL with the wrong scheme, or no URL at all, is refused without echoing its password.
    for (const bad of ["http://dev:secret-5@127.0.0.1:1", "mqtt://dev:secret-6@"]) {
      try {
        connectMqtt({ url: bad, clientId: "bad-url" });
      } catch (e) {
        seen.push(QuantdError.from(e).toLine());
      }
    }
    expect(seen.some((l) => l.includes("CONFIG_INVALID"))).toBe(true);
    expect(q.message).toContain("dev:***@");
    for (const line of [...seen, ...logs]) {
      expect(line).not.toMatch(/secret-\d/);
    }
  });
});
