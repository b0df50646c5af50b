/**
 * The store contracts (agent store, controller FleetStore) on better-sqlite3 under a real Node process, so that
 * `bun test` covers both drivers. better-sqlite3 cannot load under Bun, so
 * `test/node/store-node.entry.ts` is bundled for Node (the drivers kept
 * external, adapters in lazily loaded chunks) and run with `node --test`; this
 * test asserts every contract test ran and passed there.
 */
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runFleetStoreContract } from "../contracts/fleet-store.contract.ts";
import { runAllStoreContracts } from "../contracts/store.contract.ts";
import { repoRoot } from "../helpers/paths.ts";

/** How many tests the contracts register, counted by registering them with a counting runner. */
function contractTestCount(): number {
  let n = 0;
  const counting = {
    describe: (_name: string, fn: () => void) => fn(),
    test: () => {
      n++;
    },
  };
  runAllStoreContracts(counting, { name: "count", opener: () => undefined as never, runtimeDriver: "" });
  runFleetStoreContract(counting, "count", () => undefined as never);
  return n;
}

function tapCount(output: string, key: string): number | undefined {
  const m = new RegExp(`^# ${key} (\\d+)$`, "m").exec(output);
  return m === null ? undefined : Number(m[1]);
}

test("store contracts pass on better-sqlite3 under node --test", async () => {
  const addon = join(repoRoot, "node_modules/better-sqlite3/build/Release/better_sqlite3.node");
  expect(
    existsSync(addon),
    `better-sqlite3 addon not built (${addon}); run scripts/build-node-sqlite.sh`,
  ).toBe(true);

  const dir = mkdtempSync(join(tmpdir(), "quantd-store-node-"));
  try {
    const built = await Bun.build({
      entrypoints: [join(repoRoot, "test/node/store-node.entry.ts")],
      outdir: dir,
      target: "node",
      // Each adapter becomes its own chunk, imported only when open.ts picks it,
      // so Node never loads the bun:sqlite one.
      splitting: true,
      external: ["better-sqlite3", "bun:sqlite"],
    });
    expect(built.success, built.logs.map(String).join("\n")).toBe(true);
    // The bundle lives outside the repository; let Node resolve better-sqlite3 from it.
    symlinkSync(join(repoRoot, "node_modules"), join(dir, "node_modules"), "dir");

    const run = spawnSync("node", ["--test", "--test-reporter=tap", join(dir, "store-node.entry.js")], {
      cwd: dir,
      encoding: "utf8",
      timeout: 120_000,
    });
    const output = `${run.stdout ?? ""}${run.stderr ?? ""}`;
    const pass = tapCount(output, "pass");
    const fail = tapCount(output, "fail");
    const expected = contractTestCount();
    console.log(`node --test on better-sqlite3: ${pass} pass, ${fail} fail of ${expected}`);
    if (run.status !== 0 || fail !== 0) console.log(output.slice(-8000));
    expect(run.error).toBeUndefined();
    expect(fail).toBe(0);
    expect(pass).toBe(expected);
    expect(run.status).toBe(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 180_000);
