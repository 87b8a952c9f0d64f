import { describe, expect, it } from "vitest";
import { Job, JobState } from "@aspen/proto";
import { expiredJobs, queuedSince, stuckAssignments } from "./maintenance.js";

const S = JobState;
const job = (id: string, scheduleId: string, state: JobState, finishedMs: number) =>
  Job.fromPartial({ id, scheduleId, state, finishedAt: new Date(finishedMs) });

describe("retention", () => {
  const policy = { perSchedule: 2, maxAgeMs: 10_000 };

  it("keeps the newest N finished jobs per schedule and drops what is too old", () => {
    const jobs = [
      job("a1", "a", S.JOB_STATE_SUCCEEDED, 1_000),
      job("a2", "a", S.JOB_STATE_FAILED, 2_000),
      job("a3", "a", S.JOB_STATE_SUCCEEDED, 3_000),
      job("b1", "b", S.JOB_STATE_SUCCEEDED, 3_000),
      job("old", "", S.JOB_STATE_SUCCEEDED, -20_000),
      job("u1", "", S.JOB_STATE_SUCCEEDED, 1_000),
      job("u2", "", S.JOB_STATE_SUCCEEDED, 2_000),
      job("u3", "", S.JOB_STATE_SUCCEEDED, 3_000),
    ];
    expect(expiredJobs(jobs, 5_000, policy, new Set()).sort()).toEqual(["a1", "old"]);
  });

  it("never removes running, dead or depended-on jobs", () => {
    const jobs = [
      job("run", "a", S.JOB_STATE_RUNNING, 0),
      job("dead", "a", S.JOB_STATE_DEAD, -99_000),
      job("pinned", "a", S.JOB_STATE_SUCCEEDED, -99_000),
    ];
    expect(expiredJobs(jobs, 5_000, policy, new Set(["pinned"]))).toEqual([]);
  });
});

describe("assignment timeout and queue time", () => {
  it("finds assignments not started in time", () => {
    const jobs = [
      Job.fromPartial({ id: "late", state: S.JOB_STATE_ASSIGNED, assignedAt: new Date(0) }),
      Job.fromPartial({ id: "fresh", state: S.JOB_STATE_ASSIGNED, assignedAt: new Date(9_000) }),
      Job.fromPartial({ id: "running", state: S.JOB_STATE_RUNNING, assignedAt: new Date(0) }),
    ];
    expect(stuckAssignments(jobs, 10_000, 5_000).map((j) => j.id)).toEqual(["late"]);
  });

  it("counts queue time from the last time the job entered QUEUED", () => {
    const j = Job.fromPartial({
      submittedAt: new Date(1),
      history: [
        { to: S.JOB_STATE_QUEUED, at: new Date(10) },
        { to: S.JOB_STATE_ASSIGNED, at: new Date(20) },
        { to: S.JOB_STATE_QUEUED, at: new Date(30) },
      ],
    });
    expect(queuedSince(j)).toBe(30);
  });
});
