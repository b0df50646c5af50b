/**
 * `quantd agent` as a process: a stale socket left by a killed process is
 * cleaned, a second agent on a live socket refuses to start, a path that is not
 * a socket is never removed, SIGTERM drains and removes the socket, and the
 * loopback TCP listener serves inference but not the admin routes.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, lstatSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startAgent } from "../../src/agent/agent.ts";
import { cliMain, runQuantd } from "../helpers/run-cli.ts";
import { until } from "../helpers/until.ts";
import { call, classifyOverSocket, metricValue, tempDir, testConfig } from "./agent-harness.ts";

let dir: string;
beforeAll(() => {
  dir = tempDir();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const ENV = { ...process.env, QUANTD_THREADS: "1", QUANTD_CONFIG: "" };

function spawnAgent(
  stateDir: string,
  socket: string,
  env: Record<string, string> = {},
): Bun.Subprocess<"ignore", "pipe", "pipe"> {
  return Bun.spawn(["bun", cliMain, "agent", "--state-dir", stateDir, "--socket", socket], {
    env: { ...ENV, ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
}

async function waitReady(socket: string, proc: Bun.Subprocess, timeoutMs = 30_000): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (proc.exitCode !== null) throw new Error(`agent exited with ${proc.exitCode}`);
    try {
      if ((await call(socket, "/v2/health/ready")).status === 200) return;
    } catch {
      // not listening yet
    }
    await Bun.sleep(50);
  }
  throw new Error("agent not ready in time");
}

/** Leaves a socket file nobody listens on: its owner is SIGKILLed, so it cannot unlink it. */
async function makeStaleSocket(path: string): Promise<void> {
  const owner = Bun.spawn(
    [
      "bun",
      "-e",
      `require("node:net").createServer().listen(${JSON.stringify(path)}, () => console.log("up"))`,
    ],
    { stdout: "pipe", stderr: "inherit" },
  );
  const reader = owner.stdout.getReader();
  await reader.read();
  owner.kill("SIGKILL");
  await owner.exited;
}

test("stale socket cleaned; second agent refused; SIGTERM drains and removes the socket", async () => {
  const socket = join(dir, "run", "quantd.sock");
  const stateDir = join(dir, "state1");
  await Bun.$`mkdir -p ${join(dir, "run")}`.quiet();
  await makeStaleSocket(socket);
  expect(lstatSync(socket).isSocket()).toBe(true);

  // A long batching delay keeps requests queued, so the test can see the agent holding them before SIGTERM.
  const agent = spawnAgent(stateDir, socket, { QUANTD_BATCHING_MAX_DELAY_MS: "400" });
  try {
    await waitReady(socket, agent);
    expect((await classifyOverSocket(socket, ["a fine film"])).status).toBe(200);

    const second = spawnAgent(join(dir, "state2"), socket);
    expect(await second.exited).toBe(1);
    const err = await new Response(second.stderr).text();
    expect(err).toContain("error STATE_CONFLICT");
    expect(err).toContain("another agent is already serving");
    // The first one is untouched.
    expect((await classifyOverSocket(socket, ["still here"])).status).toBe(200);

    // Eight texts, under the batch size of 16: they wait the full delay.
    const inflight = Array.from({ length: 4 }, () =>
      classifyOverSocket(socket, ["drained before exit", "and this"]),
    );
    await until(
      async () =>
        (metricValue(
          await (await fetch("http://localhost/metrics", { unix: socket })).text(),
          "quantd_queue_depth",
        ) ?? 0) > 0,
      10_000,
      "the agent to queue a request",
    );
    agent.kill("SIGTERM");
    const settled = await Promise.allSettled(inflight);
    // Requests accepted before the signal complete; one arriving after it may only be told NOT_READY.
    for (const s of settled) {
      if (s.status !== "fulfilled") continue;
      if (s.value.status !== 200) expect((s.value.body["error"] as { code: string }).code).toBe("NOT_READY");
    }
    expect(settled.some((s) => s.status === "fulfilled" && s.value.status === 200)).toBe(true);
    expect(await agent.exited).toBe(0);
    expect(await new Response(agent.stderr).text()).toContain("stopped");
    expect(existsSync(socket)).toBe(false);
  } finally {
    agent.kill("SIGKILL");
  }
}, 60_000);

const hasPython = Bun.which("python3") !== null;

// systemd's side of Type=notify: a datagram socket printing each message until STOPPING=1.
const NOTIFY_RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
print("bound", flush=True)
while True:
    data = s.recv(4096).decode()
    print(repr(data), flush=True)
    if "STOPPING=1" in data:
        break
`;

test.skipIf(!hasPython)(
  "systemd: READY=1 once the model is loaded, watchdog pings, STOPPING=1 on SIGTERM",
  async () => {
    const notifySocket = join(dir, "notify.sock");
    const receiver = Bun.spawn(["python3", "-c", NOTIFY_RECEIVER, notifySocket], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const reader = receiver.stdout.getReader();
    const decoder = new TextDecoder();
    let out = "";
    while (!out.includes("bound\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(await new Response(receiver.stderr).text());
      out += decoder.decode(value);
    }
    const socket = join(dir, "notify-agent.sock");
    const agent = Bun.spawn(
      ["bun", cliMain, "agent", "--state-dir", join(dir, "state-notify"), "--socket", socket],
      {
        env: { ...ENV, NOTIFY_SOCKET: notifySocket, WATCHDOG_USEC: "200000" },
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
      },
    );
    try {
      await waitReady(socket, agent);
      await Bun.sleep(400);
      agent.kill("SIGTERM");
      expect(await agent.exited).toBe(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out += decoder.decode(value);
      }
      const messages = out
        .split("\n")
        .slice(1)
        .filter((l) => l !== "");
      expect(messages[0]).toContain("READY=1");
      expect(messages[0]).toContain(`MAINPID=${agent.pid}`);
      expect(messages[0]).toContain("STATUS=serving sst2-bert-mini version 1 (fp32)");
      expect(messages.filter((m) => m.includes("WATCHDOG=1")).length).toBeGreaterThanOrEqual(2);
      expect(messages.at(-1)).toContain("STOPPING=1");
    } finally {
      agent.kill("SIGKILL");
      receiver.kill();
    }
  },
  60_000,
);

test("a socket path that is a regular file is refused and left alone", async () => {
  const path = join(dir, "not-a-socket");
  writeFileSync(path, "precious");
  await expect(startAgent(testConfig(join(dir, "c"), {}, { socket: path }))).rejects.toMatchObject({
    code: "CONFIG_INVALID",
  });
  expect(readFileSync(path, "utf8")).toBe("precious");
});

test("a model file at the filesystem root that is not there: FILE_NOT_FOUND naming it, not a config error", async () => {
  const missing = `/quantd-no-such-model-${process.pid}.onnx`;
  const r = await runQuantd(
    [
      "agent",
      "--model",
      missing,
      "--state-dir",
      join(dir, "root", "state"),
      "--socket",
      join(dir, "root.sock"),
    ],
    { env: ENV },
  );
  expect(r.code).not.toBe(0);
  expect(r.stderr).toContain("error FILE_NOT_FOUND");
  expect(r.stderr).toContain(missing);
  expect(r.stderr).not.toContain("CONFIG_INVALID");
}, 30_000);

test("loopback TCP serves inference but not the admin routes", async () => {
  const agent = await startAgent(testConfig(join(dir, "d"), {}, { tcp: "127.0.0.1:0" }));
  try {
    const port = agent.listeners.tcp!.port;
    expect(port).toBeGreaterThan(0);
    const res = await fetch(`http://127.0.0.1:${port}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ texts: ["over tcp"] }),
    });
    expect(res.status).toBe(200);
    const admin = await fetch(`http://127.0.0.1:${port}/v1/models`);
    expect(admin.status).toBe(404);
    expect((await call(agent.config.socketPath, "/v1/models")).status).toBe(200);
  } finally {
    await agent.stop();
  }
});

test("quantd agent models | promote | rollback talk to a running agent", async () => {
  const agent = await startAgent(testConfig(join(dir, "e")), { runJobs: false });
  const cli = async (...args: string[]): Promise<{ code: number; out: string; err: string }> => {
    const r = await runQuantd(["agent", ...args, "--socket", agent.config.socketPath], { env: ENV });
    return { code: r.code, out: r.stdout, err: r.stderr };
  };
  try {
    const models = await cli("models", "--json");
    expect(models.code).toBe(0);
    const listed = JSON.parse(models.out) as { active: number; versions: { id: number; state: string }[] };
    expect(listed.active).toBe(1);
    expect(listed.versions.map((v) => [v.id, v.state])).toEqual([[1, "active"]]);

    const nothing = await cli("rollback");
    expect(nothing.code).toBe(1);
    expect(nothing.err).toContain("error NOT_FOUND");

    const missing = await cli("promote", join(dir, "no-such-model.onnx"));
    expect(missing.code).toBe(1);
    expect(missing.err).toContain("error FILE_NOT_FOUND");
    expect(agent.registry.active()?.version).toBe(1);
  } finally {
    await agent.stop();
  }
  const gone = await runQuantd(["agent", "models", "--socket", agent.config.socketPath], { env: ENV });
  expect(gone.code).toBe(1);
  expect(gone.stderr).toContain("error NOT_READY");
}, 60_000);
