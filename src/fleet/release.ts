/**
 * Model releases: an fp32 model directory (model, tokenizer, config, an
 * optional labelled validation TSV) packed as a content-addressed release.
 * Its manifest lists every file's SHA-256 and size, the task, a version and
 * notes, and is signed by a release key with the fleet's Ed25519 primitives
 * (`signing.ts`, under the signing "topic" {@link RELEASE_SIGNING_TOPIC}, which
 * is no MQTT topic, so a release signature can never pass for a fleet
 * message's). The release id is the SHA-256 of the manifest bytes, so the
 * same bytes always have the same id and a changed byte is another release.
 *
 * Devices trust a list of release keys (`fleet.releaseKeys`) and check a
 * manifest, then each downloaded file against it, before anything is loaded.
 */
import { createHash } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { copyFile } from "node:fs/promises";
import { join } from "node:path";
import { writeFailure } from "../core/files.ts";
import { sha256File } from "../core/hash.ts";
import { QuantdError } from "../errors.ts";
import { isRecord } from "../json.ts";
import {
  createKeyring,
  KID_PROPERTY,
  type SignatureProblem,
  SIG_PROPERTY,
  type SigningKey,
} from "./signing.ts";

/** What a release signature signs beside the manifest bytes (never an MQTT topic). */
export const RELEASE_SIGNING_TOPIC = "quantd-release-v1";
/** The manifest's schema tag. */
export const RELEASE_SCHEMA = "quantd-release-v1";
/** The model file every release carries. */
export const RELEASE_MODEL_FILE = "model.onnx";
/** Largest manifest a device or controller parses. */
export const MAX_MANIFEST_BYTES = 64 * 1024;
/** Most files in a release. */
export const MAX_RELEASE_FILES = 64;
/** Largest release, all files together (an fp32 BERT-base is about 440 MB). */
export const MAX_RELEASE_BYTES = 4 * 1024 ** 3;
/** What a release's file name may look like: one plain file, no directories, no hidden files. */
export const RELEASE_FILE_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
/** What a release id looks like: the manifest's SHA-256. */
export const RELEASE_ID_PATTERN = /^[0-9a-f]{64}$/;
/** File names taken as the labelled validation set, in order of preference. */
const VALIDATION_FILES = ["validation.tsv", "dev.tsv", "eval.tsv"];

/** One file of a release. */
export interface ReleaseFile {
  path: string;
  sha256: string;
  size: number;
}

/** A release's manifest (the signed bytes are its JSON as written). */
export interface ReleaseManifest {
  schema: typeof RELEASE_SCHEMA;
  /** The task the model does, e.g. `text-classification`; devices refuse a release of another task. */
  task: string;
  /** Class labels from the model's config (`id2label`), when it names them. */
  labels?: string[];
  /** The operator's version name, e.g. `2026-12-03` or `v7`. */
  version: string;
  notes: string;
  createdAt: number;
  /** The fp32 model ({@link RELEASE_MODEL_FILE}). */
  model: string;
  /** The labelled validation TSV, when the release carries one. */
  validation?: string;
  files: ReleaseFile[];
}

/** A release's signature, kept beside its manifest. */
export interface ReleaseSignature {
  kid: string;
  sig: string;
}

/** A release as it travels: the manifest's exact bytes and their signature. */
export interface SignedRelease {
  id: string;
  manifestText: string;
  signature: ReleaseSignature;
  manifest: ReleaseManifest;
}

/** The release id of manifest bytes. */
export function releaseId(manifestText: string): string {
  return createHash("sha256").update(manifestText, "utf8").digest("hex");
}

function invalidManifest(message: string, details?: Record<string, unknown>): QuantdError {
  return new QuantdError(
    "DATA_MALFORMED",
    `release manifest: ${message}`,
    details === undefined ? {} : { details },
  );
}

/**
 * Parses and checks a manifest's JSON (bounded, every field typed, file names safe).
 *
 * @throws DATA_MALFORMED naming what is wrong
 */
export function parseManifest(text: string): ReleaseManifest {
  if (Buffer.byteLength(text) > MAX_MANIFEST_BYTES)
    throw invalidManifest(`larger than ${MAX_MANIFEST_BYTES} bytes`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new QuantdError("DATA_MALFORMED", "release manifest is not JSON", { cause: err });
  }
  if (!isRecord(body) || body.schema !== RELEASE_SCHEMA)
    throw invalidManifest(`schema must be ${RELEASE_SCHEMA}`);
  for (const key of ["task", "version", "notes", "model"] as const) {
    if (typeof body[key] !== "string") throw invalidManifest(`${key} must be a string`, { key });
  }
  if (typeof body.createdAt !== "number" || !Number.isFinite(body.createdAt))
    throw invalidManifest("createdAt must be a time");
  if (!Array.isArray(body.files) || body.files.length === 0 || body.files.length > MAX_RELEASE_FILES) {
    throw invalidManifest(`files must list 1-${MAX_RELEASE_FILES} files`);
  }
  const seen = new Set<string>();
  let total = 0;
  const files: ReleaseFile[] = body.files.map((f: unknown) => {
    if (!isRecord(f) || typeof f.path !== "string" || !RELEASE_FILE_PATTERN.test(f.path)) {
      throw invalidManifest("a file path must be one plain file name", { file: isRecord(f) ? f.path : f });
    }
    if (typeof f.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(f.sha256))
      throw invalidManifest(`${f.path}: bad sha256`);
    if (typeof f.size !== "number" || !Number.isSafeInteger(f.size) || f.size < 0)
      throw invalidManifest(`${f.path}: bad size`);
    if (seen.has(f.path)) throw invalidManifest(`${f.path} listed twice`);
    seen.add(f.path);
    total += f.size;
    return { path: f.path, sha256: f.sha256, size: f.size };
  });
  if (total > MAX_RELEASE_BYTES)
    throw invalidManifest(`files total ${total} bytes, over ${MAX_RELEASE_BYTES}`);
  if (!seen.has(String(body.model)))
    throw invalidManifest(`the model ${String(body.model)} is not among the files`);
  if (body.validation !== undefined && (typeof body.validation !== "string" || !seen.has(body.validation))) {
    throw invalidManifest("validation must name one of the files");
  }
  if (
    body.labels !== undefined &&
    (!Array.isArray(body.labels) || !body.labels.every((l) => typeof l === "string"))
  ) {
    throw invalidManifest("labels must be strings");
  }
  return {
    schema: RELEASE_SCHEMA,
    task: String(body.task),
    ...(body.labels !== undefined ? { labels: body.labels as string[] } : {}),
    version: String(body.version),
    notes: String(body.notes),
    createdAt: body.createdAt,
    model: String(body.model),
    ...(body.validation !== undefined ? { validation: String(body.validation) } : {}),
    files,
  };
}

/** Total bytes of a release's files. */
export function releaseBytes(m: ReleaseManifest): number {
  return m.files.reduce((a, f) => a + f.size, 0);
}

/** Signs manifest bytes with a release key. */
export function signManifest(key: SigningKey, manifestText: string): ReleaseSignature {
  const props = key.sign(RELEASE_SIGNING_TOPIC, Buffer.from(manifestText, "utf8"));
  return { kid: String(props[KID_PROPERTY]), sig: String(props[SIG_PROPERTY]) };
}

/**
 * Checks a release's signature against trusted release keys, then parses its manifest.
 * Nothing in the manifest is read before the signature holds.
 *
 * @throws COMMAND_UNAUTHORIZED (`details.reason`: unsigned, unknown-key, bad-signature, no-release-keys) or DATA_MALFORMED
 */
export function verifyRelease(
  trustedKeys: readonly string[],
  manifestText: string,
  signature: ReleaseSignature | undefined,
  expectedId?: string,
): SignedRelease {
  const refuse = (reason: SignatureProblem | "no-release-keys" | "id-mismatch", why: string): QuantdError =>
    new QuantdError("COMMAND_UNAUTHORIZED", `release refused: ${why}`, { details: { reason } });
  if (trustedKeys.length === 0)
    throw refuse("no-release-keys", "this device trusts no release key (fleet.releaseKeys)");
  const id = releaseId(manifestText);
  if (expectedId !== undefined && id !== expectedId) {
    throw refuse("id-mismatch", `the manifest's SHA-256 is ${id}, not the release id ${expectedId}`);
  }
  const problem = createKeyring(trustedKeys).check(
    RELEASE_SIGNING_TOPIC,
    Buffer.from(manifestText, "utf8"),
    signature === undefined ? undefined : { [SIG_PROPERTY]: signature.sig, [KID_PROPERTY]: signature.kid },
  );
  if (problem !== undefined) {
    const why =
      problem === "unsigned"
        ? "the manifest is not signed"
        : problem === "unknown-key"
          ? "the manifest is signed by a key this device does not trust"
          : "the manifest's signature does not match";
    throw refuse(problem, why);
  }
  return {
    id,
    manifestText,
    signature: signature as ReleaseSignature,
    manifest: parseManifest(manifestText),
  };
}

/** Options of {@link buildRelease}. */
export interface BuildReleaseOptions {
  key: SigningKey;
  version: string;
  notes?: string;
  /** @defaultValue `text-classification` */
  task?: string;
  now?: number;
}

function labelsOf(dir: string): string[] | undefined {
  try {
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as {
      id2label?: Record<string, string>;
    };
    if (!isRecord(cfg.id2label)) return undefined;
    const entries = Object.entries(cfg.id2label).sort((a, b) => Number(a[0]) - Number(b[0]));
    return entries.map(([, v]) => String(v));
  } catch {
    return undefined;
  }
}

/**
 * Builds and signs the manifest of a model directory: every regular file at
 * its top level (nothing hidden, no subdirectories, no symlinks).
 *
 * @throws FILE_NOT_FOUND without `model.onnx`; USAGE for an unsafe file name or a subdirectory; MODEL_TOO_LARGE past the caps
 */
export async function buildRelease(dir: string, options: BuildReleaseOptions): Promise<SignedRelease> {
  if (!existsSync(join(dir, RELEASE_MODEL_FILE))) {
    throw new QuantdError(
      "FILE_NOT_FOUND",
      `${dir} has no ${RELEASE_MODEL_FILE}: a release is an fp32 model directory`,
      {
        details: { path: dir },
      },
    );
  }
  const names = readdirSync(dir).sort();
  const files: ReleaseFile[] = [];
  for (const name of names) {
    const st = lstatSync(join(dir, name));
    if (!st.isFile()) {
      throw new QuantdError(
        "USAGE",
        `${join(dir, name)} is not a regular file; a release holds the files of one directory`,
        {
          details: { path: join(dir, name) },
        },
      );
    }
    if (!RELEASE_FILE_PATTERN.test(name)) {
      throw new QuantdError(
        "USAGE",
        `release file name ${JSON.stringify(name)} must be letters, digits, '_', '.', '-'`,
        {
          details: { path: join(dir, name) },
        },
      );
    }
    files.push({ path: name, sha256: await sha256File(join(dir, name)), size: st.size });
  }
  if (files.length > MAX_RELEASE_FILES)
    throw new QuantdError("USAGE", `a release holds at most ${MAX_RELEASE_FILES} files`);
  const total = files.reduce((a, f) => a + f.size, 0);
  if (total > MAX_RELEASE_BYTES) {
    throw new QuantdError("MODEL_TOO_LARGE", `the release is ${total} bytes, over ${MAX_RELEASE_BYTES}`);
  }
  const labels = labelsOf(dir);
  const validation = VALIDATION_FILES.find((v) => files.some((f) => f.path === v));
  const manifest: ReleaseManifest = {
    schema: RELEASE_SCHEMA,
    task: options.task ?? "text-classification",
    ...(labels !== undefined ? { labels } : {}),
    version: options.version,
    notes: options.notes ?? "",
    createdAt: options.now ?? Date.now(),
    model: RELEASE_MODEL_FILE,
    ...(validation !== undefined ? { validation } : {}),
    files,
  };
  const manifestText = `${JSON.stringify(manifest, null, 2)}\n`;
  parseManifest(manifestText);
  return {
    id: releaseId(manifestText),
    manifestText,
    signature: signManifest(options.key, manifestText),
    manifest,
  };
}

/** Where a release's files live under a releases directory. */
export function releaseDir(root: string, id: string): string {
  if (!RELEASE_ID_PATTERN.test(id))
    throw new QuantdError("REQUEST_INVALID", `not a release id: ${JSON.stringify(id)}`);
  return join(root, id);
}

/**
 * Copies a release's files into `<root>/<id>/` (aside, then renamed, so a
 * half copy is never taken for the release), checking each against the manifest.
 *
 * @throws DATA_MISMATCH when a file changed since the manifest was built; DISK_FULL | FILE_WRITE_FAILED
 */
export async function storeReleaseFiles(
  root: string,
  srcDir: string,
  release: SignedRelease,
): Promise<string> {
  const dest = releaseDir(root, release.id);
  if (existsSync(dest)) return dest;
  const tmp = `${dest}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    mkdirSync(tmp, { recursive: true });
    for (const f of release.manifest.files) {
      await copyFile(join(srcDir, f.path), join(tmp, f.path));
      if (statSync(join(tmp, f.path)).size !== f.size || (await sha256File(join(tmp, f.path))) !== f.sha256) {
        throw new QuantdError("DATA_MISMATCH", `${join(srcDir, f.path)} changed while the release was made`);
      }
    }
    renameSync(tmp, dest);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    // A full disk is DISK_FULL, as for every other write (core/files.ts).
    throw writeFailure(err, `cannot store release ${release.id} in ${root}: ${(err as Error).message}`);
  }
  return dest;
}
