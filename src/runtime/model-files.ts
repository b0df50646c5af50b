/**
 * Where the files of a text-classification model live. A Hugging Face export
 * puts `model.onnx`, `tokenizer.json`, `tokenizer_config.json` and `config.json`
 * in one directory; quantd writes its int8 model beside a copy of them. A user
 * may still keep the tokenizer elsewhere and point at it (`--tokenizer DIR`).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { copyFileDurableSync, errnoOf, writeFailure } from "../core/files.ts";
import { QuantdError } from "../errors.ts";

/** The files {@link findModelFiles} located, as absolute paths. */
export interface ModelFiles {
  /** The `.onnx` model file. */
  model: string;
  /** The directory holding `tokenizer.json`. */
  tokenizerDir: string;
  /** The model's `config.json` (labels, max positions), when there is one. */
  configPath?: string;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function onnxFilesIn(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith(".onnx"))
      .sort()
      .slice(0, 5);
  } catch {
    return [];
  }
}

/**
 * The model file a path names: `model.onnx` inside a model directory (Optimum's
 * layout, or what `quantize --out DIR` writes), else the path itself.
 */
export function modelFileOf(path: string): string {
  return isDir(path) ? join(path, "model.onnx") : path;
}

/**
 * Locates a model and its tokenizer and config.
 *
 * `modelPath` may be the `.onnx` file or a directory holding `model.onnx`. The
 * tokenizer is looked for in `tokenizerDir` when given, else beside the model.
 * `config.json` is taken from beside the model, else from the tokenizer directory.
 *
 * @throws FILE_NOT_FOUND when the model file does not exist
 * @throws TOKENIZER_NOT_FOUND when no `tokenizer.json` is where it is looked for
 */
export function findModelFiles(modelPath: string, tokenizerDir?: string): ModelFiles {
  let model = resolve(modelPath);
  if (isDir(model)) model = join(model, "model.onnx");
  if (!isFile(model)) {
    let message = `model file ${modelPath} does not exist`;
    if (isDir(resolve(modelPath))) {
      const others = onnxFilesIn(resolve(modelPath));
      message =
        `no model.onnx in directory ${modelPath}` +
        (others.length > 0 ? `; it has ${others.join(", ")}: pass one of them` : "");
    }
    throw new QuantdError("FILE_NOT_FOUND", message, { details: { path: modelPath } });
  }
  const modelDir = dirname(model);
  const tokDir = resolve(tokenizerDir ?? modelDir);
  if (!existsSync(join(tokDir, "tokenizer.json"))) {
    const message =
      tokenizerDir === undefined
        ? `no tokenizer.json beside the model in ${modelDir}; pass --tokenizer DIR (a directory with tokenizer.json and tokenizer_config.json)`
        : `no tokenizer.json in ${tokenizerDir}`;
    throw new QuantdError("TOKENIZER_NOT_FOUND", message, { details: { dir: tokDir } });
  }
  const files: ModelFiles = { model, tokenizerDir: tokDir };
  for (const candidate of [join(modelDir, "config.json"), join(tokDir, "config.json")]) {
    if (isFile(candidate)) {
      files.configPath = candidate;
      break;
    }
  }
  return files;
}

/**
 * The files of a Hugging Face model directory besides the model itself that
 * tokenizers and runtimes read; those a model has are copied beside its int8
 * version so that the output directory stands alone, as Optimum's does.
 */
export const MODEL_DIR_FILES: readonly string[] = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.txt",
  "vocab.json",
  "merges.txt",
  "sentencepiece.bpe.model",
  "spm.model",
  "tokenizer.model",
];

/** Where an output model goes, from the path a user gave. */
export interface ModelOutput {
  /** The `.onnx` file to write. */
  model: string;
  /** Its directory. */
  dir: string;
  /** The path named a directory (existing, ending in `/`, or without `.onnx`): write `model.onnx` in it. */
  asDirectory: boolean;
  /** The directory does not exist yet (the caller creates it, and removes it if nothing gets written). */
  newDir: boolean;
}

/**
 * Reads an output path: an existing directory, a path ending in `/` or one
 * without the `.onnx` extension names a model directory (`DIR/model.onnx`);
 * anything else is the model file itself.
 */
export function planModelOutput(out: string): ModelOutput {
  const path = resolve(out);
  const asDirectory =
    isDir(path) || (!existsSync(path) && (out.endsWith("/") || !path.toLowerCase().endsWith(".onnx")));
  const model = asDirectory ? join(path, "model.onnx") : path;
  const dir = dirname(model);
  return { model, dir, asDirectory, newDir: !existsSync(dir) };
}

/**
 * Creates `dir` and any missing parents for a model output.
 *
 * @returns the topmost directory it created (remove it to undo the whole chain), or
 *   `undefined` when `dir` already existed
 * @throws DISK_FULL when the disk is full; FILE_WRITE_FAILED when a parent is a file
 *   or cannot be written
 */
export function createOutputDir(dir: string): string | undefined {
  try {
    return mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw writeFailure(err, `cannot create the output directory ${dir}: ${errnoOf(err) ?? String(err)}`, {
      path: dir,
    });
  }
}

/**
 * Copies the model directory files ({@link MODEL_DIR_FILES}) of `files` into
 * `dir`, each through a temporary name and a rename, so a reader never sees half
 * a tokenizer. A file already at its destination (the same path) is left alone.
 *
 * @returns the names copied
 * @throws DISK_FULL when the disk is full; FILE_WRITE_FAILED when a copy fails otherwise
 */
export function copyModelDirFiles(files: ModelFiles, dir: string): string[] {
  const copied: string[] = [];
  for (const name of MODEL_DIR_FILES) {
    const source =
      name === "config.json"
        ? (files.configPath ?? join(files.tokenizerDir, name))
        : join(files.tokenizerDir, name);
    const dest = join(dir, name);
    if (!isFile(source) || resolve(source) === resolve(dest)) continue;
    copyFileDurableSync(source, dest);
    copied.push(name);
  }
  copied.push(...copySentenceTransformersFiles(files, dir));
  return copied;
}

/** sentence-transformers' files beside a model, besides each module's own `config.json`. */
const SENTENCE_TRANSFORMERS_FILES = [
  "modules.json",
  "sentence_bert_config.json",
  "config_sentence_transformers.json",
];

/**
 * The sentence-transformers layout of an embedding model (`modules.json` and
 * each module's directory with its `config.json`, e.g. `1_Pooling/config.json`,
 * `2_Normalize/`): without it the copy would pool and normalize differently.
 */
function copySentenceTransformersFiles(files: ModelFiles, dir: string): string[] {
  const from = [dirname(files.model), files.tokenizerDir].find((d) => isFile(join(d, "modules.json")));
  if (from === undefined || resolve(from) === resolve(dir)) return [];
  const copied: string[] = [];
  for (const name of SENTENCE_TRANSFORMERS_FILES) {
    if (!isFile(join(from, name))) continue;
    copyFileDurableSync(join(from, name), join(dir, name));
    copied.push(name);
  }
  let modules: unknown;
  try {
    modules = JSON.parse(readFileSync(join(from, "modules.json"), "utf8"));
  } catch {
    return copied; // An unreadable modules.json is reported where it is read (task detection).
  }
  for (const m of Array.isArray(modules) ? modules : []) {
    const path = typeof m === "object" && m !== null && typeof m.path === "string" ? m.path : "";
    if (path === "" || path.includes("..") || !isDir(join(from, path))) continue;
    createOutputDir(join(dir, path));
    if (isFile(join(from, path, "config.json"))) {
      copyFileDurableSync(join(from, path, "config.json"), join(dir, path, "config.json"));
      copied.push(`${path}/config.json`);
    } else copied.push(`${path}/`);
  }
  return copied;
}
