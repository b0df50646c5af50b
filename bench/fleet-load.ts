/**
 * Fleet controller load: N simulated devices (plain MQTT 5 clients in this
 * one process, each with a retained `online` status and one QoS 0 telemetry
 * message per second, as the agent's link sends with telemetryBatch 1) against
 * a real `quantd fleet serve` child process with a SQLite store. Prints the
 * controller's CPU and memory (from /proc) and how many messages it stored
 * against how many were sent, so "keeps up" is a measured figure.
 *
 *   bun bench/fleet-load.ts                        # 1000 devices, 30 s, own mosquitto
 *   bun bench/fleet-load.ts --devices 200 --seconds 20 --broker mqtt://127.0.0.1:1883
 *   bun bench/fleet-load.ts --postgres             # the controller on a PostgreSQL server started here
 *
 * Not part of the test suite; figures are printed, never asserted.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { connectMqtt, type MqttConnection } from "../src/fleet/mqtt-client.ts";
import { openPostgresFleetStore } from "../src/fleet/controller/postgres-store.ts";
import { openSqliteFleetStore } from "../src/fleet/controller/sqlite-store.ts";
import { encodeJson, type StatusMessage, type TelemetryMessage } from "../src/fleet/protocol.ts";
import { generateSigningKey } from "../src/fleet/signing.ts";
import { startMosquitto } from "../test/helpers/mosquitto.ts";
import { freePort } from "../test/helpers/net.ts";
import { type Postgres, startPostgres } from "../test/helpers/postgres.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

const DEVICES = Number(arg("devices", "1000"));
const SECONDS = Number(arg("seconds", "30"));
const FLEET = "load";
const repo = resolve(import.meta.dir, "..");

interface ProcSample {
  cpuSec: number;
  rssBytes: number;
  hwmBytes: number;
}

function procSample(pid: number): ProcSample {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0) * 1024;
  return { cpuSec: ticks / 100, rssBytes: kb("VmRSS"), hwmBytes: kb("VmHWM") };
}

interface ControllerFigures {
  byKind: { telemetry: number; status: number };
  malformed: number;
  droppedTelemetry: number;
}

async function stats(url: string): Promise<ControllerFigures> {
  const res = await fetch(`${url}api/stats`);
  return (await res.json()) as ControllerFigures;
}

const dir = mkdtempSync(join(tmpdir(), "quantd-fleet-load-"));
const ownBroker = process.argv.includes("--broker") ? undefined : await startMosquitto();
const brokerUrl = ownBroker?.url ?? arg("broker", "");
const httpPort = await freePort();
const dashboard = `http://127.0.0.1:${httpPort}/`;
let controller: ChildProcess | undefined;
const pg: Postgres | undefined = process.argv.includes("--postgres") ? await startPostgres() : undefined;
const db = pg === undefined ? join(dir, "controller.db") : await pg.createDatabase("fleet_load");
const devices: MqttConnection[] = [];

// Every simulated device signs with its own key, enrolled before the controller starts (as
// `quantd fleet enroll` would): the controller stores nothing else.
const keys = Array.from({ length: DEVICES }, () => generateSigningKey().key);
const deviceName = (i: number): string => `sim-${String(i).padStart(4, "0")}`;
{
  const store = pg === undefined ? await openSqliteFleetStore(db) : await openPostgresFleetStore(db);
  for (const [i, key] of keys.entries()) await store.enroll(FLEET, deviceName(i), key.publicKey, Date.now());
  await store.close();
}

try {
  controller = spawn(
    process.execPath,
    [
      join(repo, "src/cli/main.ts"),
      "fleet",
      "serve",
      "--broker",
      brokerUrl,
      "--db",
      db,
      "--http",
      `127.0.0.1:${httpPort}`,
      "--client-id",
      "load-controller",
    ],
    { stdio: ["ignore", "inherit", "pipe"] },
  );
  let ready = false;
  controller.stderr?.on("data", (d: Buffer) => {
    if (d.toString().includes("subscribed")) ready = true;
  });
  while (!ready) {
    if (controller.exitCode !== null) throw new Error("controller exited");
    await Bun.sleep(50);
  }
  const pid = controller.pid!;
  const idle = procSample(pid);

  console.log(`connecting ${DEVICES} simulated devices to ${brokerUrl} …`);
  const t0 = performance.now();
  for (let i = 0; i < DEVICES; i++) {
    const device = `sim-${String(i).padStart(4, "0")}`;
    const conn = connectMqtt({ url: brokerUrl, clientId: device, keepaliveSec: 60, reconnectPeriodMs: 2000 });
    conn.onConnect(() => {
      const status: StatusMessage = {
        state: "online",
        fleet: FLEET,
        device,
        at: Date.now(),
        agentVersion: "sim",
        model: { version: "1", kind: "int8-static" },
      };
      const topic = `quantd/v1/${FLEET}/${device}/status`;
      const body = encodeJson(status);
      conn
        .publish(topic, body, { qos: 1, retain: true, userProperties: keys[i]!.sign(topic, body) })
        .catch(() => {});
    });
    devices.push(conn);
    // Don't open a thousand TLS-less sockets in one burst: the broker's accept queue is finite.
    if (i % 50 === 49) await Bun.sleep(20);
  }
  while (devices.some((d) => !d.connected)) await Bun.sleep(50);
  console.log(`connected in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  let sent = 0;
  const tick = (): void => {
    const at = Date.now();
    for (const [i, conn] of devices.entries()) {
      const msg: TelemetryMessage = {
        device: `sim-${String(i).padStart(4, "0")}`,
        at,
        samples: [
          {
            at,
            requestRate: 3 + (i % 7),
            latencyMs: { p50: 3 + (i % 5) * 0.1, p95: 6, p99: 9 },
            rssBytes: 180_000_000 + i * 1000,
            cpuTempC: 55,
          },
        ],
        outbox: { queued: 0, bytes: 0, dropped: 0 },
      };
      sent++;
      const topic = `quantd/v1/${FLEET}/${deviceName(i)}/telemetry`;
      const body = encodeJson(msg);
      conn.publish(topic, body, { userProperties: keys[i]!.sign(topic, body) }).catch(() => {});
    }
  };
  // Warm-up (the controller stores the first statuses), then the measured window.
  await Bun.sleep(2000);
  const before = procSample(pid);
  const statsBefore = await stats(dashboard);
  const sentBefore = sent;
  const start = performance.now();
  const timer = setInterval(tick, 1000);
  tick();
  await Bun.sleep(SECONDS * 1000);
  clearInterval(timer);
  const wall = (performance.now() - start) / 1000;
  const after = procSample(pid);
  // Let the controller drain what is in flight before counting.
  await Bun.sleep(3000);
  const statsAfter = await stats(dashboard);
  const stored = statsAfter.byKind.telemetry - statsBefore.byKind.telemetry;
  const sentInWindow = sent - sentBefore;
  const devicesSeen = ((await (await fetch(`${dashboard}api/devices?fleet=${FLEET}`)).json()) as unknown[])
    .length;

  const cpuPct = ((after.cpuSec - before.cpuSec) / wall) * 100;
  console.log(
    [
      `store: ${pg === undefined ? "SQLite" : "PostgreSQL"}; devices: ${DEVICES} (${devicesSeen} known to the controller), telemetry 1/s each, window ${wall.toFixed(1)} s`,
      `telemetry sent ${sentInWindow}, stored by the controller ${stored} (${((stored / sentInWindow) * 100).toFixed(1)} %), ` +
        `${(stored / wall).toFixed(0)} msg/s, dropped under overload ${statsAfter.droppedTelemetry - statsBefore.droppedTelemetry}`,
      `controller CPU ${cpuPct.toFixed(1)} % of one core (idle before load: ${idle.cpuSec.toFixed(2)} s cumulative)`,
      `controller RSS ${(after.rssBytes / 1048576).toFixed(0)} MiB (peak ${(after.hwmBytes / 1048576).toFixed(0)} MiB)`,
    ].join("\n"),
  );
} finally {
  await Promise.all(devices.map((d) => d.close({ force: true }).catch(() => {})));
  if (controller !== undefined && controller.exitCode === null) {
    const exited = new Promise((r) => controller?.once("exit", r));
    controller.kill("SIGTERM");
    await exited;
  }
  await ownBroker?.dispose();
  await pg?.dispose();
  rmSync(dir, { recursive: true, force: true });
}
