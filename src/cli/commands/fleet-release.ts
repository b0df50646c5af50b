/**
 * `quantd fleet release create DIR | list`: packs an fp32 model directory into
 * a signed, content-addressed release in the controller's store (metadata in
 * its database, files under `--releases-dir`), which `quantd fleet serve`
 * serves to devices over HTTP.
 */
import type { FleetStore } from "../../fleet/controller/store.ts";
import { publishRelease } from "../../fleet/controller/release-routes.ts";
import { buildRelease, releaseBytes } from "../../fleet/release.ts";
import { readSigningKey, type SigningKey } from "../../fleet/signing.ts";
import { redactUrl } from "../../redact.ts";
import type { CommandContext } from "../command.ts";
import { flagBool, flagString, usageError } from "../parse.ts";
import { renderTable } from "../render.ts";

/** Default directory of release files (beside the default database). */
export const DEFAULT_RELEASES_DIR = "quantd-releases";

/** The release signing key: `--release-key FILE`, else `$QUANTD_RELEASE_KEY_FILE`. */
function releaseKey(ctx: CommandContext): SigningKey {
  const path = flagString(ctx.flags, "release-key") ?? process.env.QUANTD_RELEASE_KEY_FILE;
  if (path === undefined || path === "") {
    throw usageError(
      "releases are signed: pass --release-key FILE (a key from quantd fleet keygen, trusted by the devices' fleet.releaseKeys) or set QUANTD_RELEASE_KEY_FILE",
    );
  }
  return readSigningKey(path);
}

/** Runs `quantd fleet release …` against the controller's store. */
export async function releaseCommand(
  ctx: CommandContext,
  openStore: (db: string) => Promise<FleetStore>,
): Promise<number> {
  const action = ctx.positionals[1];
  const dbPath = flagString(ctx.flags, "db") ?? "quantd-fleet.db";
  if (action === "create") {
    const dir = ctx.positionals[2];
    if (dir === undefined || ctx.positionals.length > 3) {
      throw usageError("quantd fleet release create DIR --release-key FILE --version NAME [--notes TEXT]");
    }
    const version = flagString(ctx.flags, "version");
    if (version === undefined || version.trim() === "")
      throw usageError("quantd fleet release create needs --version NAME");
    const key = releaseKey(ctx);
    const notes = flagString(ctx.flags, "notes");
    const task = flagString(ctx.flags, "task");
    const release = await buildRelease(dir, {
      key,
      version,
      ...(notes !== undefined ? { notes } : {}),
      ...(task !== undefined ? { task } : {}),
    });
    const releasesDir = flagString(ctx.flags, "releases-dir") ?? DEFAULT_RELEASES_DIR;
    const store = await openStore(dbPath);
    let added: boolean;
    try {
      added = await publishRelease(store, releasesDir, dir, release);
    } finally {
      await store.close();
    }
    if (flagBool(ctx.flags, "json")) {
      ctx.out(
        JSON.stringify({ id: release.id, added, manifest: release.manifest, signature: release.signature }),
      );
    } else {
      ctx.err(
        `release ${version}: ${release.manifest.files.length} files, ${releaseBytes(release.manifest)} bytes, signed by ${release.signature.kid}; in ${redactUrl(dbPath)} and ${releasesDir}`,
      );
      ctx.out(release.id);
    }
    return 0;
  }
  if (action === "list") {
    const store = await openStore(dbPath);
    try {
      const releases = await store.releases();
      if (flagBool(ctx.flags, "json")) {
        ctx.out(JSON.stringify(releases.map(({ manifest: _m, ...r }) => r)));
        return 0;
      }
      const rows = releases.map((r) => [
        r.id.slice(0, 16),
        r.version,
        r.task,
        String(r.bytes),
        new Date(r.createdAt).toISOString(),
        r.notes.slice(0, 40),
      ]);
      for (const line of renderTable([["id", "version", "task", "bytes", "created", "notes"], ...rows])) {
        ctx.out(line);
      }
      return 0;
    } finally {
      await store.close();
    }
  }
  throw usageError("quantd fleet release needs create DIR or list");
}
