/**
 * The controller's SQLite FleetStore through the shared contract, plus its
 * file behaviour (reopen keeps state, migrations apply once).
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FLEET_MIGRATIONS, openSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import { runFleetStoreContract } from "../contracts/fleet-store.contract.ts";

runFleetStoreContract({ describe, test }, "SQLite, bun:sqlite", () => openSqliteFleetStore(":memory:"));

describe("SQLite FleetStore file", () => {
  test("reopening keeps devices and applies no migration twice", async () => {
    const dir = mkdtempSync(join(tmpdir(), "quantd-fleet-store-"));
    try {
      const path = join(dir, "controller.db");
      const a = await openSqliteFleetStore(path);
      await a.recordStatus("f", "d", { state: "online", fleet: "f", device: "d", at: 5 }, 6);
      await a.close();
      const b = await openSqliteFleetStore(path);
      expect((await b.devices()).map((d) => d.device)).toEqual(["d"]);
      expect(FLEET_MIGRATIONS.at(-1)?.version).toBe(4);
      await b.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
