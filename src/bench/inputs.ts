/**
 * Model inputs for benchmarking: synthetic BERT feeds of a given `[batch, seq]`
 * built from the model's declared inputs, and the vocabulary size those random
 * token ids must stay below. Synthetic ids are seeded so that every model of a
 * comparison (and the memory child process) sees exactly the same tensors.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { mulberry32 } from "../core/random.ts";
import { QuantdError } from "../errors.ts";
import { positionTable, tokenEmbeddingTable } from "../onnx/graph.ts";
import { readGraphOutline } from "../onnx/graph-outline.ts";
import type { Tensor, TensorInfo } from "../runtime/types.ts";

/** One benchmark shape: `batch` sequences of `seq` tokens. */
export interface Shape {
  batch: number;
  seq: number;
}

/** Renders a shape as `b1×s128`. */
export function shapeLabel(shape: Shape): string {
  return `b${shape.batch}×s${shape.seq}`;
}

/** Options for {@link syntheticFeeds}. */
export interface SyntheticFeedOptions {
  /** Token ids are drawn from `[1000, vocabSize)`, or `[1, vocabSize)` for a vocabulary of 1000 or fewer. */
  vocabSize: number;
  /** PRNG seed. @defaultValue 1 */
  seed?: number;
}

/** The lowest synthetic token id: ids below 1000 are special and unused tokens in BERT vocabularies. */
export const FIRST_ORDINARY_TOKEN_ID = 1000;

/** What a BERT input carries, recognised by name as the HF exporter names them. */
type InputRole = "ids" | "mask" | "type" | "position";

function roleOf(name: string): InputRole | undefined {
  const n = name.toLowerCase();
  if (n.includes("attention_mask") || n === "mask") return "mask";
  if (n.includes("token_type")) return "type";
  if (n.includes("position_ids")) return "position";
  if (n.includes("input_ids") || n === "ids") return "ids";
  return undefined;
}

/**
 * Checks that `[batch, seq]` fits an input's declared dims (symbolic dims fit anything).
 * @throws MODEL_INPUTS_MISMATCH when a fixed dimension differs or the rank is not 2
 */
export function checkShapeFits(info: TensorInfo, shape: Shape): void {
  const want = [shape.batch, shape.seq];
  if (info.dims.length !== 2) {
    throw new QuantdError(
      "MODEL_INPUTS_MISMATCH",
      `input ${info.name} has rank ${info.dims.length} (dims [${info.dims.join(", ")}]); a BERT input is [batch, seq]`,
      { details: { input: info.name, dims: info.dims } },
    );
  }
  info.dims.forEach((d, i) => {
    if (typeof d === "number" && d > 0 && d !== want[i]) {
      throw new QuantdError(
        "MODEL_INPUTS_MISMATCH",
        `the model fixes ${i === 0 ? "batch" : "sequence length"} of input ${info.name} to ${d}, ` +
          `so shape ${shapeLabel(shape)} cannot run`,
        { details: { input: info.name, dims: info.dims, shape } },
      );
    }
  });
}

function intTensor(info: TensorInfo, dims: number[], fill: (i: number) => number): Tensor {
  const n = dims.reduce((a, b) => a * b, 1);
  switch (info.type) {
    case "int64": {
      const data = new BigInt64Array(n);
      for (let i = 0; i < n; i++) data[i] = BigInt(fill(i));
      return { type: "int64", data, dims };
    }
    case "int32": {
      const data = new Int32Array(n);
      for (let i = 0; i < n; i++) data[i] = fill(i);
      return { type: "int32", data, dims };
    }
    default:
      throw new QuantdError(
        "MODEL_INPUTS_MISMATCH",
        `input ${info.name} has element type ${info.type}; synthetic BERT feeds need int64 or int32`,
        { details: { input: info.name, type: info.type } },
      );
  }
}

/**
 * Synthetic feeds for every declared input of a BERT-style model: random token
 * ids (seeded) for `input_ids`, all ones for `attention_mask` (every token
 * real, the worst case for latency), zeros for `token_type_ids`, `0…seq-1` for
 * `position_ids`.
 *
 * @throws MODEL_INPUTS_MISMATCH when an input is not recognised, has a non-integer
 *   type, or fixes a dimension that differs from `shape`
 * @throws USAGE when the shape or vocabulary size is not a positive integer
 */
export function syntheticFeeds(
  inputs: readonly TensorInfo[],
  shape: Shape,
  opts: SyntheticFeedOptions,
): Record<string, Tensor> {
  for (const [k, v] of Object.entries({ batch: shape.batch, seq: shape.seq, vocabSize: opts.vocabSize })) {
    if (!Number.isSafeInteger(v) || v < 1)
      throw new QuantdError("USAGE", `${k} must be a positive integer, got ${v}`);
  }
  const rng = mulberry32(opts.seed ?? 1);
  // Id 0 is padding in BERT vocabularies; tiny test vocabularies have no special block to skip.
  const lo =
    opts.vocabSize > FIRST_ORDINARY_TOKEN_ID ? FIRST_ORDINARY_TOKEN_ID : Math.min(1, opts.vocabSize - 1);
  const span = opts.vocabSize - lo;
  const dims = [shape.batch, shape.seq];
  const feeds: Record<string, Tensor> = {};
  for (const info of inputs) {
    checkShapeFits(info, shape);
    const role = roleOf(info.name);
    switch (role) {
      case "ids":
        feeds[info.name] = intTensor(info, dims, () => lo + Math.floor(rng() * span));
        break;
      case "mask":
        feeds[info.name] = intTensor(info, dims, () => 1);
        break;
      case "type":
        feeds[info.name] = intTensor(info, dims, () => 0);
        break;
      case "position":
        feeds[info.name] = intTensor(info, dims, (i) => i % shape.seq);
        break;
      case undefined:
        throw new QuantdError(
          "MODEL_INPUTS_MISMATCH",
          `input ${info.name} is not a BERT input (input_ids, attention_mask, token_type_ids, position_ids)`,
          { details: { input: info.name } },
        );
    }
  }
  return feeds;
}

function intFromConfig(path: string, key: string): number | undefined {
  if (!existsSync(path)) return undefined;
  try {
    const v: unknown = (JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>)[key];
    return typeof v === "number" && Number.isSafeInteger(v) && v > 0 ? v : undefined;
  } catch {
    return undefined;
  }
}

function vocabFromConfig(path: string): number | undefined {
  return intFromConfig(path, "vocab_size");
}

/** A model's longest sequence and where that figure came from, for messages. */
export interface MaxPositions {
  positions: number;
  /** `config.json` (with its path) or the graph's position-embedding table. */
  source: string;
}

/**
 * The longest sequence a model takes: `max_position_embeddings` of the
 * `config.json` beside it (or one folder up), else the row count of an
 * initializer named like a position-embedding table. A longer `seq` fails
 * inside onnxruntime with a broadcast error that does not say why.
 *
 * @returns the bound, or undefined when neither says it (no bound is checked then), or when the file is
 *   no readable model (onnxruntime names the problem when it loads it)
 */
export async function findMaxPositions(modelPath: string): Promise<MaxPositions | undefined> {
  for (const config of [
    join(dirname(modelPath), "config.json"),
    join(dirname(dirname(modelPath)), "config.json"),
  ]) {
    const positions = intFromConfig(config, "max_position_embeddings");
    if (positions !== undefined) return { positions, source: `max_position_embeddings in ${config}` };
  }
  const outline = await readGraphOutline(modelPath);
  const table = outline === undefined ? undefined : positionTable(outline);
  return table === undefined
    ? undefined
    : { positions: table.rows, source: `the position-embedding table ${table.name}` };
}

/**
 * The vocabulary size of a model, from the `config.json` the HF exporter writes
 * beside it (in the model's folder or its parent, where reference variants sit
 * in a `reference/` subfolder).
 *
 * @returns the size, or undefined when no config says it
 */
export function findVocabSize(modelPath: string): number | undefined {
  const dir = dirname(modelPath);
  return vocabFromConfig(join(dir, "config.json")) ?? vocabFromConfig(join(dirname(dir), "config.json"));
}

/**
 * The vocabulary size read from the graph: the row count of the embedding table
 * gathered by `input_ids` (directly, or through a Cast, or from a
 * DequantizeLinear of a quantized table). For models without a `config.json`.
 * Read from the graph's outline (`onnx/graph-outline.ts`), never its weights,
 * so a large self-contained model is not held in memory for one row count.
 *
 * @returns the size, or undefined when the graph has no such Gather or the file is no readable model
 */
export async function findVocabSizeInGraph(modelPath: string): Promise<number | undefined> {
  const outline = await readGraphOutline(modelPath);
  if (outline === undefined) return undefined;
  const ids = new Set(outline.graph.input.filter((i) => roleOf(i.name) === "ids").map((i) => i.name));
  return tokenEmbeddingTable(outline, ids)?.rows;
}
