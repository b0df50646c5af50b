/**
 * The controller's {@link FleetStore} contract, for every implementation
 * (SQLite now; a networked database for several replicas would run the same
 * suite): status history and ordering, retained-status repeats, telemetry
 * ranges and pruning, job state that never goes back, report dedupe.
 */
import assert from "node:assert/strict";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import type { ReportMessage, StatusMessage } from "../../src/fleet/protocol.ts";
import type { TestApi } from "./harness.ts";

const online = (at: number, model = "v1"): StatusMessage => ({
  state: "online",
  fleet: "f",
  device: "d1",
  at,
  agentVersion: "0.1.0",
  model: { version: model, kind: "int8-static" },
  outbox: { queued: 0, bytes: 0, dropped: 0 },
});

const report = (
  id: string,
  finishedAt: number,
  state: ReportMessage["state"] = "SUCCEEDED",
): ReportMessage => ({
  id,
  device: "d1",
  jobId: id,
  type: "recalibrate",
  state,
  result: { agreement: 0.99 },
  startedAt: finishedAt - 10,
  finishedAt,
});

/** Registers the FleetStore contract; `make` returns a fresh, empty store. */
export function runFleetStoreContract(t: TestApi, name: string, make: () => Promise<FleetStore>): void {
  const withStore = async (fn: (s: FleetStore) => Promise<void>): Promise<void> => {
    const s = await make();
    try {
      await fn(s);
    } finally {
      await s.close();
    }
  };

  t.describe(`FleetStore contract (${name})`, () => {
    t.test("a status creates the device; a will makes it offline; history is newest first", async () => {
      await withStore(async (s) => {
        await s.recordStatus("f", "d1", online(1000), 1001);
        let d = await s.device("f", "d1");
        assert.equal(d?.online, true);
        assert.deepEqual(d?.model, { version: "v1", kind: "int8-static" });
        assert.equal(d?.agentVersion, "0.1.0");
        await s.recordStatus(
          "f",
          "d1",
          { state: "offline", fleet: "f", device: "d1", at: null, reason: "will" },
          2000,
        );
        d = await s.device("f", "d1");
        assert.equal(d?.online, false);
        // The will carries no model: the last known one stays.
        assert.deepEqual(d?.model, { version: "v1", kind: "int8-static" });
        assert.deepEqual(await s.statusHistory("f", "d1"), [
          { state: "offline", reason: "will", at: 2000 },
          { state: "online", reason: null, at: 1000 },
        ]);
        assert.equal(await s.device("f", "nope"), undefined);
      });
    });

    t.test("a retained status delivered again adds no history; an older status does not win", async () => {
      await withStore(async (s) => {
        await s.recordStatus("f", "d1", online(1000), 1001);
        await s.recordStatus("f", "d1", online(1000), 5000);
        assert.equal((await s.statusHistory("f", "d1")).length, 1);
        await s.recordStatus("f", "d1", online(3000, "v2"), 3001);
        await s.recordStatus("f", "d1", online(2000, "v0"), 3002);
        assert.equal((await s.device("f", "d1"))?.model?.version, "v2");
        assert.equal((await s.device("f", "d1"))?.lastSeen, 5000);
      });
    });

    t.test(
      "model history: one entry per change, repeats and late statuses add none, newest first",
      async () => {
        await withStore(async (s) => {
          await s.recordStatus("f", "d1", online(1000, "1"), 1001);
          // The retained status delivered again, and a heartbeat with the same model.
          await s.recordStatus("f", "d1", online(1000, "1"), 1500);
          await s.recordStatus("f", "d1", online(1200, "1"), 1201);
          await s.recordStatus("f", "d1", online(2000, "2"), 2001);
          await s.recordStatus(
            "f",
            "d1",
            { ...online(3000, "1"), model: { version: "1", kind: "fp32" } },
            3001,
          );
          // Late: version 2 was already the latest at 2500.
          await s.recordStatus("f", "d1", online(2500, "2"), 3002);
          // A will carries no model: no entry.
          await s.recordStatus("f", "d1", { state: "offline", fleet: "f", device: "d1", at: null }, 4000);
          assert.deepEqual(await s.modelHistory("f", "d1"), [
            { version: "1", kind: "fp32", at: 3000 },
            { version: "2", kind: "int8-static", at: 2000 },
            { version: "1", kind: "int8-static", at: 1000 },
          ]);
          assert.deepEqual(
            (await s.modelHistory("f", "d1", 1)).map((m) => m.at),
            [3000],
          );
          assert.deepEqual(await s.modelHistory("f", "d2"), []);
        });
      },
    );

    t.test(
      "a degraded status: the model's rejectedAtStart is kept with the device, and goes with the next status",
      async () => {
        await withStore(async (s) => {
          const rejectedAtStart = {
            path: "/opt/m/model.onnx",
            code: "MODEL_TRUNCATED",
            message: "cut short",
          };
          await s.recordStatus("f", "d1", online(1000, "1"), 1001);
          const degraded = {
            ...online(2000, "1"),
            model: { version: "1", kind: "int8-static", rejectedAtStart },
          };
          await s.recordStatus("f", "d1", degraded, 2001);
          assert.deepEqual((await s.device("f", "d1"))?.model, {
            version: "1",
            kind: "int8-static",
            rejectedAtStart,
          });
          assert.deepEqual((await s.devices("f"))[0]?.model?.rejectedAtStart, rejectedAtStart);
          // The same version serves: no model change.
          assert.equal((await s.modelHistory("f", "d1")).length, 1);
          await s.recordStatus("f", "d1", online(3000, "2"), 3001);
          assert.deepEqual((await s.device("f", "d1"))?.model, { version: "2", kind: "int8-static" });
        });
      },
    );

    t.test("devices are listed per fleet in name order", async () => {
      await withStore(async (s) => {
        await s.recordStatus("f", "b", { ...online(1), device: "b" }, 1);
        await s.recordStatus("f", "a", { ...online(1), device: "a" }, 1);
        await s.recordStatus("g", "c", { ...online(1), device: "c" }, 1);
        assert.deepEqual(
          (await s.devices("f")).map((d) => d.device),
          ["a", "b"],
        );
        assert.deepEqual(
          (await s.devices()).map((d) => `${d.fleet}/${d.device}`),
          ["f/a", "f/b", "g/c"],
        );
      });
    });

    t.test("telemetry keeps every sample, the latest on the device, and prunes by time", async () => {
      await withStore(async (s) => {
        const samples = [1000, 2000, 3000].map((at) => ({ at, rssBytes: at * 10 }));
        await s.recordTelemetry([
          {
            fleet: "f",
            device: "d1",
            msg: { device: "d1", at: 3000, samples, outbox: { queued: 2, bytes: 9, dropped: 1 } },
            receivedAt: 3001,
          },
        ]);
        const d = await s.device("f", "d1");
        assert.deepEqual(d?.lastTelemetry, { at: 3000, rssBytes: 30000 });
        assert.deepEqual(d?.outbox, { queued: 2, bytes: 9, dropped: 1 });
        assert.deepEqual(
          (await s.telemetry("f", "d1", 2000)).map((x) => x.at),
          [2000, 3000],
        );
        assert.equal(await s.pruneTelemetry(2500), 2);
        assert.deepEqual(
          (await s.telemetry("f", "d1", 0)).map((x) => x.at),
          [3000],
        );
      });
    });

    t.test(
      "a group of telemetry messages from several devices lands in one call; the newest per device wins",
      async () => {
        await withStore(async (s) => {
          const item = (device: string, at: number) => ({
            fleet: "f",
            device,
            msg: { device, at, samples: [{ at, rssBytes: at }], outbox: { queued: 0, bytes: 0, dropped: 0 } },
            receivedAt: at + 1,
          });
          await s.recordTelemetry([item("a", 10), item("b", 20), item("a", 30)]);
          assert.deepEqual(
            (await s.devices("f")).map((d) => [d.device, d.lastTelemetry?.at, d.lastSeen]),
            [
              ["a", 30, 31],
              ["b", 20, 21],
            ],
          );
          assert.deepEqual(
            (await s.telemetry("f", "a", 0)).map((x) => x.at),
            [10, 30],
          );
          await s.recordTelemetry([]);
        });
      },
    );

    t.test(
      "job progress never moves a job backwards; its report finishes it; duplicate reports are refused",
      async () => {
        await withStore(async (s) => {
          const job = (
            state: "QUEUED" | "IN_PROGRESS" | "SUCCEEDED",
            at: number,
            stage: string | null = null,
          ) => ({
            id: "j1",
            type: "recalibrate",
            state,
            stage,
            progress: 0.5,
            at,
          });
          await s.recordJob("f", "d1", job("IN_PROGRESS", 200, "calibrating"), 201);
          await s.recordJob("f", "d1", job("QUEUED", 100), 202);
          assert.equal((await s.job("f", "d1", "j1"))?.state, "IN_PROGRESS");
          assert.equal(await s.recordReport("f", "d1", report("j1", 300), 301), true);
          assert.equal(await s.recordReport("f", "d1", report("j1", 300), 302), false);
          await s.recordJob("f", "d1", job("IN_PROGRESS", 250, "late"), 303);
          const j = await s.job("f", "d1", "j1");
          assert.equal(j?.state, "SUCCEEDED");
          assert.deepEqual(j?.result, { agreement: 0.99 });
          assert.equal(j?.progress, 1);
          assert.equal((await s.reports("f", "d1")).length, 1);
          assert.equal((await s.device("f", "d1"))?.lastReport?.id, "j1");
          assert.deepEqual(
            (await s.jobs("f")).map((x) => x.id),
            ["j1"],
          );
        });
      },
    );

    t.test("enrolments: an operator's key replaces a proposal; a proposal never replaces a key", async () => {
      await withStore(async (s) => {
        assert.equal(await s.enrolment("f", "d1"), undefined);
        assert.equal(await s.proposeEnrolment("f", "d1", "key-a", 10), true);
        assert.equal(await s.proposeEnrolment("f", "d1", "key-b", 11), false);
        assert.deepEqual(await s.enrolment("f", "d1"), {
          fleet: "f",
          device: "d1",
          publicKey: "key-a",
          state: "pending",
          at: 10,
        });
        await s.enroll("f", "d1", "key-c", 12);
        assert.equal(await s.proposeEnrolment("f", "d1", "key-d", 13), false);
        assert.equal((await s.enrolment("f", "d1"))?.publicKey, "key-c");
        assert.equal((await s.enrolment("f", "d1"))?.state, "enrolled");
        await s.proposeEnrolment("f", "d2", "key-e", 14);
        assert.deepEqual(
          (await s.enrolments("pending")).map((e) => e.device),
          ["d2"],
        );
        assert.equal((await s.enrolments()).length, 2);
        assert.equal(await s.removeEnrolment("f", "d2"), true);
        assert.equal(await s.removeEnrolment("f", "d2"), false);
        assert.deepEqual(
          (await s.enrolments()).map((e) => e.device),
          ["d1"],
        );
      });
    });

    t.test("releases: recorded once by id, newest first, manifest bytes kept exactly", async () => {
      await withStore(async (s) => {
        const rel = (id: string, createdAt: number) => ({
          id,
          version: `v-${id.slice(0, 2)}`,
          task: "text-classification",
          notes: "ünïcode notes",
          bytes: 5_000_000_000,
          createdAt,
          manifest: `{\n  "schema": "quantd-release-v1", "id": "${id}"\n}\n`,
          signature: { kid: "0123456789abcdef", sig: "c2ln" },
        });
        const a = rel("a".repeat(64), 10);
        assert.equal(await s.addRelease(a), true);
        assert.equal(await s.addRelease({ ...a, notes: "other" }), false);
        assert.equal(await s.addRelease(rel("b".repeat(64), 20)), true);
        assert.deepEqual(await s.release(a.id), a);
        assert.equal(await s.release("c".repeat(64)), undefined);
        assert.deepEqual(
          (await s.releases()).map((r) => r.createdAt),
          [20, 10],
        );
        assert.equal((await s.releases(1)).length, 1);
      });
    });

    t.test("rollouts: saved only over the revision read, so two writers never lose a change", async () => {
      await withStore(async (s) => {
        const r = {
          id: "r1",
          fleet: "f",
          release: "a".repeat(64),
          state: "running",
          createdAt: 1,
          updatedAt: 1,
          body: { wave: 0, devices: { d1: "pending" } },
        };
        assert.equal(await s.saveRollout(r, 0), true);
        assert.equal(await s.saveRollout(r, 0), false);
        const first = await s.rollout("r1");
        assert.equal(first?.revision, 1);
        assert.deepEqual(first?.body, r.body);
        // Two writers read revision 1; only the first save lands.
        assert.equal(await s.saveRollout({ ...r, state: "paused", updatedAt: 2 }, 1), true);
        assert.equal(await s.saveRollout({ ...r, state: "halted", updatedAt: 3 }, 1), false);
        const now = await s.rollout("r1");
        assert.equal(now?.state, "paused");
        assert.equal(now?.revision, 2);
        await s.saveRollout({ ...r, id: "r2", createdAt: 5, state: "completed" }, 0);
        assert.deepEqual(
          (await s.rollouts()).map((x) => x.id),
          ["r2", "r1"],
        );
        assert.deepEqual(
          (await s.rollouts(["running", "paused"])).map((x) => x.id),
          ["r1"],
        );
        assert.equal(await s.rollout("nope"), undefined);
      });
    });

    t.test(
      "a report without progress messages still creates the job; the newest report is the device's last",
      async () => {
        await withStore(async (s) => {
          await s.recordReport("f", "d1", report("a", 100), 101);
          await s.recordReport("f", "d1", report("b", 300, "REJECTED"), 301);
          await s.recordReport("f", "d1", report("c", 200), 302);
          assert.equal((await s.device("f", "d1"))?.lastReport?.id, "b");
          assert.equal((await s.job("f", "d1", "b"))?.state, "REJECTED");
          assert.deepEqual(
            (await s.reports("f", "d1", 2)).map((r) => r.id),
            ["c", "b"],
          );
          assert.equal((await s.report("f", "d1", "b"))?.state, "REJECTED");
          assert.equal(await s.report("f", "d1", "nope"), undefined);
          assert.equal(await s.report("f", "d2", "b"), undefined);
        });
      },
    );
  });
}
