#!/usr/bin/env node
// Creates the key pair for secret job variables: scripts/secrets-keys.mjs DIR
// Writes DIR/secrets.pub (X25519 public key, PEM: give it to the scheduler and
// job-manager as ASPEN_SECRETS_PUBLIC_KEY_FILE) and DIR/secrets.key (the
// private key, mode 600: give it only to agents as ASPEN_SECRETS_PRIVATE_KEY_FILE).
// Values sealed to the public key can be opened only with the private key.
// An existing pair is kept, so running it again changes nothing.
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateSecretsKeyPair, SecretSealer } from "@aspen/runtime";

const [dir] = process.argv.slice(2);
if (!dir) {
  console.error("usage: secrets-keys.mjs DIR");
  process.exit(2);
}
const pub = join(dir, "secrets.pub");
const key = join(dir, "secrets.key");
if (existsSync(pub) && existsSync(key)) process.exit(0);
mkdirSync(dir, { recursive: true });
const pair = generateSecretsKeyPair();
writeFileSync(key, pair.privateKeyPem, { mode: 0o600 });
chmodSync(key, 0o600);
writeFileSync(pub, pair.publicKeyPem);
console.log(
  `secrets key ${SecretSealer.fromPem(pair.publicKeyPem).keyId}: public ${pub} (control plane), private ${key} (agents only)`,
);
