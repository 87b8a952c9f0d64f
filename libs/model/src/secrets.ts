/**
 * Secret environment variables (ExecSpec.secret_env) as the control plane
 * handles them: validated like every other field, sealed where they enter
 * (`sealJobSpec`, at SubmitJob and Create/UpdateSchedule), and redacted in
 * every answer (`redactJob`, `redactSchedule`). The crypto itself is
 * @aspen/runtime's `SecretSealer`; agents open the sealed values.
 */
import type { ExecSpec, Job, JobSpec, Schedule, SecretValue } from "@aspen/proto";
import { FailedPreconditionError, InvalidArgumentError, isSealedForm, SEALED_OVERHEAD, type SecretSealer } from "@aspen/runtime";

/** Names of files in an agent's secrets directory: a safe alphabet, no path separators, no leading dot. */
export const SECRET_REF = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Most secret_env entries per job. */
export const SECRET_ENV_MAX = 64;
/** Largest secret value, bytes (the same as a plain env value). */
export const SECRET_VALUE_MAX_BYTES = 65_536;

const key = (field: string, name: string) => `${field}[${JSON.stringify(name)}]`;

/**
 * Checks `exec.secret_env` (called by validateJobSpec): count, names, exactly
 * one source each, sizes, and no name also in `exec.env`. Messages name the
 * field and the limit, never the value.
 */
export function validateSecretEnv(exec: ExecSpec, field: string, envNameRule: RegExp): void {
  const names = Object.keys(exec.secretEnv);
  if (names.length > SECRET_ENV_MAX) throw new InvalidArgumentError(field, `more than ${SECRET_ENV_MAX} entries`);
  for (const name of names) {
    const f = key(field, name);
    if (!envNameRule.test(name)) throw new InvalidArgumentError(f, `key must match ${envNameRule}`);
    if (Object.hasOwn(exec.env, name)) {
      throw new InvalidArgumentError(
        f,
        "also set in exec.env; a variable is either plain (env) or secret (secret_env), not both",
      );
    }
    const secret = exec.secretEnv[name]!;
    const source = secret.source;
    if (!source) {
      throw new InvalidArgumentError(
        f,
        secret.redacted
          ? "redacted: a secret read back has no value; give its value or agent_ref again"
          : "required: one of value, agent_ref or sealed",
      );
    }
    switch (source.$case) {
      case "value":
        if (Buffer.byteLength(source.value) > SECRET_VALUE_MAX_BYTES)
          throw new InvalidArgumentError(`${f}.value`, `longer than ${SECRET_VALUE_MAX_BYTES} bytes`);
        if (source.value.includes("\0")) throw new InvalidArgumentError(`${f}.value`, "must not contain NUL bytes");
        break;
      case "agentRef":
        if (!SECRET_REF.test(source.value)) {
          throw new InvalidArgumentError(
            `${f}.agent_ref`,
            `must match ${SECRET_REF} (a file name in the agent's secrets directory)`,
          );
        }
        break;
      case "sealed":
        if (!isSealedForm(source.value))
          throw new InvalidArgumentError(`${f}.sealed`, "not a sealed value (unknown version or too short)");
        if (source.value.length > SECRET_VALUE_MAX_BYTES + SEALED_OVERHEAD)
          throw new InvalidArgumentError(`${f}.sealed`, `longer than ${SECRET_VALUE_MAX_BYTES + SEALED_OVERHEAD} bytes`);
        break;
    }
  }
}

function hasInlineValue(spec: JobSpec): boolean {
  return (
    Object.values(spec.exec?.secretEnv ?? {}).some((s) => s.source?.$case === "value") ||
    spec.then.some((step) => hasInlineValue(step))
  );
}

function firstInline(spec: JobSpec, field: string): string {
  const name = Object.keys(spec.exec?.secretEnv ?? {}).find((n) => spec.exec?.secretEnv[n]?.source?.$case === "value");
  if (name !== undefined) return `${key(`${field}.exec.secret_env`, name)}.value`;
  for (const [i, step] of spec.then.entries()) {
    const found = firstInline(step, `${field}.then[${i}]`);
    if (found) return found;
  }
  return "";
}

function sealExec(exec: ExecSpec | undefined, sealer: SecretSealer): ExecSpec | undefined {
  if (!exec || Object.keys(exec.secretEnv).length === 0) return exec;
  const secretEnv: Record<string, SecretValue> = {};
  for (const [name, secret] of Object.entries(exec.secretEnv)) {
    const source = secret.source;
    secretEnv[name] =
      source?.$case === "value"
        ? { source: { $case: "sealed", value: sealer.seal(name, source.value) }, redacted: false }
        : { source, redacted: false };
  }
  return { ...exec, secretEnv };
}

/**
 * `spec` (validated) with every inline secret value sealed, its `then` steps
 * included; the caller's object is not changed. Without a sealer, an inline
 * value is FAILED_PRECONDITION naming the field and the setting.
 */
export function sealJobSpec(spec: JobSpec, sealer: SecretSealer | undefined, field = "spec"): JobSpec {
  if (!hasInlineValue(spec)) return spec;
  if (!sealer) {
    throw new FailedPreconditionError(
      `${firstInline(spec, field)}: inline secret values need this service's public key (ASPEN_SECRETS_PUBLIC_KEY_FILE is not set); ` +
        "set it, or use agent_ref (docs/security.md, Secrets)",
    );
  }
  const seal = (s: JobSpec): JobSpec => ({ ...s, exec: sealExec(s.exec, sealer), then: s.then.map(seal) });
  return seal(spec);
}

function redactExec(exec: ExecSpec | undefined): ExecSpec | undefined {
  if (!exec || Object.keys(exec.secretEnv).length === 0) return exec;
  const secretEnv: Record<string, SecretValue> = {};
  for (const [name, secret] of Object.entries(exec.secretEnv)) {
    // A reference names a file on the agent, not the secret: it stays visible.
    secretEnv[name] = { source: secret.source?.$case === "agentRef" ? secret.source : undefined, redacted: true };
  }
  return { ...exec, secretEnv };
}

/** `spec` as it may be shown: secret values and sealed bytes removed, `redacted` set. */
export function redactJobSpec(spec: JobSpec): JobSpec;
export function redactJobSpec(spec: JobSpec | undefined): JobSpec | undefined;
export function redactJobSpec(spec: JobSpec | undefined): JobSpec | undefined {
  if (!spec) return spec;
  const secret = (s: JobSpec): boolean => Object.keys(s.exec?.secretEnv ?? {}).length > 0 || s.then.some(secret);
  if (!secret(spec)) return spec;
  const redact = (s: JobSpec): JobSpec => ({ ...s, exec: redactExec(s.exec), then: s.then.map(redact) });
  return redact(spec);
}

/** A job as every answer shows it (GetJob, ListJobs, WatchJob, ...). */
export function redactJob(job: Job): Job {
  const spec = redactJobSpec(job.spec);
  return spec === job.spec ? job : { ...job, spec };
}

/** A schedule as every answer shows it. */
export function redactSchedule(schedule: Schedule): Schedule {
  const job = redactJobSpec(schedule.job);
  return job === schedule.job ? schedule : { ...schedule, job };
}

/**
 * For UpdateSchedule: entries of `next` with no source and `redacted` = true
 * (a template read back and sent again) take the stored secret of the same
 * name from `stored` (`then` steps by position). One with no stored
 * counterpart is left as it is, and validation refuses it.
 */
export function keepStoredSecrets(next: JobSpec, stored: JobSpec | undefined): JobSpec {
  const merge = (exec: ExecSpec | undefined, old: ExecSpec | undefined): ExecSpec | undefined => {
    if (!exec || !old) return exec;
    const entries = Object.entries(exec.secretEnv);
    if (!entries.some(([, s]) => !s.source && s.redacted)) return exec;
    const secretEnv: Record<string, SecretValue> = {};
    for (const [name, secret] of entries) {
      const kept = old.secretEnv[name];
      secretEnv[name] = !secret.source && secret.redacted && kept?.source ? { source: kept.source, redacted: false } : secret;
    }
    return { ...exec, secretEnv };
  };
  return {
    ...next,
    exec: merge(next.exec, stored?.exec),
    then: next.then.map((step, i) => keepStoredSecrets(step, stored?.then[i])),
  };
}

/** Names of the secret variables of a spec (for audit records and logs). */
export function secretEnvNames(spec: JobSpec | undefined): string[] {
  return Object.keys(spec?.exec?.secretEnv ?? {});
}
