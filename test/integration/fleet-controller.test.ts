/**
 * The controller and the `quantd fleet` CLI against a real mosquitto and
 * real device links: the controller stores statuses, telemetry, jobs and
 * reports; `fleet devices`, `recalibrate --wait --json`, `report` and
 * `rollback` run as real CLI processes; two controllers on the shared
 * subscription split the messages without both taking one; the dashboard API
 * and its live event stream answer.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QuantdError } from "../../src/errors.ts";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, parseHttpAddress, startDashboard } from "../../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { FleetCommandHandler } from "../../src/fleet/device/handler.ts";
import { createFleetLink, type FleetLink } from "../../src/fleet/device/link.ts";
import { connectMqttOnce } from "../../src/fleet/mqtt-client.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { enroll, newDeviceKey, OPERATOR_KEY_FILE, OPERATOR_KEYS } from "../helpers/fleet-keys.ts";
import { envWithoutQuantd, runQuantd } from "../helpers/run-cli.ts";
import { hasOpenssl, makePki } from "../helpers/pki.ts";
import { until } from "../helpers/until.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  // Commands are signed with the operator key the boards trust.
  const signed = ["recalibrate", "rollback", "report"].includes(args[1] ?? "");
  const r = await runQuantd(signed ? [...args, "--key", OPERATOR_KEY_FILE] : args);
  return { code: r.code, out: r.stdout, err: r.stderr };
}

/** A board's work as the seam sees it: the figures a recalibration reports, a rollback that fails when asked. */
function boardHandler(name: string, model: { version: string }): FleetCommandHandler {
  let n = 0;
  return {
    async recalibrate(params, ctx) {
      ctx.progress("calibrating", 0.4);
      await Bun.sleep(30);
      ctx.progress("validating", 0.8);
      n++;
      model.version = `${name}-v${n + 1}`;
      return {
        int8P50Ms: 3.2,
        fp32P50Ms: 8.1,
        agreement: 0.99 - n * 0.001,
        modelVersion: model.version,
        params,
      };
    },
    async quantizeDynamic() {
      return {};
    },
    async bench() {
      return {};
    },
    async rollback(params) {
      if (params.version === "missing") throw new QuantdError("NOT_FOUND", "no such model version");
      return { modelVersion: "v1" };
    },
    status: async () => ({ queueDepth: 0 }),
    setConfig: async (p) => ({ ...p }),
    collect: async (p) => ({ capturing: p.action === "start" }),
  };
}

describe.skipIf(!hasMosquitto)("fleet controller and CLI", () => {
  let broker: Mosquitto;
  let dir: string;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  const boards: { link: FleetLink; store: Store }[] = [];
  const deviceKeys: [string, string][] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = mkdtempSync(join(tmpdir(), "quantd-fleet-ctl-"));
    store = await openSqliteFleetStore(join(dir, "controller.db"));
    controller = startController({ broker: broker.url, store, clientId: "ctl-a" });
    expect(await controller.waitReady(5000)).toBe(true);
    dashboard = startDashboard(controller, "127.0.0.1:0");
    for (const name of ["pi-1", "pi-2"]) {
      const s = await openStore(join(dir, `${name}.db`));
      const deviceKey = newDeviceKey();
      deviceKeys.push([name, deviceKey.publicKey]);
      await enroll(store, "lab", [[name, deviceKey.publicKey]]);
      const model = { version: `${name}-v1` };
      let rss = 100 * 1048576;
      const link = createFleetLink(
        {
          broker: broker.url,
          fleet: "lab",
          device: name,
          telemetryIntervalMs: 50,
          telemetryBatch: 4,
          operatorKeys: OPERATOR_KEYS,
        },
        {
          store: s,
          deviceKey,
          handler: boardHandler(name, model),
          status: () => ({ agentVersion: "0.1.0", model: { version: model.version, kind: "int8-static" } }),
          telemetry: () => {
            rss += 1024;
            return { requestRate: 5, latencyMs: { p50: 3, p95: 5, p99: 7 }, rssBytes: rss };
          },
        },
      );
      expect(await link.waitConnected(5000)).toBe(true);
      boards.push({ link, store: s });
    }
  });
  afterAll(async () => {
    dashboard?.stop();
    for (const b of boards) {
      await b.link.stop({ flushMs: 500 });
      b.store.close();
    }
    await controller?.stop();
    await store?.close();
    await broker?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the controller records both devices online with versions and telemetry", async () => {
    await until(
      async () =>
        (await store.devices("lab")).filter((d) => d.online && d.lastTelemetry !== null).length === 2,
      8000,
    );
    const [a] = await store.devices("lab");
    expect(a).toMatchObject({ fleet: "lab", device: "pi-1", online: true, agentVersion: "0.1.0" });
    expect(a?.model).toEqual({ version: "pi-1-v1", kind: "int8-static" });
    expect(a?.lastTelemetry?.latencyMs).toEqual({ p50: 3, p95: 5, p99: 7 });
    expect((await store.telemetry("lab", "pi-1", 0)).length).toBeGreaterThanOrEqual(4);
  });

  test("fleet devices lists the retained statuses", async () => {
    const r = await cli(["fleet", "devices", "--broker", broker.url, "--fleet", "lab", "--json"]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const list = JSON.parse(r.out) as { device: string; state: string; model: { version: string } }[];
    expect(list.map((d) => [d.device, d.state])).toEqual([
      ["pi-1", "online"],
      ["pi-2", "online"],
    ]);
    const table = await cli(["fleet", "devices", "--broker", broker.url, "--fleet", "lab"]);
    expect(table.out).toMatch(/pi-2\s+online\s+0\.1\.0\s+pi-2-v1\s+int8-static/);
    // Without --fleet, the fleet defaults as the agent's does: $QUANTD_FLEET_FLEET, else `default`.
    const byEnv = await runQuantd(["fleet", "devices", "--broker", broker.url, "--json"], {
      env: { ...envWithoutQuantd(), QUANTD_FLEET_FLEET: "lab" },
    });
    expect((JSON.parse(byEnv.stdout) as unknown[]).length).toBe(2);
    const byDefault = await runQuantd(["fleet", "devices", "--broker", broker.url], {
      env: envWithoutQuantd(),
    });
    expect(byDefault.code).toBe(0);
    expect(byDefault.stderr).toBe("no device of fleet default has published a status\n");
  }, 30_000);

  test("fleet recalibrate --wait --json prints the finished job with its state and report; the controller stores it", async () => {
    const r = await cli([
      "fleet",
      "recalibrate",
      "pi-1",
      "--samples",
      "64",
      ...["--mode", "auto", "--prefer", "size"],
      "--wait",
      "--json",
      "--broker",
      broker.url,
      "--fleet",
      "lab",
    ]);
    expect(r.code).toBe(0);
    const job = JSON.parse(r.out) as {
      device: string;
      id: string;
      state: string;
      report: { result: { agreement: number } };
    };
    expect(job).toMatchObject({ device: "pi-1", state: "SUCCEEDED" });
    expect(job.report.result).toMatchObject({
      agreement: 0.989,
      modelVersion: "pi-1-v2",
      params: { samples: 64, mode: "auto", prefer: "size" },
    });
    await until(async () => (await store.job("lab", "pi-1", job.id))?.state === "SUCCEEDED", 8000);
    const stored = await store.job("lab", "pi-1", job.id);
    expect(stored?.result).toEqual(job.report.result);
    expect((await store.device("lab", "pi-1"))?.lastReport?.id).toBe(job.id);
  }, 30_000);

  test("fleet recalibrate with a mode or preference no device takes is a usage error, sent to none", async () => {
    for (const bad of [
      ["--mode", "fastest"],
      ["--prefer", "speed"],
    ]) {
      const r = await cli(["fleet", "recalibrate", "pi-1", ...bad, "--broker", broker.url, "--fleet", "lab"]);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/^error USAGE: (mode|prefer) must be one of /);
      // --json keeps which key was wrong, as the device's refusal would.
      const j = await cli([
        "fleet",
        "recalibrate",
        "pi-1",
        ...bad,
        "--json",
        "--broker",
        broker.url,
        "--fleet",
        "lab",
      ]);
      expect(JSON.parse(j.out)).toMatchObject({ code: "USAGE", details: { key: bad[0]!.slice(2) } });
    }
  });

  test("fleet recalibrate --wait without --json prints a summary per device", async () => {
    const r = await cli(["fleet", "recalibrate", "pi-2", "--wait", "--broker", broker.url, "--fleet", "lab"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^pi-2:\n {2}job recalibrate-\S+ \(recalibrate\): SUCCEEDED\n/);
    expect(r.out).toMatch(/^\s+agreement\s+98\.90%$/m);
    expect(r.out).toMatch(/^\s+fp32P50Ms\s+8\.10 ms$/m);
    expect(r.out).toMatch(/^\s+modelVersion\s+pi-2-v2$/m);
    expect(r.out).not.toContain("{");
    expect(r.err).toContain("pi-2: SUCCEEDED");
  }, 30_000);

  test("fleet recalibrate --all reaches every online device", async () => {
    const r = await cli([
      "fleet",
      "recalibrate",
      "--all",
      "--wait",
      "--json",
      "--broker",
      broker.url,
      "--fleet",
      "lab",
    ]);
    expect(r.code).toBe(0);
    const jobs = JSON.parse(r.out) as { device: string; state: string }[];
    expect(jobs.map((j) => [j.device, j.state])).toEqual([
      ["pi-1", "SUCCEEDED"],
      ["pi-2", "SUCCEEDED"],
    ]);
  }, 30_000);

  test("fleet report prints the device's last job; rollback reports failure with the device's error code", async () => {
    const r = await cli(["fleet", "report", "pi-1", "--broker", broker.url, "--fleet", "lab"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/last job\s+recalibrate-\S+ \(recalibrate\)/);
    expect(r.out).toMatch(/^job recalibrate-\S+ \(recalibrate\): SUCCEEDED$/m);
    expect(r.out).toMatch(/model\s+pi-1-v3 \(int8-static\)/);
    // A summary a person reads: figures with their units, one per line, not the report as one JSON line.
    expect(r.out).toMatch(/^\s+agreement\s+98\.80%$/m);
    expect(r.out).toMatch(/^\s+int8P50Ms\s+3\.20 ms$/m);
    expect(r.out).not.toContain("{");

    const bad = await cli([
      "fleet",
      "rollback",
      "pi-2",
      "--version",
      "missing",
      "--wait",
      "--json",
      "--broker",
      broker.url,
      "--fleet",
      "lab",
    ]);
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.out)).toMatchObject({
      device: "pi-2",
      state: "FAILED",
      report: { error: { code: "NOT_FOUND" } },
    });

    const nobody = await cli([
      "fleet",
      "report",
      "pi-9",
      "--reply-timeout",
      "1",
      "--broker",
      broker.url,
      "--fleet",
      "lab",
    ]);
    expect(nobody.code).not.toBe(0);
    expect(nobody.err).toContain("FLEET_UNAVAILABLE");
  }, 30_000);

  test("the dashboard serves the table data, device detail, telemetry and live events", async () => {
    const events = await fetch(`${dashboard.url}api/events`);
    const reader = events.body!.getReader();
    const devices = (await (await fetch(`${dashboard.url}api/devices`)).json()) as {
      device: string;
      figures: { agreement?: number; int8P50Ms?: number };
    }[];
    expect(devices.map((d) => d.device)).toEqual(["pi-1", "pi-2"]);
    expect(devices[0]?.figures).toMatchObject({ int8P50Ms: 3.2, fp32P50Ms: 8.1 });
    const detail = (await (await fetch(`${dashboard.url}api/devices/lab/pi-1`)).json()) as {
      reports: unknown[];
      history: unknown[];
    };
    expect(detail.reports.length).toBe(2);
    expect(detail.history.length).toBeGreaterThanOrEqual(1);
    const samples = (await (
      await fetch(`${dashboard.url}api/devices/lab/pi-1/telemetry?since=0`)
    ).json()) as unknown[];
    expect(samples.length).toBeGreaterThan(0);
    expect((await fetch(`${dashboard.url}api/devices/lab/nope`)).status).toBe(404);
    const html = await (await fetch(dashboard.url)).text();
    expect(html).toContain("<title>quantd fleet</title>");
    // Telemetry keeps flowing, so a `changed` event must come within a second or two.
    let text = "";
    const deadline = Date.now() + 5000;
    while (!text.includes("event: changed") && Date.now() < deadline) {
      const { value } = await reader.read();
      text += new TextDecoder().decode(value);
    }
    await reader.cancel();
    expect(text).toContain("event: changed");
    expect(text).toMatch(/"devices":\["lab\/pi-[12]"/);
    expect(parseHttpAddress("0.0.0.0:8080")).toEqual({ host: "0.0.0.0", port: 8080, loopback: false });
    expect(parseHttpAddress("[::1]:80")).toEqual({ host: "::1", port: 80, loopback: true });
    expect(() => parseHttpAddress("8080")).toThrow(expect.objectContaining({ code: "CONFIG_INVALID" }));
    // Not loopback: credentials, then TLS (or a reverse proxy) are required.
    expect(() => startDashboard(controller, "0.0.0.0:0")).toThrow(/needs credentials/);
    expect(() => startDashboard(controller, "0.0.0.0:0", { credentials: { token: "t" } })).toThrow(
      /needs TLS/,
    );
  });

  test.skipIf(!hasOpenssl)(
    "off loopback the dashboard needs credentials and TLS: HTTPS from a certificate file, or a reverse proxy",
    async () => {
      const pki = mkdtempSync(join(tmpdir(), "quantd-dash-pki-"));
      makePki(pki, []);
      const secured = startDashboard(controller, "0.0.0.0:0", {
        credentials: { token: "s3cret-token" },
        tls: { certFile: join(pki, "server.pem"), keyFile: join(pki, "server.key") },
      });
      try {
        expect(secured.url).toBe(`https://0.0.0.0:${secured.port}/`);
        const url = `https://127.0.0.1:${secured.port}/`;
        const tls = { ca: readFileSync(join(pki, "ca.pem"), "utf8") };
        expect((await fetch(`${url}api/overview`, { tls })).status).toBe(401);
        const page = await fetch(url, { tls, redirect: "manual" });
        expect([page.status, page.headers.get("location")]).toEqual([303, "/login"]);
        // The login page: only the configured way in, and never framed by another site.
        const loginPage = await fetch(`${url}login`, { tls });
        expect(loginPage.headers.get("x-frame-options")).toBe("DENY");
        expect(loginPage.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
        const form = await loginPage.text();
        expect(form).toContain('name="token"');
        expect(form).not.toContain('name="password"');
        const bearer = await fetch(`${url}api/overview`, {
          tls,
          headers: { authorization: "Bearer s3cret-token" },
        });
        expect(bearer.status).toBe(200);
        const formType = { "content-type": "application/x-www-form-urlencoded" };
        const login = await fetch(`${url}login`, {
          method: "POST",
          tls,
          redirect: "manual",
          headers: formType,
          body: "token=s3cret-token",
        });
        expect(login.status).toBe(303);
        expect(login.headers.get("set-cookie")).toMatch(
          /^quantd_session=[\w-]+; Path=\/; HttpOnly; SameSite=Strict; Secure;/,
        );
        // A login posted from another origin's page is refused.
        const cross = await fetch(`${url}login`, {
          method: "POST",
          tls,
          redirect: "manual",
          headers: { ...formType, origin: "https://evil.example" },
          body: "token=s3cret-token",
        });
        expect(cross.status).toBe(403);
      } finally {
        secured.stop();
        rmSync(pki, { recursive: true, force: true });
      }
      // Behind a reverse proxy that terminates TLS: plain HTTP here, Secure cookies for the proxy's HTTPS.
      const proxied = startDashboard(controller, "0.0.0.0:0", {
        credentials: { user: { name: "ops", password: "pw" } },
        behindProxy: true,
      });
      try {
        const login = await fetch(`http://127.0.0.1:${proxied.port}/login`, {
          method: "POST",
          redirect: "manual",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: "username=ops&password=pw",
        });
        expect(login.headers.get("set-cookie")).toContain("; Secure;");
        const cookie = (login.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
        const session = await fetch(`http://127.0.0.1:${proxied.port}/api/session`, { headers: { cookie } });
        expect(((await session.json()) as { user: string }).user).toBe("ops");
      } finally {
        proxied.stop();
      }
    },
  );

  test("fleet serve refuses a non-loopback dashboard without credentials or TLS before it starts", async () => {
    const serve = (extra: string[], env: Record<string, string> = {}) =>
      runQuantd(["fleet", "serve", "--broker", broker.url, "--db", join(dir, "refused.db"), ...extra], {
        env: { ...envWithoutQuantd(), ...env },
      });
    const bare = await serve(["--http", "0.0.0.0:0"]);
    expect(bare.code).not.toBe(0);
    expect(bare.stderr).toContain("CONFIG_INVALID: --http on 0.0.0.0 (not loopback) needs credentials");
    const noTls = await serve(["--http", "0.0.0.0:0", "--http-token-env", "DASH_TOKEN"], { DASH_TOKEN: "t" });
    expect(noTls.stderr).toContain(
      "needs TLS: --http-cert FILE with --http-key FILE, or --http-behind-proxy",
    );
    const unset = await serve(["--http", "127.0.0.1:0", "--http-token-env", "DASH_NOPE"]);
    expect(unset.stderr).toContain("--http-token-env: $DASH_NOPE is not set");
    const half = await serve(["--http", "127.0.0.1:0", "--http-user", "ops"]);
    expect(half.stderr).toContain("--http-user and --http-password-env go together");
  });

  test("malformed device messages are counted and skipped; nothing reaches the store; bad URLs are 404", async () => {
    const rogue = await connectMqttOnce({ url: broker.url, clientId: "rogue" });
    // An enrolled device that signs what it sends, so that what is refused is the payload.
    const key = newDeviceKey();
    await enroll(store, "lab", [["rogue", key.publicKey]]);
    try {
      const before = controller.stats().malformed;
      const bad: [string, string][] = [
        ["quantd/v1/lab/rogue/status", "not json"],
        ["quantd/v1/lab/rogue/status", '{"state":"exploded"}'],
        ["quantd/v1/lab/rogue/telemetry", '{"samples":[{"at":"yesterday"}]}'],
        [
          "quantd/v1/lab/rogue/jobs/x",
          '{"id":"x","type":"t","state":"DONE","stage":null,"progress":1,"at":1}',
        ],
        [
          "quantd/v1/lab/rogue/report",
          '{"id":"x","jobId":"x","type":"t","state":"SUCCEEDED","finishedAt":"soon"}',
        ],
      ];
      for (const [topic, body] of bad) {
        await rogue.publish(topic, body, {
          qos: 1,
          userProperties: key.sign(topic, new TextEncoder().encode(body)),
        });
      }
      await until(() => controller.stats().malformed - before === bad.length, 8000);
      expect(await store.device("lab", "rogue")).toBeUndefined();
      expect((await fetch(`${dashboard.url}api/devices/%E0%A4%A/x`)).status).toBe(404);
    } finally {
      await rogue.close();
    }
  });

  test("two controllers on the shared subscription split the messages: each report stored once in all", async () => {
    const other = await openSqliteFleetStore(join(dir, "controller-b.db"));
    await enroll(other, "lab", deviceKeys);
    const b = startController({ broker: broker.url, store: other, clientId: "ctl-b" });
    try {
      expect(await b.waitReady(5000)).toBe(true);
      const before = controller.stats().byKind.report;
      const total = 20;
      for (let i = 0; i < total; i++) {
        boards[i % 2]!.link.report({
          id: `split-${i}`,
          jobId: `split-${i}`,
          type: "bench",
          state: "SUCCEEDED",
          result: { i },
          startedAt: null,
          finishedAt: Date.now(),
        });
      }
      await until(() => controller.stats().byKind.report - before + b.stats().byKind.report === total, 8000);
      await Bun.sleep(200);
      const a = controller.stats().byKind.report - before;
      const bb = b.stats().byKind.report;
      expect(a + bb).toBe(total);
      // mosquitto distributes shared subscriptions round-robin: both replicas get some.
      expect(a).toBeGreaterThan(0);
      expect(bb).toBeGreaterThan(0);
    } finally {
      await b.stop();
      await other.close();
    }
  });
});
