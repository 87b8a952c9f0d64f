/**
 * Bad input gets a clear status naming the field, never a crash: malformed
 * requests to each service and each call type (unary, server stream, bidi),
 * then proof the services still serve.
 */
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CoordinatorServiceClient,
  CreateScheduleRequest,
  JobServiceClient,
  PreviewScheduleRequest,
  RetryPolicy_Kind,
  SchedulerServiceClient,
  SubmitJobRequest,
  SubmitJobsRequest,
  type AgentMessage,
  type CoordinatorMessage,
  type Job,
} from "@aspen/proto";
import { AspenError, createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitHealthy, type Cluster } from "@aspen/testkit";

async function refusal(call: Promise<unknown>): Promise<AspenError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AspenError);
  return err as AspenError;
}

const job = (command: string) => ({ exec: { command, args: ["hello"] } });
const cron = (expression: string, timeZone = "") => ({ kind: { $case: "cron" as const, value: { expression, timeZone } } });

describe("input validation", () => {
  let cluster: Cluster;
  let scheduler: SchedulerServiceClient;
  let jobs: JobServiceClient;
  let coordinator: CoordinatorServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({ agents: 1 });
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    coordinator = createClient(CoordinatorServiceClient, cluster.addr.coordinator);
  });

  afterAll(async () => {
    for (const c of [scheduler, jobs, coordinator]) c?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  const createSchedule = (req: Parameters<typeof CreateScheduleRequest.fromPartial>[0]) =>
    unaryCall(scheduler.createSchedule.bind(scheduler), CreateScheduleRequest.fromPartial(req));

  it.each([
    ["a cron expression that does not parse", { spec: cron("*/2 * * *  nope"), job: job("echo") }, "spec.cron.expression"],
    ["a cron with 3 fields", { spec: cron("* * *"), job: job("echo") }, "spec.cron.expression"],
    ["a cron that never fires", { spec: cron("0 0 31 2 *"), job: job("echo") }, "spec.cron.expression"],
    ["an unknown time zone", { spec: cron("* * * * *", "Mars/Olympus"), job: job("echo") }, "spec.cron.time_zone"],
    ["no schedule kind", { spec: {}, job: job("echo") }, "spec.kind"],
    ["an empty command", { spec: cron("* * * * *"), job: job("") }, "job.exec.command"],
    ["no job", { spec: cron("* * * * *") }, "job"],
    ["a bad schedule id", { scheduleId: "Bad Id!", spec: cron("* * * * *"), job: job("echo") }, "schedule_id"],
  ])("CreateSchedule refuses %s with INVALID_ARGUMENT naming the field", async (_what, req, field) => {
    const err = await refusal(createSchedule(req));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.message.startsWith(`${field}:`)).toBe(true);
  });

  it("answers NOT_FOUND for an unknown schedule id on every schedule RPC", async () => {
    const id = { scheduleId: "no-such-schedule" };
    const calls = [
      unaryCall(scheduler.getSchedule.bind(scheduler), id),
      unaryCall(scheduler.pauseSchedule.bind(scheduler), { ...id, note: "" }),
      unaryCall(scheduler.resumeSchedule.bind(scheduler), id),
      unaryCall(scheduler.deleteSchedule.bind(scheduler), id),
      unaryCall(
        scheduler.previewSchedule.bind(scheduler),
        PreviewScheduleRequest.fromPartial({ target: { $case: "scheduleId", value: "no-such-schedule" } }),
      ),
    ];
    for (const call of calls) {
      const err = await refusal(call);
      expect(err.code).toBe(status.NOT_FOUND);
      expect(err.message).toContain("no-such-schedule");
    }
  });

  it("SubmitJob refuses an empty command and a malformed id; GetJob answers NOT_FOUND", async () => {
    const empty = await refusal(unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial({ spec: job("") })));
    expect(empty.code).toBe(status.INVALID_ARGUMENT);
    expect(empty.message).toMatch(/^spec\.exec\.command:/);
    const badId = await refusal(
      unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial({ jobId: "a..b", spec: job("echo") })),
    );
    expect(badId.code).toBe(status.INVALID_ARGUMENT);
    expect(badId.message).toMatch(/^job_id:/);
    const badTrace = await refusal(
      unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial({ traceparent: "not-a-trace", spec: job("echo") })),
    );
    expect(badTrace.code).toBe(status.INVALID_ARGUMENT);
    expect(badTrace.message).toMatch(/^traceparent:/);
    const missing = await refusal(unaryCall(jobs.getJob.bind(jobs), { jobId: "nope" }));
    expect(missing.code).toBe(status.NOT_FOUND);
    // An id no job can have (no valid store key either) is refused naming it, not failed as INTERNAL.
    for (const jobId of ["a..b", "with space", "x*"]) {
      const malformed = await refusal(unaryCall(jobs.getJob.bind(jobs), { jobId }));
      expect([malformed.code, malformed.message.split(":")[0]]).toEqual([status.INVALID_ARGUMENT, "job_id"]);
    }
  });

  it("SubmitJobs answers each submission on its own, and refuses a batch over the limit naming requests", async () => {
    const { results } = await unaryCall(
      jobs.submitJobs.bind(jobs),
      SubmitJobsRequest.fromPartial({
        requests: [
          SubmitJobRequest.fromPartial({ jobId: "batch-ok", spec: job("echo") }),
          SubmitJobRequest.fromPartial({ jobId: "a..b", spec: job("echo") }),
          SubmitJobRequest.fromPartial({ spec: job("") }),
          SubmitJobRequest.fromPartial({ jobId: "batch-ok", spec: job("echo") }),
        ],
      }),
    );
    expect(results.map((r) => [r.code, r.response?.job?.id ?? "", r.response?.created ?? false])).toEqual([
      [status.OK, "batch-ok", true],
      [status.INVALID_ARGUMENT, "", false],
      [status.INVALID_ARGUMENT, "", false],
      // The same id again in the same batch: one job, returned as existing.
      [status.OK, "batch-ok", false],
    ]);
    expect(results[1]?.message).toMatch(/^job_id:/);
    // Brief answers (the scheduler's): the id and whether it was created, not the record.
    const brief = await unaryCall(jobs.submitJobs.bind(jobs), {
      requests: [SubmitJobRequest.fromPartial({ jobId: "batch-ok", spec: job("echo") })],
      brief: true,
    });
    expect(brief.results[0]?.response?.created).toBe(false);
    expect(brief.results[0]?.response?.job?.id).toBe("batch-ok");
    expect(brief.results[0]?.response?.job?.spec).toBeUndefined();
    expect(results[2]?.message).toMatch(/^spec\.exec\.command:/);
    const tooMany = await refusal(
      unaryCall(
        jobs.submitJobs.bind(jobs),
        SubmitJobsRequest.fromPartial({
          requests: Array.from({ length: 1001 }, () => SubmitJobRequest.fromPartial({ spec: job("echo") })),
        }),
      ),
    );
    expect(tooMany.code).toBe(status.INVALID_ARGUMENT);
    expect(tooMany.message).toMatch(/^requests: at most 1000/);
  });

  it("refuses contradictory options naming the field: a retried at_most_once job", async () => {
    const err = await refusal(
      unaryCall(
        jobs.submitJob.bind(jobs),
        SubmitJobRequest.fromPartial({
          spec: { ...job("echo"), atMostOnce: true, retry: { kind: RetryPolicy_Kind.KIND_FIXED } },
        }),
      ),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.message).toMatch(/^spec\.retry\.kind: must be NONE for an at_most_once job/);
  });

  it("ends a WatchJob stream for an unknown job with NOT_FOUND (server streaming)", async () => {
    const stream = jobs.watchJob({ jobId: "nope" });
    const code = await new Promise<number>((resolve) => {
      stream.on("data", (_: Job) => undefined);
      stream.on("error", (e: { code: number }) => resolve(e.code));
      stream.on("end", () => resolve(status.OK));
    });
    expect(code).toBe(status.NOT_FOUND);
  });

  it("ends a Connect stream whose first message is not register with INVALID_ARGUMENT (bidi)", async () => {
    const stream = coordinator.connect();
    const err = await new Promise<{ code: number; details: string }>((resolve) => {
      stream.on("data", (_: CoordinatorMessage) => undefined);
      stream.on("error", (e: { code: number; details: string }) => resolve(e));
      stream.write({ msg: { $case: "heartbeat", value: { running: [], load: 0 } } } satisfies AgentMessage);
    });
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/^msg:/);
  });

  it("keeps serving after all of that", async () => {
    await waitHealthy(cluster.addr.scheduler, 2_000);
    await waitHealthy(cluster.addr.jobManager, 2_000);
    await waitHealthy(cluster.addr.coordinator, 2_000);
    const ok = await createSchedule({ scheduleId: "still-fine", spec: cron("0 0 * * *"), job: job("echo") });
    expect(ok.id).toBe("still-fine");
    const submitted = await unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial({ spec: job("echo") }));
    expect(submitted.created).toBe(true);
    for (const p of [cluster.scheduler, cluster.jobManager, cluster.coordinator]) {
      expect(p.logs.filter((l) => l.level === 50 || l.level === 60)).toEqual([]);
    }
  });
});
