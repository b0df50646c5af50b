/**
 * The agent's log as systemd's journal and a log shipper read it, from a real
 * `quantd agent` process: with JOURNAL_STREAM naming its stderr (as systemd
 * sets it) every line has a priority prefix; `--log-level` drops information;
 * `--log-format json` writes one object per line; a broker that is not there is
 * logged with back-off rather than at every reconnect attempt (once a second);
 * `quantd fleet serve` takes the same flags.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { hasMosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { cliMain, envWithoutQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";
import { call, tempDir } from "./agent-harness.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir("quantd-logs-");
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Runs the agent for `ms` after it is ready and returns its stderr. With `journal`, a shell sets
 * JOURNAL_STREAM to its stderr's device:inode first, as systemd does for a service whose output
 * goes to the journal.
 */
async function agentLog(name: string, args: string[], ms: number, journal = false): Promise<string> {
  const flags = ["--state-dir", join(dir, name), "--socket", join(dir, `${name}.sock`), ...args];
  const quoted = ["bun", cliMain, "agent", ...flags].map((a) => `'${a}'`).join(" ");
  const cmd = journal
    ? ["bash", "-c", `export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec ${quoted}`]
    : ["bun", cliMain, "agent", ...flags];
  const proc = Bun.spawn(cmd, {
    env: { ...envWithoutQuantd(), QUANTD_THREADS: "1" },
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  let text = "";
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stderr) text += decoder.decode(chunk);
  })();
  try {
    const socket = join(dir, `${name}.sock`);
    // Ready on its socket: the log may not say so (--log-level error).
    await until(
      async () =>
        proc.exitCode !== null ||
        (await call(socket, "/v2/health/ready").catch(() => undefined))?.status === 200,
      30_000,
      "the agent to be ready",
    );
    await Bun.sleep(ms);
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
    await reading;
  }
  return text;
}

test("under systemd's journal every line carries its priority; errors are <3>", async () => {
  const log = await agentLog("journal", ["--broker", "mqtt://127.0.0.1:1"], 1500, true);
  const lines = log.trimEnd().split("\n");
  for (const l of lines) expect(l).toMatch(/^<[3467]>/);
  expect(lines).toContainEqual(expect.stringMatching(/^<6>ready: serving sst2-bert-mini version 1/));
  expect(lines).toContainEqual(expect.stringMatching(/^<3>fleet: error FLEET_UNAVAILABLE: .*ECONNREFUSED/));
  expect(lines.at(-1)).toBe("<6>stopped");
}, 60_000);

test("--log-level error and --log-format json: only errors, one JSON object each; a missing broker backs off", async () => {
  const log = await agentLog(
    "json",
    ["--broker", "mqtt://127.0.0.1:1", "--log-level", "error", "--log-format", "json"],
    6500,
  );
  const entries = log
    .trimEnd()
    .split("\n")
    .map((l) => JSON.parse(l) as { level: string; msg: string; code?: string; time: string });
  expect(entries.length).toBeGreaterThanOrEqual(2);
  for (const e of entries) expect(e).toMatchObject({ level: "error", code: "FLEET_UNAVAILABLE" });
  // mqtt.js retries every second: about 7 attempts in this time, logged at 0, 2 and 6 s.
  expect(entries.length).toBeLessThanOrEqual(4);
  expect(entries[1]!.msg).toMatch(/\(\d+ more like it left out; next in 4 s at the earliest\)$/);
}, 60_000);

test("a bad --log-level is a usage error", async () => {
  const proc = Bun.spawn(["bun", cliMain, "agent", "--log-level", "loud", "--state-dir", join(dir, "bad")], {
    env: envWithoutQuantd(),
    stderr: "pipe",
  });
  expect(await proc.exited).toBe(2);
  expect(await new Response(proc.stderr).text()).toContain(
    'error USAGE: --log-level must be one of error, warn, info, debug, got "loud"',
  );
});

test.skipIf(!hasMosquitto)(
  "fleet serve takes the same log flags: JSON lines at info",
  async () => {
    const broker = await startMosquitto();
    try {
      const proc = Bun.spawn(
        [
          "bun",
          cliMain,
          "fleet",
          "serve",
          "--broker",
          broker.url,
          "--db",
          join(dir, "fleet.db"),
          "--log-format",
          "json",
        ],
        { env: envWithoutQuantd(), stdin: "ignore", stdout: "ignore", stderr: "pipe" },
      );
      let text = "";
      const reading = (async () => {
        const decoder = new TextDecoder();
        for await (const chunk of proc.stderr) text += decoder.decode(chunk);
      })();
      await until(
        () => text.includes("subscribed") || proc.exitCode !== null,
        30_000,
        "the controller to subscribe",
      );
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
      await reading;
      const entries = text
        .trimEnd()
        .split("\n")
        .map((l) => JSON.parse(l) as { level: string; msg: string });
      expect(entries[0]).toMatchObject({
        level: "info",
        msg: expect.stringMatching(/^subscribed: controller /),
      });
      expect(entries.at(-1)).toMatchObject({ level: "info", msg: "SIGTERM: stopping" });
    } finally {
      await broker.dispose();
    }
  },
  60_000,
);
