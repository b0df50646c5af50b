import { expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runQuantd } from "../helpers/run-cli.ts";

async function classifyWithHome(home: string, extraEnv: Record<string, string> = {}): Promise<number> {
  const env: Record<string, string> = {
    PATH: process.env["PATH"] ?? "/usr/bin:/bin",
    HOME: home,
    ...extraEnv,
  };
  return (await runQuantd(["classify", "a fine film"], { env })).code;
}

test("onnxruntime writes no telemetry database unless the user asks for it", async () => {
  const home = mkdtempSync(join(tmpdir(), "quantd-home-"));
  const store = join(home, ".cache/Microsoft/DeveloperTools/.onnxruntime");
  try {
    expect(await classifyWithHome(home)).toBe(0);
    expect(existsSync(store)).toBe(false);
    // The user's explicit choice wins, which also shows this test can see the database.
    expect(await classifyWithHome(home, { ORT_DISABLE_TELEMETRY: "0" })).toBe(0);
    expect(existsSync(store)).toBe(true);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}, 60_000);
