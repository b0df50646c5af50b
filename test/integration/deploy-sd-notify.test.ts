/**
 * sd_notify against a real receiving datagram socket (a python3 child binds it,
 * as systemd would), for both a filesystem path and an abstract `@` name.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  notifyReady,
  notifyStatus,
  notifyStopping,
  notifyWatchdog,
  sdNotify,
  watchdogIntervalMs,
} from "../../src/agent/sd-notify.ts";

const hasPython = Bun.which("python3") !== null;
const dir = mkdtempSync(join(tmpdir(), "quantd-notify-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const RECEIVER = `
import socket, sys
name = sys.argv[1]
count = int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + name[1:] if name.startswith("@") else name)
s.settimeout(10)
print("bound", flush=True)
for _ in range(count):
    data = s.recv(4096)
    print(repr(data.decode()), flush=True)
`;

/** Starts a receiver for `count` datagrams and resolves once it is bound. */
async function receive(name: string, count: number): Promise<{ messages: () => Promise<string[]> }> {
  const child = Bun.spawn(["python3", "-c", RECEIVER, name, String(count)], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const reader = child.stdout.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  while (!buffered.includes("bound\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`receiver exited: ${await new Response(child.stderr).text()}`);
    buffered += decoder.decode(value);
  }
  return {
    async messages() {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value);
      }
      await child.exited;
      return (
        buffered
          .split("\n")
          .slice(1)
          .filter((l) => l !== "")
          // python's repr of a str: single-quoted, with \n escaped.
          .map((l) => l.slice(1, -1).replace(/\\n/g, "\n"))
      );
    },
  };
}

describe("sd-notify", () => {
  test("no NOTIFY_SOCKET: every call is a no-op returning false", () => {
    expect(sdNotify("READY=1", {})).toBe(false);
    expect(notifyReady(undefined, {})).toBe(false);
    expect(notifyWatchdog({ NOTIFY_SOCKET: "" })).toBe(false);
    expect(notifyStopping({})).toBe(false);
  });

  test("a socket nobody listens on: false, no throw", () => {
    expect(notifyWatchdog({ NOTIFY_SOCKET: join(dir, "nobody.sock") })).toBe(false);
    expect(notifyWatchdog({ NOTIFY_SOCKET: `@quantd-nobody-${process.pid}` })).toBe(false);
  });

  test.skipIf(!hasPython)("READY, STATUS, WATCHDOG and STOPPING reach a path socket in order", async () => {
    const path = join(dir, "notify.sock");
    const rx = await receive(path, 4);
    const env = { NOTIFY_SOCKET: path };
    expect(notifyReady("serving sst2-bert-mini", env)).toBe(true);
    expect(notifyStatus("line one\nline two", env)).toBe(true);
    expect(notifyWatchdog(env)).toBe(true);
    expect(notifyStopping(env)).toBe(true);
    const got = await rx.messages();
    expect(got).toEqual([
      `READY=1\nMAINPID=${process.pid}\nSTATUS=serving sst2-bert-mini`,
      "STATUS=line one line two",
      "WATCHDOG=1",
      "STOPPING=1",
    ]);
  });

  test.skipIf(!hasPython)("abstract @ socket receives READY=1", async () => {
    const name = `@quantd-test-${process.pid}-${Date.now()}`;
    const rx = await receive(name, 1);
    expect(notifyReady(undefined, { NOTIFY_SOCKET: name })).toBe(true);
    expect(await rx.messages()).toEqual([`READY=1\nMAINPID=${process.pid}`]);
  });

  test("watchdogIntervalMs is half of WATCHDOG_USEC, only for this process", () => {
    expect(watchdogIntervalMs({})).toBeUndefined();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "30000000" }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "42" }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "43" }, 42)).toBeUndefined();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "soon" }, 42)).toBeUndefined();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: "0" }, 42)).toBeUndefined();
  });
});
