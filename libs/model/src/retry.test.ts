import { describe, expect, it } from "vitest";
import { JobState, RetryPolicy, RetryPolicy_Kind as K } from "@aspen/proto";
import { decideRetry, maxAttempts, retryDelayMs } from "./retry.js";

const s = (seconds: number) => ({ seconds, nanos: 0 });
const policy = (p: Parameters<typeof RetryPolicy.fromPartial>[0]) => RetryPolicy.fromPartial(p);
const failed = (attempt: number, exitCode = 1) => ({ state: JobState.JOB_STATE_FAILED, attempt, exitCode });

describe("retry delays", () => {
  it("fixed: the same delay each time (default 1 s)", () => {
    expect([1, 2, 3].map((n) => retryDelayMs(policy({ kind: K.KIND_FIXED, delay: s(5) }), n))).toEqual([5000, 5000, 5000]);
    expect(retryDelayMs(policy({ kind: K.KIND_FIXED }), 1)).toBe(1000);
  });

  it("exponential: base × factor^(n-1), capped, defaults 1 s × 2 up to 5 min", () => {
    const p = policy({ kind: K.KIND_EXPONENTIAL, base: s(1), factor: 3, maxDelay: s(20) });
    expect([1, 2, 3, 4].map((n) => retryDelayMs(p, n))).toEqual([1000, 3000, 9000, 20000]);
    expect([1, 2, 10].map((n) => retryDelayMs(policy({ kind: K.KIND_EXPONENTIAL }), n))).toEqual([1000, 2000, 300000]);
  });

  it("exponential jitter spreads the delay by ±jitter, driven by the injected random source", () => {
    const p = policy({ kind: K.KIND_EXPONENTIAL, base: s(10), jitter: 0.5 });
    expect(retryDelayMs(p, 1, () => 0)).toBe(5000);
    expect(retryDelayMs(p, 1, () => 0.5)).toBe(10000);
    expect(retryDelayMs(p, 1, () => 0.999999)).toBe(15000);
  });

  it("custom: the listed delays, the last repeating", () => {
    const p = policy({ kind: K.KIND_CUSTOM, delays: [s(1), s(10), s(60)] });
    expect([1, 2, 3, 4, 9].map((n) => retryDelayMs(p, n))).toEqual([1000, 10000, 60000, 60000, 60000]);
  });
});

describe("retry decisions", () => {
  it("no policy: a failure is final", () => {
    expect(decideRetry(undefined, false, failed(1))).toEqual({ action: "final" });
    expect(maxAttempts(policy({ kind: K.KIND_NONE }))).toBe(1);
  });

  it("retries until max_attempts, then dead", () => {
    const p = policy({ kind: K.KIND_FIXED, delay: s(2), maxAttempts: 3 });
    expect(decideRetry(p, false, failed(1))).toEqual({ action: "retry", delayMs: 2000, reason: "retry 2/3 in 2000 ms" });
    expect(decideRetry(p, false, failed(2))).toMatchObject({ action: "retry" });
    expect(decideRetry(p, false, failed(3))).toEqual({ action: "dead", reason: "retries exhausted after 3 of 3 attempts" });
    expect(maxAttempts(policy({ kind: K.KIND_FIXED }))).toBe(3);
  });

  it("retries only the listed exit codes, and timeouts / lost attempts only when asked", () => {
    const p = policy({ kind: K.KIND_FIXED, retryOnExitCodes: [75] });
    expect(decideRetry(p, false, failed(1, 75)).action).toBe("retry");
    expect(decideRetry(p, false, failed(1, 1)).action).toBe("final");
    expect(decideRetry(p, false, { state: JobState.JOB_STATE_FAILED, attempt: 1 }).action).toBe("final"); // killed by a signal
    expect(decideRetry(p, false, { state: JobState.JOB_STATE_TIMED_OUT, attempt: 1 }).action).toBe("final");
    expect(
      decideRetry(policy({ kind: K.KIND_FIXED, retryOnTimeout: true }), false, {
        state: JobState.JOB_STATE_TIMED_OUT,
        attempt: 1,
      }).action,
    ).toBe("retry");
    expect(decideRetry(p, false, { state: JobState.JOB_STATE_LOST, attempt: 1 }).action).toBe("final");
    expect(
      decideRetry(policy({ kind: K.KIND_FIXED, retryOnLost: true }), false, { state: JobState.JOB_STATE_LOST, attempt: 1 })
        .action,
    ).toBe("retry");
  });

  it("never starts an at_most_once job twice", () => {
    const p = policy({ kind: K.KIND_FIXED, retryOnLost: true });
    expect(decideRetry(p, true, { state: JobState.JOB_STATE_LOST, attempt: 1 })).toEqual({ action: "final" });
  });
});
