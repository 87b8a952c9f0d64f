/**
 * Clean starts and stops: SIGTERM lets an agent finish its running job and
 * report it, then every process exits 0; a service with bad configuration
 * refuses to start and names the variable.
 */
import { describe, expect, it } from "vitest";
import { JobServiceClient, JobState, SubmitJobRequest } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, startService, waitFor } from "@aspen/testkit";

describe("lifecycle", () => {
  it("drains a running job on agent SIGTERM, then every service exits 0", async () => {
    await using cluster = await startCluster({ agents: 1 });
    const jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    try {
      const { job } = await unaryCall(
        jobs.submitJob.bind(jobs),
        SubmitJobRequest.fromPartial({
          jobId: "drain-me",
          spec: { exec: { command: "sh", args: ["-c", "sleep 1; echo done"] } },
        }),
      );
      await waitFor(
        "the job to run",
        async () => (await unaryCall(jobs.getJob.bind(jobs), { jobId: job!.id })).state === JobState.JOB_STATE_RUNNING,
      );
      const [agent] = cluster.agents;
      expect(await agent!.stop(15_000)).toBe(0);
      const finished = await waitFor("the drained job's result", async () => {
        const j = await unaryCall(jobs.getJob.bind(jobs), { jobId: "drain-me" });
        return j.state === JobState.JOB_STATE_SUCCEEDED ? j : undefined;
      });
      expect(finished.result?.stdout?.text).toBe("done\n");
      for (const p of [cluster.scheduler, cluster.coordinator, cluster.jobManager]) {
        expect(await p.stop(10_000)).toBe(0);
        expect(p.logs.some((l) => l.msg === "stopped")).toBe(true);
      }
    } finally {
      jobs.close();
    }
  });

  it("refuses to start on bad configuration, naming the variable", async () => {
    const proc = startService("scheduler", { ASPEN_GRPC_PORT: "not-a-port", ASPEN_NATS_SERVERS: "nats://127.0.0.1:1" });
    expect(await proc.exited).toBe(1);
    const fatal = proc.logs.find((l) => l.msg === "failed to start");
    expect(JSON.stringify(fatal)).toContain('ASPEN_GRPC_PORT=\\"not-a-port\\"');
  });
});
