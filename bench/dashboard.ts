/**
 * Dashboard API cost at fleet size: a SQLite controller store filled with N
 * devices (each a status with its model, an hour of telemetry at one sample
 * per 10 s, a recalibration report with figures, a later bench report without
 * an agreement, and a failed job on every tenth), served by a real
 * controller (on the embedded broker) and dashboard. Prints the median and
 * p95 time of the calls the page makes on each refresh (`/api/overview`, a
 * device's detail and telemetry), the first overview (the figures cache cold)
 * apart, and the JSON size.
 *
 *   bun bench/dashboard.ts                 # 1000 devices, 30 calls each
 *   bun bench/dashboard.ts --devices 200 --calls 50
 *
 * Not part of the test suite; figures are printed, never asserted.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { percentile } from "../src/bench/stats.ts";
import { startController } from "../src/fleet/controller/controller.ts";
import { startDashboard } from "../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../src/fleet/controller/sqlite-store.ts";
import type { TelemetryItem } from "../src/fleet/controller/store.ts";
import { startEmbeddedBroker } from "../src/fleet/embedded-broker.ts";

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? Number(process.argv[i + 1]) : fallback;
}

const DEVICES = arg("devices", 1000);
const CALLS = arg("calls", 30);
const SAMPLES = 360;

async function timed(url: string): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const res = await fetch(url);
  const body = await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return { ms: performance.now() - t0, bytes: body.byteLength };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "quantd-bench-dash-"));
  const store = await openSqliteFleetStore(join(dir, "fleet.db"));
  const now = Date.now();
  const fill0 = performance.now();
  for (let i = 0; i < DEVICES; i++) {
    const device = `board-${String(i).padStart(4, "0")}`;
    await store.recordStatus(
      "lab",
      device,
      {
        state: "online",
        fleet: "lab",
        device,
        at: now - 3600_000,
        agentVersion: "0.1.0",
        model: { version: "2", kind: "int8-static" },
        outbox: { queued: 0, bytes: 0, dropped: i % 50 === 0 ? 3 : 0 },
      },
      now - 3600_000,
    );
    const samples = Array.from({ length: SAMPLES }, (_, k) => ({
      at: now - 3600_000 + k * 10_000,
      requestRate: 4,
      rssBytes: 150 * 1048576,
      memoryLimitBytes: 512 * 1048576,
      latencyMs: { p50: 3 + (k % 5) * 0.1, p95: 5, p99: 6 },
    }));
    const items: TelemetryItem[] = [
      {
        fleet: "lab",
        device,
        msg: { device, at: now, samples, outbox: { queued: 0, bytes: 0, dropped: 0 } },
        receivedAt: now,
      },
    ];
    await store.recordTelemetry(items);
    const report = (
      id: string,
      type: string,
      state: "SUCCEEDED" | "FAILED",
      at: number,
      result: unknown,
    ) => ({
      id,
      device,
      jobId: id,
      type,
      state,
      result,
      ...(state === "FAILED"
        ? { error: { code: "CALIB_EMPTY" as const, message: "the sample pool is empty" } }
        : {}),
      startedAt: at - 1000,
      finishedAt: at,
    });
    await store.recordReport(
      "lab",
      device,
      report(`r-${i}`, "recalibrate", "SUCCEEDED", now - 1800_000, {
        agreement: 0.993,
        int8P50Ms: 3.2,
        fp32P50Ms: 8.4,
      }),
      now - 1800_000,
    );
    await store.recordReport(
      "lab",
      device,
      report(`b-${i}`, "bench", "SUCCEEDED", now - 600_000, { int8P50Ms: 3.1 }),
      now - 600_000,
    );
    if (i % 10 === 0) {
      await store.recordReport(
        "lab",
        device,
        report(`f-${i}`, "recalibrate", "FAILED", now - 60_000, null),
        now - 60_000,
      );
    }
  }
  const fillMs = performance.now() - fill0;
  const broker = await startEmbeddedBroker();
  const controller = startController({ broker: broker.url, store, transient: { fleet: "lab" } });
  await controller.waitReady(10_000);
  const dashboard = startDashboard(controller, "127.0.0.1:0");
  try {
    const first = await timed(`${dashboard.url}api/overview`);
    const rows: [string, string][] = [
      ["/api/overview", `${dashboard.url}api/overview`],
      ["/api/overview?state=alerting", `${dashboard.url}api/overview?state=alerting`],
      ["/api/devices/lab/board-0500", `${dashboard.url}api/devices/lab/board-0500`],
      [
        "…/board-0500/telemetry (1 h)",
        `${dashboard.url}api/devices/lab/board-0500/telemetry?since=${now - 3600_000}`,
      ],
    ];
    console.log(
      `dashboard API, ${DEVICES} devices (SQLite, filled in ${(fillMs / 1000).toFixed(1)} s), ${CALLS} calls each`,
    );
    console.log(
      `first /api/overview (figures cache cold): ${first.ms.toFixed(1)} ms, ${(first.bytes / 1024).toFixed(0)} KiB`,
    );
    console.log("| call | median ms | p95 ms | KiB |");
    console.log("|---|---:|---:|---:|");
    for (const [name, url] of rows) {
      const runs: { ms: number; bytes: number }[] = [];
      for (let k = 0; k < CALLS; k++) runs.push(await timed(url));
      const ms = runs.map((r) => r.ms);
      console.log(
        `| ${name} | ${percentile(ms, 50).toFixed(1)} | ${percentile(ms, 95).toFixed(1)} | ${((runs[0]?.bytes ?? 0) / 1024).toFixed(0)} |`,
      );
    }
  } finally {
    dashboard.stop();
    await controller.stop();
    await store.close();
    await broker.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
