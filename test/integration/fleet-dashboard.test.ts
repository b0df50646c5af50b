/**
 * The controller's dashboard in a real headless browser (Debian's chromium
 * driven by playwright-core) against a real controller, broker and device
 * links: the device table shows what the devices reported, a row opens the
 * charts, and new reports and a device going offline appear without a
 * reload. A screenshot of the page is taken and checked.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/link.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey } from "../helpers/fleet-keys.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
const skip = !hasMosquitto || CHROMIUM === undefined;
if (skip)
  console.warn(hasMosquitto ? "chromium not installed: dashboard browser test skipped" : mosquittoSkipReason);

const unused = async (): Promise<never> => {
  throw new Error("not used");
};
const handler: FleetCommandHandler = {
  recalibrate: unused,
  quantizeDynamic: unused,
  bench: unused,
  rollback: unused,
  status: async () => ({}),
  setConfig: unused,
  collect: unused,
};

describe.skipIf(skip)("fleet dashboard in a headless browser", () => {
  let broker: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  let browser: Browser;
  let page: Page;
  const boards: { link: FleetLink; store: Store }[] = [];

  const report = (b: number, id: string, agreement: number, at: number): void =>
    boards[b]!.link.report({
      id,
      jobId: id,
      type: "recalibrate",
      state: "SUCCEEDED",
      result: { agreement, int8P50Ms: 3.2, fp32P50Ms: 8.4, modelVersion: "2" },
      startedAt: at - 1000,
      finishedAt: at,
    });

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-dash-"));
    store = await openSqliteFleetStore(join(dir, "controller.db"));
    controller = startController({ broker: broker.url, store, clientId: "dash-controller" });
    expect(await controller.waitReady(5000)).toBe(true);
    dashboard = startDashboard(controller, "127.0.0.1:0");
    for (const name of ["jetson-1", "pi-1"]) {
      const s = await openStore(join(dir, `${name}.db`));
      let t = 0;
      const deviceKey = newDeviceKey();
      await enroll(store, "lab", [[name, deviceKey.publicKey]]);
      const link = createFleetLink(
        { broker: broker.url, fleet: "lab", device: name, telemetryIntervalMs: 100, telemetryBatch: 2 },
        {
          store: s,
          deviceKey,
          handler,
          status: () => ({ agentVersion: "0.1.0", model: { version: "2", kind: "int8-static" } }),
          telemetry: () => {
            t++;
            return {
              latencyMs: { p50: 3 + (t % 3) * 0.2, p95: 5, p99: 6 },
              rssBytes: 150 * 1048576,
              requestRate: 4,
            };
          },
        },
      );
      expect(await link.waitConnected(5000)).toBe(true);
      boards.push({ link, store: s });
    }
    report(0, "r-old", 0.991, Date.now() - 60_000);
    report(0, "r-new", 0.993, Date.now() - 30_000);
    const deadline = Date.now() + 8000;
    while ((await store.device("lab", "jetson-1"))?.lastReport?.id !== "r-new" && Date.now() < deadline) {
      await Bun.sleep(50);
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    dashboard?.stop();
    for (const b of boards) {
      await b.link.stop({ flushMs: 200 });
      b.store.close();
    }
    await controller?.stop();
    await store?.close();
    await broker?.dispose();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  const rowText = async (device: string): Promise<string[]> =>
    await page.locator(`tr.device[data-key="lab/${device}"] td`).allTextContents();

  test("the device table shows online state, model, latency, agreement, memory and the last report", async () => {
    await page.goto(dashboard.url);
    await page.locator("tr.device").nth(1).waitFor({ timeout: 10_000 });
    expect(await page.locator("#summary").textContent()).toBe("2 devices, 2 online");
    const jetson = await rowText("jetson-1");
    expect(jetson.slice(0, 8)).toEqual([
      "jetson-1",
      "lab",
      "2",
      "int8-static",
      "3.20 ms",
      "8.40 ms",
      "99.3 %",
      "150 MiB",
    ]);
    expect(jetson[9]).toMatch(/^recalibrate SUCCEEDED \d+ s ago$/);
    expect((await rowText("pi-1"))[9]).toBe("–");
    const dot = page.locator('tr.device[data-key="lab/pi-1"] .dot');
    // Page-side code as a string: the test's TypeScript has no DOM library.
    const color = await page.evaluate(
      `getComputedStyle(document.querySelector('tr.device[data-key="lab/pi-1"] .dot')).backgroundColor`,
    );
    expect(color).toBe("rgb(42, 157, 74)");
    expect(await dot.getAttribute("title")).toBe("online");
  });

  test("a row opens latency and agreement charts drawn from the stored history", async () => {
    await page.locator('tr.device[data-key="lab/jetson-1"]').click();
    await page.locator("#detail-title").filter({ hasText: "jetson-1 (lab)" }).waitFor({ timeout: 5000 });
    const p50 = page.locator('#latency polyline[data-series="p50"]');
    await p50.waitFor({ timeout: 5000 });
    expect(((await p50.getAttribute("points")) ?? "").split(" ").length).toBeGreaterThanOrEqual(2);
    const agreement = page.locator('#accuracy polyline[data-series="agreement"]');
    expect(((await agreement.getAttribute("points")) ?? "").split(" ").length).toBe(2);
  });

  test("a new report and a device going offline show up live, without a reload", async () => {
    report(0, "r-live", 0.98, Date.now());
    await page
      .locator('tr.device[data-key="lab/jetson-1"] td')
      .filter({ hasText: "98.0 %" })
      .waitFor({ timeout: 10_000 });
    const agreement = page.locator('#accuracy polyline[data-series="agreement"]');
    await page.waitForFunction(
      `(document.querySelector('#accuracy polyline[data-series="agreement"]')?.getAttribute("points") ?? "").split(" ").length === 3`,
      undefined,
      { timeout: 10_000 },
    );
    expect(((await agreement.getAttribute("points")) ?? "").split(" ").length).toBe(3);
    await boards[1]!.link.stop({ flushMs: 200 });
    await page.locator("#summary").filter({ hasText: "2 devices, 1 online" }).waitFor({ timeout: 10_000 });
    const dot = page.locator('tr.device[data-key="lab/pi-1"] .dot');
    expect(await dot.getAttribute("title")).toBe("offline");
  });

  test("a device that is not enrolled waits on the page; confirming its key stores what it sends", async () => {
    const s = await openStore(join(dir, "newbie.db"));
    const link = createFleetLink(
      { broker: broker.url, fleet: "lab", device: "newbie" },
      { store: s, handler, status: () => ({ agentVersion: "0.1.0", model: { version: "1", kind: "fp32" } }) },
    );
    boards.push({ link, store: s });
    expect(await link.waitConnected(5000)).toBe(true);
    const row = page.locator("#pending tr").filter({ hasText: "newbie" });
    await row.waitFor({ timeout: 10_000 });
    expect(await row.locator("td").nth(2).textContent()).toBe(link.publicKey);
    expect(await page.locator("#refused").textContent()).toMatch(/[1-9]\d* from devices not enrolled/);
    expect(await store.device("lab", "newbie")).toBeUndefined();
    await row.locator("button").click();
    await page.locator("#pending-box").waitFor({ state: "hidden", timeout: 10_000 });
    expect((await store.enrolment("lab", "newbie"))?.state).toBe("enrolled");
    // From now on the device's messages are stored (its status again, as after a model swap).
    await link.refreshStatus();
    const deadline = Date.now() + 8000;
    while ((await store.device("lab", "newbie"))?.online !== true && Date.now() < deadline)
      await Bun.sleep(50);
    expect((await store.device("lab", "newbie"))?.online).toBe(true);
  });

  test("screenshot: the page renders at the viewport size with the table and both charts", async () => {
    const path = join(dir, "dashboard.png");
    await page.screenshot({ path, fullPage: true });
    // QUANTD_SCREENSHOT=FILE keeps a copy to look at.
    const keep = process.env.QUANTD_SCREENSHOT;
    if (keep !== undefined && keep !== "") copyFileSync(path, keep);
    const png = readFileSync(path);
    expect(png.subarray(1, 4).toString()).toBe("PNG");
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    expect(width).toBe(1280);
    expect(height).toBeGreaterThanOrEqual(800);
    // A blank or error page compresses to a few KB; the table and charts do not.
    expect(png.byteLength).toBeGreaterThan(20_000);
    const box = await page.locator("#latency").boundingBox();
    expect(box?.width).toBe(520);
  });
});
