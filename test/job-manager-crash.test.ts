/**
 * SIGKILL of the job-manager in the middle of a stream of 500 submissions:
 * after a restart every acknowledged submission exists exactly once and
 * reaches a terminal state; nothing ran twice.
 */
import { describe, expect, it } from "vitest";
import { JobServiceClient, JobState, ListJobsRequest, SubmitJobRequest, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor } from "@aspen/testkit";
import { isTerminal } from "@aspen/model";

const TOTAL = 500;

describe("job-manager crash", () => {
  it("loses and duplicates nothing when SIGKILLed mid-stream of 500 submissions", async () => {
    await using cluster = await startCluster({
      agents: 2,
      slots: 8,
      scheduler: false,
      jobManagerEnv: { ASPEN_ASSIGN_TIMEOUT: "3s", ASPEN_MAINTENANCE_INTERVAL: "500ms" },
    });
    let jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    const acked = new Set<string>();
    const ids = Array.from({ length: TOTAL }, (_, i) => `crash-${String(i).padStart(3, "0")}`);
    const submit = (id: string) =>
      unaryCall(
        jobs.submitJob.bind(jobs),
        SubmitJobRequest.fromPartial({ jobId: id, spec: { exec: { command: "echo", args: [id] } } }),
        {
          deadlineMs: 2_000,
        },
      ).then(() => acked.add(id));

    // Submit with 16 in flight; SIGKILL the job-manager after the 200th acknowledgement.
    let next = 0;
    let killed: Promise<void> | undefined;
    const failed: string[] = [];
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < TOTAL) {
          const id = ids[next++]!;
          await submit(id).catch(() => failed.push(id));
          if (acked.size >= 200 && !killed) killed = cluster.jobManager.kill("SIGKILL");
        }
      }),
    );
    await killed;
    expect(failed.length).toBeGreaterThan(0); // the crash really happened mid-stream

    await cluster.restart("job-manager");
    jobs.close();
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    // The client retries what was not acknowledged, with the same ids.
    for (const id of failed) await submit(id);
    expect(acked.size).toBe(TOTAL);

    const all = await waitFor(
      "every job to end",
      async () => {
        const list = (await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ pageSize: 1000 }))).jobs;
        return list.length === TOTAL && list.every((j) => isTerminal(j.state)) ? list : undefined;
      },
      60_000,
      250,
    );
    // Exactly once: one record per id, each ran at most one attempt, and printed its own id.
    expect(new Set(all.map((j: Job) => j.id))).toEqual(new Set(ids));
    const notSucceeded = all.filter((j) => j.state !== JobState.JOB_STATE_SUCCEEDED);
    for (const job of all) {
      expect(job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING).length).toBeLessThanOrEqual(1);
      if (job.state === JobState.JOB_STATE_SUCCEEDED) expect(job.result?.stdout?.text).toBe(`${job.id}\n`);
    }
    // An attempt placed just before the crash whose start report was lost ends LOST (never run twice).
    expect(notSucceeded.every((j) => j.state === JobState.JOB_STATE_LOST)).toBe(true);
    console.log(
      `crash test: ${all.length - notSucceeded.length} succeeded, ${notSucceeded.length} lost, ${failed.length} resubmitted`,
    );
    jobs.close();
  }, 120_000);
});
