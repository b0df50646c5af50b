/**
 * A real PostgreSQL server for tests (Debian's `postgresql` package): a fresh
 * cluster in a temporary directory (initdb, trust auth on loopback), started
 * on a random loopback port and removed afterwards. As root the server runs as
 * the `postgres` user, which PostgreSQL requires.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { acceptsConnections, freePort } from "./net.ts";

function findBin(): string | undefined {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, "bin", "postgres")))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], "bin");
}

/** Directory of initdb and postgres, or undefined when PostgreSQL is not installed. */
export const postgresBin: string | undefined = findBin();

/** Whether tests needing PostgreSQL can run. */
export const hasPostgres: boolean = postgresBin !== undefined;

/** Message for `test.skipIf(!hasPostgres)`. */
export const postgresSkipReason =
  "PostgreSQL not installed (apt-get install -y postgresql); PostgreSQL tests skipped";

/** A running server. */
export interface Postgres {
  /** `postgres://postgres@127.0.0.1:PORT/postgres`. */
  readonly url: string;
  /** Creates a fresh database and returns its URL (one per test keeps tests independent). */
  createDatabase(name: string): Promise<string>;
  dispose(): Promise<void>;
}

const asRoot = process.getuid?.() === 0;

function run(cmd: string, args: string[]): ReturnType<typeof spawnSync> {
  return asRoot
    ? spawnSync("runuser", ["-u", "postgres", "--", cmd, ...args], { encoding: "utf8" })
    : spawnSync(cmd, args, { encoding: "utf8" });
}

/** initdb + postgres on a random port; resolves once it accepts connections and a query. */
export async function startPostgres(): Promise<Postgres> {
  const bin = postgresBin;
  if (bin === undefined) throw new Error(postgresSkipReason);
  const dir = mkdtempSync(join(tmpdir(), "quantd-pg-"));
  if (asRoot) {
    const uid = Number(spawnSync("id", ["-u", "postgres"], { encoding: "utf8" }).stdout.trim());
    const gid = Number(spawnSync("id", ["-g", "postgres"], { encoding: "utf8" }).stdout.trim());
    chownSync(dir, uid, gid);
  }
  const data = join(dir, "data");
  const init = run(join(bin, "initdb"), [
    "-D",
    data,
    "-U",
    "postgres",
    "--auth=trust",
    "-E",
    "UTF8",
    "--no-sync",
  ]);
  if (init.status !== 0) throw new Error(`initdb failed: ${String(init.stderr)}`);
  const port = await freePort();
  const args = [
    "-D",
    data,
    "-p",
    String(port),
    "-k",
    dir,
    "-c",
    "listen_addresses=127.0.0.1",
    "-c",
    "fsync=off",
    "-c",
    "max_connections=50",
  ];
  let log = "";
  const proc: ChildProcess = asRoot
    ? spawn("runuser", ["-u", "postgres", "--", join(bin, "postgres"), ...args], {
        stdio: ["ignore", "ignore", "pipe"],
      })
    : spawn(join(bin, "postgres"), args, { stdio: ["ignore", "ignore", "pipe"] });
  proc.stderr?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  const deadline = Date.now() + 20_000;
  while (!log.includes("ready to accept connections") || !(await acceptsConnections(port))) {
    if (proc.exitCode !== null) throw new Error(`postgres exited: ${log}`);
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`postgres did not start: ${log}`);
    }
    await Bun.sleep(50);
  }
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    async createDatabase(name) {
      const r = run(join(bin, "createdb"), ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", name]);
      if (r.status !== 0) throw new Error(`createdb ${name}: ${String(r.stderr)}`);
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    },
    async dispose() {
      if (proc.exitCode === null) {
        const exited = new Promise<void>((r) => proc.once("exit", () => r()));
        // SIGINT to the postmaster itself (runuser sits between us and it): PostgreSQL's fast shutdown.
        const pid = Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0]);
        try {
          process.kill(pid, "SIGINT");
        } catch {
          proc.kill("SIGINT");
        }
        const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
