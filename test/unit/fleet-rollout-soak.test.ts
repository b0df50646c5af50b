/**
 * The soak clock of a rollout's wave stops while an operator has the rollout
 * paused: the engine judges nothing then, so a pause during a soak extends
 * the soak by the pause's length. Driven by the real engine over a SQLite
 * store with a clock of the test's own; no command is sent (the wave's device
 * has already succeeded), so the engine's broker is never reached.
 */
import { afterEach, expect, test } from "bun:test";
import { changeRollout, createRollout, findRollout } from "../../src/fleet/controller/rollout.ts";
import { type RolloutEngine, startRolloutEngine } from "../../src/fleet/controller/rollout-engine.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import { operator } from "../helpers/fleet-keys.ts";

const T0 = 1_700_000_000_000;
const SOAK_MS = 60_000;

let store: FleetStore | undefined;
let engine: RolloutEngine | undefined;
afterEach(async () => {
  await engine?.stop();
  await store?.close();
  engine = undefined;
  store = undefined;
});

/** A one-device fleet whose single wave has succeeded: the engine's next pass starts its soak. */
async function succeededWave(s: FleetStore): Promise<string> {
  await s.recordStatus("lab", "d1", { state: "online", fleet: "lab", device: "d1", at: T0 }, T0);
  await s.addRelease({
    id: "a".repeat(64),
    version: "v2",
    task: "text-classification",
    notes: "",
    bytes: 10,
    createdAt: T0,
    manifest: "{}",
    signature: { kid: "0123456789abcdef", sig: "c2ln" },
  });
  const r = await createRollout(s, {
    release: "a".repeat(64),
    fleet: "lab",
    waves: [100],
    gate: {},
    soakMs: SOAK_MS,
    pendingExpiryMs: 3_600_000,
    now: T0,
  });
  const body = structuredClone(r.body);
  body.waves[0]!.state = "running";
  body.waves[0]!.startedAt = T0;
  Object.assign(body.devices.d1!, { state: "succeeded", sentAt: T0, finishedAt: T0, promoted: true });
  expect(await s.saveRollout({ ...r, body }, r.revision)).toBe(true);
  return r.id;
}

test("a pause during a wave's soak extends the soak by the pause's length", async () => {
  store = await openSqliteFleetStore(":memory:");
  const id = await succeededWave(store);
  let clock = T0;
  engine = startRolloutEngine({
    store,
    connect: { url: "mqtt://127.0.0.1:1", clientId: "soak-test", reconnectPeriodMs: 0 },
    signer: operator,
    releaseUrl: "http://127.0.0.1:1/",
    tickMs: 3_600_000,
    now: () => clock,
  });
  const wave = async () => (await findRollout(store!, id)).body.waves[0]!;

  clock = T0 + 1000;
  await engine.tick();
  expect((await wave()).state).toBe("soaking");
  expect((await wave()).soakSince).toBe(T0 + 1000);

  await changeRollout(store, id, "pause", T0 + 11_000);
  clock = T0 + 41_000;
  // Paused: the engine does not judge it, so nothing passes however long it stays paused.
  await engine.tick();
  expect((await wave()).state).toBe("soaking");
  await changeRollout(store, id, "resume", T0 + 41_000);
  expect((await wave()).soakSince).toBe(T0 + 31_000);

  // 61 s after the soak began, but only 31 s of it unpaused: still soaking.
  clock = T0 + 62_000;
  await engine.tick();
  expect((await wave()).state).toBe("soaking");
  // The full soak has now run outside the pause.
  clock = T0 + 91_000;
  await engine.tick();
  expect((await wave()).state).toBe("passed");
  expect((await findRollout(store, id)).body.pausedAt).toBeUndefined();
});

test("a pause before the soak leaves the soak whole and a pause outside a soak changes no clock", async () => {
  store = await openSqliteFleetStore(":memory:");
  const id = await succeededWave(store);
  await changeRollout(store, id, "pause", T0 + 1000);
  const r = await changeRollout(store, id, "resume", T0 + 500_000);
  expect(r.body.waves[0]!.soakSince).toBeUndefined();
  expect(r.body.pausedAt).toBeUndefined();
  expect(r.state).toBe("running");
});
