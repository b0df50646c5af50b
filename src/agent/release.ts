/**
 * The release job: takes a new fp32 model that the fleet's operators
 * released and makes it this board's int8 model, or refuses it with reasons.
 *
 * Stages:
 *   1. `manifest` — fetches the release's manifest and checks its signature
 *      against the trusted release keys (`fleet.releaseKeys`) and its id
 *      (the manifest's SHA-256) before reading anything in it; then that its
 *      labels and tokenizer are the ones this agent serves with
 *   2. `download` — the disk must hold what is missing (plus room for the
 *      candidate); each file is fetched with range requests from where an
 *      earlier attempt stopped (a restart or `kill -9` resumes), never past
 *      its manifest size, and checked against its manifest SHA-256; only a
 *      complete, verified release is renamed into `<stateDir>/releases/<id>/`
 *   3. the recalibration (`recalibrate.ts`) with the release's model as the
 *      fp32 base: calibrate on the board's own samples, quantize, validate
 *      against the new fp32 (and on the release's labelled validation set
 *      when it ships one: int8 accuracy within the gate's drop of the new
 *      fp32's), bench against what the board serves, promote or reject
 *
 * The promoted version records its release and fp32 base in its metrics, so
 * later recalibrations start from that base and a rollback returns to the
 * previous one. At most `keep` releases stay on disk; those of the serving
 * version and of the versions a rollback can return to are never removed.
 */
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
  truncateSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { writeFileDurableSync } from "../core/files.ts";
import { sha256File, sha256FileSync } from "../core/hash.ts";
import { QuantdError } from "../errors.ts";
import { parseCommand, type ReleaseParams } from "../fleet/protocol.ts";
import {
  MAX_MANIFEST_BYTES,
  RELEASE_ID_PATTERN,
  type ReleaseManifest,
  releaseBytes,
  type SignedRelease,
  verifyRelease,
} from "../fleet/release.ts";
import type { JobContext, JobHandler, JobVerdict } from "../jobs/handler.ts";
import { loadClassifier } from "../runtime/classifier.ts";
import { evaluate } from "../runtime/evaluate.ts";
import { readSamplesTsv } from "../runtime/tsv.ts";
import {
  createRecalibrationHandler,
  type RecalibrationDeps,
  slimRecalibrationResult,
} from "./recalibrate.ts";

/** The job type in the store. */
export const RELEASE_JOB = "release";
/** `<stateDir>/releases`: downloaded releases, one directory each. */
export const RELEASES_DIR = "releases";
/** Default largest accepted accuracy drop of int8 vs the new fp32 on a release's labelled set. */
export const DEFAULT_RELEASE_MAX_ACCURACY_DROP = 0.01;
/** Room kept free beyond a release's missing bytes: its int8 candidate and the store's growth. */
const DISK_MARGIN_BYTES = 64 * 1024 * 1024;

/** What the release job needs beyond a recalibration's. */
export interface ReleaseJobDeps extends RecalibrationDeps {
  stateDir: string;
  /** Trusted release public keys. */
  releaseKeys: readonly string[];
  /** Releases kept on disk at most. */
  keep: number;
  /** Labels of the model being served, to refuse a release of another task. */
  servingLabels: () => readonly string[] | undefined;
  /** Directory of the tokenizer the agent serves with. */
  servingTokenizerDir: () => string | undefined;
  /** Free bytes of the file system holding `dir`. @defaultValue statfs */
  freeBytes?: (dir: string) => number;
}

/** `<stateDir>/releases`. */
export function releasesRoot(stateDir: string): string {
  return join(stateDir, RELEASES_DIR);
}

/** The release a version's metrics say it came from, and its fp32 base. */
export function releaseOf(
  metrics: Record<string, unknown> | undefined,
): { id: string; base: string } | undefined {
  const r = metrics?.["release"];
  if (typeof r !== "object" || r === null) return undefined;
  const { id, base } = r as Record<string, unknown>;
  return typeof id === "string" && typeof base === "string" ? { id, base } : undefined;
}

function rejected(reasons: string[], error: QuantdError, extra: Record<string, unknown>): JobVerdict {
  return { state: "REJECTED", result: { decision: "rejected", reasons, ...extra }, error };
}

/** Reads a response body up to `max` bytes. @throws REQUEST_TOO_LARGE beyond */
async function boundedText(res: Response, max: number): Promise<string> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  if (res.body === null) return "";
  for await (const chunk of res.body) {
    n += chunk.byteLength;
    if (n > max) throw new QuantdError("REQUEST_TOO_LARGE", `the release manifest is over ${max} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function baseUrl(url: string): string {
  return url.endsWith("/") ? url : `${url}/`;
}

/** Fetches and verifies the signed manifest. @throws COMMAND_UNAUTHORIZED | DATA_MALFORMED | FLEET_UNAVAILABLE */
async function fetchRelease(
  p: ReleaseParams,
  keys: readonly string[],
  signal: AbortSignal,
): Promise<SignedRelease> {
  let res: Response;
  try {
    res = await fetch(`${baseUrl(p.url)}releases/${p.release}`, { signal });
  } catch (err) {
    throw new QuantdError("FLEET_UNAVAILABLE", `cannot reach ${p.url} for release ${p.release}`, {
      cause: err,
    });
  }
  if (!res.ok) {
    throw new QuantdError("FLEET_UNAVAILABLE", `${p.url} answered ${res.status} for release ${p.release}`);
  }
  const body = JSON.parse(await boundedText(res, 2 * MAX_MANIFEST_BYTES + 4096)) as {
    manifest?: unknown;
    signature?: { kid?: unknown; sig?: unknown };
  };
  const sig = body.signature;
  if (typeof body.manifest !== "string")
    throw new QuantdError("DATA_MALFORMED", "the release has no manifest");
  const signature =
    typeof sig?.kid === "string" && typeof sig.sig === "string" ? { kid: sig.kid, sig: sig.sig } : undefined;
  return verifyRelease(keys, body.manifest, signature, p.release);
}

/** Why this agent cannot serve the release's model in place of its own (another task, another tokenizer). */
function incompatibility(m: ReleaseManifest, deps: ReleaseJobDeps): string[] {
  const reasons: string[] = [];
  const serving = deps.servingLabels();
  if (m.labels !== undefined && serving !== undefined && m.labels.join("\n") !== serving.join("\n")) {
    reasons.push(
      `the release's labels [${m.labels.join(", ")}] are not the served model's [${serving.join(", ")}]`,
    );
  }
  const tok = m.files.find((f) => f.path === "tokenizer.json");
  const dir = deps.servingTokenizerDir();
  const local = dir === undefined ? undefined : join(dir, "tokenizer.json");
  if (tok !== undefined && local !== undefined && existsSync(local)) {
    const sha = sha256FileSync(local);
    if (sha !== tok.sha256) {
      reasons.push(
        "the release's tokenizer.json differs from the one this agent serves with (a release keeps the tokenizer; change it with the agent's tokenizerDir and a restart)",
      );
    }
  }
  return reasons;
}

/** Bytes fetched for a release over every attempt, kept beside its partial files. */
interface DownloadLog {
  bytes: number;
  attempts: number;
}

function readLog(path: string): DownloadLog {
  try {
    const v = JSON.parse(readFileSync(path, "utf8")) as DownloadLog;
    return { bytes: Number(v.bytes) || 0, attempts: Number(v.attempts) || 0 };
  } catch {
    return { bytes: 0, attempts: 0 };
  }
}

/** Replaces the download log atomically and durably (core/files.ts; a full disk is DISK_FULL). */
function writeLog(path: string, log: DownloadLog): void {
  writeFileDurableSync(path, JSON.stringify(log), 0o640);
}

/**
 * Downloads the release's files into `<root>/<id>.part/`, resuming each from
 * its current size, then verifies them and renames the directory into place.
 *
 * @throws DISK_FULL when the missing bytes do not fit; DATA_MISMATCH when a file does not match the manifest (it is deleted); FLEET_UNAVAILABLE
 */
async function download(
  rel: SignedRelease,
  p: ReleaseParams,
  root: string,
  ctx: JobContext,
  freeBytes: (dir: string) => number,
): Promise<{ dir: string; log: DownloadLog }> {
  const dest = join(root, rel.id);
  const part = `${dest}.part`;
  const logPath = join(part, ".download.json");
  if (existsSync(dest)) return { dir: dest, log: readLog(join(dest, ".download.json")) };
  mkdirSync(part, { recursive: true });
  const log = readLog(logPath);
  log.attempts++;
  writeLog(logPath, log);
  const have = (f: { path: string; size: number }): number => {
    try {
      return Math.min(statSync(join(part, f.path)).size, f.size);
    } catch {
      return 0;
    }
  };
  const missing = rel.manifest.files.reduce((a, f) => a + f.size - have(f), 0);
  const free = freeBytes(root);
  if (free < missing + DISK_MARGIN_BYTES) {
    throw new QuantdError(
      "DISK_FULL",
      `release ${rel.manifest.version} needs ${missing} more bytes plus ${DISK_MARGIN_BYTES} of room; ${free} are free`,
      { details: { missing, free } },
    );
  }
  const total = releaseBytes(rel.manifest);
  let done = total - missing;
  for (const f of rel.manifest.files) {
    const path = join(part, f.path);
    if (existsSync(path) && statSync(path).size > f.size) truncateSync(path, 0);
    let size = existsSync(path) ? statSync(path).size : 0;
    if (size < f.size) {
      const res = await fetch(`${baseUrl(p.url)}releases/${rel.id}/files/${f.path}`, {
        signal: ctx.signal,
        headers: size > 0 ? { range: `bytes=${size}-` } : {},
      }).catch((err: unknown) => {
        throw new QuantdError("FLEET_UNAVAILABLE", `cannot download ${f.path} of release ${rel.id}`, {
          cause: ctx.signal.aborted ? ctx.signal.reason : err,
        });
      });
      if (res.status === 200 && size > 0) {
        // A server without ranges sends the whole file again: start it over.
        truncateSync(path, 0);
        size = 0;
      } else if (res.status !== 200 && res.status !== 206) {
        throw new QuantdError("FLEET_UNAVAILABLE", `${p.url} answered ${res.status} for ${f.path}`);
      }
      const fd = openSync(path, size > 0 ? "a" : "w");
      let unlogged = 0;
      try {
        if (res.body !== null) {
          for await (const chunk of res.body) {
            // Never past the size the signed manifest gives: a server cannot fill the disk.
            if (size + chunk.byteLength > f.size) {
              throw new QuantdError(
                "DATA_MISMATCH",
                `${f.path} is longer than the ${f.size} bytes its manifest gives`,
              );
            }
            writeSync(fd, chunk);
            size += chunk.byteLength;
            done += chunk.byteLength;
            log.bytes += chunk.byteLength;
            // The count survives a kill -9 to within a MiB.
            unlogged += chunk.byteLength;
            if (unlogged >= 1024 * 1024) {
              unlogged = 0;
              writeLog(logPath, log);
            }
            ctx.check();
          }
        }
      } finally {
        closeSync(fd);
        writeLog(logPath, log);
      }
      ctx.stage("download", 0.02 + 0.08 * (done / Math.max(1, total)));
    }
    if (size !== f.size || (await sha256File(path)) !== f.sha256) {
      rmSync(path, { force: true });
      throw new QuantdError(
        "DATA_MISMATCH",
        `${f.path} of release ${rel.manifest.version} does not match its signed manifest (SHA-256 or size); it was deleted and nothing was loaded`,
        { details: { file: f.path } },
      );
    }
  }
  renameSync(part, dest);
  return { dir: dest, log };
}

/** Removes the oldest releases beyond `keep`, never one in use (serving, rollback target) or the current one. */
function pruneReleases(
  root: string,
  keep: number,
  inUse: ReadonlySet<string>,
  log: (line: string) => void,
): void {
  let names: string[];
  try {
    names = readdirSync(root).filter((n) => RELEASE_ID_PATTERN.test(n.replace(/\.part$/, "")));
  } catch {
    return;
  }
  const byAge = names
    .map((n) => ({ n, at: statSync(join(root, n)).mtimeMs }))
    .sort((a, b) => b.at - a.at)
    .map((x) => x.n);
  let kept = 0;
  for (const n of byAge) {
    if (inUse.has(n.replace(/\.part$/, ""))) continue;
    if (++kept <= keep) continue;
    rmSync(join(root, n), { recursive: true, force: true });
    log(`release ${n} removed (at most ${keep} kept)`);
  }
}

/** The labelled check of a candidate on the release's validation TSV. */
function labelledVet(
  dir: string,
  m: ReleaseManifest,
  maxDrop: number,
  facts: Record<string, unknown>,
): ((candidate: string, ctx: JobContext) => Promise<string[]>) | undefined {
  const tsv = m.validation;
  if (tsv === undefined) return undefined;
  return async (candidate, ctx) => {
    const fp32 = await loadClassifier(join(dir, m.model), { tokenizerDir: dir });
    const int8 = await loadClassifier(candidate, { tokenizerDir: dir });
    try {
      const samples = await readSamplesTsv(join(dir, tsv), { requireLabels: true, labels: fp32.labels });
      ctx.check();
      const ref = await evaluate(fp32, samples);
      ctx.check();
      const got = await evaluate(int8, samples, { compare: fp32 });
      const a32 = ref.accuracy ?? 0;
      const a8 = got.accuracy ?? 0;
      facts.labelled = {
        samples: samples.length,
        fp32Accuracy: a32,
        int8Accuracy: a8,
        agreement: got.agreement,
      };
      return a8 < a32 - maxDrop
        ? [
            `int8 accuracy ${a8.toFixed(4)} on the release's ${samples.length} labelled samples is more than ${maxDrop} below the new fp32's ${a32.toFixed(4)}`,
          ]
        : [];
    } finally {
      await int8.release();
      await fp32.release();
    }
  };
}

/** The release job's handler. */
export function createReleaseHandler(deps: ReleaseJobDeps): JobHandler {
  const root = releasesRoot(deps.stateDir);
  const freeBytes =
    deps.freeBytes ??
    ((dir: string): number => {
      const s = statfsSync(dir);
      return Number(s.bavail) * Number(s.bsize);
    });
  return {
    reportResult: slimRecalibrationResult,
    async run(ctx) {
      const cmd = parseCommand("release", ctx.job.params);
      if (cmd.name !== "release") throw new QuantdError("INTERNAL", "not a release job");
      const p = cmd.params;
      const facts: Record<string, unknown> = { release: { id: p.release } };

      // ---- 1. manifest: nothing in it is read before its signature and id hold
      ctx.stage("manifest", 0.01);
      let rel: SignedRelease;
      try {
        rel = await fetchRelease(p, deps.releaseKeys, ctx.signal);
      } catch (err) {
        const e = QuantdError.from(err);
        if (e.code === "COMMAND_UNAUTHORIZED" || e.code === "DATA_MALFORMED") {
          return rejected([e.message], e, facts);
        }
        throw e;
      }
      const m = rel.manifest;
      facts.release = { id: rel.id, version: m.version, bytes: releaseBytes(m), kid: rel.signature.kid };
      const reasons = incompatibility(m, deps);
      if (reasons.length > 0) {
        return rejected(reasons, new QuantdError("MODEL_TASK_MISMATCH", reasons.join("; ")), facts);
      }

      // ---- 2. download, resumable and bounded, verified file by file
      ctx.stage("download", 0.02);
      mkdirSync(root, { recursive: true });
      let dir: string;
      const t0 = performance.now();
      try {
        const got = await download(rel, p, root, ctx, freeBytes);
        dir = got.dir;
        facts.download = {
          bytes: got.log.bytes,
          attempts: got.log.attempts,
          releaseBytes: releaseBytes(m),
          // This attempt's wall time (a resumed download's earlier attempts are not in it).
          ms: Math.round(performance.now() - t0),
        };
      } catch (err) {
        const e = QuantdError.from(err);
        if (e.code === "DATA_MISMATCH") return rejected([e.message], e, facts);
        throw e;
      }
      const inUse = new Set<string>([rel.id]);
      const active = deps.store.models.active();
      for (const v of [active, ...deps.store.models.list("retired")]) {
        const r = releaseOf(v?.metrics);
        if (r !== undefined) inUse.add(r.id);
      }
      pruneReleases(root, deps.keep, inUse, ctx.log);

      // ---- 3. recalibrate on the new fp32 base
      const base = join(dir, m.model);
      const gate = p.gate;
      const recalibration = createRecalibrationHandler({
        ...deps,
        baseModel: base,
        tokenizerDir: dir,
        promoteMetrics: { release: { id: rel.id, version: m.version, base } },
        ...(() => {
          const vet = labelledVet(dir, m, gate?.maxAccuracyDrop ?? DEFAULT_RELEASE_MAX_ACCURACY_DROP, facts);
          return vet === undefined ? {} : { vet };
        })(),
      });
      const verdict = await recalibration.run(ctx);
      const result = { ...(verdict.result as Record<string, unknown>), ...facts };
      return verdict.state === "SUCCEEDED"
        ? { state: "SUCCEEDED", result }
        : { state: "REJECTED", result, error: verdict.error };
    },
  };
}
