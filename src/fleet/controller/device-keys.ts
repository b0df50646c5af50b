/**
 * The controller's check that a device message was signed by that device's
 * enrolled key. Keys come from the {@link FleetStore} and are cached: an
 * enrolled key until a signature fails (then the store is read again, at most
 * every {@link RECHECK_MS}, so a re-enrolled key takes over), a device
 * without one for {@link RECHECK_MS} (so `quantd fleet enroll` writing the
 * database of a running controller takes effect within seconds, and a flood
 * from an unknown device costs one read per interval).
 */
import type { KeyObject } from "node:crypto";
import { PUB_PROPERTY, parsePublicKey, SIG_PROPERTY, verifySignature } from "../signing.ts";
import type { FleetStore } from "./store.ts";

/** How long a store read about one device's key is trusted before it is read again. */
export const RECHECK_MS = 5_000;

/** The outcome of checking one message. */
export type DeviceMessageCheck =
  | { ok: true }
  | { ok: false; reason: "unsigned" | "bad-signature" }
  /** No enrolled key; `proposed` when this message presented a self-signed key now recorded as pending. */
  | { ok: false; reason: "not-enrolled"; proposed: boolean };

/** Checks device messages against enrolled keys. */
export interface DeviceKeys {
  check(
    fleet: string,
    device: string,
    topic: string,
    payload: Uint8Array,
    props: Record<string, string> | undefined,
  ): Promise<DeviceMessageCheck>;
  /** Forgets what is cached about a device (after an enrolment changed). */
  forget(fleet: string, device: string): void;
}

interface Entry {
  key: KeyObject | undefined;
  readAt: number;
}

/** Device-key checks backed by `store`. */
export function createDeviceKeys(store: FleetStore, now: () => number = Date.now): DeviceKeys {
  const cache = new Map<string, Entry>();
  const read = async (id: string, fleet: string, device: string): Promise<Entry> => {
    const e = await store.enrolment(fleet, device);
    const entry: Entry = {
      key: e?.state === "enrolled" ? parsePublicKey(e.publicKey) : undefined,
      readAt: now(),
    };
    cache.set(id, entry);
    return entry;
  };
  // A device that is not enrolled but signs with the key it presents is proposed for trust on first use.
  const propose = async (
    fleet: string,
    device: string,
    topic: string,
    payload: Uint8Array,
    props: Record<string, string>,
  ): Promise<boolean> => {
    const pub = props[PUB_PROPERTY];
    if (pub === undefined) return false;
    let key: KeyObject;
    try {
      key = parsePublicKey(pub);
    } catch {
      return false;
    }
    if (verifySignature(key, topic, payload, props) !== undefined) return false;
    return await store.proposeEnrolment(fleet, device, pub.trim(), now());
  };
  return {
    async check(fleet, device, topic, payload, props) {
      if (props?.[SIG_PROPERTY] === undefined) {
        return { ok: false, reason: "unsigned" };
      }
      const id = `${fleet}/${device}`;
      let entry = cache.get(id);
      const stale = entry === undefined || now() - entry.readAt >= RECHECK_MS;
      if (entry === undefined || (entry.key === undefined && stale)) entry = await read(id, fleet, device);
      if (entry.key === undefined) {
        return {
          ok: false,
          reason: "not-enrolled",
          proposed: await propose(fleet, device, topic, payload, props),
        };
      }
      if (verifySignature(entry.key, topic, payload, props) === undefined) return { ok: true };
      if (stale) {
        entry = await read(id, fleet, device);
        if (entry.key !== undefined && verifySignature(entry.key, topic, payload, props) === undefined) {
          return { ok: true };
        }
      }
      return { ok: false, reason: "bad-signature" };
    },
    forget(fleet, device) {
      cache.delete(`${fleet}/${device}`);
    },
  };
}
