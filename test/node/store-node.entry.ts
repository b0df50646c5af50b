/**
 * The store contracts (the agent's store and the controller's SQLite
 * FleetStore) on better-sqlite3, for Node's own runner. Not run by
 * `bun test` directly (better-sqlite3 does not load under Bun): the test
 * `test/integration/store-node.test.ts` bundles this file for Node and runs it
 * with `node --test`.
 */
import { describe, test } from "node:test";
import { createSqliteFleetStore } from "../../src/fleet/controller/sqlite-store.ts";
import { openNodeSqlite } from "../../src/store/sqlite/node.ts";
import { runFleetStoreContract } from "../contracts/fleet-store.contract.ts";
import { runAllStoreContracts } from "../contracts/store.contract.ts";

const api = {
  describe: (name: string, fn: () => void) => describe(name, fn),
  test: (name: string, fn: () => void | Promise<void>) => test(name, async () => await fn()),
};

runAllStoreContracts(api, {
  name: "better-sqlite3",
  opener: openNodeSqlite,
  runtimeDriver: "better-sqlite3",
});
runFleetStoreContract(api, "SQLite, better-sqlite3", async () =>
  createSqliteFleetStore(openNodeSqlite(":memory:")),
);
