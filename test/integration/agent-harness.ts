/**
 * Shared setup of the agent and server integration tests: a config in a fresh
 * temporary state directory, a JSON client over the Unix socket, and an int8
 * model made with quantd's own quantizer from the shipped fp32 model.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type AgentConfig, type ConfigFlags, loadAgentConfig } from "../../src/agent/config.ts";
import { loadModel, saveModel } from "../../src/onnx/codec.ts";
import { quantizeModel } from "../../src/quant/quantize.ts";
import { shippedModelPath } from "../helpers/paths.ts";

/** A fresh temporary directory. */
export function tempDir(prefix = "quantd-agent-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A config in `dir` with environment variables ignored; `env` may set `QUANTD_*` keys. */
export function testConfig(
  dir: string,
  env: Record<string, string> = {},
  flags: ConfigFlags = {},
): AgentConfig {
  return loadAgentConfig({
    profile: { threads: 1, samplePool: { maxRows: 1000, maxBytes: 1 << 20 } },
    defaultModel: shippedModelPath,
    env,
    flags: { stateDir: join(dir, "state"), socket: join(dir, "q.sock"), ...flags },
  });
}

/** A response's status, headers and parsed JSON body. */
export interface JsonReply {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

/** Sends a request over the Unix socket and parses the JSON reply. */
export async function call(
  socketPath: string,
  path: string,
  init: { method?: string; body?: string; contentType?: string | null } = {},
): Promise<JsonReply> {
  const headers: Record<string, string> = {};
  const type = init.contentType === undefined ? "application/json" : init.contentType;
  if (type !== null && init.body !== undefined) headers["content-type"] = type;
  const res = await fetch(`http://localhost${path}`, {
    unix: socketPath,
    method: init.method ?? (init.body === undefined ? "GET" : "POST"),
    headers,
    body: init.body ?? null,
  });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { text };
  }
  return { status: res.status, headers: res.headers, body };
}

/** POST /v1/classify. */
export function classifyOverSocket(socketPath: string, texts: unknown): Promise<JsonReply> {
  return call(socketPath, "/v1/classify", { body: JSON.stringify({ texts }) });
}

/** Writes an int8 dynamic model of the shipped fp32 model into `dir` (no calibration: ~2 s). */
export async function makeInt8Model(dir: string): Promise<string> {
  const out = join(dir, "candidate-int8.onnx");
  const fp32 = await loadModel(shippedModelPath);
  const q = await quantizeModel(fp32, { type: "dynamic" });
  await saveModel(q.model, out);
  return out;
}

/** The value of an unlabelled (or exactly-labelled) Prometheus series, or undefined. */
export function metricValue(text: string, series: string): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

/** Sample texts of varied length. */
export const TEXTS: readonly string[] = [
  "a gorgeous, witty, seductive movie.",
  "the plot is nothing but boilerplate clichés from start to finish,",
  "it's a charming and often affecting journey.",
  "unflinchingly bleak and desperate",
  "the acting, costumes, music, cinematography and sound are all astounding given the production's austere locales.",
  "bad",
  "it 's slow -- very , very slow .",
  "a sometimes tedious film .",
];
