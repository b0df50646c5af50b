/**
 * A real mosquitto broker for tests: a generated config in a temporary
 * directory, a random loopback port, persistence on (so a restart keeps
 * sessions and queued QoS 1 messages, as a production broker would), and
 * optional TLS, password files and ACLs. Tests that need it skip with
 * {@link mosquittoSkipReason} when the binary is missing.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { acceptsConnections, freePort } from "./net.ts";

function findMosquitto(): string | undefined {
  for (const p of ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]) {
    if (existsSync(p)) return p;
  }
  const r = spawnSync("sh", ["-c", "command -v mosquitto"], { encoding: "utf8" });
  const found = r.stdout.trim();
  return r.status === 0 && found !== "" ? found : undefined;
}

/** The mosquitto binary, or undefined when it is not installed. */
export const mosquittoPath: string | undefined = findMosquitto();

/** Whether tests needing a broker can run. */
export const hasMosquitto: boolean = mosquittoPath !== undefined;

/** Message for `test.skipIf(!hasMosquitto)`. */
export const mosquittoSkipReason =
  "mosquitto not installed (apt-get install -y mosquitto); MQTT tests skipped";

/** TLS material for a listener (PEM file paths). */
export interface BrokerTls {
  caFile: string;
  certFile: string;
  keyFile: string;
  /** Demand a client certificate signed by the CA. @defaultValue false */
  requireCertificate?: boolean;
}

/** Options for {@link startMosquitto}. */
export interface MosquittoOptions {
  /** `username → password`; when given, anonymous clients are refused. */
  users?: Record<string, string>;
  /** Lines of a mosquitto ACL file (`user NAME`, `topic readwrite …`, `pattern …`). */
  acl?: string[];
  tls?: BrokerTls;
  /** More config lines, appended as they are (a bridge `connection` section, say). */
  extraConfig?: string[];
  /**
   * A whole config instead of the generated one (a shipped file with its
   * paths rewritten), given the port and the broker's temporary directory;
   * the other options are then ignored.
   */
  config?: (port: number, dir: string) => string[];
}

/** A running broker. */
export interface Mosquitto {
  readonly port: number;
  /** `mqtt://127.0.0.1:PORT` (or `mqtts://` with TLS). */
  readonly url: string;
  readonly dir: string;
  /** Stops gracefully (SIGTERM: mosquitto writes its persistence file) and waits for exit. */
  stop(): Promise<void>;
  /** Starts again on the same port with the same persistence file. */
  start(): Promise<void>;
  /** Stop then start. */
  restart(): Promise<void>;
  /** Stops and removes the directory. */
  dispose(): Promise<void>;
  /** What the broker logged (for failing tests). */
  log(): string;
}

/**
 * Starts mosquitto on a random loopback port and waits until it accepts TCP
 * connections.
 */
export async function startMosquitto(options: MosquittoOptions = {}): Promise<Mosquitto> {
  const bin = mosquittoPath;
  if (bin === undefined) throw new Error(mosquittoSkipReason);
  const dir = mkdtempSync(join(tmpdir(), "quantd-mosquitto-"));
  const port = await freePort();
  const lines = [
    `listener ${port} 127.0.0.1`,
    "persistence true",
    `persistence_location ${dir}/`,
    "autosave_interval 1",
    "log_dest stderr",
    "log_type error",
    "log_type warning",
    "log_type notice",
    "max_queued_messages 100000",
  ];
  // As root mosquitto would switch to the `mosquitto` user, who cannot write the temp dir.
  if (process.getuid?.() === 0) lines.push("user root");
  if (options.users === undefined) {
    lines.push("allow_anonymous true");
  } else {
    const pw = join(dir, "passwd");
    writeFileSync(pw, "");
    for (const [user, pass] of Object.entries(options.users)) {
      const r = spawnSync("mosquitto_passwd", ["-b", pw, user, pass], { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`mosquitto_passwd failed: ${r.stderr}`);
    }
    lines.push("allow_anonymous false", `password_file ${pw}`);
  }
  if (options.acl !== undefined) {
    const acl = join(dir, "acl");
    writeFileSync(acl, `${options.acl.join("\n")}\n`);
    lines.push(`acl_file ${acl}`);
  }
  if (options.tls !== undefined) {
    lines.push(
      `cafile ${options.tls.caFile}`,
      `certfile ${options.tls.certFile}`,
      `keyfile ${options.tls.keyFile}`,
      `require_certificate ${options.tls.requireCertificate === true ? "true" : "false"}`,
    );
  }
  // Bridge sections must come last: every line after `connection` belongs to the bridge.
  if (options.extraConfig !== undefined) lines.push(...options.extraConfig);
  const conf = join(dir, "mosquitto.conf");
  const text = options.config === undefined ? lines : options.config(port, dir);
  if (options.config !== undefined && process.getuid?.() === 0) text.push("user root");
  writeFileSync(conf, `${text.join("\n")}\n`);

  let child: ChildProcess | undefined;
  let logText = "";
  const start = async (): Promise<void> => {
    const proc = spawn(bin, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
    child = proc;
    proc.stderr?.on("data", (d: Buffer) => {
      logText += d.toString();
    });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) throw new Error(`mosquitto exited (${proc.exitCode}): ${logText}`);
      if (await acceptsConnections(port)) return;
      await Bun.sleep(20);
    }
    proc.kill("SIGKILL");
    throw new Error(`mosquitto did not accept on port ${port}: ${logText}`);
  };
  const stop = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (proc === undefined || proc.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  };
  await start();
  const scheme = options.tls === undefined ? "mqtt" : "mqtts";
  return {
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    dir,
    stop,
    start,
    async restart() {
      await stop();
      await start();
    },
    async dispose() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
    log: () => logText,
  };
}
