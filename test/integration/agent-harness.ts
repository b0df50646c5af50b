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

/** Ways to break the shipped model's classifier head while it still loads. */
export type HeadVariant = "three-labels" | "nan-logits" | "constant-logits";

/**
 * The shipped fp32 model with its classifier head changed: a third label
 * (another task), NaN bias (NaN logits), or zero weights (the bias whatever
 * the input). Saved under `dir`; returns the path.
 */
export async function makeHeadVariant(dir: string, variant: HeadVariant): Promise<string> {
  const out = join(dir, `candidate-${variant}.onnx`);
  const model = await loadModel(shippedModelPath);
  const init = (name: string) => model.graph.initializer.find((t) => t.name === name)!;
  const weight = init("classifier.weight");
  const bias = init("classifier.bias");
  const w = new Float32Array(weight.rawData!.slice().buffer);
  const b = new Float32Array(bias.rawData!.slice().buffer);
  switch (variant) {
    case "three-labels": {
      const hidden = weight.dims[1] as number;
      const w3 = new Float32Array(3 * hidden);
      w3.set(w);
      w3.set(w.subarray(0, hidden), 2 * hidden);
      weight.dims = [3, hidden];
      weight.rawData = new Uint8Array(w3.buffer);
      bias.dims = [3];
      bias.rawData = new Uint8Array(Float32Array.from([b[0]!, b[1]!, 0]).buffer);
      const dim = model.graph.output[0]!.type!.tensorType!.shape!.dim[1]!;
      dim.dimValue = 3;
      break;
    }
    case "nan-logits":
      bias.rawData = new Uint8Array(Float32Array.from([Number.NaN, Number.NaN]).buffer);
      break;
    case "constant-logits":
      weight.rawData = new Uint8Array(new Float32Array(w.length).buffer);
      break;
  }
  await saveModel(model, out);
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
