/**
 * Promoting what `quantize --out DIR` writes: the directory itself is taken
 * (its model.onnx), as `--model DIR` is at start; a model whose directory
 * holds another tokenizer than the agent serves every version with is refused
 * before anything is staged, and the serving version keeps answering.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Agent, startAgent } from "../../src/agent/agent.ts";
import { shippedModelDir } from "../helpers/paths.ts";
import { call, classifyOverSocket, makeInt8Model, TEXTS, tempDir, testConfig } from "./agent-harness.ts";

let dir: string;
let agent: Agent;
let sock: string;
/** An int8 model directory as `quantize --out DIR` writes it (the shipped tokenizer and config beside it). */
let int8Dir: string;

beforeAll(async () => {
  dir = tempDir("quantd-promote-dir-");
  int8Dir = join(dir, "int8");
  mkdirSync(int8Dir);
  renameSync(await makeInt8Model(dir), join(int8Dir, "model.onnx"));
  for (const f of ["tokenizer.json", "tokenizer_config.json", "config.json"]) {
    copyFileSync(join(shippedModelDir, f), join(int8Dir, f));
  }
  const config = testConfig(dir);
  sock = config.socketPath;
  agent = await startAgent(config);
});

afterAll(async () => {
  await agent?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const promote = (path: string) => call(sock, "/v1/models/promote", { body: JSON.stringify({ path }) });

test("a model directory beside another tokenizer is refused (MODEL_INPUTS_MISMATCH), serving unchanged", async () => {
  const other = join(dir, "other-tokenizer");
  mkdirSync(other);
  copyFileSync(join(int8Dir, "model.onnx"), join(other, "model.onnx"));
  // Another model's vocabulary: the same ids would mean other words.
  const tokenizer = JSON.parse(readFileSync(join(shippedModelDir, "tokenizer.json"), "utf8"));
  tokenizer.model.vocab = Object.fromEntries(
    Object.entries(tokenizer.model.vocab as Record<string, number>).map(([w, id], _, all) => [
      w,
      (id + 1) % all.length,
    ]),
  );
  writeFileSync(join(other, "tokenizer.json"), JSON.stringify(tokenizer));
  const before = await classifyOverSocket(sock, TEXTS.slice(0, 2));
  const r = await promote(other);
  expect(r.status).toBe(400);
  const error = r.body["error"] as { code: string; message: string };
  expect(error.code).toBe("MODEL_INPUTS_MISMATCH");
  expect(error.message).toContain(join(other, "tokenizer.json"));
  expect(error.message).toContain(`restart the agent with --model ${other}`);
  const after = await classifyOverSocket(sock, TEXTS.slice(0, 2));
  expect(after.body["model"]).toEqual(before.body["model"]);
  const models = await call(sock, "/v1/models");
  expect((models.body["versions"] as unknown[]).length).toBe(1);
});

test("a tokenizer of the same size as the agent's but other bytes is refused too", async () => {
  const other = join(dir, "same-size-tokenizer");
  mkdirSync(other);
  copyFileSync(join(int8Dir, "model.onnx"), join(other, "model.onnx"));
  const text = readFileSync(join(shippedModelDir, "tokenizer.json"), "utf8");
  // One vocabulary entry renamed in place: the sizes match, only the bytes tell them apart.
  const renamed = text.replace('"the":', '"thx":');
  expect(renamed).not.toBe(text);
  writeFileSync(join(other, "tokenizer.json"), renamed);
  const r = await promote(other);
  expect(r.status).toBe(400);
  expect((r.body["error"] as { code: string }).code).toBe("MODEL_INPUTS_MISMATCH");
});

test("the directory quantize --out DIR wrote is promoted as its model.onnx", async () => {
  const r = await promote(int8Dir);
  expect(r.status).toBe(200);
  const version = r.body["version"] as { kind: string; state: string; metrics: { source: string } };
  expect(version).toMatchObject({ kind: "int8-dynamic", state: "active" });
  expect(version.metrics.source).toBe(join(int8Dir, "model.onnx"));
  const served = await classifyOverSocket(sock, TEXTS.slice(0, 2));
  expect(served.status).toBe(200);
  expect((served.body["model"] as { kind: string }).kind).toBe("int8-dynamic");
});
