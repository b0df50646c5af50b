/**
 * A damaged database never stops the agent from serving the model it served:
 * an empty file, a bad header, a truncated file and damaged middle pages are
 * each moved aside (kept, and logged), a fresh database is created, and the
 * model files on disk are registered again with the same one active. And the
 * state directory and database lose any permission beyond 0750 / 0640 at start.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  closeSync,
  cpSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { startAgent } from "../../src/agent/agent.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { databasePath } from "../../src/store/store.ts";
import { shippedModelPath } from "../helpers/paths.ts";
import { call, classifyOverSocket, TEXTS, tempDir, testConfig } from "./agent-harness.ts";

let dir: string;
/** A state directory whose store has a promoted version 2 active and a few thousand samples. */
let template: string;
let activeSha: string;

beforeAll(async () => {
  dir = tempDir();
  const variant = join(dir, "variant.onnx");
  const model = await loadModel(shippedModelPath);
  model.docString = "the promoted variant";
  await saveModel(model, variant);
  const config = testConfig(join(dir, "template"));
  template = config.stateDir;
  const agent = await startAgent(config, { runJobs: false });
  try {
    const r = await call(config.socketPath, "/v1/models/promote", {
      body: JSON.stringify({ path: variant }),
    });
    expect(r.status).toBe(200);
    activeSha = agent.registry.active()!.sha256;
    // Enough rows for the samples table to span many pages.
    agent.store.samples.add(
      Array.from({ length: 3000 }, (_, i) => ({ text: `sample number ${i}: ${TEXTS[i % TEXTS.length]}` })),
      { source: "file" },
    );
  } finally {
    await agent.stop();
  }
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Overwrites `length` bytes at `offset` with a repeating junk byte. */
function scribble(path: string, offset: number, length: number): void {
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, Buffer.alloc(length, 0xa5), 0, length, offset);
  } finally {
    closeSync(fd);
  }
}

/** A damage, and what the log must name as its reason. */
const damages: [string, string, (db: string) => void][] = [
  ["a zero-length file", "0 bytes", (db) => truncateSync(db, 0)],
  ["a bad header", "not a database", (db) => scribble(db, 0, 100)],
  ["a truncated file", "malformed", (db) => truncateSync(db, Math.floor(statSync(db).size / 3))],
  [
    "damaged middle pages",
    "quick_check",
    (db) => {
      const size = statSync(db).size;
      // Pages in the last half hold sample rows that opening and migrating never read: the file opens
      // and only quick_check finds the damage.
      const page = 4096;
      const first = Math.floor(size / page / 2);
      scribble(db, first * page, size - first * page - page);
    },
  ],
];

describe("a damaged database at start", () => {
  for (const [name, reason, damage] of damages) {
    test(`${name}: moved aside and logged, a fresh store, the same model keeps serving`, async () => {
      const caseDir = join(dir, name.replace(/\W+/g, "-"));
      const config = testConfig(caseDir);
      cpSync(template, config.stateDir, { recursive: true });
      damage(databasePath(config.stateDir));
      const logs: string[] = [];
      const agent = await startAgent(config, { runJobs: false, log: (l) => logs.push(l) });
      try {
        expect(logs.join("\n")).toContain("store: the database was damaged");
        expect(logs.find((l) => l.startsWith("store: the database was damaged"))).toContain(reason);
        const aside = readdirSync(config.stateDir).filter((n) => n.startsWith("quantd.db.corrupt-"));
        expect(aside.filter((n) => !n.endsWith("-wal"))).toHaveLength(1);
        expect(logs.join("\n")).toContain(aside[0]!);
        expect(agent.registry.active()?.sha256).toBe(activeSha);
        const r = await classifyOverSocket(config.socketPath, ["still the same model"]);
        expect(r.status).toBe(200);
        // Both files are registered again: the promoted one active, the initial one to roll back to.
        expect(agent.store.models.list().map((v) => v.state)).toEqual(["active", "retired"]);
        expect(agent.store.samples.count()).toBe(0);
      } finally {
        await agent.stop();
      }
      // The next start opens the fresh database as it is: nothing more is moved aside.
      const again = await startAgent(config, { runJobs: false });
      try {
        expect(again.registry.active()?.sha256).toBe(activeSha);
        expect(
          readdirSync(config.stateDir).filter(
            (n) => n.startsWith("quantd.db.corrupt-") && !n.endsWith("-wal"),
          ),
        ).toHaveLength(1);
      } finally {
        await again.stop();
      }
    }, 60_000);
  }
});

test("an intact database is not touched; a world-readable state dir and database are made private", async () => {
  const config = testConfig(join(dir, "modes"));
  cpSync(template, config.stateDir, { recursive: true });
  chmodSync(config.stateDir, 0o777);
  chmodSync(databasePath(config.stateDir), 0o666);
  writeFileSync(`${databasePath(config.stateDir)}-wal`, "");
  chmodSync(`${databasePath(config.stateDir)}-wal`, 0o644);
  const logs: string[] = [];
  const agent = await startAgent(config, { runJobs: false, log: (l) => logs.push(l) });
  try {
    expect(statSync(config.stateDir).mode & 0o777).toBe(0o750);
    expect(statSync(databasePath(config.stateDir)).mode & 0o777).toBe(0o640);
    expect(statSync(`${databasePath(config.stateDir)}-wal`).mode & 0o777).toBe(0o640);
    expect(logs.join("\n")).toContain("was mode 777; now 750");
    expect(logs.join("\n")).not.toContain("damaged");
    expect(agent.store.samples.count()).toBe(1000);
    expect(agent.registry.active()?.sha256).toBe(activeSha);
  } finally {
    await agent.stop();
  }
});
