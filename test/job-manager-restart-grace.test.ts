/**
 * A job-manager that was down longer than ASPEN_ASSIGN_TIMEOUT while an attempt
 * started: the start report waits in the coordinator, which sends it again once
 * the job-manager is back. The restarted job-manager must hear it out — the
 * attempt ran, so it must not be declared LOST (and, with a retry policy, run a
 * second time) by the first maintenance pass after the restart.
 */
import { describe, expect, it } from "vitest";
import { JobServiceClient, JobState, RetryPolicy_Kind, SubmitJobRequest } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { sleep, startCluster, waitFor } from "@aspen/testkit";

describe("job-manager restart", () => {
  it("does not declare an attempt lost whose start report was held up while it was down", async () => {
    await using cluster = await startCluster({
      agents: 1,
      slots: 2,
      scheduler: false,
      // 5 s, as in the NATS restart test: a held-up report reaches a restarted job-manager within
      // the relay's retry (≤ 1 s) plus the channel's reconnect backoff (≤ 2 s + 20 %).
      jobManagerEnv: { ASPEN_ASSIGN_TIMEOUT: "5s", ASPEN_MAINTENANCE_INTERVAL: "200ms" },
      // The start report leaves the agent 1 s after the spawn: time to stop the job-manager first.
      agentEnv: () => ({ ASPEN_STARTED_REPORT_DELAY: "1s" }),
    });
    let jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    const get = (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId });
    await unaryCall(
      jobs.submitJob.bind(jobs),
      SubmitJobRequest.fromPartial({
        jobId: "held-up",
        spec: {
          exec: { command: "sleep", args: ["6"] },
          // A LOST verdict would start it again: the run twice this test must not see.
          retry: {
            kind: RetryPolicy_Kind.KIND_FIXED,
            maxAttempts: 3,
            delay: { seconds: 0, nanos: 100_000_000 },
            retryOnLost: true,
          },
        },
      }),
    );
    await waitFor("the attempt assigned", async () => (await get("held-up")).state === JobState.JOB_STATE_ASSIGNED, 5_000, 20);
    const assignedAt = Date.now();
    await cluster.jobManager.kill("SIGKILL");
    // Down past the assign timeout: on restart the record says ASSIGNED 5.5+ s ago, no start heard.
    await sleep(5_500);
    await cluster.restart("job-manager");
    jobs.close();
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    expect(Date.now() - assignedAt).toBeGreaterThan(5_000);

    const done = await waitFor(
      "the job to end",
      async () => {
        const job = await get("held-up");
        return job.state === JobState.JOB_STATE_SUCCEEDED || job.state === JobState.JOB_STATE_LOST || job.attempt > 1
          ? job
          : undefined;
      },
      20_000,
      100,
    );
    const states = done.history.map((h) => JobState[h.to]);
    expect(states, states.join(" → ")).not.toContain("JOB_STATE_LOST");
    expect(done.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(done.attempt).toBe(1);
    expect(done.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING)).toHaveLength(1);
    jobs.close();
  }, 60_000);
});
