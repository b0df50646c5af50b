/**
 * Fleet trust under faults, against a real mosquitto. Prints, never asserts:
 *
 * 1. Reports lost across a broker restart with `persistence true`, with one
 *    and with two controller replicas on the shared subscription (the device
 *    keeps sending while the broker is down and after it is back).
 * 2. Effects of 1,000 hostile commands (fuzzed bodies, unsigned, signed by an
 *    unknown key, signed for another device, expired, replayed) on a device:
 *    handler calls, jobs created, replies that said ok.
 * 3. Forged device messages the controller stored out of 1,000 (unsigned,
 *    wrong key, not enrolled, a real signature moved to another device).
 * 4. Resident memory of a real `quantd agent` and a real `quantd fleet serve`
 *    while they receive maximum-size and oversize messages, against their peak
 *    under normal traffic in the same run.
 *
 *   bun bench/fleet-faults.ts                 # everything (about 1.5 minutes)
 *   bun bench/fleet-faults.ts --reports 300   # reports per restart run
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { readProcessMemory } from "../src/core/process-memory.ts";
import { type FleetController, startController } from "../src/fleet/controller/controller.ts";
import { openSqliteFleetStore } from "../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../src/fleet/device/link.ts";
import { connectMqttOnce } from "../src/fleet/mqtt-client.ts";
import { encodeJson, MAX_COMMAND_BYTES, MAX_REPORT_BYTES } from "../src/fleet/protocol.ts";
import { generateSigningKey, type SigningKey, writeNewSigningKey } from "../src/fleet/signing.ts";
import { openStore, type Store } from "../src/store/store.ts";
import { type Mosquitto, startMosquitto } from "../test/helpers/mosquitto.ts";
import { freePort } from "../test/helpers/net.ts";

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
};
const REPORTS = Number(arg("reports", "300"));
const repo = resolve(import.meta.dir, "..");
const dir = mkdtempSync(join(tmpdir(), "quantd-fleet-faults-"));
const operator = generateSigningKey().key;
const MiB = 1048576;

/** Polls until `cond` holds or `ms` pass; returns whether it held. */
async function until(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) return false;
    await Bun.sleep(20);
  }
  return true;
}

/** A handler that counts what it was made to do (the effects a hostile command must not have). */
function countingHandler(calls: string[]): FleetCommandHandler {
  const did = (name: string) => async (): Promise<unknown> => {
    calls.push(name);
    return {};
  };
  return {
    recalibrate: did("recalibrate"),
    quantizeDynamic: did("quantize-dynamic"),
    bench: did("bench"),
    rollback: did("rollback"),
    status: async () => ({}),
    setConfig: async (p) => {
      calls.push("set-config");
      return { ...p };
    },
    collect: did("collect"),
  };
}

interface Device {
  link: FleetLink;
  store: Store;
  key: SigningKey;
  calls: string[];
}

async function startDevice(broker: Mosquitto, name: string): Promise<Device> {
  const store = await openStore(join(dir, `${name}-${Date.now()}.db`));
  const key = generateSigningKey().key;
  const calls: string[] = [];
  const link = createFleetLink(
    { broker: broker.url, fleet: "lab", device: name, operatorKeys: [operator.publicKey] },
    {
      store,
      deviceKey: key,
      handler: countingHandler(calls),
      status: () => ({ agentVersion: "bench", model: null }),
    },
  );
  await link.waitConnected(5000);
  return { link, store, key, calls };
}

async function stopDevice(d: Device): Promise<void> {
  await d.link.stop({ flushMs: 500 });
  d.store.close();
}

// ---------------------------------------------------------------- 1. broker restart

async function restartRun(replicas: number): Promise<string> {
  const broker = await startMosquitto();
  const stores: FleetStore[] = [];
  const controllers: FleetController[] = [];
  const device = await startDevice(broker, "pi-1");
  try {
    for (let i = 0; i < replicas; i++) {
      const store = await openSqliteFleetStore(join(dir, `restart-${replicas}-${i}.db`));
      await store.enroll("lab", "pi-1", device.key.publicKey, Date.now());
      stores.push(store);
      const c = startController({ broker: broker.url, store, clientId: `ctl-${replicas}-${i}` });
      controllers.push(c);
      await c.waitReady(5000);
    }
    const report = (i: number): void =>
      device.link.report({
        id: `r-${i}`,
        jobId: `r-${i}`,
        type: "bench",
        state: "SUCCEEDED",
        result: { i },
        startedAt: null,
        finishedAt: Date.now(),
      });
    const third = Math.floor(REPORTS / 3);
    for (let i = 0; i < third; i++) report(i);
    await Bun.sleep(300);
    await broker.stop();
    for (let i = third; i < 2 * third; i++) report(i);
    await broker.start();
    for (let i = 2 * third; i < REPORTS; i++) {
      report(i);
      if (i % 20 === 0) await Bun.sleep(10);
    }
    const stored = async (): Promise<number> => {
      const ids = new Set<string>();
      for (const s of stores) for (const r of await s.reports("lab", "pi-1", 100_000)) ids.add(r.id);
      return ids.size;
    };
    await until(async () => (await stored()) >= REPORTS, 30_000);
    const n = await stored();
    const split = controllers.map((c) => c.stats().byKind.report).join(" + ");
    return `${replicas} controller${replicas > 1 ? "s" : ""}: ${REPORTS - n} of ${REPORTS} reports lost (stored ${n}; per replica ${split}; device retries after "no subscribers": ${device.link.stats().publisher.noSubscribers})`;
  } finally {
    await stopDevice(device);
    for (const c of controllers) await c.stop();
    for (const s of stores) await s.close();
    await broker.dispose();
  }
}

// ---------------------------------------------------------------- 2. hostile commands

async function hostileCommands(broker: Mosquitto): Promise<string[]> {
  const device = await startDevice(broker, "target");
  const other = generateSigningKey().key;
  const attacker = await connectMqttOnce({ url: broker.url, clientId: "attacker" });
  let okReplies = 0;
  let replies = 0;
  const codes = new Map<string, number>();
  attacker.onMessage((m) => {
    if (!m.topic.includes("/reply/")) return;
    replies++;
    const r = JSON.parse(new TextDecoder().decode(m.payload)) as { ok: boolean; error?: { code: string } };
    if (r.ok) okReplies++;
    else codes.set(r.error?.code ?? "?", (codes.get(r.error?.code ?? "?") ?? 0) + 1);
  });
  const replyTopic = "quantd/v1/lab/target/reply/attacker";
  await attacker.subscribe([replyTopic], { qos: 1 });
  const names = ["recalibrate", "quantize-dynamic", "bench", "rollback", "set-config", "collect", "status"];
  // One legitimate command first, whose exact bytes are then replayed.
  const legitTopic = "quantd/v1/lab/target/cmd/set-config";
  const legit = encodeJson({
    id: "legit-1",
    expiresAt: Date.now() + 600_000,
    params: { "capture.rate": 0.5 },
  });
  await attacker.publish(legitTopic, legit, {
    qos: 1,
    responseTopic: replyTopic,
    userProperties: operator.sign(legitTopic, legit),
  });
  await until(() => replies === 1, 5000);
  const callsBefore = device.calls.length;
  const jobsBefore = device.store.jobs.list({ limit: 100_000 }).length;
  okReplies = 0;
  replies = 0;
  codes.clear();
  const rand = (n: number): number => Math.floor(Math.random() * n);
  const fuzzParams = (): Record<string, unknown> => {
    const pool: Record<string, unknown>[] = [
      { iterations: 100_000 },
      { samples: rand(1e9) },
      { version: "../../etc/passwd" },
      { "capture.rate": 1.5 },
      { model: "/tmp/evil.onnx" },
      { gate: { minAgreement: 0 } },
      {},
    ];
    return pool[rand(pool.length)]!;
  };
  const kinds = ["fuzzed-body", "unsigned", "unknown-key", "other-device", "expired", "replayed"] as const;
  const sentBy = new Map<string, number>();
  for (let i = 0; i < 1000; i++) {
    const kind = kinds[i % kinds.length]!;
    sentBy.set(kind, (sentBy.get(kind) ?? 0) + 1);
    const name = names[rand(names.length)]!;
    const topic = `quantd/v1/lab/target/cmd/${name}`;
    const body = encodeJson({ id: `h-${i}`, expiresAt: Date.now() + 60_000, params: fuzzParams() });
    let payload: Uint8Array = body;
    let props: Record<string, string> | undefined;
    switch (kind) {
      case "fuzzed-body":
        payload = crypto.getRandomValues(new Uint8Array(1 + rand(512)));
        props = operator.sign(topic, body); // a real signature over other bytes
        break;
      case "unsigned":
        break;
      case "unknown-key":
        props = other.sign(topic, body);
        break;
      case "other-device":
        props = operator.sign(`quantd/v1/lab/elsewhere/cmd/${name}`, body);
        break;
      case "expired": {
        payload = encodeJson({ id: `h-${i}`, expiresAt: Date.now() - 1000, params: fuzzParams() });
        props = operator.sign(topic, payload);
        break;
      }
      case "replayed":
        payload = legit;
        props = operator.sign(legitTopic, legit);
        break;
    }
    await attacker.publish(kind === "replayed" ? legitTopic : topic, payload, {
      qos: 1,
      responseTopic: replyTopic,
      ...(props === undefined ? {} : { userProperties: props }),
    });
  }
  await until(() => replies >= 1000, 15_000);
  await Bun.sleep(500);
  const effects = device.calls.length - callsBefore;
  const jobs = device.store.jobs.list({ limit: 100_000 }).length - jobsBefore;
  await attacker.close();
  await stopDevice(device);
  return [
    `1,000 hostile commands (${[...sentBy].map(([k, n]) => `${n} ${k}`).join(", ")}): ` +
      `${effects} handler calls, ${jobs} jobs created, ${okReplies - sentBy.get("replayed")!} ok replies other than the replayed id's cached answer`,
    `  replies ${replies}: ${[...codes].map(([c, n]) => `${c} ${n}`).join(", ")}, ok ${okReplies} (the replays of legit-1, answered from the cache without running)`,
  ];
}

// ---------------------------------------------------------------- 3. forged device messages

async function forgedMessages(broker: Mosquitto): Promise<string> {
  const store = await openSqliteFleetStore(join(dir, "forged.db"));
  const real = generateSigningKey().key;
  await store.enroll("lab", "real", real.publicKey, Date.now());
  await store.enroll("lab", "victim", generateSigningKey().key.publicKey, Date.now());
  const controller = startController({ broker: broker.url, store, clientId: "forged-ctl" });
  await controller.waitReady(5000);
  const forger = await connectMqttOnce({ url: broker.url, clientId: "forger" });
  const stranger = generateSigningKey().key;
  const kinds = ["unsigned", "wrong-key", "not-enrolled", "moved-signature"] as const;
  for (let i = 0; i < 1000; i++) {
    const kind = kinds[i % kinds.length]!;
    const device = kind === "not-enrolled" ? `ghost-${i}` : "victim";
    const what = ["status", "report", "telemetry", "jobs"][i % 4]!;
    const topic = what === "jobs" ? `quantd/v1/lab/${device}/jobs/f-${i}` : `quantd/v1/lab/${device}/${what}`;
    const body = encodeJson(
      what === "status"
        ? { state: "online", fleet: "lab", device, at: Date.now(), agentVersion: "6.6.6-forged" }
        : what === "report"
          ? { id: `f-${i}`, jobId: `f-${i}`, type: "bench", state: "SUCCEEDED", startedAt: 1, finishedAt: 2 }
          : what === "telemetry"
            ? {
                device,
                at: Date.now(),
                samples: [{ at: Date.now(), rssBytes: 1 }],
                outbox: { queued: 0, bytes: 0, dropped: 0 },
              }
            : { id: `f-${i}`, type: "bench", state: "IN_PROGRESS", stage: null, progress: 0, at: Date.now() },
    );
    const props =
      kind === "unsigned"
        ? undefined
        : kind === "wrong-key" || kind === "not-enrolled"
          ? stranger.sign(topic, body)
          : real.sign(topic.replace("/victim/", "/real/"), body);
    await forger.publish(topic, body, { qos: 1, ...(props === undefined ? {} : { userProperties: props }) });
  }
  const refusedAll = (): number => {
    const r = controller.stats().refused;
    return r.unsigned + r.badSignature + r.notEnrolled;
  };
  await until(() => refusedAll() >= 1000, 15_000);
  await Bun.sleep(500);
  const devices = await store.devices("lab");
  const stored =
    devices.length +
    (await store.reports("lab", "victim", 10_000)).length +
    (await store.jobs("lab", undefined, 10_000)).length +
    (await store.telemetry("lab", "victim", 0)).length;
  const r = controller.stats().refused;
  await forger.close();
  await controller.stop();
  await store.close();
  return `1,000 forged device messages: ${stored} stored; refused ${r.unsigned} unsigned, ${r.badSignature} bad signature, ${r.notEnrolled} not enrolled`;
}

// ---------------------------------------------------------------- 4. memory under large messages

function rssWatcher(pid: number): { peak: () => number; reset: () => void; stop: () => void } {
  let peak = 0;
  const timer = setInterval(() => {
    peak = Math.max(peak, readProcessMemory(pid).rssBytes);
  }, 50);
  return {
    peak: () => peak,
    reset: () => {
      peak = readProcessMemory(pid).rssBytes;
    },
    stop: () => clearInterval(timer),
  };
}

async function spawnUntil(
  args: string[],
  env: Record<string, string>,
  marker: RegExp,
): Promise<ChildProcess> {
  const proc = spawn(process.execPath, [join(repo, "src/cli/main.ts"), ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  proc.stderr?.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const ok = await until(() => marker.test(err) || proc.exitCode !== null, 60_000);
  if (!ok || proc.exitCode !== null) throw new Error(`quantd ${args[0]} did not start: ${err}`);
  return proc;
}

async function memoryUnderLargeMessages(broker: Mosquitto): Promise<string[]> {
  const deviceKeyFile = join(dir, "agent-device.key");
  const deviceKey = writeNewSigningKey(deviceKeyFile);
  const db = join(dir, "memory-controller.db");
  {
    const s = await openSqliteFleetStore(db);
    await s.enroll("lab", "agent-1", deviceKey.publicKey, Date.now());
    await s.close();
  }
  const httpPort = await freePort();
  const controller = await spawnUntil(
    [
      "fleet",
      "serve",
      "--broker",
      broker.url,
      "--db",
      db,
      "--http",
      `127.0.0.1:${httpPort}`,
      "--client-id",
      "mem-ctl",
    ],
    {},
    /subscribed/,
  );
  const agent = await spawnUntil(
    [
      "agent",
      "--state-dir",
      join(dir, "agent-state"),
      "--socket",
      join(dir, "agent.sock"),
      "--broker",
      broker.url,
      "--device",
      "agent-1",
      "--fleet",
      "lab",
    ],
    {
      QUANTD_FLEET_OPERATOR_KEYS: operator.publicKey,
      QUANTD_FLEET_DEVICE_KEY_FILE: deviceKeyFile,
      QUANTD_FLEET_TELEMETRY_INTERVAL_MS: "100",
    },
    /fleet: device key/,
  );
  const ops = await connectMqttOnce({ url: broker.url, clientId: "mem-ops", maxPacketBytes: 268_435_455 });
  const agentRss = rssWatcher(agent.pid!);
  const ctlRss = rssWatcher(controller.pid!);
  const cmdTopic = "quantd/v1/lab/agent-1/cmd/status";
  const reportTopic = "quantd/v1/lab/agent-1/report";
  let n = 0;
  const command = (pad: number): void => {
    const body = encodeJson({
      id: `m-${++n}`,
      expiresAt: Date.now() + 60_000,
      params: pad > 0 ? { pad: "x".repeat(pad) } : {},
    });
    void ops
      .publish(cmdTopic, body, { qos: 1, userProperties: operator.sign(cmdTopic, body) })
      .catch(() => {});
  };
  const report = (bytes: number): void => {
    const body = encodeJson({
      id: `big-${++n}`,
      jobId: `big-${n}`,
      type: "bench",
      state: "SUCCEEDED",
      result: { blob: "z".repeat(Math.max(0, bytes - 120)) },
      startedAt: 1,
      finishedAt: 2,
    });
    void ops
      .publish(reportTopic, body, { qos: 1, userProperties: deviceKey.sign(reportTopic, body) })
      .catch(() => {});
  };
  const phase = async (what: () => void, count: number, gapMs: number): Promise<[number, number]> => {
    agentRss.reset();
    ctlRss.reset();
    for (let i = 0; i < count; i++) {
      what();
      await Bun.sleep(gapMs);
    }
    await Bun.sleep(2000);
    return [agentRss.peak(), ctlRss.peak()];
  };
  try {
    // Normal traffic: status commands and the agent's own telemetry and reports-sized results.
    const normal = await phase(() => command(0), 100, 50);
    const maxSize = await phase(
      () => {
        command(MAX_COMMAND_BYTES - 200); // the largest command the agent parses
        report(MAX_REPORT_BYTES - 200); // the largest report the controller stores
        // At the CLI's packet limit, unsigned: more than the agent and the controller accept.
        void ops.publish(cmdTopic, new Uint8Array(MiB - 200), { qos: 1 }).catch(() => {});
        void ops.publish(reportTopic, new Uint8Array(MiB - 200), { qos: 1 }).catch(() => {});
      },
      60,
      50,
    );
    const oversize = await phase(
      () => {
        void ops.publish(cmdTopic, new Uint8Array(2 * MiB), { qos: 1 }).catch(() => {});
        void ops.publish(reportTopic, new Uint8Array(2 * MiB), { qos: 1 }).catch(() => {});
      },
      30,
      100,
    );
    const huge = await phase(
      () => {
        void ops.publish(cmdTopic, new Uint8Array(50 * MiB), { qos: 1 }).catch(() => {});
        void ops.publish(reportTopic, new Uint8Array(50 * MiB), { qos: 1 }).catch(() => {});
      },
      2,
      500,
    );
    const fmt = (b: number): string => `${(b / MiB).toFixed(0)} MiB`;
    const row = (label: string, [a, c]: [number, number]): string =>
      `  ${label.padEnd(44)} agent ${fmt(a).padStart(8)} (${a - normal[0] >= 0 ? "+" : ""}${fmt(a - normal[0])})   controller ${fmt(c).padStart(8)} (${c - normal[1] >= 0 ? "+" : ""}${fmt(c - normal[1])})`;
    return [
      "peak RSS per phase (real quantd agent with the shipped model, real quantd fleet serve; vs the normal phase):",
      `  ${"normal (100 status commands, telemetry)".padEnd(44)} agent ${fmt(normal[0]).padStart(8)}            controller ${fmt(normal[1]).padStart(8)}`,
      row(
        `max-size (${MAX_COMMAND_BYTES / 1024} KiB cmd, ${MAX_REPORT_BYTES / 1024} KiB report, 1 MiB)`,
        maxSize,
      ),
      row("oversize (2 MiB to each, 30 times)", oversize),
      row("oversize (50 MiB to each, twice)", huge),
    ];
  } finally {
    agentRss.stop();
    ctlRss.stop();
    await ops.close();
    for (const p of [agent, controller]) {
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await exited;
    }
  }
}

try {
  console.log("1. broker restart with persistence, mid-stream");
  console.log(`  ${await restartRun(1)}`);
  console.log(`  ${await restartRun(2)}`);
  const broker = await startMosquitto();
  try {
    console.log("2. hostile commands");
    for (const line of await hostileCommands(broker)) console.log(`  ${line}`);
    console.log("3. forged device messages");
    console.log(`  ${await forgedMessages(broker)}`);
    console.log("4. memory under maximum-size and oversize messages");
    for (const line of await memoryUnderLargeMessages(broker)) console.log(line);
  } finally {
    await broker.dispose();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
