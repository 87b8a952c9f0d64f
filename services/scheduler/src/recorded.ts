/**
 * Pure rules for the instant a schedule records in `status.firing_at` (see
 * docs/scheduler.md, "Run once, fail closed"). The outcome write of a fire
 * pre-records the next instant, so a recorded instant no longer proves it
 * was submitted: whoever did not record it resolves it by its job id. No
 * clock is read and no call is made here; callers pass every fact in.
 */

/**
 * What becomes of a recorded instant that is due or past when it is not
 * this leader's own untried pre-record:
 *   - `finish`: its job exists (submitted before a crash, a takeover or a
 *     failed write): only the bookkeeping is left (outcome, next instant);
 *   - `fire`: never submitted and at most `graceMs` behind now: fired late, once;
 *   - `catch-up`: never submitted and older: a missed instant like any
 *     other, under the schedule's catch-up policy and window.
 */
export type RecordedFate = "finish" | "fire" | "catch-up";

export function recordedFate(atMs: number, jobExists: boolean, nowMs: number, graceMs: number): RecordedFate {
  if (jobExists) return "finish";
  return atMs >= nowMs - graceMs ? "fire" : "catch-up";
}

/**
 * The instant an outcome write records in `firing_at`: the schedule's next
 * instant when the fire advanced it and a timer will fire it (not paused,
 * a next instant exists); undefined otherwise.
 */
export function preRecord(advances: boolean, nextMs: number | undefined, paused: boolean): number | undefined {
  return advances && !paused ? nextMs : undefined;
}

/**
 * `firing_at` after a pause: an instant still ahead of now cannot have been
 * submitted (no leader submits before its instant) and is dropped; one due
 * or past may have been (a fire in flight, or interrupted) and is kept, so
 * that resume resolves it by its job id. Nothing recorded fires while paused.
 */
export function recordedAfterPause(recordedMs: number | undefined, nowMs: number): number | undefined {
  return recordedMs !== undefined && recordedMs <= nowMs ? recordedMs : undefined;
}
