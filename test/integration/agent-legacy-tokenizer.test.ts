/**
 * A version registered before each version kept its own tokenizer copy (no
 * `tokenizer` metric: a state directory from an earlier quantd) was served
 * with the agent's one tokenizer, the configured one. After the upgrade an
 * agent configured with that tokenizer still serves it, even when the
 * directory the version came from holds another tokenizer.json, and the CLI
 * counts the pool's tokens with it.
 */
import { afterAll, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startAgent } from "../../src/agent/agent.ts";
import { openAgentStore } from "../../src/cli/agent-state.ts";
import { loadTokenizer } from "../../src/runtime/tokenizer.ts";
import { shippedModelDir, shippedModelPath } from "../helpers/paths.ts";
import { classifyOverSocket, TEXTS, tempDir, testConfig } from "./agent-harness.ts";
import { forgetTokenizerCopies } from "./jobs-harness.ts";

const dir = tempDir("quantd-legacy-tok-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("a legacy version is served with the configured tokenizer, not the one beside its source", async () => {
  const source = join(dir, "model");
  mkdirSync(source);
  copyFileSync(shippedModelPath, join(source, "model.onnx"));
  // Beside the model, a tokenizer.json other than the configured one (an older export's, say).
  const other = readFileSync(join(shippedModelDir, "tokenizer.json"), "utf8").replace('"the":', '"thx":');
  writeFileSync(join(source, "tokenizer.json"), other);
  const configured = { QUANTD_TOKENIZER_DIR: shippedModelDir };
  const first = testConfig(dir, configured, { model: join(source, "model.onnx") });
  let agent = await startAgent(first);
  const before = await classifyOverSocket(first.socketPath, TEXTS.slice(0, 2));
  await agent.stop();
  // As an earlier quantd left it: no record of a tokenizer copy.
  await forgetTokenizerCopies(join(dir, "state"));
  const again = testConfig(dir, configured);
  agent = await startAgent(again);
  try {
    const after = await classifyOverSocket(again.socketPath, TEXTS.slice(0, 2));
    expect(after.status).toBe(200);
    expect(after.body["results"]).toEqual(before.body["results"]);
    expect(agent.registry.tokenizerDir()).toBe(shippedModelDir);
  } finally {
    await agent.stop();
  }
  // `quantd collect` and `quantd job` count a sample's tokens with the same tokenizer.
  const text = "the film the cast the end";
  const counts = await Promise.all(
    [shippedModelDir, source].map(async (d) => {
      const t = await loadTokenizer(d);
      return t.tokenIds(text).length + t.specialsSingle;
    }),
  );
  expect(counts[0]).not.toBe(counts[1]);
  const pool = await openAgentStore(again);
  try {
    pool.samples.add([{ text }], { source: "file" });
    const row = pool.db.prepare("SELECT token_count AS n FROM samples WHERE text = ?").get(text);
    expect(row?.["n"]).toBe(counts[0]!);
  } finally {
    pool.close();
  }
}, 120_000);
