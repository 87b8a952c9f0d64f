/**
 * An instant recorded in `status.firing_at` that the scheduler did not record
 * itself (the previous fire's outcome write pre-records the next instant) is
 * resolved by its job id on start: no job → a missed instant under the
 * catch-up policy; a job → only the bookkeeping is finished. And a pause
 * after a fire keeps the pre-recorded instant from firing. Real processes:
 * the records are written straight into the bucket before the scheduler starts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CatchUpPolicy,
  CreateScheduleRequest,
  JobServiceClient,
  Schedule,
  SchedulerServiceClient,
  SubmitJobRequest,
  type Job,
  type ScheduleSpec,
} from "@aspen/proto";
import { createClient, createLogger, unaryCall } from "@aspen/runtime";
import { fireJobId } from "@aspen/model";
import { Store } from "@aspen/store";
import { sleep, startCluster, waitFor, type Cluster, type ServiceProcess, jobsOfSchedule } from "@aspen/testkit";

const GRACE_MS = 500;

describe("scheduler: recorded instants on start", () => {
  let cluster: Cluster;
  let scheduler: SchedulerServiceClient;
  let jobs: JobServiceClient;
  let started: ServiceProcess;
  /** The recorded instant: 3 s before the scheduler starts (past the grace). */
  let X: number;

  const everySecond = (catchUp: CatchUpPolicy): ScheduleSpec =>
    ({ kind: { $case: "cron", value: { expression: "* * * * * *", timeZone: "" } }, catchUp }) as ScheduleSpec;
  const jobsOf = (scheduleId: string): Promise<Job[]> => jobsOfSchedule(jobs, scheduleId);
  const getSchedule = (scheduleId: string) => unaryCall(scheduler.getSchedule.bind(scheduler), { scheduleId });
  const at = (j: Job) => j.scheduledAt?.getTime() ?? NaN;
  const stored = (id: string, spec: ScheduleSpec): Schedule =>
    Schedule.fromPartial({
      id,
      name: id,
      spec,
      job: { exec: { command: "true" } },
      createdAt: new Date(X - 60_000),
      updatedAt: new Date(X - 60_000),
      status: {
        nextFireAt: new Date(X),
        firingAt: new Date(X),
        lastFireAt: new Date(X - 1_000),
        fireCount: 5,
        fence: 1,
        writer: "a previous scheduler",
      },
    });

  beforeAll(async () => {
    cluster = await startCluster({
      agents: 1,
      slots: 8,
      scheduler: false,
      env: { ASPEN_MISFIRE_GRACE_MS: String(GRACE_MS), ASPEN_LEASE_TTL_MS: "1000" },
    });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    // A whole second, 3 s back by the time the scheduler has started (about a second from now).
    X = Math.floor(Date.now() / 1000) * 1000 - 2_000;
    const store = await Store.connect({ servers: [cluster.nats.url], name: "test", log: createLogger("test", "silent") });
    try {
      const bucket = await store.bucket("aspen_schedules", Schedule);
      await bucket.create("rec-skip", stored("rec-skip", everySecond(CatchUpPolicy.CATCH_UP_POLICY_SKIP)));
      await bucket.create("rec-latest", stored("rec-latest", everySecond(CatchUpPolicy.CATCH_UP_POLICY_RUN_LATEST)));
      await bucket.create("rec-first", stored("rec-first", everySecond(CatchUpPolicy.CATCH_UP_POLICY_RUN_IMMEDIATELY)));
      await bucket.create("rec-done", stored("rec-done", everySecond(CatchUpPolicy.CATCH_UP_POLICY_SKIP)));
    } finally {
      await store.close();
    }
    // rec-done: the previous scheduler got X's job through before it died.
    const res = await unaryCall(
      jobs.submitJob.bind(jobs),
      SubmitJobRequest.fromPartial({
        jobId: fireJobId("rec-done", X),
        spec: { exec: { command: "true" } },
        scheduleId: "rec-done",
        scheduledAt: new Date(X),
      }),
    );
    expect(res.created).toBe(true);
    started = await cluster.restart("scheduler");
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    await waitFor(
      "the recorded instants to be resolved",
      async () => (await getSchedule("rec-skip")).status?.firingAt?.getTime() !== X,
      15_000,
      100,
    );
  });

  afterAll(async () => {
    scheduler?.close();
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  it("no job under the recorded id: a missed instant, handled by the catch-up policy", async () => {
    await waitFor("regular fires", async () => (await jobsOf("rec-skip")).length >= 2, 10_000, 100);
    for (const id of ["rec-skip", "rec-latest", "rec-first"]) {
      await unaryCall(scheduler.pauseSchedule.bind(scheduler), { scheduleId: id, note: "test over" });
    }
    const fired = (id: string, mode: string) =>
      started.logs.filter((l) => l.msg === "fired" && l.schedule === id && l.mode === mode).map((l) => l.job as string);

    // SKIP: X is counted missed and never runs.
    const skip = await jobsOf("rec-skip");
    expect(skip.map(at)).not.toContain(X);
    const skipStatus = (await getSchedule("rec-skip")).status;
    expect(skipStatus?.missedCount).toBeGreaterThanOrEqual(2);
    expect(fired("rec-skip", "catch-up")).toEqual([]);
    // Nothing dropped silently: from X to the last fire, every instant ran or is counted missed.
    const lastSkip = Math.max(...skip.map(at));
    expect(skip.length + (skipStatus?.missedCount ?? 0)).toBe((lastSkip - X) / 1000 + 1);

    // RUN_IMMEDIATELY: one catch-up run, under the first missed instant's id: X itself, once.
    expect(fired("rec-first", "catch-up")).toEqual([fireJobId("rec-first", X)]);
    expect((await jobsOf("rec-first")).filter((j) => at(j) === X)).toHaveLength(1);

    // RUN_LATEST: one catch-up run, the most recent miss (not X).
    const latest = fired("rec-latest", "catch-up");
    expect(latest).toHaveLength(1);
    expect(latest[0]).not.toBe(fireJobId("rec-latest", X));
    expect((await jobsOf("rec-latest")).map(at)).not.toContain(X);

    // Each was looked up once by its job id before being judged.
    for (const id of ["rec-skip", "rec-latest", "rec-first"]) {
      expect(
        started.logs.some(
          (l) => l.msg === "recorded instant was never submitted and is past the grace: missed" && l.schedule === id,
        ),
      ).toBe(true);
    }
  });

  it("a job under the recorded id: not submitted again, bookkeeping finished", async () => {
    await waitFor("regular fires", async () => (await jobsOf("rec-done")).length >= 3, 10_000, 100);
    await unaryCall(scheduler.pauseSchedule.bind(scheduler), { scheduleId: "rec-done", note: "test over" });
    const all = await jobsOf("rec-done");
    expect(all.filter((j) => at(j) === X)).toHaveLength(1);
    const finishing = started.logs.filter((l) => l.msg === "fired" && l.job === fireJobId("rec-done", X));
    expect(finishing).toHaveLength(1);
    expect(finishing[0]).toMatchObject({ mode: "recover", created: false });
    // No submission of X by this scheduler created anything.
    expect(started.logs.some((l) => l.msg === "fired" && l.job === fireJobId("rec-done", X) && l.created)).toBe(false);
    const st = (await getSchedule("rec-done")).status;
    // Fire 6 was X's bookkeeping; the instants after X up to the start (past the grace) are missed under SKIP.
    expect(st?.fireCount).toBe(5 + all.length);
    expect(all.length + (st?.missedCount ?? 0)).toBe((Math.max(...all.map(at)) - X) / 1000 + 1);
  });

  it("pause after a fire: the pre-recorded instant does not fire", async () => {
    const create = CreateScheduleRequest.fromPartial({
      scheduleId: "rec-pause",
      spec: everySecond(CatchUpPolicy.CATCH_UP_POLICY_RUN_LATEST),
      job: { exec: { command: "true" } },
    });
    await unaryCall(scheduler.createSchedule.bind(scheduler), create);
    await waitFor("two fires", async () => (await jobsOf("rec-pause")).length >= 2, 10_000, 50);
    const before = await getSchedule("rec-pause");
    const preRecorded = before.status?.firingAt?.getTime();
    const paused = await unaryCall(scheduler.pauseSchedule.bind(scheduler), { scheduleId: "rec-pause", note: "hold" });
    const pausedAt = Date.now();
    const countAtPause = (await jobsOf("rec-pause")).length;
    await sleep(2_500);
    const after = await jobsOf("rec-pause");
    // At most a fire already in flight when the pause landed; nothing after.
    expect(after.length).toBeLessThanOrEqual(countAtPause + 1);
    expect(after.every((j) => at(j) < pausedAt + 1)).toBe(true);
    expect(paused.status?.nextFireAt).toBeUndefined();
    if (preRecorded !== undefined && preRecorded > pausedAt) expect(after.map(at)).not.toContain(preRecorded);
    // The pause dropped a pre-record still ahead of it.
    const st = (await getSchedule("rec-pause")).status;
    expect(st?.firingAt === undefined || (st.firingAt.getTime() ?? 0) <= pausedAt).toBe(true);
  });
});
