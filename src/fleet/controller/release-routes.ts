/**
 * Releases over HTTP, for devices to download: `GET /releases/{id}` (the
 * manifest's exact bytes as a JSON string, and its signature) and
 * `GET /releases/{id}/files/{name}` with single-range requests
 * (`Range: bytes=START-[END]`), so a device interrupted mid-download asks only
 * for what it lacks. The content is signed and content-addressed: a device
 * checks everything it receives, so the routes need no authentication of
 * their own.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { QuantdError } from "../../errors.ts";
import {
  RELEASE_FILE_PATTERN,
  RELEASE_ID_PATTERN,
  releaseBytes,
  type SignedRelease,
  storeReleaseFiles,
} from "../release.ts";
import type { FleetStore } from "./store.ts";

function problem(code: "NOT_FOUND" | "REQUEST_INVALID", message: string, status: number): Response {
  return new Response(JSON.stringify({ error: new QuantdError(code, message).toJSON() }), {
    status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

/**
 * The byte range a `Range` header asks of a file of `size` bytes: undefined
 * for the whole file, `"unsatisfiable"` past its end or when malformed
 * (multiple ranges are not served: a download asks for one).
 */
export function parseRange(
  header: string | null,
  size: number,
): { start: number; end: number } | "unsatisfiable" | undefined {
  if (header === null) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (m === null || (m[1] === "" && m[2] === "")) return "unsatisfiable";
  if (m[1] === "") {
    const n = Number(m[2]);
    if (n === 0) return "unsatisfiable";
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (!Number.isSafeInteger(start) || start >= size || end < start) return "unsatisfiable";
  return { start, end };
}

/**
 * Answers a `/releases/…` request (path parts after the leading slash), or
 * undefined when the path is not one of these routes.
 */
export async function serveRelease(
  store: FleetStore,
  releasesDir: string | undefined,
  parts: readonly string[],
  req: Request,
): Promise<Response | undefined> {
  if (parts[0] !== "releases") return undefined;
  const id = parts[1];
  if (id === undefined || !RELEASE_ID_PATTERN.test(id)) return problem("NOT_FOUND", "no such release", 404);
  const rec = await store.release(id);
  if (rec === undefined) return problem("NOT_FOUND", `release ${id} not found`, 404);
  if (parts.length === 2) {
    return new Response(JSON.stringify({ id, manifest: rec.manifest, signature: rec.signature }), {
      headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
    });
  }
  const name = parts[3];
  if (parts.length !== 4 || parts[2] !== "files" || name === undefined || !RELEASE_FILE_PATTERN.test(name)) {
    return problem("NOT_FOUND", "no such release file", 404);
  }
  if (releasesDir === undefined) return problem("NOT_FOUND", "this controller serves no release files", 404);
  const path = join(releasesDir, id, name);
  if (!existsSync(path)) return problem("NOT_FOUND", `release ${id} has no file ${name}`, 404);
  const size = statSync(path).size;
  const range = parseRange(req.headers.get("range"), size);
  const common = {
    "accept-ranges": "bytes",
    "content-type": "application/octet-stream",
    // Content-addressed: the bytes of a release file never change.
    "cache-control": "public, max-age=31536000, immutable",
    etag: `"${id}-${name}"`,
  };
  if (range === "unsatisfiable") {
    return new Response(null, { status: 416, headers: { ...common, "content-range": `bytes */${size}` } });
  }
  const file = Bun.file(path);
  if (range === undefined) {
    return new Response(file, { headers: { ...common, "content-length": String(size) } });
  }
  return new Response(file.slice(range.start, range.end + 1), {
    status: 206,
    headers: {
      ...common,
      "content-range": `bytes ${range.start}-${range.end}/${size}`,
      "content-length": String(range.end - range.start + 1),
    },
  });
}

/**
 * Puts a built release into the controller's keeping: its files under
 * `releasesDir` first (a release in the store is one whose files are all
 * there), then its manifest and signature in the store.
 *
 * @returns false when the store already held it
 */
export async function publishRelease(
  store: FleetStore,
  releasesDir: string,
  srcDir: string,
  release: SignedRelease,
): Promise<boolean> {
  await storeReleaseFiles(releasesDir, srcDir, release);
  return await store.addRelease({
    id: release.id,
    version: release.manifest.version,
    task: release.manifest.task,
    notes: release.manifest.notes,
    bytes: releaseBytes(release.manifest),
    createdAt: release.manifest.createdAt,
    manifest: release.manifestText,
    signature: release.signature,
  });
}
