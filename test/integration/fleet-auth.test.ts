/**
 * Authorization in quantd itself, against a real mosquitto that lets anyone
 * publish anything: a device runs only commands signed by an operator key it
 * trusts, for its own topic, not expired, never twice (also after a restart);
 * every job the link runs obeys `quantd job cancel` and the job timeout; the
 * controller stores nothing unsigned, forged or from a device that is not
 * enrolled, counts what it refused, and enrols a device presenting its own
 * key only when an operator confirms it.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { type CommandReply, decodeJson, encodeJson } from "../../src/fleet/protocol.ts";
import { createFleetRequester } from "../../src/fleet/operator/requester.ts";
import { generateSigningKey, PUB_PROPERTY, type SigningKey } from "../../src/fleet/signing.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey, OPERATOR_KEY_FILE, OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

/** What the handler was asked to do: the effects an attacker must not cause. */
interface Effects {
  calls: string[];
}

function handler(effects: Effects): FleetCommandHandler {
  return {
    async recalibrate() {
      effects.calls.push("recalibrate");
      return {};
    },
    async quantizeDynamic() {
      effects.calls.push("quantize-dynamic");
      return {};
    },
    async bench(params, ctx) {
      effects.calls.push("bench");
      // Runs until stopped when asked for many iterations (a job to cancel); ignores the signal at 999.
      if (params.iterations === 999) {
        await Bun.sleep(5000);
        return {};
      }
      for (let i = 0; i < (params.iterations ?? 1); i++) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        await Bun.sleep(10);
      }
      return { runs: params.iterations ?? 1 };
    },
    async rollback() {
      effects.calls.push("rollback");
      return {};
    },
    status: async () => ({}),
    async setConfig(p) {
      effects.calls.push("set-config");
      return { ...p };
    },
    async collect() {
      effects.calls.push("collect");
      return {};
    },
  };
}

describe.skipIf(!hasMosquitto)("fleet authorization", () => {
  let broker: Mosquitto;
  let dir: string;
  let ops: MqttConnection;
  const cleanups: (() => Promise<void> | void)[] = [];
  let n = 0;

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-auth-"));
    ops = await connectMqttOnce({ url: broker.url, clientId: "attacker-or-operator" });
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  afterAll(async () => {
    await ops?.close();
    await broker?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  async function device(
    name: string,
    opts: { operatorKeys?: readonly string[]; jobTimeoutMs?: number; store?: Store } = {},
  ): Promise<{ link: FleetLink; store: Store; effects: Effects }> {
    const store = opts.store ?? (await openStore(join(dir, `${name}.db`)));
    const effects: Effects = { calls: [] };
    const link = createFleetLink(
      { broker: broker.url, fleet: "lab", device: name, operatorKeys: opts.operatorKeys ?? OPERATOR_KEYS },
      {
        store,
        handler: handler(effects),
        status: () => ({ agentVersion: "0.1.0", model: null }),
        ...(opts.jobTimeoutMs === undefined ? {} : { jobTimeoutMs: opts.jobTimeoutMs }),
      },
    );
    expect(await link.waitConnected(5000)).toBe(true);
    await Bun.sleep(100);
    cleanups.push(async () => {
      await link.stop({ flushMs: 200 });
      if (opts.store === undefined) store.close();
    });
    return { link, store, effects };
  }

  /** Publishes a command as anyone could, and returns the device's reply. */
  async function raw(
    topic: string,
    body: Uint8Array,
    userProperties?: Record<string, string>,
  ): Promise<CommandReply> {
    const device = topic.split("/")[3]!;
    const replyTopic = `quantd/v1/lab/${device}/reply/raw-${++n}`;
    let reply: CommandReply | undefined;
    const off = ops.onMessage((m) => {
      if (m.topic === replyTopic) reply = decodeJson(m.payload) as CommandReply;
    });
    await ops.subscribe([replyTopic], { qos: 1 });
    try {
      await ops.publish(topic, body, {
        qos: 1,
        responseTopic: replyTopic,
        ...(userProperties === undefined ? {} : { userProperties }),
      });
      await until(() => reply !== undefined, 5000, `a reply on ${replyTopic}`);
      return reply!;
    } finally {
      off();
      await ops.unsubscribe([replyTopic]);
    }
  }

  const envelope = (id: string, params: Record<string, unknown> = {}, ttlMs = 60_000): Uint8Array =>
    encodeJson({ id, expiresAt: Date.now() + ttlMs, params });

  const code = (r: CommandReply): string | undefined => (r.ok ? undefined : r.error.code);
  const reason = (r: CommandReply): unknown => (r.ok ? undefined : r.error.details?.reason);

  test("unsigned, untrusted, tampered and misdirected commands are COMMAND_UNAUTHORIZED and change nothing", async () => {
    const { effects, store, link } = await device("pi-1");
    await device("pi-2");
    const topic = "quantd/v1/lab/pi-1/cmd/rollback";
    const body = envelope("c-1");

    const unsigned = await raw(topic, body);
    expect([code(unsigned), reason(unsigned)]).toEqual(["COMMAND_UNAUTHORIZED", "unsigned"]);

    const stranger = generateSigningKey().key;
    const untrusted = await raw(topic, body, stranger.sign(topic, body));
    expect([code(untrusted), reason(untrusted)]).toEqual(["COMMAND_UNAUTHORIZED", "unknown-key"]);

    const tampered = await raw(topic, envelope("c-1", { version: "1" }), operator.sign(topic, body));
    expect([code(tampered), reason(tampered)]).toEqual(["COMMAND_UNAUTHORIZED", "bad-signature"]);

    // Signed for pi-2 (or for another command), replayed to pi-1: the topic is part of what is signed.
    const forPi2 = operator.sign("quantd/v1/lab/pi-2/cmd/rollback", body);
    expect(reason(await raw(topic, body, forPi2))).toBe("bad-signature");
    const forStatus = operator.sign("quantd/v1/lab/pi-1/cmd/status", body);
    expect(reason(await raw(topic, body, forStatus))).toBe("bad-signature");

    expect(effects.calls).toEqual([]);
    expect(store.jobs.list()).toEqual([]);
    expect(link.stats().unauthorized).toBe(5);

    // The same command properly signed runs.
    const ok = await raw(topic, body, operator.sign(topic, body));
    expect(ok.ok).toBe(true);
    await until(() => effects.calls.length === 1);
  });

  test("a device with no trusted key refuses everything; several keys allow rotation", async () => {
    const none = await device("pi-none", { operatorKeys: [] });
    const topic = "quantd/v1/lab/pi-none/cmd/set-config";
    const body = envelope("n-1", { "capture.rate": 0.5 });
    const r = await raw(topic, body, operator.sign(topic, body));
    expect(code(r)).toBe("COMMAND_UNAUTHORIZED");
    expect(r.ok ? "" : r.error.message).toContain("trusts no operator key");
    expect(none.effects.calls).toEqual([]);

    const next = generateSigningKey().key;
    const both = await device("pi-rot", { operatorKeys: [operator.publicKey, next.publicKey] });
    for (const [i, key] of [operator, next].entries()) {
      const t = "quantd/v1/lab/pi-rot/cmd/set-config";
      const b = envelope(`rot-${i}`, { "capture.rate": 0.5 });
      expect((await raw(t, b, key.sign(t, b))).ok).toBe(true);
    }
    expect(both.effects.calls).toEqual(["set-config", "set-config"]);
  });

  test("expiry is required, bounded and checked; an id never runs twice, also after a restart", async () => {
    const store = await openStore(join(dir, "pi-replay.db"));
    cleanups.push(() => store.close());
    const first = await device("pi-replay", { store });
    const t = "quantd/v1/lab/pi-replay/cmd/set-config";
    const sign = (b: Uint8Array): Record<string, string> => operator.sign(t, b);

    const noExpiry = encodeJson({ id: "e-0", params: { "capture.rate": 0.5 } });
    expect(reason(await raw(t, noExpiry, sign(noExpiry)))).toBe("no-expiry");
    const tooFar = envelope("e-1", { "capture.rate": 0.5 }, 30 * 24 * 3_600_000);
    expect(reason(await raw(t, tooFar, sign(tooFar)))).toBe("expiry-too-far");
    const late = envelope("e-2", { "capture.rate": 0.5 }, -1);
    expect(code(await raw(t, late, sign(late)))).toBe("COMMAND_EXPIRED");
    expect(first.effects.calls).toEqual([]);

    const body = envelope("once-1", { "capture.rate": 0.5 });
    expect((await raw(t, body, sign(body))).ok).toBe(true);
    // A retry while the reply is cached gets the same reply without running again.
    expect((await raw(t, body, sign(body))).ok).toBe(true);
    expect(first.effects.calls).toEqual(["set-config"]);

    // A new process (no reply cache): the captured message is refused, the id is remembered in the store.
    await first.link.stop({ flushMs: 200 });
    const second = await device("pi-replay", { store });
    const again = await raw(t, body, sign(body));
    expect([code(again), reason(again)]).toEqual(["COMMAND_UNAUTHORIZED", "replayed"]);
    expect(second.effects.calls).toEqual([]);
  });

  test("link-run jobs obey quantd job cancel and the job timeout; a command's cost is bounded", async () => {
    const { store, effects } = await device("pi-jobs", { jobTimeoutMs: 500 });
    const conn = await connectMqttOnce({ url: broker.url, clientId: "op-jobs" });
    const req = await createFleetRequester(conn, "lab", { signer: operator });
    cleanups.push(async () => {
      await req.close();
      await conn.close();
    });
    const huge = await req.request("pi-jobs", "bench", { iterations: 100_000 }, { id: "huge" });
    expect(huge).toMatchObject({
      ok: false,
      error: { code: "COMMAND_INVALID", details: { key: "iterations" } },
    });

    // Cancelled while running (as `quantd job cancel` does in the agent's store).
    const cancelled = req.waitForReport("pi-jobs", "long", 10_000);
    expect((await req.request("pi-jobs", "bench", { iterations: 1000 }, { id: "long" })).ok).toBe(true);
    await until(() => store.jobs.get("long")?.state === "IN_PROGRESS", 5000);
    store.jobs.cancel("long");
    const c = await cancelled;
    expect(c.state).toBe("FAILED");
    expect(c.report.error?.code).toBe("JOB_CANCELLED");

    // A handler that ignores the signal still ends at the timeout.
    const t0 = Date.now();
    const timedOut = req.waitForReport("pi-jobs", "stuck", 10_000);
    expect((await req.request("pi-jobs", "bench", { iterations: 999 }, { id: "stuck" })).ok).toBe(true);
    const s = await timedOut;
    expect(s.state).toBe("TIMED_OUT");
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(effects.calls).toEqual(["bench", "bench"]);
  });

  describe("the controller", () => {
    let store: FleetStore;
    let controller: FleetController;
    let dashboard: Dashboard;
    let key: SigningKey;

    beforeAll(async () => {
      store = await openSqliteFleetStore(join(dir, "controller.db"));
      key = newDeviceKey();
      await enroll(store, "lab", [["known", key.publicKey]]);
      controller = startController({ broker: broker.url, store, clientId: "auth-controller" });
      expect(await controller.waitReady(5000)).toBe(true);
      dashboard = startDashboard(controller, "127.0.0.1:0");
    });
    afterAll(async () => {
      dashboard?.stop();
      await controller?.stop();
      await store?.close();
    });

    const status = (device: string, agentVersion: string): Uint8Array =>
      encodeJson({ state: "online", fleet: "lab", device, at: Date.now(), agentVersion });

    test("stores nothing unsigned, forged or from a device that is not enrolled, and counts each refusal", async () => {
      const s0 = controller.stats().refused;
      const topic = "quantd/v1/lab/known/status";
      const forged = status("known", "6.6.6-forged");
      await ops.publish(topic, forged, { qos: 1 });
      await ops.publish(topic, forged, {
        qos: 1,
        userProperties: generateSigningKey().key.sign(topic, forged),
      });
      const report = encodeJson({
        id: "f-1",
        jobId: "f-1",
        type: "bench",
        state: "SUCCEEDED",
        startedAt: 1,
        finishedAt: 2,
      });
      await ops.publish("quantd/v1/lab/known/report", report, { qos: 1 });
      const stranger = generateSigningKey().key;
      const other = status("stranger", "1.0");
      await ops.publish("quantd/v1/lab/stranger/status", other, {
        qos: 1,
        userProperties: stranger.sign("quantd/v1/lab/stranger/status", other),
      });
      await until(
        () => {
          const r = controller.stats().refused;
          return (
            r.unsigned - s0.unsigned === 2 &&
            r.badSignature - s0.badSignature === 1 &&
            r.notEnrolled - s0.notEnrolled >= 1
          );
        },
        5000,
        "four refusals",
      );
      expect(await store.device("lab", "known")).toBeUndefined();
      expect(await store.device("lab", "stranger")).toBeUndefined();
      expect(await store.report("lab", "known", "f-1")).toBeUndefined();
      // Without a public key offered, nothing is proposed (the earlier tests' devices did offer theirs).
      expect((await store.enrolments("pending")).map((e) => e.device)).not.toContain("stranger");

      const good = status("known", "1.2.3");
      await ops.publish(topic, good, { qos: 1, userProperties: key.sign(topic, good) });
      await until(async () => (await store.device("lab", "known"))?.agentVersion === "1.2.3", 5000);
      const stats = (await (await fetch(`${dashboard.url}api/stats`)).json()) as {
        refused: Record<string, number>;
      };
      expect(stats.refused).toEqual(controller.stats().refused);
    });

    test("a device presenting its own key waits until an operator confirms it on the dashboard", async () => {
      const { link } = await device("newcomer");
      await until(
        async () => (await store.enrolment("lab", "newcomer")) !== undefined,
        5000,
        "a pending key",
      );
      const pending = await store.enrolment("lab", "newcomer");
      expect(pending).toMatchObject({ state: "pending", publicKey: link.publicKey });
      expect(await store.device("lab", "newcomer")).toBeUndefined();

      const url = `${dashboard.url}api/enrolments/lab/newcomer/confirm`;
      const post = (headers: Record<string, string>, publicKey: string) =>
        fetch(url, { method: "POST", headers, body: JSON.stringify({ publicKey }) });
      // Writes carry the dashboard's CSRF token (from /api/session, which another origin cannot read).
      const { csrf } = (await (await fetch(`${dashboard.url}api/session`)).json()) as { csrf: string };
      expect((await post({}, link.publicKey)).status).toBe(403);
      expect((await post({ "x-quantd-csrf": "guess" }, link.publicKey)).status).toBe(403);
      expect((await post({ "x-quantd-csrf": csrf }, generateSigningKey().key.publicKey)).status).toBe(404);
      expect((await post({ "x-quantd-csrf": csrf }, link.publicKey)).status).toBe(200);
      expect((await store.enrolment("lab", "newcomer"))?.state).toBe("enrolled");

      // A status presenting another key for an enrolled device changes nothing.
      const impostor = generateSigningKey().key;
      const topic = "quantd/v1/lab/newcomer/status";
      const body = status("newcomer", "evil");
      await ops.publish(topic, body, {
        qos: 1,
        userProperties: { ...impostor.sign(topic, body), [PUB_PROPERTY]: impostor.publicKey },
      });
      await link.refreshStatus();
      await until(
        async () => (await store.device("lab", "newcomer"))?.online === true,
        5000,
        "the confirmed device",
      );
      expect((await store.device("lab", "newcomer"))?.agentVersion).toBe("0.1.0");
      expect((await store.enrolment("lab", "newcomer"))?.publicKey).toBe(link.publicKey);
    });
  });

  test("quantd fleet keygen writes a 0600 key; operator commands need one", async () => {
    const path = join(dir, "ops", "op.key");
    const r = await runQuantd(["fleet", "keygen", "--key", path]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const again = await runQuantd(["fleet", "keygen", "--key", path]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain("STATE_CONFLICT");
    const unsigned = await runQuantd(
      ["fleet", "rollback", "pi-1", "--broker", broker.url, "--fleet", "lab"],
      {
        env: { ...process.env, QUANTD_FLEET_KEY_FILE: "" },
      },
    );
    expect(unsigned.code).not.toBe(0);
    expect(unsigned.stderr).toContain("--key FILE");
    expect(OPERATOR_KEY_FILE).toContain("operator.key");
  });
});
