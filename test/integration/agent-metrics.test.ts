/**
 * `/metrics` as a Prometheus scraper sees it, from a real `quantd agent`
 * process: the standard `process_*` set and `quantd_build_info`, counters
 * present at 0 before their first event, and `--metrics-listen` on a
 * non-loopback address serving that one read-only route and nothing of the
 * inference or admin API.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { cliMain, envWithoutQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";
import { call, metricValue, tempDir } from "./agent-harness.ts";

let dir: string;
let agent: Bun.Subprocess<"ignore", "ignore", "pipe">;
let stderr = "";
let scrapeUrl = "";
let startedAt = 0;
const socket = () => join(dir, "q.sock");

beforeAll(async () => {
  dir = tempDir("quantd-metrics-");
  startedAt = Date.now() / 1000;
  agent = Bun.spawn(
    [
      "bun",
      cliMain,
      "agent",
      "--state-dir",
      join(dir, "state"),
      "--socket",
      socket(),
      "--metrics-listen",
      "0.0.0.0:0",
    ],
    {
      env: { ...envWithoutQuantd(), QUANTD_THREADS: "1" },
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    },
  );
  void (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of agent.stderr) stderr += decoder.decode(chunk);
  })();
  await until(
    () => /metrics: GET \/metrics on http:\/\/0\.0\.0\.0:\d+/.test(stderr) || agent.exitCode !== null,
    30_000,
    "the metrics listener",
  );
  const port = /metrics: GET \/metrics on http:\/\/0\.0\.0\.0:(\d+)/.exec(stderr)?.[1];
  // Bound on every interface: reached here through loopback, as a scraper on the LAN would through the board's address.
  scrapeUrl = `http://127.0.0.1:${port}`;
  await until(
    async () => (await call(socket(), "/v2/health/ready").catch(() => undefined))?.status === 200,
    30_000,
    "ready",
  );
}, 60_000);

afterAll(async () => {
  agent.kill("SIGTERM");
  await agent.exited;
  rmSync(dir, { recursive: true, force: true });
});

test("the process_* set, build info, and counters present from zero", async () => {
  const res = await fetch(`${scrapeUrl}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  expect(text).toContain("# TYPE process_cpu_seconds_total counter");
  expect(metricValue(text, "process_cpu_seconds_total")).toBeGreaterThan(0);
  expect(metricValue(text, "process_resident_memory_bytes")).toBeGreaterThan(50 * 1048576);
  expect(metricValue(text, "process_virtual_memory_bytes")).toBeGreaterThan(
    metricValue(text, "process_resident_memory_bytes")!,
  );
  const start = metricValue(text, "process_start_time_seconds")!;
  expect(start).toBeGreaterThan(startedAt - 5);
  expect(start).toBeLessThan(Date.now() / 1000);
  expect(metricValue(text, "process_open_fds")).toBeGreaterThan(3);
  expect(metricValue(text, "process_max_fds")).toBeGreaterThan(metricValue(text, "process_open_fds")!);
  expect(text).toMatch(
    new RegExp(
      `^quantd_build_info\\{version="${pkg.version.replace(/\./g, "\\.")}",bun="${Bun.version}",onnxruntime="\\d+\\.\\d+\\.\\d+"\\} 1$`,
      "m",
    ),
  );
  expect(text).toMatch(/^quantd_model_swaps_total 0$/m);
  expect(text).toMatch(/^quantd_model_rollbacks_total\{trigger="auto"\} 0$/m);
  // The socket's /metrics has the same set.
  const overSocket = await fetch("http://localhost/metrics", { unix: socket() });
  expect(await overSocket.text()).toContain("process_open_fds ");
});

test("the scrape listener serves GET /metrics only: no inference, no admin, no writes", async () => {
  expect((await fetch(`${scrapeUrl}/metrics`, { method: "HEAD" })).status).toBe(200);
  const post = await fetch(`${scrapeUrl}/metrics`, { method: "POST", body: "x" });
  expect(post.status).toBe(405);
  expect(post.headers.get("allow")).toBe("GET, HEAD");
  for (const [method, path] of [
    ["GET", "/v1/models"],
    ["POST", "/v1/models/rollback"],
    ["POST", "/v1/classify"],
    ["GET", "/v2/health/ready"],
  ] as const) {
    const r = await fetch(`${scrapeUrl}${path}`, {
      method,
      headers: { "content-type": "application/json" },
      ...(method === "POST" ? { body: '{"texts":["a"]}' } : {}),
    });
    expect(r.status).toBe(404);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe("NOT_FOUND");
  }
});

test("a malformed --metrics-listen stops the start with CONFIG_INVALID", async () => {
  const p = Bun.spawn(
    ["bun", cliMain, "agent", "--state-dir", join(dir, "bad"), "--metrics-listen", "nine-one-two-three"],
    {
      env: envWithoutQuantd(),
      stderr: "pipe",
    },
  );
  expect(await p.exited).toBe(1);
  expect(await new Response(p.stderr).text()).toContain(
    `error CONFIG_INVALID: config key metrics.listen (--metrics-listen): expected HOST:PORT, got "nine-one-two-three"`,
  );
});
