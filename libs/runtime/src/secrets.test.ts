import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError } from "./config.js";
import {
  generateSecretsKeyPair,
  isSealedForm,
  loadSecretOpener,
  loadSecretSealer,
  SEALED_OVERHEAD,
  sealedKeyId,
  SecretOpenError,
  SecretOpener,
  SecretSealer,
} from "./secrets.js";

const pair = generateSecretsKeyPair();
const sealer = SecretSealer.fromPem(pair.publicKeyPem);
const opener = SecretOpener.fromPem([pair.privateKeyPem]);
const dir = mkdtempSync(join(tmpdir(), "aspen-secrets-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("sealed secrets", () => {
  it("seals to the public key and opens with the private key, bound to the variable name", () => {
    const sealed = sealer.seal("DB_PASSWORD", "hunter2-correct-horse");
    expect(isSealedForm(sealed)).toBe(true);
    expect(sealed.length).toBe(SEALED_OVERHEAD + Buffer.byteLength("hunter2-correct-horse"));
    expect(sealed.includes(Buffer.from("hunter2"))).toBe(false);
    expect(sealedKeyId(sealed)).toBe(sealer.keyId);
    expect(opener.open("DB_PASSWORD", sealed).toString()).toBe("hunter2-correct-horse");
  });

  it("uses a fresh ephemeral key and IV each time", () => {
    const a = sealer.seal("X", "same");
    const b = sealer.seal("X", "same");
    expect(a.equals(b)).toBe(false);
    expect(opener.open("X", a).toString()).toBe("same");
    expect(opener.open("X", b).toString()).toBe("same");
  });

  it("seals empty and binary values", () => {
    expect(opener.open("E", sealer.seal("E", "")).length).toBe(0);
    const bin = Buffer.from([0, 255, 1, 254, 10, 13]);
    expect(opener.open("B", sealer.seal("B", bin)).equals(bin)).toBe(true);
  });

  it("refuses another name, an altered byte, another key and garbage with a reason that holds no value", () => {
    const sealed = sealer.seal("API_KEY", "s3cr3t-value");
    expect(() => opener.open("OTHER", sealed)).toThrow(SecretOpenError);
    expect(() => opener.open("OTHER", sealed)).toThrow(/another variable name/);
    for (const at of [1 + 8 + 5, 1 + 8 + 32 + 3, sealed.length - 20, sealed.length - 1]) {
      const altered = Buffer.from(sealed);
      altered[at] = altered[at]! ^ 1;
      expect(() => opener.open("API_KEY", altered)).toThrow(SecretOpenError);
    }
    const other = SecretOpener.fromPem([generateSecretsKeyPair().privateKeyPem]);
    expect(() => other.open("API_KEY", sealed)).toThrow(
      new RegExp(`sealed to key ${sealer.keyId}, which this agent does not hold`),
    );
    expect(() =>
      opener.open("API_KEY", Buffer.from("not sealed at all, just text............................................")),
    ).toThrow(/not a sealed value/);
    expect(() => opener.open("API_KEY", new Uint8Array(3))).toThrow(/not a sealed value/);
    try {
      opener.open("OTHER", sealed);
    } catch (err) {
      expect(String((err as Error).message)).not.toContain("s3cr3t");
    }
  });

  it("opens with any of several keys (rotation)", () => {
    const next = generateSecretsKeyPair();
    const both = SecretOpener.fromPem([pair.privateKeyPem, next.privateKeyPem]);
    expect(both.open("A", sealer.seal("A", "old-key")).toString()).toBe("old-key");
    expect(both.open("A", SecretSealer.fromPem(next.publicKeyPem).seal("A", "new-key")).toString()).toBe("new-key");
  });

  it("loads key files and names the setting when one is wrong", () => {
    const pub = join(dir, "secrets.pub");
    const key = join(dir, "secrets.key");
    writeFileSync(pub, pair.publicKeyPem);
    writeFileSync(key, pair.privateKeyPem);
    expect(loadSecretSealer(undefined)).toBeUndefined();
    expect(loadSecretOpener([])).toBeUndefined();
    const s = loadSecretSealer(pub)!;
    expect(loadSecretOpener([key])!.open("N", s.seal("N", "v")).toString()).toBe("v");
    expect(() => loadSecretSealer(join(dir, "missing.pub"))).toThrow(ConfigError);
    expect(() => loadSecretSealer(join(dir, "missing.pub"))).toThrow(/ASPEN_SECRETS_PUBLIC_KEY_FILE=.*cannot read: ENOENT/);
    expect(() => loadSecretSealer(key)).toThrow(/ASPEN_SECRETS_PUBLIC_KEY_FILE=.*holds a private key/);
    const junk = join(dir, "junk.pub");
    writeFileSync(junk, "not a key");
    expect(() => loadSecretSealer(junk)).toThrow(/ASPEN_SECRETS_PUBLIC_KEY_FILE=.*not an X25519 public key/);
    expect(() => loadSecretOpener([pub])).toThrow(/ASPEN_SECRETS_PRIVATE_KEY_FILE=.*not an X25519 private key/);
    const ed = join(dir, "ed.key");
    writeFileSync(ed, generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }));
    expect(() => loadSecretOpener([ed])).toThrow(/not an X25519 private key in PEM \(a ed25519 key\)/);
  });
});
