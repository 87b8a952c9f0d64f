/**
 * The job state machine (docs/job-lifecycle.md). Pure: it decides whether a
 * transition is legal and builds the next record; the store applies it with
 * a compare-and-set. An illegal transition throws and changes nothing.
 */
import { JobState, type Job } from "@aspen/proto";
import { FailedPreconditionError } from "@aspen/runtime";
import { stateName } from "@aspen/model";

const S = JobState;

/** Legal next states. Retries (FAILED/TIMED_OUT/LOST → QUEUED) and DEAD belong to the retry policy. */
export const LEGAL_TRANSITIONS: ReadonlyMap<JobState, ReadonlySet<JobState>> = new Map([
  [S.JOB_STATE_UNSPECIFIED, new Set([S.JOB_STATE_PENDING, S.JOB_STATE_QUEUED])],
  // A fan-out parent never runs itself: it ends with its children's aggregate.
  [S.JOB_STATE_PENDING, new Set([S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED])],
  [S.JOB_STATE_QUEUED, new Set([S.JOB_STATE_ASSIGNED, S.JOB_STATE_CANCELLED])],
  [
    S.JOB_STATE_ASSIGNED,
    new Set([
      S.JOB_STATE_RUNNING,
      S.JOB_STATE_QUEUED,
      S.JOB_STATE_SUCCEEDED,
      S.JOB_STATE_FAILED,
      S.JOB_STATE_TIMED_OUT,
      S.JOB_STATE_CANCELLED,
      S.JOB_STATE_LOST,
    ]),
  ],
  [
    S.JOB_STATE_RUNNING,
    new Set([S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_TIMED_OUT, S.JOB_STATE_CANCELLED, S.JOB_STATE_LOST]),
  ],
  [S.JOB_STATE_FAILED, new Set([S.JOB_STATE_QUEUED, S.JOB_STATE_DEAD])],
  [S.JOB_STATE_TIMED_OUT, new Set([S.JOB_STATE_QUEUED, S.JOB_STATE_DEAD])],
  [S.JOB_STATE_LOST, new Set([S.JOB_STATE_QUEUED, S.JOB_STATE_DEAD])],
  [S.JOB_STATE_DEAD, new Set([S.JOB_STATE_QUEUED])],
  [S.JOB_STATE_SUCCEEDED, new Set<JobState>()],
  [S.JOB_STATE_CANCELLED, new Set<JobState>()],
]);

export function isLegal(from: JobState, to: JobState): boolean {
  return LEGAL_TRANSITIONS.get(from)?.has(to) ?? false;
}

/** History kept per job; older entries are dropped first (the record must fit a KV value). */
export const MAX_HISTORY = 100;

export interface TransitionChange {
  /** Who or what caused it ("job-manager", "agent:<id>", "user", "scheduler"). */
  actor: string;
  at: Date;
  reason?: string;
  /** Field updates applied with the transition (attempt, worker, timings, result). */
  patch?: Partial<Job>;
}

/** The job after moving to `to`, with the transition appended to its history. Throws when illegal. */
export function transition(job: Job, to: JobState, change: TransitionChange): Job {
  if (!isLegal(job.state, to)) {
    throw new FailedPreconditionError(`job ${job.id}: illegal transition ${stateName(job.state)} -> ${stateName(to)}`);
  }
  const next: Job = { ...job, ...change.patch, state: to };
  if (change.reason !== undefined) next.reason = change.reason;
  const entry = {
    from: job.state,
    to,
    attempt: next.attempt,
    at: change.at,
    actor: change.actor,
    reason: change.reason ?? "",
  };
  next.history = [...job.history, entry].slice(-MAX_HISTORY);
  return next;
}
