/**
 * The store contract on better-sqlite3, for Node's own runner. Not run by
 * `bun test` directly (better-sqlite3 does not load under Bun): the test
 * `test/integration/store-node.test.ts` bundles this file for Node and runs it
 * with `node --test`.
 */
import { describe, test } from "node:test";
import { openNodeSqlite } from "../../src/store/sqlite/node.ts";
import { runAllStoreContracts } from "../contracts/store.contract.ts";

runAllStoreContracts(
  {
    describe: (name, fn) => describe(name, fn),
    test: (name, fn) => test(name, async () => await fn()),
  },
  { name: "better-sqlite3", opener: openNodeSqlite, runtimeDriver: "better-sqlite3" },
);
