/**
 * A rollout over real boards on this machine. Prints, never asserts:
 *
 * 1. Time from `rollout start` to the last device serving the release's int8
 *    model, for N `quantd agent` processes (BERT-Mini, their own samples)
 *    behind a real mosquitto and a controller driving waves 1,10,50,100%,
 *    with each device's stage times; one device is `kill -9`ed a third of the
 *    way through its download and started again.
 * 2. Bytes each device downloaded against the release's size (the device's own
 *    count, over all attempts), and what the release proxy sent in all.
 * 3. A release whose canary fails its gate (`agreement=99.99`: the device
 *    rejects its int8): devices serving it at the end.
 *
 * Release files go through a proxy that paces each download to --mbps MB/s
 * (a board on a site network, and slow enough to be interrupted).
 *
 *   bun bench/rollout.ts [--agents 5] [--mbps 8] [--soak 2s]
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { releaseOf } from "../src/agent/release.ts";
import { startController } from "../src/fleet/controller/controller.ts";
import { startDashboard } from "../src/fleet/controller/http.ts";
import { publishRelease } from "../src/fleet/controller/release-routes.ts";
import { createRollout, findRollout, parseDuration, type Rollout } from "../src/fleet/controller/rollout.ts";
import { startRolloutEngine } from "../src/fleet/controller/rollout-engine.ts";
import { openSqliteFleetStore } from "../src/fleet/controller/sqlite-store.ts";
import { buildRelease, releaseBytes, type SignedRelease } from "../src/fleet/release.ts";
import { writeNewSigningKey } from "../src/fleet/signing.ts";
import {
  type AgentProcess,
  seedSamples,
  spawnAgent,
  startReleaseProxy,
} from "../test/helpers/fleet-agents.ts";
import { enroll, operator } from "../test/helpers/fleet-keys.ts";
import { startMosquitto } from "../test/helpers/mosquitto.ts";
import { writeRetrainedModel } from "../test/helpers/release-fixtures.ts";

const arg = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
};
const AGENTS = Number(arg("agents", "5"));
const MBPS = Number(arg("mbps", "8"));
const SOAK_MS = parseDuration(arg("soak", "2s"), "soak");
const FLEET = "bench";

const dir = mkdtempSync(join(tmpdir(), "quantd-bench-rollout-"));
const broker = await startMosquitto();
const store = await openSqliteFleetStore(join(dir, "fleet.db"));
const controller = startController({ broker: broker.url, store, clientId: "bench-controller" });
const dashboard = startDashboard(controller, "127.0.0.1:0", { releasesDir: join(dir, "releases") });
const proxy = startReleaseProxy(dashboard.url, MBPS * 1024 * 1024);
const engine = startRolloutEngine({
  store,
  connect: { url: broker.url, clientId: "bench-rollouts" },
  signer: operator,
  releaseUrl: proxy.url,
  tickMs: 250,
});
const releaseKey = writeNewSigningKey(join(dir, "release.key"));
const names = Array.from({ length: AGENTS }, (_, i) => `board-${i + 1}`);
const agents = new Map<string, AgentProcess>();
const options = (name: string) => ({
  dir,
  name,
  broker: broker.url,
  fleet: FLEET,
  operatorKey: operator.publicKey,
  releaseKey: releaseKey.publicKey,
  deviceKeyFile: join(dir, `${name}.key`),
});

/** The release the board's serving version came from, asked over its socket (`GET /v1/models`). */
const servingRelease = async (name: string): Promise<string | undefined> => {
  const res = await fetch("http://localhost/v1/models", { unix: agents.get(name)!.socket }).catch(
    () => undefined,
  );
  if (res === undefined || !res.ok) return undefined;
  const body = (await res.json()) as { versions: { state: string; metrics: Record<string, unknown> }[] };
  const list = body.versions;
  return releaseOf(list.find((v) => v.state === "active")?.metrics)?.id;
};

const waitFor = async (id: string, pred: (r: Rollout) => boolean, ms: number): Promise<Rollout> => {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await findRollout(store, id);
    if (pred(r)) return r;
    if (Date.now() > deadline) throw new Error(`rollout ${id}: ${JSON.stringify(r.body.events.slice(-5))}`);
    await Bun.sleep(200);
  }
};

const publish = async (name: string, shift: number): Promise<SignedRelease> => {
  const src = await writeRetrainedModel(join(dir, name), shift);
  const rel = await buildRelease(src, { key: releaseKey, version: name });
  await publishRelease(store, join(dir, "releases"), src, rel);
  return rel;
};

try {
  await enroll(
    store,
    FLEET,
    names.map((n) => [n, writeNewSigningKey(join(dir, `${n}.key`)).publicKey] as [string, string]),
  );
  for (const n of names) {
    mkdirSync(join(dir, n), { recursive: true });
    await seedSamples(join(dir, n, "state"));
    agents.set(n, spawnAgent(options(n)));
  }
  const t0 = Date.now();
  while ((await store.devices(FLEET)).filter((d) => d.online).length < AGENTS) {
    if (Date.now() - t0 > 120_000) throw new Error("agents did not come online");
    await Bun.sleep(200);
  }
  console.error(`${AGENTS} agents online in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // ---- 1 and 2: a good release; the last board is killed mid-download and started again
  const good = await publish("v2", 0.05);
  const total = releaseBytes(good.manifest);
  const model = good.manifest.files.find((f) => f.path === "model.onnx")!;
  const victim = names.at(-1)!;
  const start = Date.now();
  const r = await createRollout(store, {
    release: good.id,
    fleet: FLEET,
    waves: [1, 10, 50, 100],
    gate: { agreement: 90, latencyRatio: 3 },
    soakMs: SOAK_MS,
    pendingExpiryMs: 3_600_000,
    samples: 32,
  });
  const partial = join(agents.get(victim)!.stateDir, "releases", `${good.id}.part`, "model.onnx");
  while (!(existsSync(partial) && statSync(partial).size > model.size / 3)) {
    if (Date.now() - start > 600_000) throw new Error(`${victim} never downloaded a third of the model`);
    await Bun.sleep(50);
  }
  agents.get(victim)!.proc.kill("SIGKILL");
  await agents.get(victim)!.proc.exited;
  const killedAt = statSync(partial).size;
  agents.set(victim, spawnAgent(options(victim)));
  const done = await waitFor(r.id, (x) => x.state !== "running", 1_200_000);
  const elapsed = (Date.now() - start) / 1000;

  const rows: string[] = [];
  for (const n of names) {
    const job = await store.job(FLEET, n, done.body.devices[n]!.jobId);
    const res = (job?.result ?? {}) as {
      download?: { bytes: number; attempts: number; ms?: number };
      stageMs?: Record<string, number>;
    };
    const stages = Object.entries({ download: res.download?.ms ?? 0, ...res.stageMs })
      .map(([k, v]) => `${k} ${(v / 1000).toFixed(1)}`)
      .join(", ");
    rows.push(
      `| ${n} | ${done.body.devices[n]!.wave + 1} | ${done.body.devices[n]!.state} | ${res.download?.bytes ?? "-"} | ${
        res.download === undefined ? "-" : (res.download.bytes / total).toFixed(3)
      } | ${res.download?.attempts ?? "-"} | ${stages} |`,
    );
  }
  const servingGood = (await Promise.all(names.map(servingRelease))).filter((x) => x === good.id).length;
  const servedForGood = proxy.servedBytes;

  // ---- 3: a release that fails its gate on the canary
  const bad = await publish("v3", -0.04);
  const r2 = await createRollout(store, {
    release: bad.id,
    fleet: FLEET,
    waves: [1, 10, 50, 100],
    gate: { agreement: 99.99, latencyRatio: 3 },
    soakMs: SOAK_MS,
    pendingExpiryMs: 3_600_000,
    samples: 32,
  });
  const halted = await waitFor(r2.id, (x) => x.state !== "running", 600_000);
  const servingBad = (await Promise.all(names.map(servingRelease))).filter((x) => x === bad.id).length;

  const lines = [
    `## Rollout of a release over ${AGENTS} boards (${new Date().toISOString().slice(0, 10)})`,
    "",
    `\`bun bench/rollout.ts --agents ${AGENTS} --mbps ${MBPS} --soak ${SOAK_MS / 1000}s\`: ${AGENTS} \`quantd agent\` processes (BERT-Mini fp32, 300 samples each), one mosquitto, one controller; waves 1,10,50,100 %, gate agreement=90,latencyRatio=3, release files paced to ${MBPS} MB/s per download; \`${victim}\` killed with SIGKILL at ${killedAt} of ${model.size} model bytes and started again.`,
    "",
    `- rollout start → last device serving the int8 of the release: **${elapsed.toFixed(1)} s** (${done.state}; ${servingGood} of ${AGENTS} serving it)`,
    `- release size ${total} bytes; for it the proxy sent ${servedForGood} bytes to ${AGENTS} devices (${(servedForGood / total / AGENTS).toFixed(3)} × the release per device, the killed one included)`,
    `- a release failing its gate on the canary (agreement=99.99): rollout ${halted.state} (${halted.body.haltReason ?? "-"}); devices serving it: **${servingBad}**`,
    "",
    "| device | wave | state | bytes downloaded | × release | attempts | stage seconds |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...rows,
    "",
  ];
  console.log(lines.join("\n"));
  const out = resolve(import.meta.dir, "results/rollout.md");
  writeFileSync(out, `${lines.join("\n")}`);
  console.error(`written to ${out}`);
} finally {
  for (const a of agents.values()) a.proc.kill("SIGKILL");
  await engine.stop();
  proxy.stop();
  dashboard.stop();
  await controller.stop();
  await store.close();
  await broker.dispose();
  rmSync(dir, { recursive: true, force: true });
}
