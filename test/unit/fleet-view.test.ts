/**
 * What the dashboard computes for an operator: aggregates, the five kinds of
 * alert (and what does not raise one), the filter states, failure reasons,
 * and the markers of model changes; plus the dashboard's authentication
 * (sessions, CSRF tokens, bearer tokens, the loopback Host rule).
 */
import { describe, expect, test } from "bun:test";
import { createDashboardAuth } from "../../src/fleet/controller/dashboard-auth.ts";
import { reportFigures } from "../../src/fleet/controller/device-views.ts";
import {
  FAILED_JOB_WINDOW_MS,
  failureReason,
  fleetAggregates,
  fleetAlerts,
  inState,
  markModelChanges,
} from "../../src/fleet/controller/fleet-view.ts";
import type { DeviceRecord, JobRecord } from "../../src/fleet/controller/store.ts";
import type { ReportMessage } from "../../src/fleet/protocol.ts";

const NOW = 1_700_000_000_000;
const MiB = 1048576;

function device(name: string, over: Partial<DeviceRecord> = {}): DeviceRecord {
  return {
    fleet: "lab",
    device: name,
    online: true,
    agentVersion: "0.1.0",
    model: { version: "2", kind: "int8-static" },
    outbox: { queued: 0, bytes: 0, dropped: 0 },
    lastSeen: NOW - 1000,
    statusAt: NOW - 5000,
    lastTelemetry: {
      at: NOW - 1000,
      rssBytes: 100 * MiB,
      memoryLimitBytes: 512 * MiB,
      latencyMs: { p50: 3, p95: 5, p99: 6 },
    },
    lastReport: null,
    ...over,
  };
}

function job(
  id: string,
  state: JobRecord["state"],
  updatedAt: number,
  over: Partial<JobRecord> = {},
): JobRecord {
  return {
    fleet: "lab",
    device: "a",
    id,
    type: "recalibrate",
    state,
    stage: null,
    progress: 1,
    updatedAt,
    result: null,
    error: null,
    ...over,
  };
}

const report = (agreement: number, finishedAt = NOW): ReportMessage => ({
  id: `r${agreement}`,
  device: "x",
  jobId: `r${agreement}`,
  type: "recalibrate",
  state: "SUCCEEDED",
  result: { agreement },
  startedAt: finishedAt - 10,
  finishedAt,
});

describe("fleet aggregates", () => {
  test("devices by kind and version, online, worst agreement, slowest p95", () => {
    const devices = [
      device("a", { lastReport: report(0.99) }),
      device("b", {
        online: false,
        model: { version: "1", kind: "fp32" },
        lastReport: report(0.95),
        lastTelemetry: { at: NOW, latencyMs: { p50: 9, p95: 21.5, p99: 30 } },
      }),
      device("c", { model: null, lastTelemetry: null }),
    ];
    const a = fleetAggregates(devices, (d) => reportFigures(d.lastReport?.result));
    expect(a).toEqual({
      devices: 3,
      online: 2,
      byKind: { "int8-static": 1, fp32: 1, unknown: 1 },
      byVersion: { "2": 1, "1": 1, unknown: 1 },
      worstAgreement: { fleet: "lab", device: "b", value: 0.95 },
      slowestP95Ms: { fleet: "lab", device: "b", value: 21.5 },
    });
    expect(fleetAggregates([], () => ({}))).toMatchObject({
      devices: 0,
      worstAgreement: null,
      slowestP95Ms: null,
    });
  });
});

describe("fleet alerts", () => {
  test("offline devices, failed jobs with their reason, outbox drops and memory near the limit; newest first", () => {
    const devices = [
      device("ok"),
      device("gone", { online: false, statusAt: NOW - 60_000 }),
      device("dropping", { outbox: { queued: 7, bytes: 100, dropped: 3 } }),
      device("full", { lastTelemetry: { at: NOW - 2000, rssBytes: 470 * MiB, memoryLimitBytes: 512 * MiB } }),
      // 89 % of the limit, or no limit known: no alert.
      device("close", {
        lastTelemetry: { at: NOW, rssBytes: 0.89 * 512 * MiB, memoryLimitBytes: 512 * MiB },
      }),
      device("nolimit", { lastTelemetry: { at: NOW, rssBytes: 4096 * MiB } }),
    ];
    const jobs = [
      job("j-failed", "FAILED", NOW - 10_000, {
        error: { code: "CALIB_EMPTY", message: "no samples in the pool" },
      }),
      job("j-timeout", "TIMED_OUT", NOW - 20_000, { type: "bench" }),
      job("j-old", "FAILED", NOW - FAILED_JOB_WINDOW_MS - 1),
      job("j-ok", "SUCCEEDED", NOW),
      job("j-rejected", "REJECTED", NOW),
    ];
    const alerts = fleetAlerts(devices, jobs, NOW);
    expect(alerts.map((a) => [a.kind, a.device, a.message])).toEqual([
      ["outbox-drops", "dropping", "outbox dropped 3 messages (7 queued)"],
      ["memory", "full", "memory 470 of 512 MiB (92 %)"],
      ["failed-job", "a", "recalibrate FAILED: CALIB_EMPTY: no samples in the pool"],
      ["failed-job", "a", "bench TIMED_OUT: no reason reported"],
      ["offline", "gone", "offline"],
    ]);
    const alerting = new Set(alerts.map((a) => `${a.fleet}/${a.device}`));
    expect(devices.filter((d) => inState(d, "alerting", alerting)).map((d) => d.device)).toEqual([
      "gone",
      "dropping",
      "full",
    ]);
    expect(devices.filter((d) => inState(d, "offline", alerting)).map((d) => d.device)).toEqual(["gone"]);
    expect(devices.filter((d) => inState(d, null, alerting)).length).toBe(devices.length);
  });

  test("a device serving a stored version because its --model did not load is degraded, while online", () => {
    const rejectedAtStart = { path: "/opt/m/model.onnx", code: "MODEL_TRUNCATED", message: "cut at byte 9" };
    const devices = [
      device("fallback", { model: { version: "1", kind: "fp32", rejectedAtStart }, statusAt: NOW - 3000 }),
      // Offline: its last status says what it served when it went, not what it will start with.
      device("gone", { online: false, model: { version: "1", kind: "fp32", rejectedAtStart } }),
      // Whatever a device sends: a malformed record raises nothing (and breaks nothing).
      device("odd", { model: { version: "1", kind: "fp32", rejectedAtStart: { path: 7 } as never } }),
    ];
    const alerts = fleetAlerts(devices, [], NOW).filter((a) => a.kind === "degraded");
    expect(alerts).toEqual([
      {
        kind: "degraded",
        fleet: "lab",
        device: "fallback",
        message:
          "started with /opt/m/model.onnx, which did not load (MODEL_TRUNCATED: cut at byte 9); version 1 serves instead",
        at: NOW - 3000,
      },
    ]);
    const alerting = new Set(alerts.map((a) => `${a.fleet}/${a.device}`));
    expect(inState(devices[0]!, "alerting", alerting)).toBe(true);
  });

  test("a failure's reason: the error, or a rejection's reasons", () => {
    expect(failureReason({ code: "MODEL_TRUNCATED", message: "/x.onnx ends early" }, null)).toBe(
      "MODEL_TRUNCATED: /x.onnx ends early",
    );
    expect(failureReason(null, { decision: "rejected", reasons: ["agreement 0.91 < 0.98", "slower"] })).toBe(
      "rejected: agreement 0.91 < 0.98; slower",
    );
    expect(failureReason(null, { decision: "promoted", reasons: [] })).toBeUndefined();
  });
});

describe("model history markers", () => {
  test("a change near a promoting report is a promotion, near a rollback a rollback; the oldest is first seen", () => {
    const changes = [
      { version: "3", kind: "int8-static", at: NOW - 1000 },
      { version: "1", kind: "fp32", at: NOW - 50_000 },
      { version: "2", kind: "int8-static", at: NOW - 100_000 },
      { version: "1", kind: "fp32", at: NOW - 900_000 },
    ];
    const reports: ReportMessage[] = [
      { ...report(0.99, NOW - 500), jobId: "promote-3", result: { decision: "promoted" } },
      { ...report(0, NOW - 49_000), jobId: "rb", type: "rollback", result: { modelVersion: "1" } },
      // A rejected candidate changes nothing; the change to 2 has no job close enough.
      { ...report(0.5, NOW - 100_500), jobId: "rej", result: { decision: "rejected" } },
    ];
    expect(markModelChanges(changes, reports).map((c) => [c.version, c.marker, c.jobId])).toEqual([
      ["3", "promoted", "promote-3"],
      ["1", "rollback", "rb"],
      ["2", "changed", undefined],
      ["1", "first", undefined],
    ]);
  });
});

describe("dashboard authentication", () => {
  const req = (headers: Record<string, string>) => new Request("http://127.0.0.1/", { headers });

  test("without credentials: loopback Host names only, with the server's CSRF token", () => {
    const auth = createDashboardAuth({ credentials: {}, secureCookies: false });
    expect(auth.required).toBe(false);
    const who = auth.identify(req({ host: "127.0.0.1:8080" }));
    expect(who?.csrf?.length).toBeGreaterThan(20);
    expect(auth.identify(req({ host: "localhost:1" }))?.csrf).toBe(who?.csrf ?? "");
    // A DNS-rebound page sends its own host name.
    expect(auth.identify(req({ host: "evil.example:8080" }))).toBeUndefined();
  });

  test("a password login makes a session with its own CSRF token; logout and expiry end it", async () => {
    let now = NOW;
    const auth = createDashboardAuth({
      credentials: { user: { name: "ops", password: "s3cret" }, token: "tok" },
      secureCookies: true,
      sessionTtlMs: 60_000,
      now: () => now,
    });
    expect(auth.identify(req({ host: "127.0.0.1" }))).toBeUndefined();
    expect(await auth.login(new URLSearchParams({ username: "ops", password: "wrong" }))).toBeUndefined();
    expect(await auth.login(new URLSearchParams({ token: "nope" }))).toBeUndefined();
    const ok = await auth.login(new URLSearchParams({ username: "ops", password: "s3cret" }));
    expect(ok?.cookie).toMatch(
      /^quantd_session=[\w-]{43}; Path=\/; HttpOnly; SameSite=Strict; Secure; Max-Age=60$/,
    );
    const cookie = (ok?.cookie ?? "").split(";")[0] ?? "";
    const who = auth.identify(req({ cookie: `other=1; ${cookie}` }));
    expect(who?.name).toBe("ops");
    expect(who?.csrf?.length).toBeGreaterThan(20);
    const second = await auth.login(new URLSearchParams({ token: "tok" }));
    const whoToo = auth.identify(req({ cookie: (second?.cookie ?? "").split(";")[0] ?? "" }));
    expect(whoToo?.name).toBe("token");
    expect(whoToo?.csrf).not.toBe(who?.csrf);
    // A bearer token needs no CSRF token: browsers never send one on their own.
    expect(auth.identify(req({ authorization: "Bearer tok" }))).toEqual({ name: "token", csrf: null });
    expect(auth.identify(req({ authorization: "Bearer tik" }))).toBeUndefined();
    expect(auth.logout(req({ cookie }))).toContain("Max-Age=0");
    expect(auth.identify(req({ cookie }))).toBeUndefined();
    now += 61_000;
    expect(auth.identify(req({ cookie: (second?.cookie ?? "").split(";")[0] ?? "" }))).toBeUndefined();
  });

  test("after 30 failed logins in a minute every login is refused until the minute has passed", async () => {
    let now = NOW;
    const auth = createDashboardAuth({ credentials: { token: "tok" }, secureCookies: false, now: () => now });
    expect(auth.methods).toEqual({ token: true, user: false });
    await Promise.all(Array.from({ length: 30 }, () => auth.login(new URLSearchParams({ token: "guess" }))));
    expect(await auth.login(new URLSearchParams({ token: "tok" }))).toBeUndefined();
    now += 60_001;
    expect((await auth.login(new URLSearchParams({ token: "tok" })))?.name).toBe("token");
  });
});

test("a report of another task than a classifier says what its agreement counted", () => {
  const validation = { agreement: 0.996, agreementLower: 0.995, n: 14_854 };
  expect(
    reportFigures({ validation: { ...validation, task: { kind: "token-classification", unit: "token" } } }),
  ).toMatchObject({ agreement: 0.996, agreementLower: 0.995, task: "token-classification: tokens" });
  expect(
    reportFigures({ validation: { ...validation, task: { kind: "classification", unit: "sample" } } }).task,
  ).toBe(undefined);
  expect(reportFigures({ validation }).task).toBe(undefined);
});

test("a report of another task carries the task's own figure: mean cosine, Pearson, whole samples agreeing", () => {
  const validation = { agreement: 0.999, agreementLower: 0.996, n: 1024 };
  const figure = (task: Record<string, unknown>) =>
    reportFigures({ validation: { ...validation, task } }).taskMetric;
  expect(figure({ kind: "embedding", unit: "sample", figures: { meanCosine: 0.9998 } })).toEqual({
    kind: "embedding",
    name: "mean cosine",
    value: 0.9998,
    share: false,
  });
  expect(figure({ kind: "regression", unit: "sample", figures: { pearson: 0.9991 } })).toMatchObject({
    name: "Pearson",
    value: 0.9991,
  });
  expect(figure({ kind: "token-classification", unit: "token", sampleAgreement: 0.975 })).toEqual({
    kind: "token-classification",
    name: "samples whose every token agrees",
    value: 0.975,
    share: true,
  });
  expect(figure({ kind: "multi-label", unit: "label decision", sampleAgreement: 0.99 })?.name).toBe(
    "samples whose every label agrees",
  );
  // A pair classifier's figure is its agreement; a malformed figure is left out.
  expect(figure({ kind: "pair-classification", unit: "sample" })).toBeUndefined();
  expect(figure({ kind: "embedding", unit: "sample", figures: { meanCosine: "high" } })).toBeUndefined();
});
