/**
 * Retry policy arithmetic, pure: whether a failed attempt is tried again,
 * and after how long. The job-manager applies the decision in the same
 * compare-and-set that records the failure.
 */
import { JobState, RetryPolicy_Kind, type RetryPolicy } from "@aspen/proto";
import { durationToMs } from "@aspen/runtime";

/** Defaults of RetryPolicy fields left unset (documented in common.proto). */
export const RetryDefaults = {
  maxAttempts: 3,
  fixedDelayMs: 1_000,
  baseMs: 1_000,
  factor: 2,
  maxDelayMs: 300_000,
} as const;

export function isRetrying(policy: RetryPolicy | undefined): boolean {
  return !!policy && policy.kind !== RetryPolicy_Kind.KIND_UNSPECIFIED && policy.kind !== RetryPolicy_Kind.KIND_NONE;
}

/** Attempts allowed in all, the first included. */
export function maxAttempts(policy: RetryPolicy | undefined): number {
  if (!isRetrying(policy)) return 1;
  return policy?.maxAttempts || RetryDefaults.maxAttempts;
}

/**
 * Wait before attempt `failedAttempt + 1`. `random` returns [0, 1) and is
 * only used for EXPONENTIAL jitter (the delay is spread by ±jitter).
 */
export function retryDelayMs(policy: RetryPolicy, failedAttempt: number, random: () => number = Math.random): number {
  switch (policy.kind) {
    case RetryPolicy_Kind.KIND_FIXED:
      return policy.delay ? durationToMs(policy.delay) : RetryDefaults.fixedDelayMs;
    case RetryPolicy_Kind.KIND_EXPONENTIAL: {
      const base = policy.base ? durationToMs(policy.base) : RetryDefaults.baseMs;
      const factor = policy.factor || RetryDefaults.factor;
      const cap = policy.maxDelay ? durationToMs(policy.maxDelay) : RetryDefaults.maxDelayMs;
      const raw = Math.min(cap, base * factor ** (failedAttempt - 1));
      const spread = policy.jitter > 0 ? raw * policy.jitter * (2 * random() - 1) : 0;
      return Math.max(0, Math.round(raw + spread));
    }
    case RetryPolicy_Kind.KIND_CUSTOM: {
      const d = policy.delays[Math.min(failedAttempt, policy.delays.length) - 1];
      return d ? durationToMs(d) : 0;
    }
    default:
      return 0;
  }
}

export interface FailedAttempt {
  /** FAILED, TIMED_OUT or LOST. */
  state: JobState;
  /** The attempt that failed, from 1. */
  attempt: number;
  /** Its exit code; undefined when it had none (signal, could not start, lost). */
  exitCode?: number;
}

export type RetryVerdict =
  | { action: "retry"; delayMs: number; reason: string }
  | { action: "dead"; reason: string } // retries exhausted: dead-letter queue
  | { action: "final" }; // the outcome is not one the policy retries

/** What to do after a failed attempt, per the job's policy. */
export function decideRetry(
  policy: RetryPolicy | undefined,
  atMostOnce: boolean,
  failed: FailedAttempt,
  random: () => number = Math.random,
): RetryVerdict {
  if (atMostOnce || !policy || !isRetrying(policy)) return { action: "final" };
  const retryable =
    failed.state === JobState.JOB_STATE_TIMED_OUT
      ? policy.retryOnTimeout
      : failed.state === JobState.JOB_STATE_LOST
        ? policy.retryOnLost
        : failed.state === JobState.JOB_STATE_FAILED &&
          (policy.retryOnExitCodes.length === 0 ||
            (failed.exitCode !== undefined && policy.retryOnExitCodes.includes(failed.exitCode)));
  if (!retryable) return { action: "final" };
  const limit = maxAttempts(policy);
  if (failed.attempt >= limit)
    return { action: "dead", reason: `retries exhausted after ${failed.attempt} of ${limit} attempts` };
  const delayMs = retryDelayMs(policy, failed.attempt, random);
  return { action: "retry", delayMs, reason: `retry ${failed.attempt + 1}/${limit} in ${delayMs} ms` };
}
