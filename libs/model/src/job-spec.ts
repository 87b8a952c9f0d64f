/**
 * Validation of the shared JobSpec, used by the job-manager (SubmitJob) and
 * the scheduler (a schedule's job template) so both refuse the same input
 * with the same field names. Fields the API defines for later capabilities
 * are refused with UNIMPLEMENTED rather than silently ignored.
 */
import { LabelRequirement_Operator, PlacementStrategy, Priority, RetryPolicy_Kind, StderrMode, type JobSpec } from "@aspen/proto";
import { durationToMs, InvalidArgumentError } from "@aspen/runtime";
import { GROUP_NAME, JOB_ID, JOB_ID_MAX, WORKER_ID } from "./ids.js";
import { isRetrying } from "./retry.js";
import { validateSecretEnv } from "./secrets.js";

/** Input limits (bytes unless named otherwise). */
export const Limits = {
  commandBytes: 4096,
  argCount: 1024,
  argBytes: 65_536,
  envCount: 256,
  envValueBytes: 65_536,
  stdinBytes: 1024 * 1024,
  tagCount: 64,
  tagBytes: 256,
  maxInlineOutputBytes: 4 * 1024 * 1024,
  maxTimeoutMs: 7 * 24 * 3600 * 1000,
  maxAttempts: 100,
  maxRetryDelayMs: 24 * 3600 * 1000,
  dependencies: 100,
  chainLength: 20,
  fanOut: 1024,
  /** Attempts in one PlaceJobs call (job-manager → coordinator). */
  placementsPerCall: 1000,
  /** Submissions in one SubmitJobs call. */
  submissionsPerCall: 1000,
} as const;

/** Default inline output kept per job (head + tail across stdout and stderr). */
export const DEFAULT_INLINE_OUTPUT_BYTES = 1024 * 1024;
/** Default time between SIGTERM and SIGKILL. */
export const DEFAULT_KILL_GRACE_MS = 10_000;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;

function isEnumValue(enumObject: Record<string, string | number>, value: number): boolean {
  return value >= 0 && typeof enumObject[value] === "string";
}

function checkText(field: string, value: string, maxBytes: number, required = false): void {
  if (required && value.length === 0) throw new InvalidArgumentError(field, "must not be empty");
  if (Buffer.byteLength(value) > maxBytes) throw new InvalidArgumentError(field, `longer than ${maxBytes} bytes`);
  if (value.includes("\0")) throw new InvalidArgumentError(field, "must not contain NUL bytes");
}

function checkDuration(field: string, d: { seconds: number; nanos: number } | undefined, maxMs: number): void {
  if (!d) return;
  const ms = durationToMs(d);
  if (ms < 0 || d.nanos < 0) throw new InvalidArgumentError(field, "must not be negative");
  if (ms > maxMs) throw new InvalidArgumentError(field, `must be at most ${maxMs / 1000} s`);
}

function checkMap(field: string, map: Record<string, string>, keyRule: RegExp, maxCount: number, maxBytes: number): void {
  const keys = Object.keys(map);
  if (keys.length > maxCount) throw new InvalidArgumentError(field, `more than ${maxCount} entries`);
  for (const key of keys) {
    if (!keyRule.test(key)) throw new InvalidArgumentError(`${field}[${JSON.stringify(key)}]`, `key must match ${keyRule}`);
    checkText(`${field}[${JSON.stringify(key)}]`, map[key] ?? "", maxBytes);
  }
}

/** Throws InvalidArgumentError / UnimplementedError naming the first bad field under `field`. */
export function validateJobSpec(spec: JobSpec | undefined, field = "spec"): asserts spec is JobSpec {
  if (!spec) throw new InvalidArgumentError(field, "required");
  const exec = spec.exec;
  if (!exec) throw new InvalidArgumentError(`${field}.exec`, "required: the command to run");
  checkText(`${field}.exec.command`, exec.command, Limits.commandBytes, true);
  if (exec.args.length > Limits.argCount)
    throw new InvalidArgumentError(`${field}.exec.args`, `more than ${Limits.argCount} arguments`);
  exec.args.forEach((arg, i) => checkText(`${field}.exec.args[${i}]`, arg, Limits.argBytes));
  checkMap(`${field}.exec.env`, exec.env, ENV_NAME, Limits.envCount, Limits.envValueBytes);
  validateSecretEnv(exec, `${field}.exec.secret_env`, ENV_NAME);
  if (exec.cwd && !exec.cwd.startsWith("/")) throw new InvalidArgumentError(`${field}.exec.cwd`, "must be an absolute path");
  checkText(`${field}.exec.cwd`, exec.cwd, 4096);
  if (exec.stdin.length > Limits.stdinBytes)
    throw new InvalidArgumentError(`${field}.exec.stdin`, `longer than ${Limits.stdinBytes} bytes`);
  if (!isEnumValue(StderrMode, exec.stderr))
    throw new InvalidArgumentError(`${field}.exec.stderr`, `unknown mode ${exec.stderr}`);

  checkDuration(`${field}.timeout`, spec.timeout, Limits.maxTimeoutMs);
  checkDuration(`${field}.kill_grace`, spec.killGrace, 3_600_000);
  if (!isEnumValue(Priority, spec.priority))
    throw new InvalidArgumentError(`${field}.priority`, `unknown priority ${spec.priority}`);
  checkMap(`${field}.tags`, spec.tags, LABEL_KEY, Limits.tagCount, Limits.tagBytes);
  if (spec.maxInlineOutputBytes > Limits.maxInlineOutputBytes) {
    throw new InvalidArgumentError(`${field}.max_inline_output_bytes`, `must be at most ${Limits.maxInlineOutputBytes}`);
  }
  checkText(`${field}.name`, spec.name, 256);

  const retry = spec.retry;
  if (retry) {
    const f = `${field}.retry`;
    if (!isEnumValue(RetryPolicy_Kind, retry.kind)) throw new InvalidArgumentError(`${f}.kind`, `unknown kind ${retry.kind}`);
    if (retry.maxAttempts > Limits.maxAttempts)
      throw new InvalidArgumentError(`${f}.max_attempts`, `must be at most ${Limits.maxAttempts}`);
    for (const [name, d] of [
      ["delay", retry.delay],
      ["base", retry.base],
      ["max_delay", retry.maxDelay],
    ] as const) {
      checkDuration(`${f}.${name}`, d, Limits.maxRetryDelayMs);
    }
    retry.delays.forEach((d, i) => checkDuration(`${f}.delays[${i}]`, d, Limits.maxRetryDelayMs));
    if (retry.delays.length > Limits.maxAttempts)
      throw new InvalidArgumentError(`${f}.delays`, `more than ${Limits.maxAttempts} delays`);
    if (retry.factor !== 0 && !(retry.factor >= 1 && retry.factor <= 100))
      throw new InvalidArgumentError(`${f}.factor`, "must be 1..100");
    if (!(retry.jitter >= 0 && retry.jitter <= 1)) throw new InvalidArgumentError(`${f}.jitter`, "must be a fraction 0..1");
    if (retry.kind === RetryPolicy_Kind.KIND_CUSTOM && retry.delays.length === 0) {
      throw new InvalidArgumentError(`${f}.delays`, "required for CUSTOM");
    }
    if (spec.atMostOnce && isRetrying(retry)) {
      throw new InvalidArgumentError(`${f}.kind`, "must be NONE for an at_most_once job (it is never started twice)");
    }
  }
  const placement = spec.placement;
  if (placement) {
    const sel = placement.selector;
    if (sel) {
      checkMap(`${field}.placement.selector.match_labels`, sel.matchLabels, LABEL_KEY, 64, 256);
      sel.requirements.forEach((req, i) => {
        const f = `${field}.placement.selector.requirements[${i}]`;
        if (!LABEL_KEY.test(req.key)) throw new InvalidArgumentError(`${f}.key`, `must match ${LABEL_KEY}`);
        if (
          !isEnumValue(LabelRequirement_Operator, req.operator) ||
          req.operator === LabelRequirement_Operator.OPERATOR_UNSPECIFIED
        ) {
          throw new InvalidArgumentError(`${f}.operator`, "must be IN, NOT_IN, EXISTS or DOES_NOT_EXIST");
        }
        const needsValues =
          req.operator === LabelRequirement_Operator.OPERATOR_IN || req.operator === LabelRequirement_Operator.OPERATOR_NOT_IN;
        if (needsValues && req.values.length === 0) throw new InvalidArgumentError(`${f}.values`, "required for IN and NOT_IN");
      });
      sel.capabilities.forEach((c, i) => checkText(`${field}.placement.selector.capabilities[${i}]`, c, 128, true));
      if (sel.workerGroup && !GROUP_NAME.test(sel.workerGroup)) {
        throw new InvalidArgumentError(`${field}.placement.selector.worker_group`, `must match ${GROUP_NAME}`);
      }
      if (sel.workerId && !WORKER_ID.test(sel.workerId)) {
        throw new InvalidArgumentError(`${field}.placement.selector.worker_id`, `must match ${WORKER_ID}`);
      }
    }
    if (!isEnumValue(PlacementStrategy, placement.strategy)) {
      throw new InvalidArgumentError(`${field}.placement.strategy`, `unknown strategy ${placement.strategy}`);
    }
    checkText(`${field}.placement.affinity_key`, placement.affinityKey, 256);
    if (placement.fanOut < -1 || placement.fanOut > Limits.fanOut) {
      throw new InvalidArgumentError(
        `${field}.placement.fan_out`,
        `must be -1 (every matching worker), 0 (no fan-out) or 1..${Limits.fanOut}`,
      );
    }
  }
  if (spec.dependsOn.length > Limits.dependencies) {
    throw new InvalidArgumentError(`${field}.depends_on`, `more than ${Limits.dependencies} dependencies`);
  }
  spec.dependsOn.forEach((id, i) => {
    if (!JOB_ID.test(id) || id.length > JOB_ID_MAX)
      throw new InvalidArgumentError(`${field}.depends_on[${i}]`, `must be a job id (${JOB_ID})`);
  });
  if (spec.then.length > Limits.chainLength)
    throw new InvalidArgumentError(`${field}.then`, `more than ${Limits.chainLength} steps`);
  spec.then.forEach((step, i) => {
    if (step.then.length > 0)
      throw new InvalidArgumentError(`${field}.then[${i}].then`, "chains are flat: list every step in the first job's then");
    validateJobSpec(step, `${field}.then[${i}]`);
  });
  // Which handler runs it is the agent's registry (and config) to decide; here only the form.
  if (spec.jobType !== "" && !/^[a-z][a-z0-9-]{0,31}$/.test(spec.jobType)) {
    throw new InvalidArgumentError(`${field}.job_type`, "must be a handler name ([a-z][a-z0-9-]{0,31}), e.g. shell or echo");
  }
}
