/**
 * install.sh into a temporary root (twice: idempotent, operator's config kept),
 * the installed unit passes `systemd-analyze verify`, then --uninstall keeps
 * config and state and --purge removes them. Uses the real x64 release folder.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { buildRelease } from "../../scripts/build.ts";
import { loadAgentConfig } from "../../src/agent/config.ts";

const REPO = resolve(import.meta.dir, "../..");
const canBuild = process.platform === "linux" && process.arch === "x64";
const hasSysusers = Bun.which("systemd-sysusers") !== null;
const hasAnalyze =
  Bun.which("systemd-analyze") !== null && existsSync("/usr/lib/systemd/system/sysinit.target");
const work = mkdtempSync(join(tmpdir(), "quantd-install-"));
const root = join(work, "root");
let release = "";

function install(...args: string[]): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync(["sh", join(release, "install.sh"), "--root", root, ...args], {
    cwd: work,
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** Receives sd_notify datagrams on a path socket and prints each as one line (newlines escaped). */
const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", "\\\\n"), flush=True)
`;

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of stream) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      yield buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
    }
  }
}

function mode(path: string): string {
  return (statSync(path).mode & 0o7777).toString(8);
}

function memoryMax(): string | undefined {
  return /^MemoryMax=(.*)$/m.exec(readFileSync(join(root, "etc/systemd/system/quantd.service"), "utf8"))?.[1];
}

beforeAll(async () => {
  if (!canBuild) return;
  mkdirSync(root);
  release = (await buildRelease({ target: "linux-x64", outDir: join(work, "out"), tarball: false })).dir;
}, 120_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe.skipIf(!canBuild)("install.sh --root", () => {
  test("the default config is valid agent configuration", () => {
    const config = loadAgentConfig({
      profile: { threads: 3, samplePool: { maxRows: 5000, maxBytes: 8 << 20 } },
      defaultModel: join(REPO, "calib/models/sst2-bert-mini/model.onnx"),
      flags: { config: join(REPO, "deploy/config.default.json") },
      env: { STATE_DIRECTORY: "/var/lib/quantd", RUNTIME_DIRECTORY: "/run/quantd" },
    });
    expect(config.socketPath).toBe("/run/quantd/quantd.sock");
    expect(config.stateDir).toBe("/var/lib/quantd");
    // No model in the default config: an explicit one would pin it over promoted int8 versions.
    expect(config.modelExplicit).toBe(false);
  });

  test("first install: program, link, unit with the profile's MemoryMax, user, config", () => {
    // generic-arm64's recorded board has 3.9 GB: a quarter is 978 MiB, unlike the 1024 default.
    const r = install("--device-root", join(REPO, "test/fixtures/boards/generic-arm64"));
    expect(r.stderr.replace(/^Creating (group|user) .*\n/gm, "")).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("MemoryMax=978M");
    expect(memoryMax()).toBe("978M");

    const opt = join(root, "opt/quantd");
    expect(mode(join(opt, "quantd"))).toBe("755");
    expect(mode(join(opt, "lib/libonnxruntime.so.1"))).toBe("644");
    expect(mode(join(opt, "calib/models/sst2-bert-mini/model.onnx"))).toBe("644");
    expect(readlinkSync(join(root, "usr/local/bin/quantd"))).toBe("/opt/quantd/quantd");
    expect(mode(join(root, "etc/systemd/system/quantd.service"))).toBe("644");
    const unit = readFileSync(join(root, "etc/systemd/system/quantd.service"), "utf8");
    expect(unit).toContain("ExecStart=/opt/quantd/quantd agent --config /etc/quantd/config.json\n");
    expect(readFileSync(join(root, "etc/quantd/config.json"), "utf8")).toBe(
      readFileSync(join(REPO, "deploy/config.default.json"), "utf8"),
    );
    expect(mode(join(root, "etc/quantd/config.json"))).toBe("640");
    expect(existsSync(join(root, "usr/lib/sysusers.d/quantd.conf"))).toBe(true);
    if (hasSysusers) {
      const group = /^quantd:x:(\d+):/m.exec(readFileSync(join(root, "etc/group"), "utf8"));
      expect(group).not.toBeNull();
      expect(statSync(join(root, "etc/quantd/config.json")).gid).toBe(Number(group![1]));
      expect(readFileSync(join(root, "etc/passwd"), "utf8")).toMatch(
        /^quantd:x:\d+:\d+:quantd inference agent:\/var\/lib\/quantd:\/usr\/sbin\/nologin$/m,
      );
    }
    // The installed program runs from its new home and finds its model there.
    const p = Bun.spawnSync([join(opt, "quantd"), "classify", "--json", "a fine film"], { stdout: "pipe" });
    expect(p.exitCode).toBe(0);
    expect(JSON.parse(p.stdout.toString()).model).toBe(join(opt, "calib/models/sst2-bert-mini/model.onnx"));
  }, 60_000);

  test("second install: idempotent, the operator's config is kept, MemoryMax updated", () => {
    const configPath = join(root, "etc/quantd/config.json");
    const edited = '{ "batching": { "maxBatch": 4 } }\n';
    writeFileSync(configPath, edited);
    const passwd = hasSysusers ? readFileSync(join(root, "etc/passwd"), "utf8") : "";
    const r = install("--memory-max", "512");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(readFileSync(configPath, "utf8")).toBe(edited);
    expect(memoryMax()).toBe("512M");
    expect(readdirSync(join(root, "opt"))).toEqual(["quantd"]);
    if (hasSysusers) expect(readFileSync(join(root, "etc/passwd"), "utf8")).toBe(passwd);
  }, 60_000);

  test.skipIf(Bun.which("python3") === null)(
    "the unit's ExecStart, run as systemd would: READY=1 once serving, WATCHDOG=1, STOPPING=1 on SIGTERM",
    async () => {
      const unit = readFileSync(join(root, "etc/systemd/system/quantd.service"), "utf8");
      const execStart = /^ExecStart=(.*)$/m.exec(unit)![1]!.split(" ");
      const argv = execStart.map((a) => (a.startsWith("/") ? join(root, a) : a));
      const notifySocket = join(work, "notify.sock");
      const receiver = Bun.spawn(["python3", "-c", RECEIVER, notifySocket], {
        stdout: "pipe",
        stderr: "pipe",
      });
      const messages = lines(receiver.stdout);
      expect((await messages.next()).value).toBe("bound");
      const env: Record<string, string> = {
        PATH: process.env["PATH"] ?? "",
        // systemd sets HOME to the user's home, which is the state directory.
        HOME: join(work, "state"),
        STATE_DIRECTORY: join(work, "state"),
        RUNTIME_DIRECTORY: join(work, "run"),
        NOTIFY_SOCKET: notifySocket,
        WATCHDOG_USEC: "1000000",
      };
      for (const m of unit.matchAll(/^Environment=(\w+)=(.*)$/gm)) env[m[1]!] = m[2]!;
      expect(env["ORT_DISABLE_TELEMETRY"]).toBe("1");
      const stateDir = env["STATE_DIRECTORY"]!;
      const runtimeDir = env["RUNTIME_DIRECTORY"]!;
      mkdirSync(stateDir);
      mkdirSync(runtimeDir);
      const agent = Bun.spawn(argv, { cwd: stateDir, env, stdout: "pipe", stderr: "pipe" });
      try {
        const ready = (await messages.next()).value as string;
        expect(ready).toStartWith(`READY=1\\nMAINPID=${agent.pid}\\nSTATUS=serving sst2-bert-mini`);
        expect(existsSync(join(runtimeDir, "quantd.sock"))).toBe(true);
        expect(existsSync(join(stateDir, "quantd.db"))).toBe(true);
        expect((await messages.next()).value).toBe("WATCHDOG=1");
        agent.kill("SIGTERM");
        let last = "";
        while (last !== "STOPPING=1") {
          const m = await messages.next();
          if (m.done === true) break;
          last = m.value;
        }
        expect(last).toBe("STOPPING=1");
        expect(await agent.exited).toBe(0);
        // onnxruntime's telemetry store stays off (it would be $HOME/.cache/Microsoft/DeveloperTools).
        expect(existsSync(join(stateDir, ".cache"))).toBe(false);
      } finally {
        agent.kill("SIGKILL");
        receiver.kill();
      }
    },
    60_000,
  );

  test.skipIf(!hasAnalyze)(
    "systemd-analyze verify passes on the installed unit, and fails without its binary",
    () => {
      // The unit's default dependencies (sysinit.target, …) must resolve inside the root.
      cpSync("/usr/lib/systemd/system", join(root, "usr/lib/systemd/system"), { recursive: true });
      const verify = () =>
        Bun.spawnSync(["systemd-analyze", "verify", `--root=${root}`, "quantd.service"], {
          stdout: "pipe",
          stderr: "pipe",
        });
      const ok = verify();
      expect(ok.stderr.toString()).toBe("");
      expect(ok.exitCode).toBe(0);

      const exe = join(root, "opt/quantd/quantd");
      const aside = join(work, "quantd-aside");
      cpSync(exe, aside);
      rmSync(exe);
      try {
        const bad = verify();
        expect(bad.exitCode).not.toBe(0);
        expect(bad.stderr.toString()).toContain("/opt/quantd/quantd is not executable");
      } finally {
        cpSync(aside, exe);
      }
    },
    30_000,
  );

  test.skipIf(!hasAnalyze)(
    "systemd-analyze security (offline) rates the hardening OK, exposure at most 2.0",
    () => {
      // Runs after the verify test, which put the system units under the root.
      const p = Bun.spawnSync(
        [
          "systemd-analyze",
          "security",
          "--offline=yes",
          "--threshold=20",
          `--root=${root}`,
          "quantd.service",
        ],
        { stdout: "pipe", stderr: "pipe" },
      );
      const out = p.stdout.toString() + p.stderr.toString();
      const score = /Overall exposure level for quantd\.service: (\d+\.\d+) (\w+)/.exec(out);
      expect(score?.[2]).toBe("OK");
      expect(Number(score?.[1])).toBeLessThanOrEqual(2.0);
      expect(p.exitCode).toBe(0);
    },
    30_000,
  );

  test("bad options fail with a message", () => {
    const purge = install("--purge");
    expect(purge.code).toBe(1);
    expect(purge.stderr).toBe("install.sh: --purge goes with --uninstall\n");
    const mem = install("--memory-max", "1G");
    expect(mem.code).toBe(1);
    expect(mem.stderr).toContain("--memory-max must be a whole number of MiB");
  });

  test("--uninstall keeps config, state and the user; --purge removes config and state", () => {
    const state = join(root, "var/lib/quantd");
    mkdirSync(state, { recursive: true });
    writeFileSync(join(state, "quantd.db"), "state");
    const r = install("--uninstall");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("kept /etc/quantd, /var/lib/quantd and the quantd user");
    for (const gone of [
      "opt/quantd",
      "etc/systemd/system/quantd.service",
      "usr/lib/sysusers.d/quantd.conf",
    ]) {
      expect(existsSync(join(root, gone))).toBe(false);
    }
    expect(() => lstatSync(join(root, "usr/local/bin/quantd"))).toThrow();
    expect(existsSync(join(root, "etc/quantd/config.json"))).toBe(true);
    expect(readFileSync(join(state, "quantd.db"), "utf8")).toBe("state");

    const again = install("--uninstall", "--purge");
    expect(again.code).toBe(0);
    expect(existsSync(join(root, "etc/quantd"))).toBe(false);
    expect(existsSync(state)).toBe(false);
  }, 30_000);
});
