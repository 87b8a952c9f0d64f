/**
 * Sealed secrets: the one place Aspen encrypts and decrypts secret values
 * (ExecSpec.secret_env). A value is sealed to the agents' X25519 public key
 * where it enters the control plane and opened only by an agent holding the
 * private key, so the scheduler and job-manager store and forward values they
 * cannot read back.
 *
 * Sealed form (all binary, 69 bytes of overhead):
 *
 *   version (1 byte, 0x01) | key id (8) | ephemeral public key (32) | IV (12) | ciphertext | GCM tag (16)
 *
 * - key id: the first 8 bytes of SHA-256 of the recipient's raw public key, so
 *   an agent holding several keys (rotation) picks the right one and a wrong
 *   key is named in the error instead of failing as "corrupt";
 * - key: HKDF-SHA256(X25519(ephemeral private, recipient public),
 *   salt = ephemeral public ‖ recipient public, info = "aspen sealed secret v1"), 32 bytes;
 * - AES-256-GCM with a random IV; the associated data is the variable's name,
 *   so a sealed value cannot be moved to another variable (e.g. from
 *   `DB_PASSWORD` to a `LD_PRELOAD`-like name the policy would treat differently).
 *
 * Keys are PEM files: the public key SPKI ("BEGIN PUBLIC KEY"), the private
 * key PKCS#8 ("BEGIN PRIVATE KEY"); `scripts/secrets-keys.mjs` makes a pair.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError } from "./config.js";
import type { Logger } from "./logger.js";

const VERSION = 0x01;
const KEY_ID_BYTES = 8;
const RAW_KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const HEADER_BYTES = 1 + KEY_ID_BYTES + RAW_KEY_BYTES + IV_BYTES;
/** Bytes a sealed value adds to its plaintext. */
export const SEALED_OVERHEAD = HEADER_BYTES + TAG_BYTES;
const INFO = Buffer.from("aspen sealed secret v1");
const AAD_PREFIX = "aspen.v1.secret_env\0";

/** A sealed value that cannot be opened: wrong key, not a sealed value, or altered. */
export class SecretOpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SecretOpenError";
  }
}

function rawPublicKey(key: KeyObject): Buffer {
  const jwk = key.export({ format: "jwk" });
  if (jwk.crv !== "X25519" || typeof jwk.x !== "string") throw new Error("not an X25519 key");
  return Buffer.from(jwk.x, "base64url");
}

function keyIdOf(rawPublic: Buffer): Buffer {
  return createHash("sha256").update(rawPublic).digest().subarray(0, KEY_ID_BYTES);
}

function deriveKey(shared: Buffer, ephemeralRaw: Buffer, recipientRaw: Buffer): Buffer {
  return Buffer.from(hkdfSync("sha256", shared, Buffer.concat([ephemeralRaw, recipientRaw]), INFO, 32));
}

function aad(name: string): Buffer {
  return Buffer.from(AAD_PREFIX + name);
}

/** A new X25519 key pair as PEM (public: SPKI, private: PKCS#8). */
export function generateSecretsKeyPair(): { publicKeyPem: string; privateKeyPem: string } {
  const { publicKey, privateKey } = generateKeyPairSync("x25519");
  return {
    publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
    privateKeyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

/** Hex key id of a sealed value (to name the key it needs), or "" when it is not a sealed value. */
export function sealedKeyId(sealed: Uint8Array): string {
  if (sealed.length < SEALED_OVERHEAD || sealed[0] !== VERSION) return "";
  return Buffer.from(sealed.subarray(1, 1 + KEY_ID_BYTES)).toString("hex");
}

/** Whether `sealed` has the form of a sealed value (version, length); says nothing of the key. */
export function isSealedForm(sealed: Uint8Array): boolean {
  return sealed.length >= SEALED_OVERHEAD && sealed[0] === VERSION;
}

/** Seals values to one public key. Holds no secret: it cannot open what it seals. */
export class SecretSealer {
  private readonly raw: Buffer;
  /** Hex id of the key (first 8 bytes of the SHA-256 of the raw public key). */
  readonly keyId: string;

  constructor(private readonly publicKey: KeyObject) {
    if (publicKey.asymmetricKeyType !== "x25519") throw new Error("the secrets public key must be an X25519 key");
    this.raw = rawPublicKey(publicKey);
    this.keyId = keyIdOf(this.raw).toString("hex");
  }

  static fromPem(pem: string | Buffer): SecretSealer {
    return new SecretSealer(createPublicKey(pem));
  }

  /** The value of variable `name`, sealed. A new ephemeral key and IV each call. */
  seal(name: string, plaintext: string | Uint8Array): Buffer {
    const ephemeral = generateKeyPairSync("x25519");
    const ephemeralRaw = rawPublicKey(ephemeral.publicKey);
    const shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: this.publicKey });
    const key = deriveKey(shared, ephemeralRaw, this.raw);
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv("aes-256-gcm", key, iv);
    cipher.setAAD(aad(name));
    const body = Buffer.concat([
      cipher.update(typeof plaintext === "string" ? Buffer.from(plaintext) : plaintext),
      cipher.final(),
    ]);
    return Buffer.concat([Buffer.from([VERSION]), keyIdOf(this.raw), ephemeralRaw, iv, body, cipher.getAuthTag()]);
  }
}

/** Opens sealed values with one or more private keys (several while keys rotate). */
export class SecretOpener {
  private readonly keys = new Map<string, { privateKey: KeyObject; raw: Buffer }>();

  constructor(privateKeys: KeyObject[]) {
    for (const privateKey of privateKeys) {
      if (privateKey.asymmetricKeyType !== "x25519") throw new Error("a secrets private key must be an X25519 key");
      const raw = rawPublicKey(createPublicKey(privateKey));
      this.keys.set(keyIdOf(raw).toString("hex"), { privateKey, raw });
    }
  }

  static fromPem(pems: Array<string | Buffer>): SecretOpener {
    return new SecretOpener(pems.map((pem) => createPrivateKey(pem)));
  }

  /** Hex ids of the keys held. */
  get keyIds(): string[] {
    return [...this.keys.keys()];
  }

  /** The plaintext of variable `name`; throws SecretOpenError saying why it cannot (never with any part of the value). */
  open(name: string, sealed: Uint8Array): Buffer {
    if (!isSealedForm(sealed)) throw new SecretOpenError("not a sealed value (unknown version or too short)");
    const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const keyId = buf.subarray(1, 1 + KEY_ID_BYTES).toString("hex");
    const key = this.keys.get(keyId);
    if (!key) {
      throw new SecretOpenError(
        `sealed to key ${keyId}, which this agent does not hold (it holds ${this.keyIds.join(", ") || "none"})`,
      );
    }
    let offset = 1 + KEY_ID_BYTES;
    const ephemeralRaw = buf.subarray(offset, (offset += RAW_KEY_BYTES));
    const iv = buf.subarray(offset, (offset += IV_BYTES));
    const body = buf.subarray(offset, buf.length - TAG_BYTES);
    const tag = buf.subarray(buf.length - TAG_BYTES);
    try {
      const ephemeral = createPublicKey({
        key: { kty: "OKP", crv: "X25519", x: ephemeralRaw.toString("base64url") },
        format: "jwk",
      });
      const shared = diffieHellman({ privateKey: key.privateKey, publicKey: ephemeral });
      const decipher = createDecipheriv("aes-256-gcm", deriveKey(shared, ephemeralRaw, key.raw), iv);
      decipher.setAAD(aad(name));
      decipher.setAuthTag(tag);
      return Buffer.concat([decipher.update(body), decipher.final()]);
    } catch {
      throw new SecretOpenError("does not open: altered, or sealed for another variable name");
    }
  }
}

function readKeyFile(setting: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError([`${setting}=${JSON.stringify(path)}: cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`]);
  }
}

/** The sealer for ASPEN_SECRETS_PUBLIC_KEY_FILE, or undefined when it is not set. Throws ConfigError naming the setting. */
export function loadSecretSealer(path: string | undefined, setting = "ASPEN_SECRETS_PUBLIC_KEY_FILE"): SecretSealer | undefined {
  if (!path) return undefined;
  const pem = readKeyFile(setting, path);
  // createPublicKey would accept a private key too; the control plane must never hold one.
  if (pem.includes("PRIVATE KEY")) {
    throw new ConfigError([
      `${setting}=${JSON.stringify(path)}: holds a private key; give the control plane only the public key (agents keep the private one)`,
    ]);
  }
  try {
    return SecretSealer.fromPem(pem);
  } catch (err) {
    throw new ConfigError([`${setting}=${JSON.stringify(path)}: not an X25519 public key in PEM (${(err as Error).message})`]);
  }
}

/** The opener for the private key files (ASPEN_SECRETS_PRIVATE_KEY_FILE, comma-separated), or undefined when none. */
export function loadSecretOpener(paths: string[], setting = "ASPEN_SECRETS_PRIVATE_KEY_FILE"): SecretOpener | undefined {
  if (paths.length === 0) return undefined;
  const keys = paths.map((path) => {
    const pem = readKeyFile(setting, path);
    try {
      const key = createPrivateKey(pem);
      if (key.asymmetricKeyType !== "x25519") throw new Error(`a ${key.asymmetricKeyType} key`);
      return key;
    } catch (err) {
      // The message of a PEM parse error never contains the key material.
      throw new ConfigError([`${setting}=${JSON.stringify(path)}: not an X25519 private key in PEM (${(err as Error).message})`]);
    }
  });
  return new SecretOpener(keys);
}

/**
 * The scheduler's and job-manager's sealer (ASPEN_SECRETS_PUBLIC_KEY_FILE), saying at
 * start which way it is: sealing to the agents' key, or refusing inline values.
 */
export function controlPlaneSealer(path: string | undefined, log: Logger): SecretSealer | undefined {
  const sealer = loadSecretSealer(path);
  if (sealer) log.info({ secretsKeyId: sealer.keyId }, "inline secret values are sealed to the agents' public key");
  else log.info("ASPEN_SECRETS_PUBLIC_KEY_FILE not set: inline secret values are refused (agent references work)");
  return sealer;
}
