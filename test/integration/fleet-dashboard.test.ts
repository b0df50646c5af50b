/**
 * The controller's dashboard in a real headless browser (Debian's chromium
 * driven by playwright-core) against a real controller, broker and device
 * links: aggregates, alerts and the device table show what the devices
 * reported, a row opens the history and time charts, new reports and a device
 * going offline appear without a reload, actions sent from the page are signed
 * with the operator key and run on the devices (a refused one says why), a
 * failed job shows its reason, and without an operator key the buttons say
 * why they are disabled. Screenshots of the main views are taken and checked;
 * QUANTD_SCREENSHOT_DIR=DIR keeps them (the README's come from here).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import {
  createDashboardCommands,
  type DashboardCommands,
} from "../../src/fleet/controller/dashboard-commands.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce } from "../../src/fleet/mqtt-client.ts";
import type { ModelInfo } from "../../src/fleet/protocol.ts";
import { QuantdError } from "../../src/errors.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { enroll, newDeviceKey, OPERATOR_KEYS, operator } from "../helpers/fleet-keys.ts";
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

/** The serving model of each board, changed by its rollback. */
const models = new Map<string, ModelInfo>();

/** A board's handler: bench and rollback run (in the link, as on a real agent); recalibration fails for want of samples. */
function boardHandler(name: string, refresh: () => Promise<void>): FleetCommandHandler {
  return {
    ...handler,
    async recalibrate() {
      throw new QuantdError("CALIB_EMPTY", "the sample pool is empty: collect samples before recalibrating");
    },
    async bench(_params, ctx) {
      ctx.progress("bench", 0.5);
      return { int8P50Ms: 3.1, fp32P50Ms: 8.2, runs: 20 };
    },
    async rollback() {
      models.set(name, { version: "1", kind: "fp32" });
      await refresh();
      return { modelVersion: "1", from: "2" };
    },
  };
}

describe.skipIf(skip)("fleet dashboard in a headless browser", () => {
  let broker: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  let browser: Browser;
  let page: Page;
  let commands: DashboardCommands;
  let shots: string | undefined;
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
    commands = createDashboardCommands({
      connect: () => connectMqttOnce({ url: broker.url, clientId: "dash-ops" }),
      signer: operator,
    });
    dashboard = startDashboard(controller, "127.0.0.1:0", { commands });
    shots = process.env.QUANTD_SCREENSHOT_DIR || undefined;
    if (shots !== undefined) mkdirSync(shots, { recursive: true });
    for (const name of ["jetson-1", "pi-1"]) {
      const s = await openStore(join(dir, `${name}.db`));
      let t = 0;
      const deviceKey = newDeviceKey();
      await enroll(store, "lab", [[name, deviceKey.publicKey]]);
      models.set(name, { version: "2", kind: "int8-static" });
      let link: FleetLink | undefined;
      link = createFleetLink(
        {
          broker: broker.url,
          fleet: "lab",
          device: name,
          telemetryIntervalMs: 100,
          telemetryBatch: 2,
          operatorKeys: OPERATOR_KEYS,
        },
        {
          store: s,
          deviceKey,
          handler: boardHandler(name, async () => await link?.refreshStatus()),
          status: () => ({ agentVersion: "0.1.0", model: models.get(name) ?? null }),
          telemetry: () => {
            t++;
            // pi-1 runs close to its memory limit (an alert); jetson-1 serves a varying load.
            return {
              latencyMs: { p50: 3 + (t % 3) * 0.2, p95: 5 + (t % 5) * 0.3, p99: 6 },
              rssBytes: (name === "pi-1" ? 470 : 150 + (t % 7)) * 1048576,
              memoryLimitBytes: 512 * 1048576,
              requestRate: 4 + (t % 4),
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
    await commands?.close();
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
  const shot = async (p: Page, name: string, minBytes = 20_000): Promise<void> => {
    const path = join(dir, name);
    await p.screenshot({ path, fullPage: true });
    const png = readFileSync(path);
    expect(png.subarray(1, 4).toString()).toBe("PNG");
    expect(png.readUInt32BE(16)).toBe(1280);
    // A blank or error page compresses to a few KB.
    expect(png.byteLength).toBeGreaterThan(minBytes);
    if (shots !== undefined) copyFileSync(path, join(shots, name));
  };
  const until = async (what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await Bun.sleep(50);
    }
  };

  test("aggregates, alerts and the device table show online state, model, latency, agreement, memory and the last report", async () => {
    await page.goto(dashboard.url);
    await page.locator("tr.device").nth(1).waitFor({ timeout: 10_000 });
    expect(await page.locator("#summary").textContent()).toBe("2 devices, 2 online");
    const jetson = await rowText("jetson-1");
    expect(jetson.slice(1, 8)).toEqual([
      "jetson-1",
      "lab",
      "2",
      "int8-static",
      "3.20 ms",
      "8.40 ms",
      "99.3 %",
    ]);
    expect(jetson[8]).toMatch(/^\d\.\d\d ms$/);
    expect(jetson[9]).toMatch(/^15\d MiB$/);
    expect(jetson[11]).toMatch(/^recalibrate SUCCEEDED \d+ s ago$/);
    expect((await rowText("pi-1"))[11]).toBe("–");
    const color = await page.evaluate(
      `getComputedStyle(document.querySelector('tr.device[data-key="lab/pi-1"] .dot')).backgroundColor`,
    );
    expect(color).toBe("rgb(42, 157, 74)");
    expect(await page.locator('tr.device[data-key="lab/pi-1"] .dot').getAttribute("title")).toBe("online");
    const cards = await page.locator("#aggregates .card").allTextContents();
    expect(cards).toEqual([
      "2 / 2online",
      "2 × int8-staticdevices by model kind",
      "2 × 2devices by model version",
      "99.3 %worst agreement (jetson-1)",
      expect.stringMatching(/^\d\.\d\d msslowest p95 \((jetson-1|pi-1)\)$/),
    ]);
    await page.locator("#alerts li.memory").waitFor({ timeout: 10_000 });
    expect(await page.locator("#alerts li.memory").textContent()).toMatch(
      /^memorypi-1 \(lab\): memory 470 of 512 MiB \(92 %\), \d+ s ago$/,
    );
  });

  test("filters by state and fleet", async () => {
    await page.selectOption("#filter-state", "alerting");
    await page.locator('tr.device[data-key="lab/jetson-1"]').waitFor({ state: "detached", timeout: 5000 });
    expect(await page.locator("tr.device").count()).toBe(1);
    await page.selectOption("#filter-state", "");
    await page.selectOption("#filter-fleet", "lab");
    await page.locator("tr.device").nth(1).waitFor({ timeout: 5000 });
    expect(await page.locator("#filter-fleet option").allTextContents()).toEqual(["all", "lab"]);
    await page.selectOption("#filter-fleet", "");
  });

  test("a row opens time charts with units, the model history and the jobs", async () => {
    await page.locator('tr.device[data-key="lab/jetson-1"]').click();
    await page.locator("#detail-title").filter({ hasText: "jetson-1 (lab)" }).waitFor({ timeout: 5000 });
    for (const [svg, series] of [
      ["latency", "p50"],
      ["latency", "p95"],
      ["memory", "rss"],
      ["memory", "limit"],
      ["rate", "rate"],
    ] as const) {
      const line = page.locator(`#${svg} polyline[data-series="${series}"]`);
      // A flat line has no height, so it counts as hidden: wait for it to be drawn.
      await line.waitFor({ state: "attached", timeout: 5000 });
      expect(((await line.getAttribute("points")) ?? "").split(" ").length).toBeGreaterThanOrEqual(2);
    }
    const labels = async (svg: string): Promise<string[]> =>
      await page.locator(`#${svg} text`).allTextContents();
    expect(await labels("latency")).toContain("ms");
    expect(await labels("memory")).toContain("MiB");
    expect(await labels("rate")).toContain("texts/s");
    // A time axis: clock labels under every chart.
    for (const svg of ["latency", "memory", "rate", "accuracy"]) {
      expect((await labels(svg)).filter((t) => /^\d\d:\d\d(:\d\d)?$/.test(t)).length).toBeGreaterThanOrEqual(
        2,
      );
    }
    const agreement = page.locator('#accuracy polyline[data-series="agreement"]');
    expect(((await agreement.getAttribute("points")) ?? "").split(" ").length).toBe(2);
    // Two reports at 99.1 and 99.3 %: distinct ticks, not "100.0 %" at both ends.
    const ticks = (await labels("accuracy")).filter((t) => /^\d+(\.\d+)?$/.test(t));
    expect(new Set(ticks).size).toBe(ticks.length);
    expect(ticks.length).toBeGreaterThanOrEqual(3);
    expect(ticks.map(Number).every((v) => v >= 98 && v <= 100)).toBe(true);
    expect(await labels("accuracy")).toContain("%");
    const models = await page.locator("#models tr td").allTextContents();
    expect(models.slice(1, 4)).toEqual(["2", "int8-static", "first"]);
  });

  test("actions from the page: bench on a selection, rollback on one device, a failed recalibration shows its reason", async () => {
    for (const d of ["jetson-1", "pi-1"]) await page.locator(`tr.device[data-key="lab/${d}"] input`).check();
    await page.locator("#selected-count").filter({ hasText: "2 selected" }).waitFor({ timeout: 5000 });
    await page.locator('#actions button[data-action="bench"]').click();
    expect(await page.locator("#confirm-what").textContent()).toBe("bench to 2 devices");
    await page.locator("#confirm-go").click();
    await page.locator("#action-result").filter({ hasText: "lab/pi-1: bench" }).waitFor({ timeout: 15_000 });
    const result = (await page.locator("#action-result").textContent()) ?? "";
    expect(result).toMatch(/lab\/jetson-1: bench (QUEUED|IN_PROGRESS) job bench-/);
    expect(result).toMatch(/lab\/pi-1: bench (QUEUED|IN_PROGRESS) job bench-/);
    for (const d of ["jetson-1", "pi-1"]) {
      await until(`${d}'s bench report`, async () =>
        (await store.jobs("lab", d)).some((j) => j.type === "bench" && j.state === "SUCCEEDED"),
      );
    }
    // The detail of jetson-1 lists the job with its figures.
    const benchRow = page.locator("#jobs tr").filter({ hasText: "bench" }).filter({ hasText: "SUCCEEDED" });
    await benchRow.waitFor({ timeout: 10_000 });
    expect(await benchRow.locator("td").nth(6).textContent()).toBe("3.10 ms");
    for (const d of ["jetson-1", "pi-1"])
      await page.locator(`tr.device[data-key="lab/${d}"] input`).uncheck();

    await page.locator('#detail-actions button[data-action="rollback"]').click();
    expect(await page.locator("#confirm-what").textContent()).toBe("rollback to lab/jetson-1");
    await page.locator("#confirm-go").click();
    const rolledBack = page.locator("#models tr").filter({ hasText: "rollback" });
    await rolledBack.waitFor({ timeout: 15_000 });
    expect((await rolledBack.locator("td").allTextContents()).slice(1, 4)).toEqual(["1", "fp32", "rollback"]);
    await page
      .locator('tr.device[data-key="lab/jetson-1"] td')
      .filter({ hasText: "fp32" })
      .waitFor({ timeout: 5000 });

    await page.locator('tr.device[data-key="lab/pi-1"]').click();
    await page.locator("#detail-title").filter({ hasText: "pi-1 (lab)" }).waitFor({ timeout: 5000 });
    await page.locator('#detail-actions button[data-action="recalibrate"]').click();
    await page.locator("#confirm-go").click();
    const why = "CALIB_EMPTY: the sample pool is empty: collect samples before recalibrating";
    const failed = page.locator('tr.device[data-key="lab/pi-1"] td.why');
    await failed.waitFor({ timeout: 15_000 });
    expect(await failed.textContent()).toMatch(new RegExp(`^recalibrate FAILED \\d+ s ago: ${why}$`));
    await page.locator("#alerts li.failed-job").filter({ hasText: why }).waitFor({ timeout: 5000 });
    await page.locator("#jobs td.why").filter({ hasText: why }).waitFor({ timeout: 5000 });
    await shot(page, "dashboard-device.png");
  });

  test("a new report and a device going offline show up live, without a reload", async () => {
    await page.locator('tr.device[data-key="lab/jetson-1"]').click();
    report(0, "r-live", 0.98, Date.now());
    await page
      .locator('tr.device[data-key="lab/jetson-1"] td')
      .filter({ hasText: "98.0 %" })
      .waitFor({ timeout: 10_000 });
    await page.waitForFunction(
      `(document.querySelector('#accuracy polyline[data-series="agreement"]')?.getAttribute("points") ?? "").split(" ").length === 3`,
      undefined,
      { timeout: 10_000 },
    );
    await boards[1]!.link.stop({ flushMs: 200 });
    await page.locator("#summary").filter({ hasText: "2 devices, 1 online" }).waitFor({ timeout: 10_000 });
    expect(await page.locator('tr.device[data-key="lab/pi-1"] .dot').getAttribute("title")).toBe("offline");
    await page.locator("#alerts li.offline").filter({ hasText: "pi-1" }).waitFor({ timeout: 5000 });
    // Its status history says when and why.
    await page.locator('tr.device[data-key="lab/pi-1"]').click();
    await page
      .locator("#status-history")
      .filter({ hasText: /^Status: offline \(shutdown\) \d{4}-\d\d-\d\d \d\d:\d\d:\d\d · online / })
      .waitFor({ timeout: 5000 });
    await page.locator('tr.device[data-key="lab/jetson-1"]').click();
    await page.locator("#detail-title").filter({ hasText: "jetson-1 (lab)" }).waitFor({ timeout: 5000 });
    await shot(page, "dashboard-overview.png");
  });

  test("another task's report shows what its agreement counted and the task's own figure, in the device row and the jobs", async () => {
    const taskReport = (id: string, task: Record<string, unknown>, agreement: number): void =>
      boards[0]!.link.report({
        id,
        jobId: id,
        type: "recalibrate",
        state: "SUCCEEDED",
        result: {
          decision: "promoted",
          candidate: { version: 3, kind: "int8-static" },
          validation: { agreement, agreementLower: agreement - 0.002, n: 14_854, task },
        },
        startedAt: Date.now() - 1000,
        finishedAt: Date.now(),
      });
    const agreementCell = page.locator('tr.device[data-key="lab/jetson-1"] td.num').nth(2);
    taskReport(
      "r-tokens",
      {
        kind: "token-classification",
        unit: "token",
        samples: 700,
        sampleAgreement: 0.9757,
        figures: { tokens: 14_854 },
      },
      0.9964,
    );
    await agreementCell.filter({ hasText: "99.6 %" }).waitFor({ timeout: 10_000 });
    expect(await agreementCell.locator(".task").textContent()).toBe("token-classification: tokens");
    expect(await agreementCell.locator(".task-metric").textContent()).toBe(
      "97.6 % samples whose every token agrees",
    );
    expect(await agreementCell.locator(".bound").textContent()).toBe("≥ 99.4 %");
    expect(await agreementCell.getAttribute("title")).toBe(
      "≥ 99.4 %; token-classification: tokens; 97.6 % samples whose every token agrees",
    );
    taskReport(
      "r-embed",
      {
        kind: "embedding",
        unit: "sample",
        samples: 700,
        sampleAgreement: 0.999,
        figures: { meanCosine: 0.99981 },
      },
      0.999,
    );
    await agreementCell.filter({ hasText: "99.9 %" }).waitFor({ timeout: 10_000 });
    expect(await agreementCell.locator(".task").textContent()).toBe("embedding: samples");
    expect(await agreementCell.locator(".task-metric").textContent()).toBe("mean cosine 0.9998");
    // The jobs of the device list each with its own figure.
    await page.locator('tr.device[data-key="lab/jetson-1"]').click();
    const jobRow = page.locator("#jobs tr").filter({ hasText: "r-tokens" });
    await jobRow.waitFor({ timeout: 10_000 });
    expect(await jobRow.locator("td .task-metric").textContent()).toBe(
      "97.6 % samples whose every token agrees",
    );
    await shot(page, "dashboard-tasks.png");
  });

  test("rollouts from the page: a stored release started on a fleet with the CLI's defaults, then paused, resumed and aborted", async () => {
    const release = "0123abcd".repeat(8);
    await store.addRelease({
      id: release,
      version: "v2-retrained",
      task: "text-classification",
      notes: "",
      bytes: 1024,
      createdAt: Date.now(),
      manifest: "{}",
      signature: { kid: "0123456789abcdef", sig: "c2ln" },
    });
    // The page lists stored releases by itself (no reload).
    await page
      .locator("#rollout-release option")
      .filter({ hasText: "v2-retrained" })
      .waitFor({ state: "attached", timeout: 10_000 });
    await page.locator("#rollout-release").selectOption(release);
    await page.locator("#rollout-fleet").selectOption("lab");
    expect(await page.locator("#rollout-waves").inputValue()).toBe("1,10,50,100%");
    expect(await page.locator("#rollout-soak").inputValue()).toBe("10m");
    await page.locator("#rollout-gate").fill("agreement=99.5");
    await page.locator("#rollout-start").click();
    expect(await page.locator("#confirm-what").textContent()).toBe(
      "start rollout of v2-retrained (0123abcd0123) on fleet lab",
    );
    await page.locator("#confirm-go").click();
    await page
      .locator("#action-result")
      .filter({ hasText: /: rollout ro-[0-9a-f]{8} running$/ })
      .waitFor({ timeout: 10_000 });
    const [started] = await store.rollouts();
    expect(started?.fleet).toBe("lab");
    expect(started?.release).toBe(release);
    expect(started?.state).toBe("running");
    expect((started?.body as { spec?: unknown } | undefined)?.spec).toEqual({
      waves: [1, 10, 50, 100],
      gate: { agreement: 99.5 },
      soakMs: 600_000,
      pendingExpiryMs: 86_400_000,
    });
    const id = started!.id;
    // A second rollout on the same fleet is refused with the CLI's reason.
    await page.locator("#rollout-start").click();
    await page.locator("#confirm-go").click();
    await page
      .locator("#action-result")
      .filter({ hasText: `STATE_CONFLICT: fleet lab already has rollout ${id} (running); abort it first` })
      .waitFor({ timeout: 10_000 });
    expect((await store.rollouts()).length).toBe(1);

    const button = (action: string) =>
      page.locator(`#rollout-list button[data-rollout="${id}"][data-rollout-action="${action}"]`);
    const act = async (action: string, state: string): Promise<void> => {
      await until(`${action} enabled`, async () => await button(action).isEnabled());
      await button(action).click();
      expect(await page.locator("#confirm-what").textContent()).toBe(`${action} rollout ${id}`);
      await page.locator("#confirm-go").click();
      await until(`rollout ${state}`, async () => (await store.rollout(id))?.state === state);
      await page
        .locator("#action-result")
        .filter({ hasText: `rollout ${id} ${state}` })
        .waitFor({ timeout: 10_000 });
    };
    await act("pause", "paused");
    await until("pause disabled", async () => await button("pause").isDisabled());
    expect(await button("pause").getAttribute("title")).toBe("the rollout is paused");
    expect(((await store.rollout(id))?.body as { pausedAt?: number } | undefined)?.pausedAt).toBeNumber();
    await act("resume", "running");
    await act("abort", "aborted");
    const aborted = (await store.rollout(id))?.body as {
      devices: Record<string, { state: string }>;
      events: { line: string }[];
    };
    expect(Object.values(aborted.devices).map((d) => d.state)).toEqual(["skipped", "skipped"]);
    expect(aborted.events.map((e) => e.line).slice(-3)).toEqual([
      "pause by an operator",
      "resume by an operator",
      "abort by an operator",
    ]);
    await until("every rollout button disabled", async () => {
      for (const a of ["pause", "resume", "abort"]) if (!(await button(a).isDisabled())) return false;
      return true;
    });
  });

  test("without an operator key the buttons are disabled and say why; the API refuses actions", async () => {
    const keyless = startDashboard(controller, "127.0.0.1:0");
    const p = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    try {
      await p.goto(keyless.url);
      await p.locator("#actions-note").waitFor({ timeout: 10_000 });
      expect(await p.locator("#actions-note").textContent()).toMatch(
        /^Actions disabled: the controller has no operator key: start quantd fleet serve with --key FILE/,
      );
      await p.locator('tr.device[data-key="lab/jetson-1"] input').check();
      const bench = p.locator('#actions button[data-action="bench"]');
      expect(await bench.isDisabled()).toBe(true);
      expect(await bench.getAttribute("title")).toMatch(/^disabled: the controller has no operator key/);
      const start = p.locator("#rollout-start");
      expect(await start.isDisabled()).toBe(true);
      expect(await start.getAttribute("title")).toMatch(/^disabled: the controller has no operator key/);
      const abort = p.locator('#rollout-list button[data-rollout-action="abort"]').first();
      await abort.waitFor({ timeout: 10_000 });
      expect(await abort.getAttribute("title")).toMatch(/^disabled: the controller has no operator key/);
      const session = (await (await fetch(`${keyless.url}api/session`)).json()) as { csrf: string };
      const res = await fetch(`${keyless.url}api/actions`, {
        method: "POST",
        headers: { "x-quantd-csrf": session.csrf, "content-type": "application/json" },
        body: JSON.stringify({ action: "bench", targets: [{ fleet: "lab", device: "jetson-1" }] }),
      });
      expect(res.status).toBe(409);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("COMMAND_UNAUTHORIZED");
      for (const [path, body] of [
        ["api/rollouts", { release: "v2-retrained", fleet: "lab" }],
        ["api/rollouts/ro-00000000/pause", {}],
      ] as const) {
        const refused = await fetch(`${keyless.url}${path}`, {
          method: "POST",
          headers: { "x-quantd-csrf": session.csrf, "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        expect(refused.status).toBe(409);
        expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
          "COMMAND_UNAUTHORIZED",
        );
      }
    } finally {
      await p.close();
      keyless.stop();
    }
  });

  test("with credentials: a login page, a session cookie, CSRF-checked writes, logout", async () => {
    const secured = startDashboard(controller, "127.0.0.1:0", {
      credentials: { user: { name: "ops", password: "correct horse" }, token: "t0ken" },
      commands,
    });
    const p = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    try {
      await p.goto(secured.url);
      expect(new URL(p.url()).pathname).toBe("/login");
      expect((await fetch(`${secured.url}api/devices`)).status).toBe(401);
      await p.fill('input[name="username"]', "ops");
      await p.fill('input[name="password"]', "wrong");
      await p.click('button[type="submit"]');
      await p.locator(".err").filter({ hasText: "wrong credentials" }).waitFor({ timeout: 5000 });
      await p.fill('input[name="username"]', "ops");
      await p.fill('input[name="password"]', "correct horse");
      await shot(p, "dashboard-login.png", 5_000);
      await p.click('button[type="submit"]');
      await p.locator("#who").filter({ hasText: "signed in as ops" }).waitFor({ timeout: 10_000 });
      await p.locator("tr.device").nth(1).waitFor({ timeout: 10_000 });
      const cookie = (await p.context().cookies()).find((c) => c.name === "quantd_session");
      expect(cookie?.httpOnly).toBe(true);
      expect(cookie?.sameSite).toBe("Strict");
      // The session cookie alone does not make a write: the page's CSRF header does.
      const post = (headers: string) =>
        p.evaluate(
          `fetch("/api/actions", { method: "POST", headers: ${headers}, body: JSON.stringify({ action: "bench", targets: [] }) }).then(async (r) => [r.status, (await r.json()).error.message])`,
        );
      expect(await post(`{ "content-type": "application/json" }`)).toEqual([
        403,
        "missing or wrong x-quantd-csrf header",
      ]);
      expect(await post(`{ "content-type": "application/json", "x-quantd-csrf": session.csrf }`)).toEqual([
        400,
        "select at least one device",
      ]);
      // Scripts use the token as a bearer token.
      const bearer = await fetch(`${secured.url}api/overview`, {
        headers: { authorization: "Bearer t0ken" },
      });
      expect(bearer.status).toBe(200);
      expect(
        ((await bearer.json()) as { aggregates: { devices: number } }).aggregates.devices,
      ).toBeGreaterThanOrEqual(2);
      await p.click("#logout");
      await p.waitForURL(/\/login$/, { timeout: 5000 });
      await p.goto(secured.url);
      expect(new URL(p.url()).pathname).toBe("/login");
    } finally {
      await p.close();
      secured.stop();
    }
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

  test("a device whose --model did not load at start is degraded: an alert with the reason, a mark on its row, gone when it is not", async () => {
    const served = models.get("jetson-1")!;
    const bad = "/opt/quantd/models/model.onnx";
    models.set("jetson-1", {
      ...served,
      rejectedAtStart: {
        path: bad,
        code: "MODEL_TRUNCATED",
        message: `${bad} ends at byte 4096 of 29000000`,
      },
    });
    await boards[0]!.link.refreshStatus();
    await page.goto(dashboard.url);
    const alert = page.locator("#alerts li.degraded").filter({ hasText: "jetson-1" });
    await alert.waitFor({ timeout: 10_000 });
    expect(await alert.textContent()).toMatch(
      new RegExp(
        `^degradedjetson-1 \\(lab\\): started with ${bad}, which did not load \\(MODEL_TRUNCATED: ${bad} ends at byte 4096 of 29000000\\); version ${served.version} serves instead, \\d+ s ago$`,
      ),
    );
    const mark = page.locator('tr.device[data-key="lab/jetson-1"] .degraded-mark');
    expect(await mark.textContent()).toBe("degraded");
    expect(await mark.getAttribute("title")).toContain(`started with ${bad}, which did not load`);
    expect((await rowText("jetson-1"))[3]).toBe(`${served.version}degraded`);
    // A promotion clears it on the device; the page follows without a reload.
    models.set("jetson-1", served);
    await boards[0]!.link.refreshStatus();
    await mark.waitFor({ state: "detached", timeout: 10_000 });
    expect(await page.locator("#alerts li.degraded").count()).toBe(0);
  });
});
