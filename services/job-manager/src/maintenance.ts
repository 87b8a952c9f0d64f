/**
 * Pure selection rules for the job-manager's maintenance loop: which
 * finished jobs retention removes, and which assigned attempts never started.
 */
import { JobState, type Job } from "@aspen/proto";
import { isTerminal } from "@aspen/model";

export interface RetentionPolicy {
  /** Finished jobs kept per schedule, newest first. Jobs not fired by a schedule are kept by age only. */
  perSchedule: number;
  /** Finished jobs older than this (by finish time) are removed, ms. */
  maxAgeMs: number;
}

/**
 * Finished jobs past the retention policy. DEAD jobs stay until purged or
 * requeued (they are the dead-letter queue); so do jobs still named by a
 * pending dependant.
 */
export function expiredJobs(jobs: Iterable<Job>, nowMs: number, policy: RetentionPolicy, pinned: ReadonlySet<string>): string[] {
  const groups = new Map<string, Job[]>();
  for (const job of jobs) {
    if (!isTerminal(job.state) || job.state === JobState.JOB_STATE_DEAD || pinned.has(job.id)) continue;
    const group = groups.get(job.scheduleId);
    if (group) group.push(job);
    else groups.set(job.scheduleId, [job]);
  }
  const expired: string[] = [];
  for (const group of groups.values()) {
    group.sort((a, b) => finishedMs(b) - finishedMs(a));
    group.forEach((job, i) => {
      const overCount = job.scheduleId !== "" && i >= policy.perSchedule;
      if (overCount || nowMs - finishedMs(job) > policy.maxAgeMs) expired.push(job.id);
    });
  }
  return expired;
}

function finishedMs(job: Job): number {
  return job.finishedAt?.getTime() ?? job.history.at(-1)?.at?.getTime() ?? 0;
}

/** Assigned attempts that have not started within `timeoutMs` (the agent never got them, or its report was lost). */
export function stuckAssignments(jobs: Iterable<Job>, nowMs: number, timeoutMs: number): Job[] {
  const stuck: Job[] = [];
  for (const job of jobs) {
    if (job.state === JobState.JOB_STATE_ASSIGNED && nowMs - (job.assignedAt?.getTime() ?? nowMs) > timeoutMs) stuck.push(job);
  }
  return stuck;
}

/** When the job last entered QUEUED (its wait in the queue starts there). */
export function queuedSince(job: Job): number {
  for (let i = job.history.length - 1; i >= 0; i--) {
    const h = job.history[i];
    if (h?.to === JobState.JOB_STATE_QUEUED) return h.at?.getTime() ?? 0;
  }
  return job.submittedAt?.getTime() ?? 0;
}
