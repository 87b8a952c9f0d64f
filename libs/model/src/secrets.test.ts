import { describe, expect, it } from "vitest";
import { Job, JobSpec, Schedule } from "@aspen/proto";
import { type AspenError, generateSecretsKeyPair, SecretOpener, SecretSealer } from "@aspen/runtime";
import { validateJobSpec } from "./job-spec.js";
import { keepStoredSecrets, redactJob, redactSchedule, sealJobSpec, SECRET_ENV_MAX } from "./secrets.js";

const pair = generateSecretsKeyPair();
const sealer = SecretSealer.fromPem(pair.publicKeyPem);
const opener = SecretOpener.fromPem([pair.privateKeyPem]);

const withSecrets = () =>
  JobSpec.fromPartial({
    exec: {
      command: "deploy",
      env: { MODE: "prod" },
      secretEnv: {
        API_KEY: { source: { $case: "value", value: "inline-value-123" } },
        DB_PASSWORD: { source: { $case: "agentRef", value: "db-password" } },
      },
    },
    then: [{ exec: { command: "notify", secretEnv: { HOOK: { source: { $case: "value", value: "hook-secret-9" } } } } }],
  });

const message = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return `${(err as AspenError).code} ${(err as Error).message}`;
  }
  return "no error";
};

describe("secret_env", () => {
  it("validates names, sources, sizes and overlap with env, naming the field", () => {
    expect(() => validateJobSpec(withSecrets())).not.toThrow();
    const bad = (secretEnv: object, env: Record<string, string> = {}) =>
      message(() => validateJobSpec(JobSpec.fromPartial({ exec: { command: "x", env, secretEnv } })));
    expect(bad({ "1X": { source: { $case: "agentRef", value: "a" } } })).toMatch(
      /^3 spec.exec.secret_env\["1X"\]: key must match/,
    );
    expect(bad({ X: {} })).toBe('3 spec.exec.secret_env["X"]: required: one of value, agent_ref or sealed');
    expect(bad({ X: { redacted: true } })).toMatch(/redacted: a secret read back has no value/);
    expect(bad({ X: { source: { $case: "agentRef", value: "../x" } } })).toMatch(
      /^3 spec.exec.secret_env\["X"\].agent_ref: must match/,
    );
    expect(bad({ X: { source: { $case: "value", value: "v".repeat(65_537) } } })).toBe(
      '3 spec.exec.secret_env["X"].value: longer than 65536 bytes',
    );
    expect(bad({ X: { source: { $case: "sealed", value: Buffer.from("short") } } })).toMatch(/sealed: not a sealed value/);
    expect(bad({ X: { source: { $case: "agentRef", value: "a" } } }, { X: "plain" })).toMatch(
      /^3 spec.exec.secret_env\["X"\]: also set in exec.env/,
    );
    const many = Object.fromEntries(
      Array.from({ length: SECRET_ENV_MAX + 1 }, (_, i) => [`S${i}`, { source: { $case: "agentRef", value: "a" } }]),
    );
    expect(bad(many)).toBe(`3 spec.exec.secret_env: more than ${SECRET_ENV_MAX} entries`);
  });

  it("seals inline values (then steps included) without changing the caller's spec", () => {
    const spec = withSecrets();
    const sealed = sealJobSpec(spec, sealer);
    expect(spec.exec!.secretEnv.API_KEY!.source!.$case).toBe("value");
    const api = sealed.exec!.secretEnv.API_KEY!.source!;
    expect(api.$case).toBe("sealed");
    expect(opener.open("API_KEY", api.value as Buffer).toString()).toBe("inline-value-123");
    expect(sealed.exec!.secretEnv.DB_PASSWORD!.source).toEqual({ $case: "agentRef", value: "db-password" });
    const hook = sealed.then[0]!.exec!.secretEnv.HOOK!.source!;
    expect(opener.open("HOOK", hook.value as Buffer).toString()).toBe("hook-secret-9");
    expect(() => validateJobSpec(sealed)).not.toThrow();
    expect(Buffer.from(JobSpec.encode(sealed).finish()).includes("inline-value-123")).toBe(false);
  });

  it("refuses inline values without a key (FAILED_PRECONDITION naming the field and the setting); references pass", () => {
    expect(message(() => sealJobSpec(withSecrets(), undefined))).toMatch(
      /^9 spec.exec.secret_env\["API_KEY"\].value: inline secret values need this service's public key \(ASPEN_SECRETS_PUBLIC_KEY_FILE is not set\)/,
    );
    const refOnly = JobSpec.fromPartial({
      exec: { command: "x", secretEnv: { A: { source: { $case: "agentRef", value: "a" } } } },
    });
    expect(sealJobSpec(refOnly, undefined)).toBe(refOnly);
  });

  it("redacts jobs and schedules: names stay, values and sealed bytes go, references stay visible", () => {
    const sealed = sealJobSpec(withSecrets(), sealer);
    const job = redactJob(Job.fromPartial({ id: "j1", spec: sealed }));
    expect(job.spec!.exec!.secretEnv).toEqual({
      API_KEY: { source: undefined, redacted: true },
      DB_PASSWORD: { source: { $case: "agentRef", value: "db-password" }, redacted: true },
    });
    expect(job.spec!.then[0]!.exec!.secretEnv.HOOK).toEqual({ source: undefined, redacted: true });
    expect(job.spec!.exec!.env).toEqual({ MODE: "prod" });
    const bytes = Buffer.from(Job.encode(job).finish());
    expect(bytes.includes((sealed.exec!.secretEnv.API_KEY!.source!.value as Buffer).subarray(0, 24))).toBe(false);
    const schedule = redactSchedule(Schedule.fromPartial({ id: "s", job: sealed }));
    expect(schedule.job!.exec!.secretEnv.API_KEY).toEqual({ source: undefined, redacted: true });
    const plain = Job.fromPartial({ id: "p", spec: { exec: { command: "x" } } });
    expect(redactJob(plain)).toBe(plain);
  });

  it("keeps a stored secret for a redacted entry sent back (UpdateSchedule)", () => {
    const stored = sealJobSpec(withSecrets(), sealer);
    const readBack = redactSchedule(Schedule.fromPartial({ job: stored })).job!;
    const edited = { ...readBack, name: "renamed" };
    const merged = keepStoredSecrets(edited, stored);
    expect(merged.exec!.secretEnv.API_KEY).toEqual({ source: stored.exec!.secretEnv.API_KEY!.source, redacted: false });
    expect(merged.then[0]!.exec!.secretEnv.HOOK!.source).toEqual(stored.then[0]!.exec!.secretEnv.HOOK!.source);
    expect(() => validateJobSpec(merged)).not.toThrow();
    // A redacted entry with no stored counterpart stays and is refused.
    const unknown = keepStoredSecrets(
      JobSpec.fromPartial({ exec: { command: "x", secretEnv: { NEW: { redacted: true } } } }),
      stored,
    );
    expect(message(() => validateJobSpec(unknown))).toMatch(/NEW"\]: redacted/);
  });
});
