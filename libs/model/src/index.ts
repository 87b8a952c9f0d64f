/** @aspen/model — domain rules shared by services and the CLI: ids, JobSpec validation, job states. */
export { fireJobId, GROUP_NAME, JOB_ID, JOB_ID_MAX, newId, SCHEDULE_ID, WORKER_ID } from "./ids.js";
export { DEFAULT_INLINE_OUTPUT_BYTES, DEFAULT_KILL_GRACE_MS, Limits, validateJobSpec } from "./job-spec.js";
export {
  keepStoredSecrets,
  redactJob,
  redactJobSpec,
  redactSchedule,
  sealJobSpec,
  SECRET_ENV_MAX,
  SECRET_REF,
  SECRET_VALUE_MAX_BYTES,
  secretEnvNames,
} from "./secrets.js";
export { isTerminal, parseState, stateName } from "./states.js";
export { BATCH_BYTES, eventBytes, specBytes, splitByBytes } from "./wire-size.js";
export {
  decideRetry,
  isRetrying,
  maxAttempts,
  RetryDefaults,
  retryDelayMs,
  type FailedAttempt,
  type RetryVerdict,
} from "./retry.js";
