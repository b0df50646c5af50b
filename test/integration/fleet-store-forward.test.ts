/**
 * Store-and-forward across failures, with real processes and a real broker:
 * a child agent queues N reports while the broker is stopped and restarted
 * and while the agent itself is killed with SIGKILL and restarted; a
 * subscriber with a persistent session counts the distinct report ids and
 * must see exactly N (QoS 1 is at least once, so duplicates are allowed and
 * counted, losses are not).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectMqtt, type MqttConnection } from "../../src/fleet/mqtt-client.ts";
import { decodeJson, type ReportMessage } from "../../src/fleet/protocol.ts";
import { openStore } from "../../src/store/store.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { until } from "../helpers/until.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

const CHILD = join(import.meta.dir, "fleet-agent-child.ts");
const N = 400;

let broker: Mosquitto;
let dir: string;

beforeAll(async () => {
  if (!hasMosquitto) return;
  broker = await startMosquitto();
  dir = mkdtempSync(join(tmpdir(), "quantd-fleet-sf-"));
});
afterAll(async () => {
  await broker?.dispose();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

interface Child {
  proc: ChildProcess;
  lastEnqueued: () => number;
  flushed: Promise<void>;
  exited: Promise<number | null>;
}

function startChild(db: string, from: number, to: number, delayMs: number): Child {
  const proc = spawn(process.execPath, [CHILD, db, broker.url, String(from), String(to), String(delayMs)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let last = from - 1;
  let buf = "";
  let onFlushed: () => void = () => {};
  const flushed = new Promise<void>((r) => (onFlushed = r));
  proc.stdout?.on("data", (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split("\n");
    buf = lines.pop() ?? "";
    for (const line of lines) {
      if (line.startsWith("enq ")) last = Number(line.slice(4));
      if (line === "flushed") onFlushed();
    }
  });
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
  return { proc, lastEnqueued: () => last, flushed, exited };
}

test.skipIf(!hasMosquitto)(
  "0 of N acknowledged reports lost across a broker restart and a kill -9 of the agent",
  async () => {
    const db = join(dir, "child.db");
    const counts = new Map<string, number>();
    // Persistent session: the broker queues reports for the counter while it reconnects.
    const counter: MqttConnection = connectMqtt({
      url: broker.url,
      clientId: "loss-counter",
      clean: false,
      sessionExpirySec: 3600,
      reconnectPeriodMs: 200,
    });
    counter.onMessage((m) => {
      const r = decodeJson(m.payload) as ReportMessage;
      counts.set(r.id, (counts.get(r.id) ?? 0) + 1);
    });
    await until(() => counter.connected, 5000, "counter connect");
    await counter.subscribe(["quantd/v1/loss/child/report"], { qos: 1 });

    const first = startChild(db, 0, N, 4);
    await until(() => first.lastEnqueued() >= 60, 20_000, "first reports");
    await broker.stop();
    const whileDown = first.lastEnqueued();
    await until(
      () => first.lastEnqueued() >= whileDown + 80,
      20_000,
      "reports queued while the broker is down",
    );
    // Nothing could be sent: the reports wait in the child's SQLite outbox.
    const peek = await openStore(db);
    const queuedWhileDown = peek.outbox.stats().count;
    peek.close();
    expect(queuedWhileDown).toBeGreaterThanOrEqual(80);
    await broker.start();
    await until(() => first.lastEnqueued() >= 250, 30_000, "reports after the restart");
    first.proc.kill("SIGKILL");
    expect(await first.exited).toBe(null);
    const killedAt = first.lastEnqueued();
    const second = startChild(db, killedAt + 1, N, 1);
    await second.flushed;
    await second.exited;
    await until(() => counts.size >= N, 20_000, `all ${N} reports (have ${counts.size})`);
    await Bun.sleep(300);
    await counter.close();

    const ids = [...counts.keys()].sort((a, b) => Number(a.slice(2)) - Number(b.slice(2)));
    expect(ids.length).toBe(N);
    expect(ids).toEqual(Array.from({ length: N }, (_, i) => `r-${i}`));
    const duplicates = [...counts.values()].reduce((a, n) => a + n - 1, 0);
    const after = await openStore(db);
    const stats = after.outbox.stats();
    after.close();
    console.log(
      `store-and-forward: ${N} reports, ${counts.size} distinct received, 0 lost, ${duplicates} duplicates; ` +
        `${queuedWhileDown} queued while the broker was down, agent killed after r-${killedAt}; outbox drops ${stats.dropped}`,
    );
    expect(stats.dropped).toBe(0);
    expect(stats.count).toBe(0);
  },
  90_000,
);
