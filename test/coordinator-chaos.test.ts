/**
 * Failover with fencing, with real processes: an agent SIGKILLed mid-job, an
 * agent frozen (SIGSTOP, a partition) until declared dead and then thawed,
 * and a coordinator restarted while jobs run.
 */
import { describe, expect, it } from "vitest";
import { JobServiceClient, JobState, RetryPolicy_Kind, SubmitJobRequest, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { sleep, startCluster, waitFor } from "@aspen/testkit";

const S = JobState;
const retryOnLost = { kind: RetryPolicy_Kind.KIND_FIXED, delay: { seconds: 0, nanos: 100e6 }, maxAttempts: 3, retryOnLost: true };

function client(addr: string) {
  const jobs = createClient(JobServiceClient, addr);
  return {
    jobs,
    submit: (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
      unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req)),
    get: (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId }),
    result: (jobId: string, seconds = 30) =>
      unaryCall(jobs.getJobResult.bind(jobs), { jobId, wait: { seconds, nanos: 0 } }, { deadlineMs: (seconds + 5) * 1000 }),
  };
}

/** The job once it runs, and on which agent. */
async function running(get: (id: string) => Promise<Job>, id: string): Promise<Job> {
  return waitFor(`${id} to run`, async () => {
    const j = await get(id);
    return j.state === S.JOB_STATE_RUNNING ? j : undefined;
  });
}

describe("failover", () => {
  it("retries the job of a SIGKILLed agent on another agent within the detection time", async () => {
    await using cluster = await startCluster({ agents: 2, scheduler: false });
    const c = client(cluster.addr.jobManager);
    try {
      await c.submit({
        jobId: "victim",
        spec: { exec: { command: "sh", args: ["-c", "sleep 1; echo survived"] }, retry: retryOnLost },
      });
      const first = await running(c.get, "victim");
      const agent = cluster.agents.find((a) => a.name === first.workerId)!;
      const killedAt = Date.now();
      await agent.kill("SIGKILL");
      const retried = await waitFor(
        "the retry to start elsewhere",
        async () => {
          const j = await c.get("victim");
          return j.attempt === 2 && j.state === S.JOB_STATE_RUNNING ? j : undefined;
        },
        15_000,
      );
      const failoverMs = Date.now() - killedAt;
      console.log(`failover: SIGKILL of ${first.workerId} → retry running on ${retried.workerId} in ${failoverMs} ms`);
      expect(retried.workerId).not.toBe(first.workerId);
      expect(failoverMs).toBeLessThan(5_000); // documented: 2 s reconnect grace + retry delay + placement
      const done = await c.result("victim");
      expect(done.state).toBe(S.JOB_STATE_SUCCEEDED);
      expect(done.result?.stdout?.text).toBe("survived\n");
      const lost = done.history.find((h) => h.to === S.JOB_STATE_LOST);
      expect(lost?.reason).toMatch(new RegExp(`worker ${first.workerId} declared dead \\(disconnected`));
    } finally {
      c.jobs.close();
    }
  }, 60_000);

  it("refuses and records the late result of a partitioned agent; the job succeeds exactly once", async () => {
    await using cluster = await startCluster({
      agents: 2,
      scheduler: false,
      env: { ASPEN_DEAD_AFTER: "2s", ASPEN_UNHEALTHY_AFTER: "1s" },
    });
    const c = client(cluster.addr.jobManager);
    try {
      await c.submit({
        jobId: "partitioned",
        spec: { exec: { command: "sh", args: ["-c", "sleep 2; echo done"] }, retry: retryOnLost },
      });
      const first = await running(c.get, "partitioned");
      const frozen = cluster.agents.find((a) => a.name === first.workerId)!;
      await frozen.kill("SIGSTOP");
      try {
        const retried = await waitFor(
          "the retry elsewhere to finish",
          async () => {
            const j = await c.get("partitioned");
            return j.attempt === 2 && j.state === S.JOB_STATE_SUCCEEDED ? j : undefined;
          },
          20_000,
        );
        expect(retried.workerId).not.toBe(first.workerId);
      } finally {
        await frozen.kill("SIGCONT");
      }
      // The thawed agent reconnects and reports attempt 1: refused, recorded, not applied.
      const job = await waitFor(
        "the late report to be recorded",
        async () => {
          const j = await c.get("partitioned");
          return j.refusedReports.length > 0 ? j : undefined;
        },
        20_000,
      );
      expect(job.refusedReports.join("\n")).toMatch(new RegExp(`attempt 1 .* from ${first.workerId}: .*fenced`));
      expect(job.state).toBe(S.JOB_STATE_SUCCEEDED);
      expect(job.attempt).toBe(2);
      expect(job.history.filter((h) => h.to === S.JOB_STATE_SUCCEEDED)).toHaveLength(1);
      expect(job.history.find((h) => h.to === S.JOB_STATE_LOST)?.reason).toMatch(/silent for/);
    } finally {
      c.jobs.close();
    }
  }, 90_000);

  it("keeps jobs running through a coordinator restart and records their results", async () => {
    await using cluster = await startCluster({ agents: 2, slots: 2, scheduler: false });
    const c = client(cluster.addr.jobManager);
    try {
      const ids = ["r1", "r2", "r3", "r4"];
      for (const id of ids) await c.submit({ jobId: id, spec: { exec: { command: "sh", args: ["-c", `sleep 2; echo ${id}`] } } });
      for (const id of ids) await running(c.get, id);
      await cluster.coordinator.kill("SIGKILL");
      await sleep(300);
      await cluster.restart("coordinator");
      const done = await Promise.all(ids.map((id) => c.result(id)));
      for (const [i, job] of done.entries()) {
        expect(job.state).toBe(S.JOB_STATE_SUCCEEDED);
        expect(job.attempt).toBe(1);
        expect(job.result?.stdout?.text).toBe(`${ids[i]}\n`);
      }
      // And the restarted coordinator places new work.
      await c.submit({ jobId: "after-restart", spec: { exec: { command: "true" } } });
      expect((await c.result("after-restart")).state).toBe(S.JOB_STATE_SUCCEEDED);
    } finally {
      c.jobs.close();
    }
  }, 60_000);
});
