/**
 * Releases end to end on the controller's side: `quantd fleet release create`
 * packs and signs a model directory into the store and the releases
 * directory; a real controller's HTTP server serves the manifest and the
 * files with range requests; a device's check refuses a manifest signed by
 * an unknown key or changed after signing.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type FleetController, startController } from "../../src/fleet/controller/controller.ts";
import { type Dashboard, startDashboard } from "../../src/fleet/controller/http.ts";
import { openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import { releaseId, verifyRelease } from "../../src/fleet/release.ts";
import { writeNewSigningKey } from "../../src/fleet/signing.ts";
import { codeOf } from "../helpers/error-code.ts";
import { hasMosquitto, type Mosquitto, mosquittoSkipReason, startMosquitto } from "../helpers/mosquitto.ts";
import { shippedModelDir } from "../helpers/paths.ts";
import { runQuantd } from "../helpers/run-cli.ts";
import { tempDir } from "./agent-harness.ts";

if (!hasMosquitto) console.warn(mosquittoSkipReason);

const dir = tempDir("quantd-release-");
const modelDir = join(dir, "model-v2");
const releasesDir = join(dir, "releases");
const db = join(dir, "fleet.db");
const keyFile = join(dir, "release.key");
const releaseKey = writeNewSigningKey(keyFile);
mkdirSync(modelDir);
for (const f of ["model.onnx", "tokenizer.json", "config.json"]) {
  copyFileSync(join(shippedModelDir, f), join(modelDir, f));
}
writeFileSync(join(modelDir, "validation.tsv"), "sentence\tlabel\na fine film\t1\na dull film\t0\n");

const sha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("quantd fleet release create", () => {
  test("packs, signs and stores a model directory; the id is the manifest's SHA-256", async () => {
    const args = ["fleet", "release", "create", modelDir, "--release-key", keyFile, "--version", "v2"];
    const where = ["--db", db, "--releases-dir", releasesDir];
    const r = await runQuantd([...args, "--notes", "retrained on March data", ...where, "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { id: string; added: boolean; manifest: Record<string, unknown> };
    expect(out.added).toBe(true);
    expect(out.manifest.validation).toBe("validation.tsv");
    expect(out.manifest.labels).toEqual(["negative", "positive"]);
    const files = out.manifest.files as { path: string; sha256: string; size: number }[];
    expect(files.map((f) => f.path)).toEqual([
      "config.json",
      "model.onnx",
      "tokenizer.json",
      "validation.tsv",
    ]);
    const model = readFileSync(join(releasesDir, out.id, "model.onnx"));
    expect(files.find((f) => f.path === "model.onnx")).toEqual({
      path: "model.onnx",
      sha256: sha(model),
      size: model.byteLength,
    });
    const store = await openSqliteFleetStore(db);
    try {
      const rec = await store.release(out.id);
      expect(rec?.version).toBe("v2");
      expect(releaseId(rec!.manifest)).toBe(out.id);
      expect(
        verifyRelease([releaseKey.publicKey], rec!.manifest, rec!.signature, out.id).manifest.notes,
      ).toBe("retrained on March data");
    } finally {
      await store.close();
    }
    const list = await runQuantd(["fleet", "release", "list", "--db", db]);
    expect(list.stdout).toContain(out.id.slice(0, 16));
    expect(list.stdout).toContain("v2");
  });

  test("refuses a directory without a model, a subdirectory, and a missing key", async () => {
    const empty = join(dir, "empty");
    mkdirSync(join(empty, "sub"), { recursive: true });
    const base = [
      "fleet",
      "release",
      "create",
      empty,
      "--version",
      "x",
      "--db",
      db,
      "--releases-dir",
      releasesDir,
    ];
    const noModel = await runQuantd([...base, "--release-key", keyFile]);
    expect(noModel.code).toBe(1);
    expect(noModel.stderr).toContain("FILE_NOT_FOUND");
    writeFileSync(join(empty, "model.onnx"), "x");
    const sub = await runQuantd([...base, "--release-key", keyFile]);
    expect(sub.stderr).toContain("not a regular file");
    const noKey = await runQuantd(base, { env: { ...process.env, QUANTD_RELEASE_KEY_FILE: "" } });
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain("--release-key");
  });
});

describe("quantd fleet rollout", () => {
  test("start plans canary-first waves over the fleet's devices; status, pause, resume and abort change the store", async () => {
    const store = await openSqliteFleetStore(db);
    const [rec] = await store.releases();
    for (const d of ["pi-1", "pi-2", "pi-3", "pi-4", "pi-5"]) {
      await store.recordStatus("plant", d, { state: "online", fleet: "plant", device: d, at: 1 }, 2);
    }
    await store.close();
    const base = ["fleet", "rollout"];
    const where = ["--db", db, "--fleet", "plant"];
    const bad = await runQuantd([...base, "start", "v2", ...where, "--waves", "50,10"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--waves must grow");
    const badGate = await runQuantd([...base, "start", "v2", ...where, "--gate", "agreement=150"]);
    expect(badGate.stderr).toContain("--gate takes");
    const started = await runQuantd([
      ...base,
      "start",
      "v2",
      ...where,
      "--gate",
      "agreement=99.5,latencyRatio=1.1,errorRate=0.01",
      "--soak",
      "10m",
      "--json",
    ]);
    expect(started.code).toBe(0);
    const r = JSON.parse(started.stdout) as {
      id: string;
      release: string;
      state: string;
      body: { waves: { devices: string[] }[]; spec: Record<string, unknown> };
    };
    expect(r.release).toBe(rec!.id);
    expect(r.state).toBe("running");
    expect(r.body.waves.map((w) => w.devices)).toEqual([["pi-1"], ["pi-2"], ["pi-3"], ["pi-4", "pi-5"]]);
    expect(r.body.spec).toMatchObject({
      gate: { agreement: 99.5, latencyRatio: 1.1, errorRate: 0.01 },
      soakMs: 600_000,
      pendingExpiryMs: 86_400_000,
    });
    const again = await runQuantd([...base, "start", rec!.id.slice(0, 12), ...where]);
    expect(again.stderr).toContain("STATE_CONFLICT");
    const status = await runQuantd([...base, "status", r.id, "--db", db]);
    expect(status.stdout).toContain(`rollout ${r.id}: release v2`);
    expect(status.stdout).toMatch(/1 waiting\s+pi-1\s+waiting/);
    const state = async (action: string): Promise<string> => {
      const out = await runQuantd([...base, action, r.id, "--db", db, "--json"]);
      // With --json an error is a JSON object on stdout too.
      return out.code === 0 ? (JSON.parse(out.stdout) as { state: string }).state : out.stdout + out.stderr;
    };
    expect(await state("resume")).toContain("STATE_CONFLICT");
    expect(await state("pause")).toBe("paused");
    expect(await state("resume")).toBe("running");
    expect(await state("abort")).toBe("aborted");
    expect(await state("abort")).toContain("STATE_CONFLICT");
  });
});

describe("a device's check of a release", () => {
  test("an unknown key, a changed manifest, no trusted key: refused before anything is read", async () => {
    const store = await openSqliteFleetStore(db);
    const [rec] = await store.releases();
    await store.close();
    const other = writeNewSigningKey(join(dir, "other.key"));
    const reason = (fn: () => unknown): unknown => {
      try {
        fn();
      } catch (err) {
        return (err as { details?: Record<string, unknown> }).details?.reason;
      }
      return "accepted";
    };
    expect(reason(() => verifyRelease([other.publicKey], rec!.manifest, rec!.signature))).toBe("unknown-key");
    const tampered = rec!.manifest.replace('"v2"', '"v3"');
    expect(reason(() => verifyRelease([releaseKey.publicKey], tampered, rec!.signature))).toBe(
      "bad-signature",
    );
    expect(reason(() => verifyRelease([releaseKey.publicKey], tampered, rec!.signature, rec!.id))).toBe(
      "id-mismatch",
    );
    expect(reason(() => verifyRelease([], rec!.manifest, rec!.signature))).toBe("no-release-keys");
    expect(reason(() => verifyRelease([releaseKey.publicKey], rec!.manifest, undefined))).toBe("unsigned");
    expect(codeOf(() => verifyRelease([other.publicKey], rec!.manifest, rec!.signature))).toBe(
      "COMMAND_UNAUTHORIZED",
    );
  });
});

describe.skipIf(!hasMosquitto)("the controller serves releases over HTTP", () => {
  let broker: Mosquitto;
  let store: FleetStore;
  let controller: FleetController;
  let dashboard: Dashboard;
  let id: string;

  beforeAll(async () => {
    broker = await startMosquitto();
    store = await openSqliteFleetStore(db);
    controller = startController({ broker: broker.url, store, clientId: "release-test" });
    dashboard = startDashboard(controller, "127.0.0.1:0", { releasesDir });
    id = (await store.releases())[0]!.id;
  });
  afterAll(async () => {
    dashboard.stop();
    await controller.stop();
    await store.close();
    await broker.stop();
  });

  test("the manifest's exact bytes and signature; files whole and by range", async () => {
    const rel = (await (await fetch(`${dashboard.url}releases/${id}`)).json()) as {
      manifest: string;
      signature: { kid: string; sig: string };
    };
    expect(releaseId(rel.manifest)).toBe(id);
    const url = `${dashboard.url}releases/${id}/files/model.onnx`;
    const model = readFileSync(join(modelDir, "model.onnx"));
    const whole = await fetch(url);
    expect(whole.headers.get("accept-ranges")).toBe("bytes");
    expect(sha(new Uint8Array(await whole.arrayBuffer()))).toBe(sha(model));
    const tail = await fetch(url, { headers: { range: "bytes=1000-" } });
    expect(tail.status).toBe(206);
    expect(tail.headers.get("content-range")).toBe(`bytes 1000-${model.byteLength - 1}/${model.byteLength}`);
    expect(sha(new Uint8Array(await tail.arrayBuffer()))).toBe(sha(model.subarray(1000)));
    const mid = await fetch(url, { headers: { range: "bytes=10-19" } });
    expect(new Uint8Array(await mid.arrayBuffer())).toEqual(new Uint8Array(model.subarray(10, 20)));
    const last = await fetch(url, { headers: { range: "bytes=-5" } });
    expect(new Uint8Array(await last.arrayBuffer())).toEqual(new Uint8Array(model.subarray(-5)));
    const past = await fetch(url, { headers: { range: `bytes=${model.byteLength}-` } });
    expect(past.status).toBe(416);
    expect(past.headers.get("content-range")).toBe(`bytes */${model.byteLength}`);
    expect((await fetch(`${dashboard.url}releases/${"0".repeat(64)}`)).status).toBe(404);
    expect((await fetch(`${dashboard.url}releases/${id}/files/..%2Ffleet.db`)).status).toBe(404);
    expect((await fetch(`${dashboard.url}releases/${id}/files/missing.bin`)).status).toBe(404);
    const listed = (await (await fetch(`${dashboard.url}api/releases`)).json()) as { id: string }[];
    expect(listed.map((r) => r.id)).toContain(id);
  });
});
