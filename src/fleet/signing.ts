/**
 * Ed25519 signatures (node:crypto) on fleet messages, so that being able to
 * publish on the broker is not enough to command a device or speak for one.
 * A signature covers the topic (fleet, device, command or message kind) and
 * the payload bytes, and travels in two MQTT 5 user properties
 * ({@link SIG_PROPERTY}, {@link KID_PROPERTY}) so payloads stay as they were.
 * Public keys are written as the base64url of their 32 raw bytes.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { writeFailure, writeFileDurableSync } from "../core/files.ts";
import { QuantdError } from "../errors.ts";

/** User property carrying the signature (base64url). */
export const SIG_PROPERTY = "quantd-sig";
/** User property naming the signing key ({@link keyId}). */
export const KID_PROPERTY = "quantd-kid";
/** User property carrying a device's public key on its status, for trust on first use. */
export const PUB_PROPERTY = "quantd-pub";

/** What is signed: a domain tag, the topic and the payload, so a signature is valid for one topic only. */
function signedBytes(topic: string, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`quantd-fleet-v1\n${topic}\n`, "utf8"), payload]);
}

/** A short, stable id of a public key: 16 hex digits of its SHA-256. */
export function keyId(publicKey: string): string {
  return createHash("sha256").update(publicKey).digest("hex").slice(0, 16);
}

/**
 * Parses a public key written as {@link SigningKey.publicKey}.
 *
 * @throws CONFIG_INVALID when it is not a base64url Ed25519 public key
 */
export function parsePublicKey(text: string): KeyObject {
  const x = text.trim();
  if (!/^[A-Za-z0-9_-]{43}$/.test(x)) {
    throw new QuantdError(
      "CONFIG_INVALID",
      `not an Ed25519 public key (43 base64url characters): ${JSON.stringify(x.slice(0, 60))}`,
      {
        details: { key: "publicKey" },
      },
    );
  }
  try {
    return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", "not an Ed25519 public key", {
      cause: err,
      details: { key: "publicKey" },
    });
  }
}

/** A private key able to sign fleet messages. */
export interface SigningKey {
  /** The public half, base64url of the raw 32 bytes. */
  readonly publicKey: string;
  /** {@link keyId} of the public key. */
  readonly kid: string;
  /** The user properties that sign `payload` on `topic`. */
  sign(topic: string, payload: Uint8Array): Record<string, string>;
}

function fromPrivate(key: KeyObject): SigningKey {
  const jwk = createPublicKey(key).export({ format: "jwk" });
  const publicKey = String(jwk.x);
  const kid = keyId(publicKey);
  return {
    publicKey,
    kid,
    sign(topic, payload) {
      const sig = sign(null, signedBytes(topic, payload), key).toString("base64url");
      return { [SIG_PROPERTY]: sig, [KID_PROPERTY]: kid };
    },
  };
}

/** A new key pair: the signing key and its private half as PKCS#8 PEM (to keep in a 0600 file). */
export function generateSigningKey(): { key: SigningKey; pem: string } {
  const { privateKey } = generateKeyPairSync("ed25519");
  return { key: fromPrivate(privateKey), pem: String(privateKey.export({ format: "pem", type: "pkcs8" })) };
}

/**
 * A signing key from PKCS#8 PEM text.
 *
 * @throws CONFIG_INVALID when it is not an Ed25519 private key
 */
export function parseSigningKey(pem: string, what = "signing key"): SigningKey {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new QuantdError("CONFIG_INVALID", `${what} is not a PEM private key`, { cause: err });
  }
  if (key.asymmetricKeyType !== "ed25519") {
    throw new QuantdError("CONFIG_INVALID", `${what} must be an Ed25519 key, got ${key.asymmetricKeyType}`);
  }
  return fromPrivate(key);
}

/**
 * Reads a signing key file.
 *
 * @throws FILE_NOT_FOUND when it cannot be read; CONFIG_INVALID when it is not an Ed25519 private key
 */
export function readSigningKey(path: string): SigningKey {
  let pem: string;
  try {
    pem = readFileSync(path, "utf8");
  } catch (err) {
    throw new QuantdError("FILE_NOT_FOUND", `cannot read the signing key ${path}`, {
      cause: err,
      details: { path },
    });
  }
  return parseSigningKey(pem, path);
}

/**
 * Writes a new key pair: the private key to `path` (mode 0600, written
 * aside then renamed so a crash leaves no half key) and the public key to
 * `path.pub`. Refuses to overwrite an existing key.
 *
 * @throws STATE_CONFLICT when `path` exists; FILE_WRITE_FAILED when it cannot be written
 */
export function writeNewSigningKey(path: string): SigningKey {
  if (existsSync(path)) {
    throw new QuantdError("STATE_CONFLICT", `${path} exists; refusing to overwrite a key`, {
      details: { path },
    });
  }
  const { key, pem } = generateSigningKey();
  try {
    mkdirSync(dirname(path), { recursive: true });
    writeFileDurableSync(path, pem, 0o600);
    writeFileDurableSync(`${path}.pub`, `${key.publicKey}\n`);
  } catch (err) {
    throw writeFailure(err, `cannot write the key ${path}`, { path });
  }
  return key;
}

/** The key at `path`, created on first use (a device's own key, kept in its state directory). */
export function loadOrCreateSigningKey(path: string): { key: SigningKey; created: boolean } {
  if (existsSync(path)) return { key: readSigningKey(path), created: false };
  return { key: writeNewSigningKey(path), created: true };
}

/** Why a message's signature was not accepted. */
export type SignatureProblem = "unsigned" | "unknown-key" | "bad-signature";

/** Public keys trusted to sign, by key id (an operator list: several for rotation). */
export interface Keyring {
  readonly size: number;
  /**
   * Checks the signature properties of a message on `topic`; undefined when
   * it is valid and made by a key of the ring.
   */
  check(
    topic: string,
    payload: Uint8Array,
    props: Record<string, string> | undefined,
  ): SignatureProblem | undefined;
}

/** Checks one message against one public key. */
export function verifySignature(
  publicKey: KeyObject,
  topic: string,
  payload: Uint8Array,
  props: Record<string, string> | undefined,
): SignatureProblem | undefined {
  const sig = props?.[SIG_PROPERTY];
  if (sig === undefined) return "unsigned";
  try {
    return verify(null, signedBytes(topic, payload), publicKey, Buffer.from(sig, "base64url"))
      ? undefined
      : "bad-signature";
  } catch {
    return "bad-signature";
  }
}

/**
 * A keyring of public keys.
 *
 * @throws CONFIG_INVALID naming the bad key
 */
export function createKeyring(publicKeys: readonly string[]): Keyring {
  const byKid = new Map<string, KeyObject>();
  for (const k of publicKeys) byKid.set(keyId(k.trim()), parsePublicKey(k));
  return {
    size: byKid.size,
    check(topic, payload, props) {
      const kid = props?.[KID_PROPERTY];
      if (props?.[SIG_PROPERTY] === undefined || kid === undefined) return "unsigned";
      const key = byKid.get(kid);
      if (key === undefined) return "unknown-key";
      return verifySignature(key, topic, payload, props);
    },
  };
}
