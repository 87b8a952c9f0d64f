/**
 * Two job-manager replicas over the same buckets, 1,000 submissions at once
 * (500 to each): every job is dispatched exactly once (attempt 1, one RUNNING,
 * no refused report) and succeeds. This is what two replicas do today:
 * each dispatches the jobs submitted to it (its in-memory index holds only
 * the jobs it loaded at start or wrote since), agents' reports reach the one
 * the coordinator is pointed at, which applies them by compare-and-set on the
 * record. The other replica's reads lag (its index does not follow the
 * bucket): asserted below so the docs stay true.
 */
import { describe, expect, it } from "vitest";
import { JobServiceClient, JobState, ListJobsRequest, SubmitJobRequest, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { isTerminal } from "@aspen/model";
import { freePort, startCluster, startService, waitFor, waitHealthy } from "@aspen/testkit";

const PER_REPLICA = 500;

describe("two job-manager replicas", () => {
  it("dispatch each of 1,000 simultaneous submissions exactly once", async () => {
    await using cluster = await startCluster({ agents: 2, slots: 8, scheduler: false });
    const port = await freePort();
    const secondAddr = `127.0.0.1:${port}`;
    await using second = startService(
      "job-manager",
      { ...cluster.envFor("job-manager"), ASPEN_GRPC_PORT: String(port) },
      "job-manager-2",
    );
    await waitHealthy(secondAddr, 20_000, second);
    const clients = [createClient(JobServiceClient, cluster.addr.jobManager), createClient(JobServiceClient, secondAddr)];
    try {
      const ids = clients.map((_, r) =>
        Array.from({ length: PER_REPLICA }, (_, i) => `jm${r + 1}-${String(i).padStart(3, "0")}`),
      );
      const t0 = Date.now();
      await Promise.all(
        clients.map(async (client, r) => {
          let next = 0;
          await Promise.all(
            Array.from({ length: 32 }, async () => {
              while (next < PER_REPLICA) {
                const id = ids[r]![next++]!;
                await unaryCall(
                  client.submitJob.bind(client),
                  SubmitJobRequest.fromPartial({ jobId: id, spec: { exec: { command: "echo", args: [id] } } }),
                  { deadlineMs: 10_000 },
                );
              }
            }),
          );
        }),
      );
      const submittedMs = Date.now() - t0;
      // The replica the coordinator reports to sees every job once it has been reported on.
      const [first] = clients as [JobServiceClient, JobServiceClient];
      const all = await waitFor(
        "all 1,000 jobs to end",
        async () => {
          const jobs = (await unaryCall(first.listJobs.bind(first), ListJobsRequest.fromPartial({ pageSize: 1000 }))).jobs;
          return jobs.length === 2 * PER_REPLICA && jobs.every((j) => isTerminal(j.state)) ? jobs : undefined;
        },
        120_000,
        500,
      );
      const doneMs = Date.now() - t0;
      expect(new Set(all.map((j: Job) => j.id))).toEqual(new Set(ids.flat()));
      for (const job of all) {
        expect({ id: job.id, state: JobState[job.state], attempt: job.attempt }).toEqual({
          id: job.id,
          state: "JOB_STATE_SUCCEEDED",
          attempt: 1,
        });
        // Sent to an agent once: one start, and no second report refused as a stranger's attempt.
        // (ASSIGNED may repeat: a placement refused for lack of free slots puts the job back, same attempt.)
        expect(job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING)).toHaveLength(1);
        expect(job.refusedReports).toEqual([]);
        expect(job.result?.stdout?.text).toBe(`${job.id}\n`);
      }
      // GetJob reads the bucket, so either replica answers it right.
      const [, other] = clients as [JobServiceClient, JobServiceClient];
      const fromOther = await unaryCall(other.getJob.bind(other), { jobId: ids[0]![0]! });
      expect(fromOther.state).toBe(JobState.JOB_STATE_SUCCEEDED);
      // ListJobs reads the replica's own index: the second one lags (documented in docs/operations.md).
      const listedByOther = (await unaryCall(other.listJobs.bind(other), ListJobsRequest.fromPartial({ pageSize: 1000 }))).jobs;
      const lagging = listedByOther.filter((j) => !isTerminal(j.state)).length;
      console.log(
        `two job-managers: 1,000 jobs submitted in ${submittedMs} ms, all ended in ${doneMs} ms, each dispatched once; ` +
          `the second replica lists ${listedByOther.length} jobs, ${lagging} of them not yet terminal in its index`,
      );
    } finally {
      for (const c of clients) c.close();
    }
  }, 180_000);
});
