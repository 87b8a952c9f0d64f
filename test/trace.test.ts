/**
 * One trace per fire: the spans of a fire in the scheduler, the job-manager,
 * the coordinator and the agent (four processes) share one trace id, which
 * the job record names.
 */
import { describe, expect, it } from "vitest";
import { CreateScheduleRequest, JobServiceClient, JobState, ListJobsRequest, SchedulerServiceClient } from "@aspen/proto";
import { createClient, Spans, unaryCall } from "@aspen/runtime";
import { startCluster, startOtlpReceiver, waitFor } from "@aspen/testkit";

describe("tracing", () => {
  it("puts fire, submit, dispatch, place and execute of one fire in one trace across four processes", async () => {
    await using otlp = await startOtlpReceiver();
    await using cluster = await startCluster({ agents: 1, env: otlp.env });
    const scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    const jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    try {
      await unaryCall(
        scheduler.createSchedule.bind(scheduler),
        CreateScheduleRequest.fromPartial({
          scheduleId: "traced",
          spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
          job: { exec: { command: "echo", args: ["traced"] } },
        }),
      );
      const job = await waitFor("a finished fire", async () => {
        const list = await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ scheduleId: "traced" }));
        return list.jobs.find((j) => j.state === JobState.JOB_STATE_SUCCEEDED);
      });
      expect(job.traceId).toMatch(/^[0-9a-f]{32}$/);

      const expected = [
        ["aspen-scheduler", Spans.fire],
        ["aspen-job-manager", Spans.submit],
        ["aspen-job-manager", Spans.dispatch],
        ["aspen-coordinator", Spans.place],
        ["aspen-agent", Spans.execute],
      ] as const;
      const spans = await waitFor(
        "spans of the fire from all four services",
        () => {
          const inTrace = otlp.spans.filter((s) => s.traceId === job.traceId);
          return expected.every(([service, name]) => inTrace.some((s) => s.service === service && s.name === name))
            ? inTrace
            : undefined;
        },
        10_000,
        100,
      );
      expect(new Set(spans.map((s) => s.service))).toEqual(
        new Set(["aspen-scheduler", "aspen-job-manager", "aspen-coordinator", "aspen-agent"]),
      );
      // One root: the fire. Every other span's parent is in the same trace.
      const ids = new Set(spans.map((s) => s.spanId));
      const roots = spans.filter((s) => !s.parentSpanId);
      expect(roots.map((s) => s.name)).toEqual([Spans.fire]);
      for (const s of spans) if (s.parentSpanId) expect(ids.has(s.parentSpanId)).toBe(true);
      const execute = spans.find((s) => s.name === Spans.execute);
      expect(execute?.attributes["aspen.job.id"]).toBe(job.id);
      expect(execute?.attributes["aspen.exec.exit_code"]).toBe(job.result?.exitCode);
    } finally {
      scheduler.close();
      jobs.close();
    }
  });
});
