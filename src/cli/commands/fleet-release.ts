/**
 * `quantd fleet release create DIR | list`: packs an fp32 model directory into
 * a signed, content-addressed release in the controller's store (metadata in
 * its database, files under `--releases-dir`), which `quantd fleet serve`
 * serves to devices over HTTP. `quantd fleet rollout start|status|pause|
 * resume|abort`: rollouts live in the same store, where every controller
 * replica's engine picks them up.
 */
import type { FleetStore } from "../../fleet/controller/store.ts";
import { publishRelease } from "../../fleet/controller/release-routes.ts";
import {
  changeRollout,
  createRollout,
  findRelease,
  findRollout,
  type Rollout,
  rolloutSpec,
} from "../../fleet/controller/rollout.ts";
import { buildRelease, releaseBytes } from "../../fleet/release.ts";
import type { SigningKey } from "../../fleet/signing.ts";
import { redactUrl } from "../../redact.ts";
import type { CommandContext } from "../command.ts";
import { flagBool, flagInt, flagString, usageError } from "../parse.ts";
import { renderTable } from "../render.ts";
import { RELEASE_KEY, requiredKey } from "./fleet-keys.ts";

/** Default directory of release files (beside the default database). */
export const DEFAULT_RELEASES_DIR = "quantd-releases";

/** The release signing key: `--release-key FILE`, else `$QUANTD_RELEASE_KEY_FILE`. */
function releaseKey(ctx: CommandContext): SigningKey {
  return requiredKey(
    ctx,
    RELEASE_KEY,
    "releases are signed: pass --release-key FILE (a key from quantd fleet keygen, trusted by the devices' fleet.releaseKeys) or set QUANTD_RELEASE_KEY_FILE",
  );
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

/** One line per wave and device of a rollout, for `rollout status`. */
function describeRollout(r: Rollout): string[] {
  const b = r.body;
  const lines = [
    `rollout ${r.id}: release ${b.releaseVersion} (${r.release.slice(0, 16)}) on fleet ${r.fleet}: ${r.state}` +
      (b.haltReason !== undefined ? ` — ${b.haltReason}` : ""),
  ];
  const rows: string[][] = [
    ["wave", "device", "state", "agreement", "latency ratio", "error rate", "reason"],
  ];
  const pct = (v: number | undefined): string => (v === undefined ? "-" : `${(v * 100).toFixed(2)} %`);
  const fix = (v: number | undefined, n: number): string => (v === undefined ? "-" : v.toFixed(n));
  b.waves.forEach((w, i) => {
    for (const name of w.devices) {
      const d = b.devices[name]!;
      const f = d.figures ?? {};
      rows.push([
        `${i + 1} ${w.state}`,
        name,
        d.state,
        pct(f.agreement),
        fix(f.telemetryLatencyRatio ?? f.latencyRatio, 3),
        fix(f.errorRate, 4),
        (d.reason ?? "").slice(0, 60),
      ]);
    }
  });
  return [...lines, ...renderTable(rows)];
}

/** Runs `quantd fleet rollout start|status|pause|resume|abort` against the controller's store. */
export async function rolloutCommand(
  ctx: CommandContext,
  fleet: string,
  openStore: (db: string) => Promise<FleetStore>,
): Promise<number> {
  const action = ctx.positionals[1];
  const arg = ctx.positionals[2];
  const store = await openStore(flagString(ctx.flags, "db") ?? "quantd-fleet.db");
  const print = (r: Rollout): void => {
    if (flagBool(ctx.flags, "json")) ctx.out(JSON.stringify(r));
    else for (const line of describeRollout(r)) ctx.out(line);
  };
  try {
    switch (action) {
      case "start": {
        if (arg === undefined) throw usageError("quantd fleet rollout start RELEASE --fleet NAME");
        const samples = flagInt(ctx.flags, "samples", { min: 1, max: 10_000 });
        // Every flag is checked before the store is asked anything.
        const spec = rolloutSpec({
          waves: flagString(ctx.flags, "waves"),
          gate: flagString(ctx.flags, "gate"),
          soak: flagString(ctx.flags, "soak"),
          pendingExpiry: flagString(ctx.flags, "pending-expiry"),
          ...(samples !== undefined ? { samples } : {}),
        });
        const r = await createRollout(store, { ...spec, fleet, release: await findRelease(store, arg) });
        ctx.err(
          `rollout ${r.id} started; a controller with --key drives it (quantd fleet rollout status ${r.id})`,
        );
        print(r);
        return 0;
      }
      case "status":
        print(await findRollout(store, arg));
        return 0;
      case "pause":
      case "resume":
      case "abort":
        if (arg === undefined) throw usageError(`quantd fleet rollout ${action} ID`);
        print(await changeRollout(store, arg, action));
        return 0;
      default:
        throw usageError(
          "quantd fleet rollout needs start RELEASE, status [ID], pause ID, resume ID or abort ID",
        );
    }
  } finally {
    await store.close();
  }
}
