/**
 * The store contract on bun:sqlite, under `bun test`. The same suites run on
 * better-sqlite3 under Node in store-node.test.ts.
 */
import { describe, test } from "bun:test";
import { openBunSqlite } from "../../src/store/sqlite/bun.ts";
import { runAllStoreContracts } from "../contracts/store.contract.ts";

runAllStoreContracts(
  { describe: (name, fn) => describe(name, fn), test: (name, fn) => test(name, fn, 30_000) },
  { name: "bun:sqlite", opener: openBunSqlite, runtimeDriver: "bun:sqlite" },
);
