#!/usr/bin/env node
// Creates bearer tokens for a cluster: scripts/make-tokens.mjs DIR [AGENT_ID...]
// Writes DIR/tokens.json (hashes only: what services read via
// ASPEN_AUTH_TOKENS_FILE) and DIR/<name>.token (the secrets, mode 600) for
// admin, operator, viewer, service and one agent token per AGENT_ID (bound to
// that worker id; default: one shared agent join token). Existing files are
// kept, so running it again changes nothing.
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { hashToken, newToken } from "@aspen/runtime";

const [dir, ...agents] = process.argv.slice(2);
if (!dir) {
  console.error("usage: make-tokens.mjs DIR [AGENT_ID...]");
  process.exit(2);
}
if (existsSync(join(dir, "tokens.json"))) process.exit(0);
mkdirSync(dir, { recursive: true });
const entries = [];
const issue = (name, role, workerId) => {
  const token = newToken();
  const file = join(dir, `${name}.token`);
  writeFileSync(file, `${token}\n`);
  chmodSync(file, 0o600);
  entries.push({ name, role, sha256: hashToken(token), ...(workerId ? { worker_id: workerId } : {}) });
};
for (const role of ["admin", "operator", "viewer", "service"]) issue(role, role);
if (agents.length === 0) issue("agent", "agent");
for (const id of agents) issue(`agent-${id}`, "agent", id);
writeFileSync(join(dir, "tokens.json"), `${JSON.stringify({ tokens: entries }, null, 2)}\n`);
console.log(`tokens in ${dir}: ${entries.map((e) => `${e.name}.token`).join(", ")} (tokens.json holds only their hashes)`);
