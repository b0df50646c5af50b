/**
 * The PostgreSQL FleetStore against a real server (Debian's postgresql,
 * started by the test): the same contract as SQLite, plus what several
 * controller replicas need — they migrate once when starting together, and
 * what one writes the other reads.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { openPostgresFleetStore } from "../../src/fleet/controller/postgres-store.ts";
import { connectMqttOnce } from "../../src/fleet/mqtt-client.ts";
import { encodeJson } from "../../src/fleet/protocol.ts";
import { runFleetStoreContract } from "../contracts/fleet-store.contract.ts";
import { newDeviceKey } from "../helpers/fleet-keys.ts";
import { hasMosquitto, startMosquitto } from "../helpers/mosquitto.ts";
import { freePort } from "../helpers/net.ts";
import { repoRoot } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { hasPostgres, type Postgres, postgresSkipReason, startPostgres } from "../helpers/postgres.ts";

if (!hasPostgres) console.warn(postgresSkipReason);

let pg: Postgres | undefined;
let n = 0;
const fresh = async (): Promise<string> => {
  if (pg === undefined) throw new Error("postgres not started");
  n++;
  return await pg.createDatabase(`fleet_${n}`);
};

beforeAll(async () => {
  if (hasPostgres) pg = await startPostgres();
}, 60_000);
afterAll(async () => {
  await pg?.dispose();
});

if (hasPostgres) {
  runFleetStoreContract({ describe, test }, "PostgreSQL", async () => openPostgresFleetStore(await fresh()));
}

describe.skipIf(!hasPostgres)("PostgreSQL FleetStore for several replicas", () => {
  test("replicas starting together migrate once and share what they write", async () => {
    const url = await fresh();
    const [a, b] = await Promise.all([openPostgresFleetStore(url), openPostgresFleetStore(url)]);
    try {
      await a.recordStatus("f", "d1", { state: "online", fleet: "f", device: "d1", at: 10 }, 11);
      const report = {
        id: "j",
        device: "d1",
        jobId: "j",
        type: "bench",
        state: "SUCCEEDED" as const,
        startedAt: 1,
        finishedAt: 20,
      };
      expect(await b.recordReport("f", "d1", report, 21)).toBe(true);
      // The same report delivered to the other replica (a redelivery after a restart) is a duplicate.
      expect(await a.recordReport("f", "d1", report, 22)).toBe(false);
      expect((await a.device("f", "d1"))?.lastReport?.id).toBe("j");
      expect((await b.devices("f")).map((d) => d.online)).toEqual([true]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("an unreachable server is STORE_FAILED", async () => {
    await expect(openPostgresFleetStore("postgres://postgres@127.0.0.1:1/none")).rejects.toMatchObject({
      code: "STORE_FAILED",
    });
  });
});

describe.skipIf(!hasPostgres || !hasMosquitto)(
  "two quantd fleet serve replicas on one PostgreSQL database",
  () => {
    test("each splits the shared subscription; both dashboards show every device and report", async () => {
      const broker = await startMosquitto();
      // Trust auth ignores the password; it is there to check that no log shows it.
      const url = (await fresh()).replace("//postgres@", "//postgres:s3cret@");
      const replicas: { proc: ChildProcess; http: string }[] = [];
      // The simulated devices' key, enrolled as an operator would, before the replicas start.
      const deviceKey = newDeviceKey();
      try {
        for (const device of ["d0", "d1", "d2"]) {
          const r = await runQuantd([
            "fleet",
            "enroll",
            device,
            "--fleet",
            "lab",
            "--pubkey",
            deviceKey.publicKey,
            "--db",
            url,
          ]);
          expect(r.stderr).not.toContain("s3cret");
          expect(r.code).toBe(0);
        }
        for (const name of ["a", "b"]) {
          const port = await freePort();
          const proc = spawn(
            process.execPath,
            [
              join(repoRoot, "src/cli/main.ts"),
              "fleet",
              "serve",
              "--broker",
              broker.url,
              "--db",
              url,
              "--http",
              `127.0.0.1:${port}`,
              "--client-id",
              `replica-${name}`,
            ],
            { stdio: ["ignore", "ignore", "pipe"] },
          );
          let err = "";
          proc.stderr?.on("data", (d: Buffer) => (err += d.toString()));
          const deadline = Date.now() + 20_000;
          while (!err.includes("subscribed")) {
            if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`replica ${name}: ${err}`);
            await Bun.sleep(50);
          }
          // The password part of the URL never reaches the log.
          expect(err).not.toContain("s3cret");
          expect(err).toContain("postgres://postgres:***@");
          replicas.push({ proc, http: `http://127.0.0.1:${port}/` });
        }
        const dev = await connectMqttOnce({ url: broker.url, clientId: "sim-device" });
        const total = 30;
        for (let i = 0; i < total; i++) {
          const device = `d${i % 3}`;
          const topic = `quantd/v1/lab/${device}/report`;
          const body = encodeJson({
            id: `r${i}`,
            device,
            jobId: `r${i}`,
            type: "bench",
            state: "SUCCEEDED",
            startedAt: 1,
            finishedAt: 2 + i,
          });
          await dev.publish(topic, body, { qos: 1, userProperties: deviceKey.sign(topic, body) });
        }
        await dev.close();
        const stats = async (http: string): Promise<number> =>
          ((await (await fetch(`${http}api/stats`)).json()) as { byKind: { report: number } }).byKind.report;
        const deadline = Date.now() + 10_000;
        let counts = [0, 0];
        while (Date.now() < deadline) {
          counts = await Promise.all(replicas.map((r) => stats(r.http)));
          if (counts[0]! + counts[1]! >= total) break;
          await Bun.sleep(100);
        }
        expect(counts[0]! + counts[1]!).toBe(total);
        expect(Math.min(...counts)).toBeGreaterThan(0);
        for (const r of replicas) {
          const devices = (await (await fetch(`${r.http}api/devices?fleet=lab`)).json()) as {
            device: string;
            lastReport: { id: string };
          }[];
          expect(devices.map((d) => [d.device, d.lastReport.id])).toEqual([
            ["d0", "r27"],
            ["d1", "r28"],
            ["d2", "r29"],
          ]);
        }
      } finally {
        for (const r of replicas) {
          const exited = new Promise((res) => r.proc.once("exit", res));
          r.proc.kill("SIGTERM");
          await exited;
        }
        await broker.dispose();
      }
    }, 60_000);
  },
);
