/**
 * The walking skeleton, end to end: nats-server and the four services as
 * separate processes; a 2-second cron schedule running `echo hello` on an
 * agent; the scheduler SIGKILLed and restarted; every nominal instant runs once.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CreateScheduleRequest, JobServiceClient, JobState, SchedulerServiceClient, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor, type Cluster, jobsOfSchedule } from "@aspen/testkit";

describe("walking skeleton", () => {
  let cluster: Cluster;
  let scheduler: SchedulerServiceClient;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({ agents: 1 });
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });

  afterAll(async () => {
    scheduler?.close();
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  const jobsOf = (scheduleId: string): Promise<Job[]> => jobsOfSchedule(jobs, scheduleId);

  it("runs a 2 s cron schedule on an agent, survives a scheduler SIGKILL, and never runs an instant twice", async () => {
    const created = await unaryCall(
      scheduler.createSchedule.bind(scheduler),
      CreateScheduleRequest.fromPartial({
        scheduleId: "hello",
        spec: { kind: { $case: "cron", value: { expression: "*/2 * * * * *" } } },
        job: { exec: { command: "echo", args: ["hello"] } },
      }),
    );
    expect(created.id).toBe("hello");
    const createdAt = Date.now();

    // At least two SUCCEEDED runs with stdout "hello\n" within 6 s.
    const firstRuns = await waitFor(
      "two successful runs",
      async () => {
        const done = (await jobsOf("hello")).filter((j) => j.state === JobState.JOB_STATE_SUCCEEDED);
        return done.length >= 2 ? done : undefined;
      },
      6_000,
      100,
    );
    expect(Date.now() - createdAt).toBeLessThan(6_000);
    for (const listed of firstRuns) {
      const job = await unaryCall(jobs.getJob.bind(jobs), { jobId: listed.id });
      expect(job.state).toBe(JobState.JOB_STATE_SUCCEEDED);
      expect(job.result?.exitCode).toBe(0);
      expect(job.result?.stdout?.text).toBe("hello\n");
      expect(job.workerId).toBe("agent-1");
      // A short job is reported in one go ("finished" alone); its history still shows it ran.
      expect(job.history.map((h) => [JobState[h.to], h.actor])).toEqual(
        expect.arrayContaining([
          ["JOB_STATE_RUNNING", "agent:agent-1"],
          ["JOB_STATE_SUCCEEDED", "agent:agent-1"],
        ]),
      );
      // The id is derived from the nominal instant, which is on the 2-second grid.
      const nominal = job.scheduledAt?.getTime() ?? NaN;
      expect(job.id).toBe(`hello.${nominal}`);
      expect(nominal % 2000).toBe(0);
      // Timings in causal order: scheduled ≤ submitted ≤ started ≤ finished.
      const t = [job.scheduledAt, job.submittedAt, job.startedAt, job.finishedAt].map((d) => d?.getTime() ?? NaN);
      expect(t.every((v) => Number.isFinite(v))).toBe(true);
      expect([...t].sort((a, b) => a - b)).toEqual(t);
    }

    // SIGKILL the scheduler mid-schedule, start it again: the schedule fires again.
    await cluster.scheduler.kill("SIGKILL");
    const killedAt = Date.now();
    const restarted = await cluster.restart("scheduler");
    scheduler.close();
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    await waitFor(
      "a fire after the restart",
      async () =>
        (await jobsOf("hello")).some(
          (j) => j.state === JobState.JOB_STATE_SUCCEEDED && (j.scheduledAt?.getTime() ?? 0) > killedAt,
        ),
      8_000,
      100,
    );
    expect(restarted.logs.some((l) => l.msg === "schedules loaded" && l.schedules === 1)).toBe(true);

    // No nominal instant ran twice: one job per instant, each started once.
    const all = await jobsOf("hello");
    const instants = all.map((j) => j.scheduledAt?.getTime());
    expect(new Set(instants).size).toBe(all.length);
    for (const job of all) {
      const starts = job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING).length;
      expect(starts).toBeLessThanOrEqual(1);
      expect(job.attempt).toBeLessThanOrEqual(1);
    }
    const schedule = await unaryCall(scheduler.getSchedule.bind(scheduler), { scheduleId: "hello" });
    expect(schedule.status?.fireCount).toBeGreaterThanOrEqual(3);
    expect(schedule.status?.lastJobId).toMatch(/^hello\.\d+$/);
  });
});
