/**
 * NATS credentials: every service connects as its own NATS user, allowed only
 * the buckets and streams it owns (scripts/nats-auth.mjs). The whole path
 * works under those permissions, and a user cannot reach another's bucket.
 */
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import {
  CreateScheduleRequest,
  JobServiceClient,
  JobState,
  ListJobsRequest,
  SchedulerServiceClient,
  type OutputChunk,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor, type ServiceName } from "@aspen/testkit";
import { natsAuthorization } from "../scripts/nats-auth.mjs";

const passwords: Record<string, string> = Object.fromEntries(
  ["scheduler", "job-manager", "coordinator", "agent"].map((u) => [u, randomBytes(12).toString("hex")]),
);

describe("NATS credentials per service", () => {
  it("runs a fire end to end with each service confined to its own buckets", async () => {
    await using cluster = await startCluster({
      agents: 1,
      natsConfig: natsAuthorization(passwords),
      serviceEnv: (name: ServiceName) => ({ ASPEN_NATS_USER: name, ASPEN_NATS_PASSWORD: passwords[name]! }),
    });
    const scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    const jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    try {
      await unaryCall(
        scheduler.createSchedule.bind(scheduler),
        CreateScheduleRequest.fromPartial({
          scheduleId: "confined",
          spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
          job: { exec: { command: "echo", args: ["confined"] } },
        }),
      );
      const job = await waitFor("a fire to succeed", async () => {
        const list = await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ scheduleId: "confined" }));
        return list.jobs.find((j) => j.state === JobState.JOB_STATE_SUCCEEDED);
      });
      expect(job.result?.stdout?.text).toBe("confined\n");
      // The agent stored the output (object store) and its audit record (stream); the job-manager reads both.
      const chunks: OutputChunk[] = [];
      for await (const c of jobs.streamJobOutput({
        jobId: job.id,
        attempt: 0,
        follow: false,
        streams: ["stdout"],
      }) as AsyncIterable<OutputChunk>) {
        chunks.push(c);
      }
      expect(Buffer.concat(chunks.map((c) => Buffer.from(c.data))).toString()).toBe("confined\n");
      const audit = await waitFor("the audit record", async () => {
        const r = await unaryCall(jobs.listAuditRecords.bind(jobs), { jobId: job.id, workerId: "", limit: 10 });
        return r.records[0];
      });
      expect(audit.outcome).toBe("exit 0");
      for (const p of [cluster.scheduler, cluster.jobManager, cluster.coordinator, ...cluster.agents]) {
        expect(p.logs.filter((l) => /[Pp]ermission/.test(JSON.stringify(l)))).toEqual([]);
      }

      // Another service's bucket is out of reach; a wrong password is refused.
      const asScheduler = await connect({ servers: cluster.nats.url, user: "scheduler", pass: passwords.scheduler });
      try {
        await expect(new Kvm(asScheduler).create("aspen_jobs")).rejects.toThrow(/Permissions Violation/);
      } finally {
        await asScheduler.close();
      }
      const asAgent = await connect({ servers: cluster.nats.url, user: "agent", pass: passwords.agent });
      try {
        await expect(new Kvm(asAgent).create("aspen_schedules")).rejects.toThrow(/Permissions Violation/);
      } finally {
        await asAgent.close();
      }
      await expect(connect({ servers: cluster.nats.url, user: "agent", pass: "wrong" })).rejects.toThrow(
        /Authorization Violation/i,
      );
    } finally {
      scheduler.close();
      jobs.close();
    }
  }, 60_000);
});
