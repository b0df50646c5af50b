/**
 * The tokenizer and config.json each model version is served with. A version
 * is verified at registration with one tokenizer, and its token-embedding
 * table means something only with that one: loaded later with another (the
 * shipped model's, after a restart without --model) it answers with another
 * model's ids, silently when both vocabularies have the same size.
 *
 * So the registry keeps a copy of those files in the state directory,
 * `tokenizers/<sha256>/` (the hash of the files, so versions sharing a
 * tokenizer share one copy), and records its hash in the version's metrics.
 * A copy, not the path they came from: the directory a model was registered
 * from is the user's (moved, deleted, overwritten by the next export), while
 * the state directory is the agent's and moves with its store.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { syncDirSync, writeFailure } from "../core/files.ts";
import { isQuantdError, QuantdError } from "../errors.ts";
import { copyModelDirFiles, createOutputDir, findModelFiles } from "../runtime/model-files.ts";
import type { ModelRegistryStore, ModelVersion } from "../store/models.ts";

/** The metric holding the SHA-256 of a version's tokenizer copy (see {@link snapshotTokenizer}). */
export const TOKENIZER_METRIC = "tokenizer";

/** `<stateDir>/tokenizers` for the registry's `<stateDir>/models` (which holds only model files). */
export function tokenizersDir(modelsDir: string): string {
  return join(dirname(resolve(modelsDir)), "tokenizers");
}

/** Every regular file under `dir`, relative to it, sorted (sentence-transformers keeps some in subdirectories). */
function filesUnder(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(dir, prefix)).sort()) {
    const rel = prefix === "" ? name : join(prefix, name);
    if (statSync(join(dir, rel)).isDirectory()) out.push(...filesUnder(dir, rel));
    else out.push(rel);
  }
  return out;
}

/** SHA-256 over the names and contents of the files under `dir`. */
function hashFiles(dir: string): string {
  const hash = createHash("sha256");
  for (const rel of filesUnder(dir)) {
    const bytes = readFileSync(join(dir, rel));
    hash.update(`${rel}\0${bytes.length}\0`);
    hash.update(bytes);
  }
  return hash.digest("hex");
}

/**
 * Copies the tokenizer and config files a version at `modelPath` loads with
 * (`tokenizerDir`'s tokenizer files, the config.json beside the model or
 * else in `tokenizerDir`) into the state directory, once per content. A
 * directory that is such a copy already (the serving version's, which a
 * promotion is verified with) is taken as it is.
 *
 * @returns the hash naming the copy, and the copy's directory
 * @throws TOKENIZER_NOT_FOUND when `tokenizerDir` holds no tokenizer.json
 * @throws DISK_FULL | FILE_WRITE_FAILED when the copy cannot be written (nothing is left behind)
 */
export function snapshotTokenizer(
  modelPath: string,
  tokenizerDir: string,
  modelsDir: string,
): { sha256: string; dir: string } {
  const root = tokenizersDir(modelsDir);
  // A promotion is verified with the serving version's copy: already kept, and nothing to copy on the serving thread.
  const own = resolve(tokenizerDir);
  if (dirname(own) === root && existsSync(join(own, "tokenizer.json")))
    return { sha256: basename(own), dir: own };
  const files = findModelFiles(modelPath, tokenizerDir);
  const tmp = join(root, `.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  try {
    createOutputDir(tmp);
    copyModelDirFiles(files, tmp);
    const sha256 = hashFiles(tmp);
    const dir = join(root, sha256);
    if (existsSync(join(dir, "tokenizer.json"))) rmSync(tmp, { recursive: true, force: true });
    else {
      rmSync(dir, { recursive: true, force: true }); // a copy torn by a crash before its rename
      renameSync(tmp, dir);
      syncDirSync(root);
    }
    return { sha256, dir };
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw isQuantdError(err)
      ? err
      : writeFailure(err, `cannot keep a copy of the tokenizer in ${root}`, { path: root });
  }
}

/** `<stateDir>/tokenizers/by-model/<model sha256>`: which copy a model file was registered with. */
function byModelFile(modelsDir: string, modelSha256: string): string {
  return join(tokenizersDir(modelsDir), "by-model", modelSha256);
}

/**
 * Notes beside the copies which one the model file `modelSha256` was
 * registered with, so that a store lost to corruption, whose versions are
 * registered again from the model files alone, still finds each one's
 * tokenizer. Best effort, as the active-model marker: the store stays the
 * authority while it is intact.
 */
export function noteModelTokenizer(modelsDir: string, modelSha256: string, tokenizerSha256: string): void {
  const file = byModelFile(modelsDir, modelSha256);
  try {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${tokenizerSha256}\n`, { mode: 0o640 });
  } catch {
    // A full disk: the store still knows.
  }
}

/** The tokenizer copy {@link noteModelTokenizer} noted for a model file, when it is still there. */
export function notedModelTokenizer(modelsDir: string, modelSha256: string): string | undefined {
  try {
    const sha = readFileSync(byModelFile(modelsDir, modelSha256), "utf8").trim();
    return /^[0-9a-f]{64}$/.test(sha) && existsSync(join(tokenizersDir(modelsDir), sha, "tokenizer.json"))
      ? sha
      : undefined;
  } catch {
    return undefined;
  }
}

/** Where {@link versionTokenizerDir} looks: the registry's options, or the CLI's from the agent config. */
export interface ServedTokenizers {
  /** The store's versions. */
  models: Pick<ModelRegistryStore, "list">;
  /** `<stateDir>/models`. */
  modelsDir: string;
  /** The agent's tokenizer directory (configured, or the shipped model's). */
  tokenizerDir: string;
  /** Whether the operator configured `tokenizerDir`. @defaultValue false */
  tokenizerExplicit?: boolean;
}

/**
 * The directory of the tokenizer and config.json `version` was registered
 * with: its copy in the state directory. A version registered before copies
 * were kept has none; it was served with the agent's one tokenizer: the
 * agent's `tokenizerDir` when the operator configured it, else, for a model
 * given by path, the one beside that path: that directory when it still holds
 * a tokenizer.json; for a recalibrated version (its source a job's file, long
 * gone) its fp32 base's, found among the store's versions; else the agent's
 * `tokenizerDir`.
 *
 * The one rule for the registry (what it serves) and the CLI (what an agent
 * would serve, for token counts and the served task without an agent).
 *
 * @throws TOKENIZER_NOT_FOUND naming the version and the missing file when its copy is gone
 */
export function versionTokenizerDir(version: ModelVersion, served: ServedTokenizers): string {
  const { modelsDir, tokenizerDir: fallback } = served;
  const recorded = version.metrics[TOKENIZER_METRIC];
  if (typeof recorded === "string") {
    const dir = join(tokenizersDir(modelsDir), recorded);
    const file = join(dir, "tokenizer.json");
    if (existsSync(file)) return dir;
    throw new QuantdError(
      "TOKENIZER_NOT_FOUND",
      `model version ${version.id} was registered with the tokenizer kept at ${dir}, but ${file} is gone; ` +
        "start the agent with --model DIR naming that model's directory to register it again",
      { details: { version: version.id, path: file } },
    );
  }
  // An agent configured with a tokenizer served every version with it, whatever lay beside their files.
  if (served.tokenizerExplicit === true) return fallback;
  // The registry's SOURCE_METRIC and the recalibration's BASE_METRIC (not imported: both modules import this one).
  const source = version.metrics["source"];
  if (typeof source === "string" && existsSync(join(dirname(source), "tokenizer.json")))
    return dirname(source);
  const basePath = version.metrics["base"];
  const base =
    typeof basePath === "string" ? served.models.list().find((v) => v.path === basePath) : undefined;
  // An fp32 base has no base of its own: one step, never a loop.
  if (base !== undefined && base.id !== version.id && base.metrics["base"] === undefined) {
    return versionTokenizerDir(base, served);
  }
  return fallback;
}

/** Whether two tokenizer directories hold the same tokenizer.json (same bytes). */
export function sameTokenizer(a: string, b: string): boolean {
  const read = (d: string): Buffer | undefined => {
    try {
      return readFileSync(join(d, "tokenizer.json"));
    } catch {
      return undefined;
    }
  };
  const x = read(a);
  const y = read(b);
  return x !== undefined && y !== undefined && x.equals(y);
}
