/** Secrets on the agent: resolving sealed values and references, admission of secret_env, and redaction of real output. */
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { JobSpec, type SecretValue } from "@aspen/proto";
import { ConfigError, generateSecretsKeyPair, SecretOpener, SecretSealer } from "@aspen/runtime";
import { admit, compilePolicy, Refusal } from "./admission.js";
import { execute } from "./executor.js";
import { PolicySchema } from "./policy.js";
import { SecretResolver } from "./secrets.js";

const dir = mkdtempSync(join(tmpdir(), "aspen-agent-secrets-"));
const secretsDir = join(dir, "secrets");
mkdirSync(secretsDir);
mkdirSync(join(secretsDir, "a-dir"));
writeFileSync(join(secretsDir, "db-password"), "from-a-file-42\n");
writeFileSync(join(secretsDir, "big"), Buffer.alloc(70_000, 97));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pair = generateSecretsKeyPair();
const sealer = SecretSealer.fromPem(pair.publicKeyPem);
const resolver = new SecretResolver({ opener: SecretOpener.fromPem([pair.privateKeyPem]), dir: secretsDir });
const sealed = (name: string, value: string): SecretValue => ({
  source: { $case: "sealed", value: sealer.seal(name, value) },
  redacted: false,
});
const ref = (name: string): SecretValue => ({ source: { $case: "agentRef", value: name }, redacted: false });
const refusal = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof Refusal) return err.reason;
    throw err;
  }
  throw new Error("expected a refusal");
};

describe("SecretResolver", () => {
  it("opens sealed values and reads references (one trailing newline dropped)", () => {
    expect(resolver.resolve("API_KEY", sealed("API_KEY", "sealed-value-1"))).toBe("sealed-value-1");
    expect(resolver.resolve("DB_PASSWORD", ref("db-password"))).toBe("from-a-file-42");
  });

  it("refuses what it cannot resolve with a reason naming the variable, never the value", () => {
    expect(refusal(() => resolver.resolve("X", ref("missing")))).toBe(
      `secret_env X: agent_ref "missing" not found in this agent's secrets directory ${secretsDir}`,
    );
    expect(refusal(() => resolver.resolve("X", ref("../etc/passwd")))).toMatch(/agent_ref "..\/etc\/passwd" must match/);
    expect(refusal(() => resolver.resolve("X", ref("a-dir")))).toMatch(/is not a file/);
    expect(refusal(() => resolver.resolve("X", ref("big")))).toMatch(/larger than 65536 bytes/);
    const moved = refusal(() => resolver.resolve("OTHER", sealed("API_KEY", "sealed-value-1")));
    expect(moved).toMatch(/^secret_env OTHER: the sealed value does not open/);
    expect(moved).not.toContain("sealed-value-1");
    const otherKey = SecretSealer.fromPem(generateSecretsKeyPair().publicKeyPem);
    expect(
      refusal(() => resolver.resolve("K", { source: { $case: "sealed", value: otherKey.seal("K", "v") }, redacted: false })),
    ).toMatch(/sealed to key [0-9a-f]{16}, which this agent does not hold/);
    expect(refusal(() => resolver.resolve("K", { source: { $case: "value", value: "clear" }, redacted: false }))).toMatch(
      /an unsealed value reached the agent/,
    );
    const bare = new SecretResolver({});
    expect(refusal(() => bare.resolve("K", sealed("K", "v")))).toMatch(/no private key \(ASPEN_SECRETS_PRIVATE_KEY_FILE\)/);
    expect(refusal(() => bare.resolve("K", ref("db-password")))).toMatch(/no secrets directory \(ASPEN_AGENT_SECRETS_DIR\)/);
    expect(() => new SecretResolver({ dir: join(dir, "nope") })).toThrow(ConfigError);
  });
});

describe("secret_env in admission and execution", () => {
  const root = join(dir, "work");
  mkdirSync(root);
  const compiled = compilePolicy(PolicySchema.parse({ workRoot: root }), {
    defaultWorkRoot: root,
    agentEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    isRoot: false,
    secrets: resolver,
  });

  it("admits secret-looking names in secret_env, refuses them in env, and refuses injection names in both", () => {
    const plan = admit(
      JobSpec.fromPartial({ exec: { command: "true", env: { PLAIN: "p" }, secretEnv: { DB_PASSWORD: ref("db-password") } } }),
      compiled,
    );
    expect(plan.env.DB_PASSWORD).toBe("from-a-file-42");
    expect(plan.env.PLAIN).toBe("p");
    expect(plan.secrets).toEqual(["from-a-file-42"]);
    expect(refusal(() => admit(JobSpec.fromPartial({ exec: { command: "true", env: { DB_PASSWORD: "x" } } }), compiled))).toBe(
      `env DB_PASSWORD: denied by this agent's environment policy (pattern "*PASSWORD*"); a secret belongs in secret_env`,
    );
    expect(
      refusal(() =>
        admit(JobSpec.fromPartial({ exec: { command: "true", secretEnv: { LD_PRELOAD: ref("db-password") } } }), compiled),
      ),
    ).toBe(`secret_env LD_PRELOAD: denied by this agent's environment policy (env.secretDeny pattern "LD_*")`);
    expect(
      refusal(() => admit(JobSpec.fromPartial({ exec: { command: "true", secretEnv: { X: ref("missing") } } }), compiled)),
    ).toMatch(/agent_ref "missing" not found/);
  });

  it("gives the child the values and redacts them in its output, also when printed in pieces", async () => {
    const inline = "inline-Secret-Value-7";
    const spec = JobSpec.fromPartial({
      exec: {
        command: `printf '%s' "$API_KEY" | sha256sum; printf 'a=%s\\n' "$API_KEY";
          printf 'inline-Sec'; sleep 0.2; printf 'ret-Value-7 and %s\\n' "$DB_PASSWORD"; echo "$DB_PASSWORD" >&2`,
        shell: true,
        secretEnv: { API_KEY: sealed("API_KEY", inline), DB_PASSWORD: ref("db-password") },
      },
    });
    const plan = admit(spec, compiled);
    const result = await execute(spec, plan, { maxInlineOutputBytes: 65536 }).result;
    expect(result.exitCode).toBe(0);
    const out = result.stdout!.text;
    expect(out).toContain(createHash("sha256").update(inline).digest("hex"));
    expect(out).toContain("a=[REDACTED]\n[REDACTED] and [REDACTED]\n");
    expect(out).not.toContain(inline);
    expect(out).not.toContain("from-a-file-42");
    expect(result.stderr!.text).toBe("[REDACTED]\n");
  });
});
