/**
 * The agent's fleet link against a real mosquitto: retained online status,
 * Last Will with delay, MQTT 5 request/response, idempotent command ids,
 * expired / malformed / unknown commands refused without side effects, and a
 * job's progress and report. The handler here is the seam's test
 * implementation: it records calls and reports stages, standing in for the
 * agent's quantization work (tested elsewhere).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QuantdError } from "../../src/errors.ts";
import type { FleetCommandHandler, FleetJobContext } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import {
  connectMqtt,
  connectMqttOnce,
  type MqttConnection,
  type MqttMessage,
} from "../../src/fleet/mqtt-client.ts";
import { type CommandReply, decodeJson, encodeJson, type StatusMessage } from "../../src/fleet/protocol.ts";
import { createFleetRequester, type FleetRequester } from "../../src/fleet/operator/requester.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { until } from "../helpers/until.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

interface Recorded {
  calls: { name: string; params: unknown; at: number }[];
  release: () => void;
}

function recordingHandler(rec: Recorded, gate: { block: boolean }): FleetCommandHandler {
  const job = async (name: string, params: unknown, ctx: FleetJobContext): Promise<unknown> => {
    rec.calls.push({ name, params, at: performance.now() });
    ctx.progress("calibrating", 0.3);
    if (gate.block) await new Promise<void>((r) => (rec.release = r));
    ctx.progress("validating", 0.8);
    if (name === "quantize-dynamic") {
      throw new QuantdError("GATE_NOT_MET", "agreement 0.91 < 0.98");
    }
    return { agreement: 0.995, int8P50Ms: 3.1, fp32P50Ms: 7.9 };
  };
  return {
    recalibrate: (p, ctx) => job("recalibrate", p, ctx),
    quantizeDynamic: (p, ctx) => job("quantize-dynamic", p, ctx),
    bench: (p, ctx) => job("bench", p, ctx),
    rollback: (p, ctx) => job("rollback", p, ctx),
    status: async () => ({ queueDepth: 0 }),
    setConfig: async (p) => {
      rec.calls.push({ name: "set-config", params: p, at: performance.now() });
      return { ...p };
    },
    collect: async (p) => {
      rec.calls.push({ name: "collect", params: p, at: performance.now() });
      return { capturing: p.action === "start" };
    },
  };
}

describe.skipIf(!hasMosquitto)("fleet link over a real mosquitto", () => {
  let broker: Mosquitto;
  let dir: string;
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-link-"));
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  afterAll(async () => {
    await broker?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  async function setup(device: string, opts: { block?: boolean; willDelaySec?: number } = {}) {
    const store: Store = await openStore(join(dir, `${device}.db`));
    const rec: Recorded = { calls: [], release: () => {} };
    const gate = { block: opts.block ?? false };
    let conn: MqttConnection | undefined;
    const link: FleetLink = createFleetLink(
      {
        broker: broker.url,
        fleet: "lab",
        device,
        willDelaySec: opts.willDelaySec ?? 1,
        operatorKeys: OPERATOR_KEYS,
      },
      {
        store,
        handler: recordingHandler(rec, gate),
        status: () => ({ agentVersion: "0.1.0", model: { version: "v3", kind: "int8-static" } }),
        connect: (o) => {
          conn = connectMqtt(o);
          return conn;
        },
      },
    );
    expect(await link.waitConnected(5000)).toBe(true);
    const ctl = await connectMqttOnce({ url: broker.url, clientId: `ctl-${device}` });
    const req: FleetRequester = await createFleetRequester(ctl, "lab", { signer: operator });
    cleanups.push(async () => {
      await req.close();
      await ctl.close();
      await link.stop({ flushMs: 500 });
      store.close();
    });
    return { store, rec, gate, link, req, ctl, conn: () => conn! };
  }

  async function collect(conn: MqttConnection, filter: string): Promise<MqttMessage[]> {
    const got: MqttMessage[] = [];
    conn.onMessage((m) => {
      if (m.topic.startsWith(filter.replace(/[#+].*$/, ""))) got.push(m);
    });
    await conn.subscribe([filter], { qos: 1 });
    return got;
  }

  test("online status is retained with agent and model versions", async () => {
    await setup("dev-status");
    const watcher = await connectMqttOnce({ url: broker.url, clientId: "watch-status" });
    cleanups.push(() => watcher.close());
    const got = await collect(watcher, "quantd/v1/lab/dev-status/status");
    await until(() => got.length > 0);
    const status = decodeJson(got[0]!.payload) as StatusMessage;
    expect(got[0]!.retain).toBe(true);
    expect(status.state).toBe("online");
    expect(status.agentVersion).toBe("0.1.0");
    expect(status.model).toEqual({ version: "v3", kind: "int8-static" });
    expect(status.outbox).toEqual({ queued: 0, bytes: 0, dropped: 0 });
  });

  test("the Last Will says offline after the will delay when the agent vanishes", async () => {
    const { conn } = await setup("dev-will", { willDelaySec: 1 });
    const watcher = await connectMqttOnce({ url: broker.url, clientId: "watch-will" });
    cleanups.push(() => watcher.close());
    const got = await collect(watcher, "quantd/v1/lab/dev-will/status");
    await until(() => got.length > 0);
    const dropped = Date.now();
    // A forced close drops the socket without DISCONNECT, as a crash or a cable pull would.
    await conn().close({ force: true });
    await until(() => got.some((m) => (decodeJson(m.payload) as StatusMessage).state === "offline"), 6000);
    const will = decodeJson(got.at(-1)!.payload) as StatusMessage;
    expect(will).toMatchObject({ state: "offline", reason: "will", device: "dev-will" });
    expect(Date.now() - dropped).toBeGreaterThanOrEqual(900);
  });

  test("a reconnect within the will delay shows no offline; a clean stop publishes offline/shutdown", async () => {
    const watcher = await connectMqttOnce({ url: broker.url, clientId: "watch-flap" });
    cleanups.push(() => watcher.close());
    const got = await collect(watcher, "quantd/v1/lab/dev-flap/status");
    const store = await openStore(join(dir, "dev-flap.db"));
    cleanups.push(() => store.close());
    const rec: Recorded = { calls: [], release: () => {} };
    const make = (onConn: (c: MqttConnection) => void): FleetLink =>
      createFleetLink(
        { broker: broker.url, fleet: "lab", device: "dev-flap", willDelaySec: 2 },
        {
          store,
          handler: recordingHandler(rec, { block: false }),
          status: () => ({ agentVersion: "0.1.0", model: null }),
          connect: (o) => {
            const c = connectMqtt(o);
            onConn(c);
            return c;
          },
        },
      );
    let first: MqttConnection | undefined;
    const a = make((c) => (first = c));
    expect(await a.waitConnected(5000)).toBe(true);
    await first!.close({ force: true });
    await Bun.sleep(200);
    const b = make(() => {});
    expect(await b.waitConnected(5000)).toBe(true);
    await Bun.sleep(3000);
    const states = got.map((m) => (decodeJson(m.payload) as StatusMessage).state);
    expect(states).not.toContain("offline");
    expect(states.filter((s) => s === "online").length).toBeGreaterThanOrEqual(2);
    await b.stop();
    await until(() => got.length > states.length);
    expect(decodeJson(got.at(-1)!.payload)).toMatchObject({ state: "offline", reason: "shutdown" });
    await a.stop({ flushMs: 0 });
  });

  test("status replies on the response topic with the correlation data", async () => {
    const { req, ctl } = await setup("dev-rr");
    const raw: MqttMessage[] = [];
    ctl.onMessage((m) => {
      if (m.topic.includes("/reply/")) raw.push(m);
    });
    const reply = await req.request("dev-rr", "status");
    expect(reply.ok).toBe(true);
    if (!reply.ok) return;
    expect(reply.result).toMatchObject({ state: "online", device: "dev-rr", queueDepth: 0, running: null });
    expect(raw[0]!.topic).toBe("quantd/v1/lab/dev-rr/reply/ctl-dev-rr");
    expect(raw[0]!.correlationData?.byteLength).toBe(16);
  });

  test("recalibrate: accepted, IN_PROGRESS within 1 s, stages, report; the same id again starts nothing", async () => {
    const { req, rec, store } = await setup("dev-job");
    const progress: { state: string; stage: string | null; t: number }[] = [];
    req.onJobProgress((device, m) => {
      if (device === "dev-job") progress.push({ state: m.state, stage: m.stage, t: performance.now() });
    });
    const sent = performance.now();
    const reportP = req.waitForReport("dev-job", "cmd-1", 10_000);
    const reply = await req.request(
      "dev-job",
      "recalibrate",
      { samples: 64, method: "percentile" },
      { id: "cmd-1" },
    );
    expect(reply).toEqual({
      id: "cmd-1",
      command: "recalibrate",
      ok: true,
      result: { jobId: "cmd-1", state: "QUEUED" },
    });
    const finished = await reportP;
    expect(finished.state).toBe("SUCCEEDED");
    expect(finished.report.result).toEqual({ agreement: 0.995, int8P50Ms: 3.1, fp32P50Ms: 7.9 });
    await until(() => progress.some((p) => p.state === "SUCCEEDED"));
    const inProgress = progress.find((p) => p.state === "IN_PROGRESS")!;
    // Generous on a loaded machine; the ≤ 1 s figure is what the fleet-agent test prints.
    expect(inProgress.t - sent).toBeLessThan(5000);
    // Queued (as the command is accepted), claimed, each stage, the end: as an agent's jobs report.
    expect(progress.map((p) => [p.state, p.stage])).toEqual([
      ["QUEUED", null],
      ["IN_PROGRESS", null],
      ["IN_PROGRESS", "calibrating"],
      ["IN_PROGRESS", "validating"],
      ["SUCCEEDED", "validating"],
    ]);
    expect(rec.calls).toEqual([
      { name: "recalibrate", params: { samples: 64, method: "percentile" }, at: expect.any(Number) },
    ]);

    const again = await req.request(
      "dev-job",
      "recalibrate",
      { samples: 64, method: "percentile" },
      { id: "cmd-1" },
    );
    expect(again).toEqual(reply);
    await Bun.sleep(200);
    expect(rec.calls.length).toBe(1);
    expect(store.jobs.list().length).toBe(1);
    expect(store.jobs.require("cmd-1").state).toBe("SUCCEEDED");
  });

  test("the same command delivered twice at once (two senders, a redelivery) runs once and both get its answer", async () => {
    const { rec, store, ctl } = await setup("dev-twice");
    const replies: CommandReply[] = [];
    ctl.onMessage((m) => {
      if (m.topic.endsWith("/reply/twice")) replies.push(decodeJson(m.payload) as CommandReply);
    });
    await ctl.subscribe(["quantd/v1/lab/dev-twice/reply/twice"]);
    const topic = "quantd/v1/lab/dev-twice/cmd/bench";
    const body = encodeJson({ id: "twice-1", params: { iterations: 2 }, expiresAt: Date.now() + 60_000 });
    const send = () =>
      ctl.publish(topic, body, {
        qos: 1,
        userProperties: operator.sign(topic, body),
        responseTopic: "quantd/v1/lab/dev-twice/reply/twice",
      });
    // Back to back, not awaited one by one: the second reaches the device while the first is being checked.
    await Promise.all([send(), send()]);
    await until(() => replies.length === 2);
    expect(replies).toEqual([
      { id: "twice-1", command: "bench", ok: true, result: { jobId: "twice-1", state: "QUEUED" } },
      { id: "twice-1", command: "bench", ok: true, result: { jobId: "twice-1", state: "QUEUED" } },
    ]);
    await until(() => store.jobs.require("twice-1").state === "SUCCEEDED");
    expect(rec.calls.filter((c) => c.name === "bench").length).toBe(1);
  });

  test("a gate failure ends the job REJECTED with the error in the report", async () => {
    const { req } = await setup("dev-gate");
    const reportP = req.waitForReport("dev-gate", "dyn-1", 10_000);
    const reply = await req.request("dev-gate", "quantize-dynamic", {}, { id: "dyn-1" });
    expect(reply.ok).toBe(true);
    const finished = await reportP;
    expect(finished.state).toBe("REJECTED");
    expect(finished.report.error).toMatchObject({ code: "GATE_NOT_MET" });
  });

  test("expired, malformed, unknown and non-allow-listed commands get coded errors and change nothing", async () => {
    const { req, rec, store, ctl } = await setup("dev-bad");
    const expired = await req.request("dev-bad", "recalibrate", {}, { id: "old-1", ttlMs: -1000 });
    expect(expired).toMatchObject({ id: "old-1", ok: false, error: { code: "COMMAND_EXPIRED" } });

    const unknown = await req.request("dev-bad", "format-disk", {}, { id: "u-1" });
    expect(unknown).toMatchObject({ id: "u-1", ok: false, error: { code: "COMMAND_INVALID" } });

    const path = await req.request("dev-bad", "set-config", { model: "/etc/passwd" }, { id: "p-1" });
    expect(path).toMatchObject({ ok: false, error: { code: "COMMAND_INVALID", details: { key: "model" } } });

    const badParam = await req.request("dev-bad", "recalibrate", { samples: -3 }, { id: "b-1" });
    expect(badParam).toMatchObject({
      ok: false,
      error: { code: "COMMAND_INVALID", details: { key: "samples" } },
    });

    // Not JSON at all: the reply has no id but still a code, and goes to the response topic.
    const replies: CommandReply[] = [];
    ctl.onMessage((m) => {
      if (m.topic.endsWith("/reply/raw")) replies.push(decodeJson(m.payload) as CommandReply);
    });
    await ctl.subscribe(["quantd/v1/lab/dev-bad/reply/raw"]);
    // Signed, so that it is the body that is refused.
    await ctl.publish("quantd/v1/lab/dev-bad/cmd/recalibrate", "{not json", {
      qos: 1,
      userProperties: operator.sign(
        "quantd/v1/lab/dev-bad/cmd/recalibrate",
        new TextEncoder().encode("{not json"),
      ),
      responseTopic: "quantd/v1/lab/dev-bad/reply/raw",
      correlationData: new Uint8Array([1, 2, 3]),
    });
    await until(() => replies.length > 0);
    expect(replies[0]).toMatchObject({ id: null, ok: false, error: { code: "COMMAND_INVALID" } });

    expect(rec.calls).toEqual([]);
    expect(store.jobs.list()).toEqual([]);

    // A response topic outside the device's reply/ level (here: its own status) gets no answer at all.
    const hijack: string[] = [];
    ctl.onMessage((m) => {
      if (m.topic === "quantd/v1/lab/dev-bad/status" && !m.retain)
        hijack.push(new TextDecoder().decode(m.payload));
    });
    await ctl.subscribe(["quantd/v1/lab/dev-bad/status"]);
    await ctl.publish("quantd/v1/lab/dev-bad/cmd/status", '{"id":"h-1"}', {
      qos: 1,
      responseTopic: "quantd/v1/lab/dev-bad/status",
    });
    await Bun.sleep(300);
    expect(hijack).toEqual([]);

    const ok = await req.request("dev-bad", "set-config", { "capture.rate": 0.25 }, { id: "s-1" });
    expect(ok).toEqual({ id: "s-1", command: "set-config", ok: true, result: { "capture.rate": 0.25 } });
    const okAgain = await req.request("dev-bad", "set-config", { "capture.rate": 0.25 }, { id: "s-1" });
    expect(okAgain).toEqual(ok);
    expect(rec.calls.filter((c) => c.name === "set-config").length).toBe(1);
  });

  test("jobs run one at a time; a second command queues behind the first", async () => {
    const { req, rec, gate } = await setup("dev-serial", { block: true });
    const a = req.waitForReport("dev-serial", "j-a", 10_000);
    const b = req.waitForReport("dev-serial", "j-b", 10_000);
    await req.request("dev-serial", "bench", { seq: 64 }, { id: "j-a" });
    await req.request("dev-serial", "rollback", {}, { id: "j-b" });
    await until(() => rec.calls.length === 1);
    await Bun.sleep(100);
    expect(rec.calls.map((c) => c.name)).toEqual(["bench"]);
    const status = await req.request("dev-serial", "status");
    expect(status.ok && (status.result as { running: string }).running).toBe("j-a");
    gate.block = false;
    rec.release();
    expect((await a).state).toBe("SUCCEEDED");
    expect((await b).state).toBe("SUCCEEDED");
    expect(rec.calls.map((c) => c.name)).toEqual(["bench", "rollback"]);
  });

  test("a full outbox drops the oldest reports, counts them, and the counts reach the fleet", async () => {
    const own = await startMosquitto();
    cleanups.push(() => own.dispose());
    await own.stop();
    const store = await openStore(join(dir, "dev-full.db"), { outboxMaxBytes: 4000 });
    cleanups.push(() => store.close());
    const rec: Recorded = { calls: [], release: () => {} };
    const link = createFleetLink(
      { broker: own.url, fleet: "lab", device: "dev-full", telemetryIntervalMs: 50, telemetryBatch: 1 },
      {
        store,
        handler: recordingHandler(rec, { block: false }),
        status: () => ({ agentVersion: "0.1.0", model: null }),
        telemetry: () => ({ rssBytes: 1 }),
      },
    );
    cleanups.push(() => link.stop({ flushMs: 0 }));
    const body = "x".repeat(200);
    for (let i = 0; i < 100; i++) {
      link.report({
        id: `full-${i}`,
        jobId: `full-${i}`,
        type: "bench",
        state: "SUCCEEDED",
        result: body,
        startedAt: null,
        finishedAt: i,
      });
    }
    const stats = store.outbox.stats();
    expect(stats.dropped).toBeGreaterThan(50);
    expect(stats.bytes).toBeLessThanOrEqual(4000);
    const kept = stats.count;

    await own.start();
    const watcher = await connectMqttOnce({ url: own.url, clientId: "watch-full" });
    cleanups.push(() => watcher.close());
    const reports: string[] = [];
    let status: StatusMessage | undefined;
    let telemetryDropped: number | undefined;
    watcher.onMessage((m) => {
      const body = decodeJson(m.payload) as { id?: string; outbox?: { dropped: number } };
      if (m.topic.endsWith("/report")) reports.push(body.id ?? "");
      if (m.topic.endsWith("/status")) status = body as StatusMessage;
      if (m.topic.endsWith("/telemetry")) telemetryDropped = body.outbox?.dropped;
    });
    await watcher.subscribe(["quantd/v1/lab/dev-full/#"], { qos: 1 });
    expect(await link.waitConnected(5000)).toBe(true);
    await until(() => reports.length >= kept && telemetryDropped !== undefined && status !== undefined, 8000);
    // The newest reports survive, in order; the oldest were the ones dropped.
    expect(reports.slice(0, kept)).toEqual(Array.from({ length: kept }, (_, i) => `full-${100 - kept + i}`));
    expect(status?.outbox?.dropped).toBe(stats.dropped);
    expect(telemetryDropped).toBe(stats.dropped);
  });

  test("a job a crashed link left IN_PROGRESS runs again at the next start and is reported once", async () => {
    const path = join(dir, "dev-crash.db");
    const before = await openStore(path);
    // What a kill -9 mid-job leaves behind: the job claimed, at a stage, never finished.
    before.jobs.create({ id: "crashed-1", type: "bench", params: { seq: 32 } });
    before.jobs.claimNext();
    before.jobs.update("crashed-1", { stage: "measuring", progress: 0.5 });
    // A job of a type the link does not own stays as it is.
    before.jobs.create({ id: "foreign-1", type: "calibrate-nightly", params: {} });
    before.close();

    const watcher = await connectMqttOnce({ url: broker.url, clientId: "watch-crash" });
    cleanups.push(() => watcher.close());
    const reports: string[] = [];
    watcher.onMessage((m) => {
      if (m.topic.endsWith("/report")) reports.push((decodeJson(m.payload) as { id: string }).id);
    });
    await watcher.subscribe(["quantd/v1/lab/dev-crash/report"], { qos: 1 });
    const { rec, store } = await setup("dev-crash");
    await until(() => reports.length > 0);
    await Bun.sleep(300);
    expect(reports).toEqual(["crashed-1"]);
    expect(rec.calls.map((c) => [c.name, c.params])).toEqual([["bench", { seq: 32 }]]);
    expect(store.jobs.require("crashed-1")).toMatchObject({ state: "SUCCEEDED", attempts: 2 });
    expect(store.jobs.require("foreign-1").state).toBe("QUEUED");
  });

  test("an unreachable broker is FLEET_UNAVAILABLE for a requester; a bad URL is CONFIG_INVALID", async () => {
    await expect(
      connectMqttOnce({ url: "mqtt://127.0.0.1:1", clientId: "nobody", connectTimeoutMs: 2000 }),
    ).rejects.toMatchObject({ code: "FLEET_UNAVAILABLE" });
    expect(() => connectMqtt({ url: "http://x", clientId: "x" })).toThrow(
      expect.objectContaining({ code: "CONFIG_INVALID" }),
    );
    expect(encodeJson({ a: 1 })).toEqual(new TextEncoder().encode('{"a":1}'));
  });
});
