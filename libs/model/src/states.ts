/** Job state helpers shared by services and the CLI. */
import { JobState } from "@aspen/proto";

const TERMINAL = new Set<JobState>([
  JobState.JOB_STATE_SUCCEEDED,
  JobState.JOB_STATE_FAILED,
  JobState.JOB_STATE_TIMED_OUT,
  JobState.JOB_STATE_CANCELLED,
  JobState.JOB_STATE_LOST,
  JobState.JOB_STATE_DEAD,
]);

/** True once a job will never change state again. */
export function isTerminal(state: JobState): boolean {
  return TERMINAL.has(state);
}

/** "SUCCEEDED" for JOB_STATE_SUCCEEDED. */
export function stateName(state: JobState): string {
  return (JobState[state] ?? String(state)).replace(/^JOB_STATE_/, "");
}

/** Parses "succeeded" / "SUCCEEDED" / "JOB_STATE_SUCCEEDED"; undefined when unknown. */
export function parseState(text: string): JobState | undefined {
  const key = text.toUpperCase().startsWith("JOB_STATE_") ? text.toUpperCase() : `JOB_STATE_${text.toUpperCase()}`;
  const value = (JobState as unknown as Record<string, number>)[key];
  return value === undefined || value <= 0 ? undefined : (value as JobState);
}
