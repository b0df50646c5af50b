/**
 * Where the files of a text-classification model live. A Hugging Face export
 * puts `model.onnx`, `tokenizer.json`, `tokenizer_config.json` and `config.json`
 * in one directory; quantd writes its int8 model beside a copy of them. A user
 * may still keep the tokenizer elsewhere and point at it (`--tokenizer DIR`).
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
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
