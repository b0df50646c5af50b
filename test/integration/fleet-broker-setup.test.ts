/**
 * The broker setup quantd ships (deploy/mosquitto/quantd.conf and acl), run
 * as shipped with only its paths and port rewritten, against certificates
 * openssl makes here: TLS, client certificates whose Common Name is the login
 * (`use_identity_as_username`), and an ACL confining each device (CN
 * `FLEET/DEVICE`) to its own topics, the controllers to reading and the
 * operators to commanding. The fleet works through it end to end; everything
 * outside a client's role is refused by the broker.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce, type MqttConnectOptions } from "../../src/fleet/mqtt-client.ts";
import { createFleetRequester } from "../../src/fleet/operator/requester.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey, OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { repoRoot } from "../helpers/paths.ts";
import { hasOpenssl, makePki } from "../helpers/pki.ts";
import { until } from "../helpers/until.ts";

const skip = !hasMosquitto || !hasOpenssl;
if (skip) console.warn(hasMosquitto ? "openssl missing: broker setup test skipped" : mosquittoSkipReason);

const SHIPPED = join(repoRoot, "deploy/mosquitto");

const handler: FleetCommandHandler = {
  recalibrate: async () => ({}),
  quantizeDynamic: async () => ({}),
  bench: async () => ({ p50Ms: 1 }),
  rollback: async () => ({}),
  status: async () => ({ secure: true }),
  setConfig: async (p) => ({ ...p }),
  collect: async () => ({}),
};

/** The shipped config with its paths and port pointed at the test's directory. */
function shippedConfig(pki: string): (port: number, dir: string) => string[] {
  return (port, dir) =>
    readFileSync(join(SHIPPED, "quantd.conf"), "utf8")
      .replaceAll("/etc/mosquitto/quantd/acl", join(SHIPPED, "acl"))
      .replaceAll("/etc/mosquitto/quantd/", `${pki}/`)
      .replace("persistence_location /var/lib/mosquitto/", `persistence_location ${dir}/`)
      .replace(/^listener 8883$/m, `listener ${port} 127.0.0.1`)
      .split("\n");
}

describe.skipIf(skip)("the shipped broker setup (deploy/mosquitto)", () => {
  let pki: string;
  let broker: Mosquitto;
  let url: string;
  let store: FleetStore;
  let controller: FleetController;
  let device: { link: FleetLink; store: Store };
  const pem = (f: string): string => readFileSync(join(pki, f), "utf8");
  const client = (name: string, over: Partial<MqttConnectOptions> = {}): MqttConnectOptions => ({
    url,
    clientId: `${name.replace("/", "-")}-${Math.random().toString(36).slice(2, 8)}`,
    ca: pem("ca.pem"),
    cert: pem(`${name.replace("/", "-")}.pem`),
    key: pem(`${name.replace("/", "-")}.key`),
    connectTimeoutMs: 5000,
    ...over,
  });

  beforeAll(async () => {
    pki = mkdtempSync(join(tmpdir(), "quantd-broker-setup-"));
    makePki(pki, [
      { name: "lab-pi-1", cn: "lab/pi-1" },
      { name: "lab-pi-2", cn: "lab/pi-2" },
      { name: "quantd-controller", cn: "quantd-controller" },
      { name: "quantd-operator", cn: "quantd-operator" },
    ]);
    broker = await startMosquitto({ config: shippedConfig(pki) });
    url = `mqtts://127.0.0.1:${broker.port}`;
    store = await openSqliteFleetStore(join(pki, "controller.db"));
    const deviceKey = newDeviceKey();
    await enroll(store, "lab", [["pi-1", deviceKey.publicKey]]);
    const ctl = client("quantd-controller");
    controller = startController({
      broker: url,
      store,
      clientId: "ctl-1",
      ...(ctl.ca === undefined ? {} : { ca: ctl.ca }),
      ...(ctl.cert === undefined ? {} : { cert: ctl.cert }),
      ...(ctl.key === undefined ? {} : { key: ctl.key }),
    });
    expect(await controller.waitReady(8000)).toBe(true);
    const s = await openStore(join(pki, "pi-1.db"));
    const link = createFleetLink(
      {
        broker: url,
        fleet: "lab",
        device: "pi-1",
        caFile: join(pki, "ca.pem"),
        certFile: join(pki, "lab-pi-1.pem"),
        keyFile: join(pki, "lab-pi-1.key"),
        operatorKeys: OPERATOR_KEYS,
      },
      { store: s, deviceKey, handler, status: () => ({ agentVersion: "0.1.0", model: null }) },
    );
    expect(await link.waitConnected(8000)).toBe(true);
    device = { link, store: s };
  }, 60_000);
  afterAll(async () => {
    await device?.link.stop({ flushMs: 200 });
    device?.store.close();
    await controller?.stop();
    await store?.close();
    await broker?.dispose();
    rmSync(pki, { recursive: true, force: true });
  });

  test("device, controller and operator work through it: status stored, a signed command answered, its report stored", async () => {
    await until(
      async () => (await store.device("lab", "pi-1"))?.online === true,
      8000,
      "pi-1 online at the controller",
    );
    const op = await connectMqttOnce(client("quantd-operator"));
    try {
      const req = await createFleetRequester(op, "lab", { signer: operator });
      expect(await req.request("pi-1", "status", {}, { timeoutMs: 5000 })).toMatchObject({
        ok: true,
        result: { secure: true },
      });
      const done = req.waitForReport("pi-1", "bench-tls", 8000);
      expect((await req.request("pi-1", "bench", {}, { id: "bench-tls" })).ok).toBe(true);
      expect((await done).state).toBe("SUCCEEDED");
      await until(
        async () => (await store.report("lab", "pi-1", "bench-tls")) !== undefined,
        8000,
        "the report stored",
      );
      await req.close();
    } finally {
      await op.close();
    }
  });

  test("a device cannot speak for another device, another fleet, or command anyone", async () => {
    const pi2 = await connectMqttOnce(client("lab/pi-2"));
    try {
      const body = JSON.stringify({ state: "offline", fleet: "lab", device: "pi-1", at: 1 });
      for (const topic of [
        "quantd/v1/lab/pi-1/status",
        "quantd/v1/other/pi-2/status",
        "quantd/v1/lab/pi-1/cmd/rollback",
        "quantd/v1/lab/pi-2/cmd/rollback",
      ]) {
        await expect(pi2.publish(topic, body, { qos: 1 })).rejects.toMatchObject({
          code: "FLEET_UNAVAILABLE",
        });
      }
      // Its own status goes through.
      await pi2.publish("quantd/v1/lab/pi-2/status", body.replace("pi-1", "pi-2"), { qos: 1 });
    } finally {
      await pi2.close();
    }
  });

  test("a device reads only its own commands; an operator cannot forge device messages; a controller cannot command", async () => {
    const pi2 = await connectMqttOnce(client("lab/pi-2"));
    const op = await connectMqttOnce(client("quantd-operator"));
    const ctl = await connectMqttOnce(client("quantd-controller"));
    try {
      const stolen: string[] = [];
      pi2.onMessage((m) => stolen.push(m.topic));
      await pi2
        .subscribe(["quantd/v1/lab/pi-1/cmd/+", "quantd/v1/lab/pi-2/cmd/+"], { qos: 1 })
        .catch(() => {});
      await op.publish("quantd/v1/lab/pi-1/cmd/status", '{"id":"x1"}', { qos: 1 });
      await op.publish("quantd/v1/lab/pi-2/cmd/status", '{"id":"x2"}', { qos: 1 });
      await until(() => stolen.length > 0, 5000, "pi-2's own command");
      await Bun.sleep(300);
      expect(stolen).toEqual(["quantd/v1/lab/pi-2/cmd/status"]);

      const report = JSON.stringify({ id: "forged", jobId: "forged", type: "bench", state: "SUCCEEDED" });
      await expect(op.publish("quantd/v1/lab/pi-1/report", report, { qos: 1 })).rejects.toMatchObject({
        code: "FLEET_UNAVAILABLE",
      });
      await expect(
        ctl.publish("quantd/v1/lab/pi-1/cmd/rollback", '{"id":"c"}', { qos: 1 }),
      ).rejects.toMatchObject({
        code: "FLEET_UNAVAILABLE",
      });
    } finally {
      await pi2.close();
      await op.close();
      await ctl.close();
    }
  });

  test("no certificate, no connection", async () => {
    const { cert: _c, key: _k, ...noCert } = client("lab/pi-1");
    await expect(connectMqttOnce(noCert)).rejects.toMatchObject({ code: "FLEET_UNAVAILABLE" });
  });
});
