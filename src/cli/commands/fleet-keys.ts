/**
 * The signing keys of the fleet commands, each named by a flag or else an
 * environment variable: the operator key (`--key`, `$QUANTD_FLEET_KEY_FILE`)
 * that signs commands, and the release key (`--release-key`,
 * `$QUANTD_RELEASE_KEY_FILE`) that signs releases.
 */
import { readSigningKey, type SigningKey } from "../../fleet/signing.ts";
import type { CommandContext } from "../command.ts";
import { flagString, usageError } from "../parse.ts";

/** Where a key is named: its flag and its environment variable. */
export interface KeySource {
  flag: string;
  env: string;
}

/** The operator key, which signs commands to devices. */
export const OPERATOR_KEY: KeySource = { flag: "key", env: "QUANTD_FLEET_KEY_FILE" };
/** The release key, which signs releases. */
export const RELEASE_KEY: KeySource = { flag: "release-key", env: "QUANTD_RELEASE_KEY_FILE" };

/** The key file's path from the flag, else the environment; undefined when neither names one. */
export function keyPath(ctx: CommandContext, source: KeySource): string | undefined {
  const path = flagString(ctx.flags, source.flag) ?? process.env[source.env];
  return path === undefined || path === "" ? undefined : path;
}

/**
 * The key, which the command cannot do without.
 *
 * @param why - the usage error's message when neither the flag nor the variable names a file
 * @throws USAGE when neither is given; FILE_NOT_FOUND | CONFIG_INVALID from the file
 */
export function requiredKey(ctx: CommandContext, source: KeySource, why: string): SigningKey {
  const path = keyPath(ctx, source);
  if (path === undefined) throw usageError(why);
  return readSigningKey(path);
}
