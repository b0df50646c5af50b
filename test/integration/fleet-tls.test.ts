/**
 * A locked-down broker, as a fleet would run one: TLS with a CA the test
 * generates (openssl), client certificates required, password logins, and an
 * ACL that confines each device to its own topic tree. The link connects with
 * its config's files; wrong passwords, untrusted servers and foreign topics
 * are refused.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce, type MqttConnectOptions } from "../../src/fleet/mqtt-client.ts";
import { decodeJson, type StatusMessage } from "../../src/fleet/protocol.ts";
import { createFleetRequester } from "../../src/fleet/operator/requester.ts";
import { openStore } from "../../src/store/store.ts";
import { OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { hasOpenssl, makePki } from "../helpers/pki.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";

const skip = !hasMosquitto || !hasOpenssl;
if (skip) console.warn(hasMosquitto ? "openssl missing: TLS fleet tests skipped" : mosquittoSkipReason);

const noWork = async (): Promise<never> => {
  throw new Error("not used");
};
const handler: FleetCommandHandler = {
  recalibrate: noWork,
  quantizeDynamic: noWork,
  bench: noWork,
  rollback: noWork,
  status: async () => ({ secure: true }),
  setConfig: noWork,
  collect: noWork,
};

describe.skipIf(skip)("fleet over TLS with passwords and a per-device ACL", () => {
  let dir: string;
  let broker: Mosquitto;
  const users = { "pi-1": "pw-pi-1", "pi-2": "pw-pi-2", operator: "pw-operator" };
  const pem = (f: string): string => readFileSync(join(dir, f), "utf8");
  const client = (user: keyof typeof users, over: Partial<MqttConnectOptions> = {}): MqttConnectOptions => ({
    url: broker.url,
    clientId: `${user}-${Math.random().toString(36).slice(2, 8)}`,
    username: user,
    password: users[user],
    ca: pem("ca.pem"),
    cert: pem(`${user}.pem`),
    key: pem(`${user}.key`),
    connectTimeoutMs: 5000,
    ...over,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-tls-"));
    makePki(dir, ["pi-1", "pi-2", "operator"]);
    broker = await startMosquitto({
      users,
      tls: {
        caFile: join(dir, "ca.pem"),
        certFile: join(dir, "server.pem"),
        keyFile: join(dir, "server.key"),
        requireCertificate: true,
      },
      acl: [
        "user operator",
        "topic readwrite quantd/v1/#",
        // Every other user is a device: its own tree only (%u is the username).
        "pattern readwrite quantd/v1/+/%u/#",
      ],
    });
  }, 30_000);
  afterAll(async () => {
    await broker?.dispose();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test("a device link connects with the config's CA, certificate, key and password and answers commands", async () => {
    const store = await openStore(join(dir, "pi-1.db"));
    const link = createFleetLink(
      {
        broker: broker.url,
        fleet: "lab",
        device: "pi-1",
        caFile: join(dir, "ca.pem"),
        certFile: join(dir, "pi-1.pem"),
        keyFile: join(dir, "pi-1.key"),
        username: "pi-1",
        password: users["pi-1"],
        operatorKeys: OPERATOR_KEYS,
      },
      { store, handler, status: () => ({ agentVersion: "0.1.0", model: null }) },
    );
    try {
      expect(await link.waitConnected(5000)).toBe(true);
      const op = await connectMqttOnce(client("operator"));
      const req = await createFleetRequester(op, "lab", { signer: operator });
      const reply = await req.request("pi-1", "status", {}, { timeoutMs: 5000 });
      expect(reply).toMatchObject({ ok: true, result: { state: "online", secure: true } });
      await req.close();
      await op.close();
    } finally {
      await link.stop({ flushMs: 200 });
      store.close();
    }
  });

  test("a wrong password, a missing client certificate and an untrusted CA are refused", async () => {
    await expect(connectMqttOnce(client("pi-1", { password: "wrong" }))).rejects.toMatchObject({
      code: "FLEET_UNAVAILABLE",
    });
    const { cert: _c, key: _k, ...noCert } = client("pi-1");
    await expect(connectMqttOnce(noCert)).rejects.toMatchObject({ code: "FLEET_UNAVAILABLE" });
    const { ca: _ca, ...noCa } = client("pi-1");
    await expect(connectMqttOnce(noCa)).rejects.toMatchObject({ code: "FLEET_UNAVAILABLE" });
    // Plain MQTT to the TLS port (no certificate: mqtt.js would switch to TLS on seeing one).
    await expect(
      connectMqttOnce({ ...noCert, url: broker.url.replace("mqtts:", "mqtt:") }),
    ).rejects.toMatchObject({ code: "FLEET_UNAVAILABLE" });
  });

  test("the ACL keeps a device inside its own topic tree", async () => {
    const pi1 = await connectMqttOnce(client("pi-1"));
    const watcher = await connectMqttOnce(client("operator"));
    try {
      const seen: string[] = [];
      // Retained statuses (from the first test's link) are history, not what this test publishes.
      watcher.onMessage((m) => {
        if (!m.retain) seen.push(`${m.topic} ${(decodeJson(m.payload) as StatusMessage).state}`);
      });
      await watcher.subscribe(["quantd/v1/lab/+/status"], { qos: 1 });
      const forged = JSON.stringify({ state: "offline", fleet: "lab", device: "pi-2", at: 1 });
      await expect(pi1.publish("quantd/v1/lab/pi-2/status", forged, { qos: 1 })).rejects.toMatchObject({
        code: "FLEET_UNAVAILABLE",
      });
      // mosquitto grants the subscription but delivers nothing the ACL does not allow the device to read.
      const stolen: string[] = [];
      pi1.onMessage((m) => stolen.push(m.topic));
      await pi1.subscribe(["quantd/v1/lab/pi-2/cmd/+", "quantd/v1/#"], { qos: 1 });
      await watcher.publish("quantd/v1/lab/pi-2/cmd/status", '{"id":"x"}', { qos: 1 });
      await watcher.publish("quantd/v1/lab/pi-1/cmd/status", '{"id":"y"}', { qos: 1 });
      const own = JSON.stringify({ state: "online", fleet: "lab", device: "pi-1", at: 2 });
      await pi1.publish("quantd/v1/lab/pi-1/status", own, { qos: 1 });
      const deadline = Date.now() + 3000;
      while (seen.length === 0 && Date.now() < deadline) await Bun.sleep(20);
      await Bun.sleep(200);
      expect(seen).toEqual(["quantd/v1/lab/pi-1/status online"]);
      // Its own command arrives (so the subscription works); the other device's does not.
      expect(stolen).toContain("quantd/v1/lab/pi-1/cmd/status");
      expect(stolen.filter((t) => t.includes("/pi-2/"))).toEqual([]);
    } finally {
      await pi1.close();
      await watcher.close();
    }
  });
});
