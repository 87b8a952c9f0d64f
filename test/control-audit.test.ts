/**
 * The audit of control actions: who created, changed, paused, deleted,
 * triggered, cancelled or drained what, and when — across the services,
 * refusals included, append-only, readable through the API.
 */
import { describe, expect, it } from "vitest";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  CoordinatorServiceClient,
  CreateScheduleRequest,
  JobServiceClient,
  SchedulerServiceClient,
  SubmitJobRequest,
  SubmitJobsRequest,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { CONTROL_AUDIT_STREAM } from "@aspen/store";
import { startCluster, waitFor } from "@aspen/testkit";

describe("control audit", () => {
  it("records each state-changing call with its caller, target and outcome, and cannot be purged", async () => {
    await using cluster = await startCluster({ agents: 1 });
    const as = (token: string) => ({
      scheduler: createClient(SchedulerServiceClient, cluster.addr.scheduler, { token }),
      jobs: createClient(JobServiceClient, cluster.addr.jobManager, { token }),
      coordinator: createClient(CoordinatorServiceClient, cluster.addr.coordinator, { token }),
    });
    const admin = as(cluster.tokens.admin);
    const operator = as(cluster.tokens.operator);
    const viewer = as(cluster.tokens.viewer);
    try {
      await unaryCall(
        admin.scheduler.createSchedule.bind(admin.scheduler),
        CreateScheduleRequest.fromPartial({
          scheduleId: "nightly",
          spec: { kind: { $case: "cron", value: { expression: "0 2 * * *" } } },
          job: { exec: { command: "true" } },
        }),
      );
      await unaryCall(operator.scheduler.pauseSchedule.bind(operator.scheduler), { scheduleId: "nightly", note: "freeze" });
      await expect(
        unaryCall(viewer.scheduler.deleteSchedule.bind(viewer.scheduler), { scheduleId: "nightly" }),
      ).rejects.toMatchObject({
        code: 7,
      });
      await unaryCall(
        operator.jobs.submitJob.bind(operator.jobs),
        SubmitJobRequest.fromPartial({ jobId: "long", spec: { exec: { command: "sleep", args: ["30"] } } }),
      );
      await unaryCall(operator.jobs.cancelJob.bind(operator.jobs), { jobId: "long", reason: "not today" });
      // A batch is audited per submission, each with its own outcome.
      await unaryCall(
        operator.jobs.submitJobs.bind(operator.jobs),
        SubmitJobsRequest.fromPartial({
          requests: [
            { jobId: "batched-ok", spec: { exec: { command: "true" } } },
            { jobId: "batched-bad", spec: { exec: { command: "" } } },
          ],
        }),
      );
      await unaryCall(admin.coordinator.drainWorker.bind(admin.coordinator), { workerId: "agent-1", undrain: false });

      const records = await waitFor("the audit trail", async () => {
        const r = await unaryCall(viewer.jobs.listControlAudit.bind(viewer.jobs), { target: "", actor: "", limit: 100 });
        return r.records.length >= 8 ? r.records : undefined;
      });
      const seen = records.map((r) => [r.actor, r.method.split("/")[1], r.target, r.outcome.split(":")[0]]);
      expect(seen).toEqual(
        expect.arrayContaining([
          ["test-admin", "CreateSchedule", "nightly", "OK"],
          ["test-operator", "PauseSchedule", "nightly", "OK"],
          ["test-viewer", "DeleteSchedule", "nightly", "PERMISSION_DENIED"],
          ["test-operator", "SubmitJob", "long", "OK"],
          ["test-operator", "CancelJob", "long", "OK"],
          ["test-admin", "DrainWorker", "agent-1", "OK"],
          ["test-operator", "SubmitJobs", "batched-ok", "OK"],
          ["test-operator", "SubmitJobs", "batched-bad", "INVALID_ARGUMENT"],
        ]),
      );
      // Reads are not audited; records are newest first; filters by target and actor.
      expect(seen.some(([, method]) => method === "ListControlAudit" || method === "GetSchedule")).toBe(false);
      const seqs = records.map((r) => r.sequence);
      expect(seqs).toEqual([...seqs].sort((a, b) => b - a));
      const aboutNightly = await unaryCall(admin.jobs.listControlAudit.bind(admin.jobs), {
        target: "nightly",
        actor: "",
        limit: 10,
      });
      expect(aboutNightly.records.map((r) => r.method.split("/")[1])).toEqual([
        "DeleteSchedule",
        "PauseSchedule",
        "CreateSchedule",
      ]);
      expect(records.every((r) => r.at instanceof Date && r.role !== "")).toBe(true);

      // Append-only: the stream refuses a purge.
      const nc = await connect({ servers: cluster.nats.url });
      try {
        const jsm = await jetstreamManager(nc);
        await expect(jsm.streams.purge(CONTROL_AUDIT_STREAM)).rejects.toThrow();
      } finally {
        await nc.close();
      }
    } finally {
      for (const c of [admin, operator, viewer]) for (const client of Object.values(c)) client.close();
    }
  }, 60_000);
});
