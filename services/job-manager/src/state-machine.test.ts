import { describe, expect, it } from "vitest";
import { Job, JobState } from "@aspen/proto";
import { FailedPreconditionError } from "@aspen/runtime";
import { isLegal, LEGAL_TRANSITIONS, MAX_HISTORY, transition } from "./state-machine.js";

const S = JobState;
const states = Object.values(JobState).filter((v): v is JobState => typeof v === "number" && v >= 0);
const at = new Date("2026-01-01T00:00:00Z");

/** The documented machine (docs/job-lifecycle.md), written out independently of the table under test. */
const expected: Record<string, JobState[]> = {
  [S.JOB_STATE_UNSPECIFIED]: [S.JOB_STATE_PENDING, S.JOB_STATE_QUEUED],
  [S.JOB_STATE_PENDING]: [S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED],
  [S.JOB_STATE_QUEUED]: [S.JOB_STATE_ASSIGNED, S.JOB_STATE_CANCELLED],
  [S.JOB_STATE_ASSIGNED]: [
    S.JOB_STATE_RUNNING,
    S.JOB_STATE_QUEUED,
    S.JOB_STATE_SUCCEEDED,
    S.JOB_STATE_FAILED,
    S.JOB_STATE_TIMED_OUT,
    S.JOB_STATE_CANCELLED,
    S.JOB_STATE_LOST,
  ],
  [S.JOB_STATE_RUNNING]: [
    S.JOB_STATE_SUCCEEDED,
    S.JOB_STATE_FAILED,
    S.JOB_STATE_TIMED_OUT,
    S.JOB_STATE_CANCELLED,
    S.JOB_STATE_LOST,
  ],
  [S.JOB_STATE_FAILED]: [S.JOB_STATE_QUEUED, S.JOB_STATE_DEAD],
  [S.JOB_STATE_TIMED_OUT]: [S.JOB_STATE_QUEUED, S.JOB_STATE_DEAD],
  [S.JOB_STATE_LOST]: [S.JOB_STATE_QUEUED, S.JOB_STATE_DEAD],
  [S.JOB_STATE_DEAD]: [S.JOB_STATE_QUEUED],
  [S.JOB_STATE_SUCCEEDED]: [],
  [S.JOB_STATE_CANCELLED]: [],
};

describe("job state machine", () => {
  const pairs = states.flatMap((from) => states.map((to) => [from, to] as const));

  it.each(pairs)("%s -> %s is legal exactly when documented", (from, to) => {
    const legal = (expected[from] ?? []).includes(to);
    expect(isLegal(from, to)).toBe(legal);
    const job = Job.fromPartial({ id: "j1", state: from, attempt: 2 });
    if (legal) {
      const next = transition(job, to, { actor: "test", at, reason: "because" });
      expect(next.state).toBe(to);
      expect(next.history.at(-1)).toEqual({ from, to, attempt: 2, at, actor: "test", reason: "because" });
      expect(job.state).toBe(from); // the input is not mutated
    } else {
      expect(() => transition(job, to, { actor: "test", at })).toThrow(FailedPreconditionError);
    }
  });

  it("covers every state in the table", () => {
    expect([...LEGAL_TRANSITIONS.keys()].sort()).toEqual([...states].sort());
  });

  it("applies the patch with the transition and bounds the history", () => {
    let job = Job.fromPartial({ id: "j1", state: S.JOB_STATE_QUEUED });
    job = transition(job, S.JOB_STATE_ASSIGNED, { actor: "jm", at, patch: { attempt: 1, workerId: "w1" } });
    expect(job.attempt).toBe(1);
    expect(job.workerId).toBe("w1");
    expect(job.history[0]?.attempt).toBe(1);
    for (let i = 0; i < MAX_HISTORY + 10; i++) {
      job = transition(job, S.JOB_STATE_QUEUED, { actor: "jm", at });
      job = transition(job, S.JOB_STATE_ASSIGNED, { actor: "jm", at });
    }
    expect(job.history).toHaveLength(MAX_HISTORY);
  });
});
