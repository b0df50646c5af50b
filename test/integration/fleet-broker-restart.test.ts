/**
 * A controller that never goes deaf: a real mosquitto with `persistence true`
 * is restarted in the middle of a job. mosquitto 2.0 restores the
 * controller's session (CONNACK session-present) but not its `$share/…`
 * subscription, and mqtt.js would not send a SUBSCRIBE for a filter it thinks
 * it holds; the controller and the device therefore subscribe on every
 * CONNACK. Each case counts N of N reports stored (the running job's included)
 * and a job sent after the restart, for a shared subscription, a plain one and
 * two replicas splitting the shared one.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce } from "../../src/fleet/mqtt-client.ts";
import { createFleetRequester } from "../../src/fleet/operator/requester.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey, OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { until } from "../helpers/until.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

/** Reports sent before, while and after the broker is down. */
const N = 30;

/** A board whose bench job takes `jobMs`, long enough to restart the broker under it. */
function slowBoard(jobMs: number): FleetCommandHandler {
  const none = async (): Promise<unknown> => ({});
  return {
    recalibrate: none,
    quantizeDynamic: none,
    async bench(_params, ctx) {
      ctx.progress("measuring", 0.1);
      await Bun.sleep(jobMs);
      return { p50Ms: 1 };
    },
    rollback: none,
    status: async () => ({}),
    setConfig: async (p) => ({ ...p }),
    collect: async () => ({}),
  };
}

interface Rig {
  broker: Mosquitto;
  dir: string;
  stores: FleetStore[];
  controllers: FleetController[];
  device: { link: FleetLink; store: Store };
}

let rig: Rig | undefined;

afterEach(async () => {
  if (rig === undefined) return;
  await rig.device.link.stop({ flushMs: 200 });
  rig.device.store.close();
  for (const c of rig.controllers) await c.stop();
  for (const s of rig.stores) await s.close();
  await rig.broker.dispose();
  rmSync(rig.dir, { recursive: true, force: true });
  rig = undefined;
});

async function startRig(replicas: number, shared: boolean): Promise<Rig> {
  const broker = await startMosquitto();
  const dir = mkdtempSync(join(tmpdir(), "quantd-fleet-restart-"));
  const stores: FleetStore[] = [];
  const controllers: FleetController[] = [];
  const deviceKey = newDeviceKey();
  for (let i = 0; i < replicas; i++) {
    const store = await openSqliteFleetStore(join(dir, `controller-${i}.db`));
    await enroll(store, "lab", [["pi-1", deviceKey.publicKey]]);
    stores.push(store);
    const c = startController({ broker: broker.url, store, clientId: `ctl-${i}`, shared });
    controllers.push(c);
    expect(await c.waitReady(5000)).toBe(true);
  }
  const store = await openStore(join(dir, "device.db"));
  const link = createFleetLink(
    {
      broker: broker.url,
      fleet: "lab",
      device: "pi-1",
      telemetryIntervalMs: 1000,
      operatorKeys: OPERATOR_KEYS,
    },
    { store, deviceKey, handler: slowBoard(2500), status: () => ({ agentVersion: "0.1.0", model: null }) },
  );
  expect(await link.waitConnected(5000)).toBe(true);
  rig = { broker, dir, stores, controllers, device: { link, store } };
  return rig;
}

/** Distinct report ids over every replica's store, and the stored state of a job. */
async function storedReports(r: Rig): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const s of r.stores) for (const rep of await s.reports("lab", "pi-1", 10_000)) ids.add(rep.id);
  return ids;
}

async function jobState(r: Rig, id: string): Promise<string | undefined> {
  for (const s of r.stores) {
    const j = await s.job("lab", "pi-1", id);
    if (j?.state === "SUCCEEDED") return j.state;
  }
  return undefined;
}

async function sendBench(r: Rig, id: string): Promise<void> {
  const conn = await connectMqttOnce({ url: r.broker.url, clientId: `op-${id}` });
  try {
    const requester = await createFleetRequester(conn, "lab", { signer: operator });
    const reply = await requester.request("pi-1", "bench", {}, { id });
    expect(reply.ok).toBe(true);
    await requester.close();
  } finally {
    await conn.close();
  }
}

function report(r: Rig, i: number): void {
  r.device.link.report({
    id: `r-${i}`,
    jobId: `r-${i}`,
    type: "bench",
    state: "SUCCEEDED",
    result: { i },
    startedAt: null,
    finishedAt: Date.now(),
  });
}

async function restartMidJob(r: Rig): Promise<void> {
  const third = Math.floor(N / 3);
  for (let i = 0; i < third; i++) report(r, i);
  await sendBench(r, "job-before");
  // The job is running on the device and the controller has seen it start.
  await until(
    async () => {
      for (const s of r.stores)
        if ((await s.job("lab", "pi-1", "job-before"))?.state === "IN_PROGRESS") return true;
      return false;
    },
    8000,
    "job-before IN_PROGRESS at the controller",
  );
  await r.broker.stop();
  // While the broker is down the device's reports wait in its outbox.
  for (let i = third; i < 2 * third; i++) report(r, i);
  await Bun.sleep(500);
  await r.broker.start();
  await until(
    () => r.controllers.every((c) => c.stats().subscribes >= 2),
    10_000,
    "every controller to subscribe again",
  );
  for (let i = 2 * third; i < N; i++) report(r, i);
  await sendBench(r, "job-after");
  await until(async () => (await storedReports(r)).size >= N + 2, 20_000, `${N + 2} reports stored`);
  await Bun.sleep(300);
  const ids = await storedReports(r);
  expect(ids.size).toBe(N + 2);
  for (let i = 0; i < N; i++) expect(ids.has(`r-${i}`)).toBe(true);
  expect(await jobState(r, "job-before")).toBe("SUCCEEDED");
  expect(await jobState(r, "job-after")).toBe("SUCCEEDED");
}

describe.skipIf(!hasMosquitto)("broker restart with persistence, mid-job", () => {
  test("one controller on the shared subscription stores N of N reports", async () => {
    const r = await startRig(1, true);
    await restartMidJob(r);
    // The controller's session did come back: this is the case mqtt.js alone got wrong.
    expect(r.controllers[0]?.stats().subscribes).toBeGreaterThanOrEqual(2);
  }, 60_000);

  test("one controller on a plain subscription stores N of N reports", async () => {
    const r = await startRig(1, false);
    await restartMidJob(r);
  }, 60_000);

  test("two replicas splitting the shared subscription store N of N reports between them", async () => {
    const r = await startRig(2, true);
    await restartMidJob(r);
    const counts = r.controllers.map((c) => c.stats().byKind.report);
    expect(counts.every((n) => n > 0)).toBe(true);
  }, 60_000);
});
