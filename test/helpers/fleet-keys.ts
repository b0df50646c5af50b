/**
 * Keys for fleet tests that sign as the real fleet does: one operator key the
 * test devices trust (commands are refused otherwise), written to a file for
 * the CLI's `--key`, and enrolment of a link's device key at a controller
 * store (the controller stores nothing from a device it does not know).
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { FleetStore } from "../../src/fleet/controller/store.ts";
import { generateSigningKey, type SigningKey, writeNewSigningKey } from "../../src/fleet/signing.ts";

const dir = mkdtempSync(join(tmpdir(), "quantd-test-keys-"));

/** The private key file of {@link operator}, for `quantd fleet … --key`. */
export const OPERATOR_KEY_FILE = join(dir, "operator.key");

/** The operator key the test devices trust. */
export const operator: SigningKey = writeNewSigningKey(OPERATOR_KEY_FILE);

/** `operatorKeys` for a test device's fleet config. */
export const OPERATOR_KEYS: readonly string[] = [operator.publicKey];

/** Enrols each `[device, publicKey]` of `fleet` in a controller's store. */
export async function enroll(
  store: FleetStore,
  fleet: string,
  devices: readonly (readonly [string, string])[],
): Promise<void> {
  for (const [device, key] of devices) await store.enroll(fleet, device, key, Date.now());
}

/** A new device key (enrol its `publicKey` before the device first speaks, or its retained status is refused). */
export function newDeviceKey(): SigningKey {
  return generateSigningKey().key;
}
