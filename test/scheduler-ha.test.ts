/**
 * High availability and operations with real processes. Two scheduler
 * replicas share the firing lease; the leader is SIGKILLed while a 1-second
 * schedule runs for 20 s: every nominal instant in the window runs, none
 * twice. Then pause/resume, trigger-now, backfill, update, and the schedule
 * limit against the surviving replica.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import {
  ConflictPolicy,
  CreateScheduleRequest,
  JobServiceClient,
  JobState,
  PreviewScheduleRequest,
  SchedulerServiceClient,
  type Job,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import {
  freePort,
  sleep,
  startCluster,
  startService,
  waitFor,
  waitHealthy,
  type Cluster,
  type ServiceProcess,
  jobsOfSchedule,
} from "@aspen/testkit";

describe("scheduler HA and operations", () => {
  let cluster: Cluster;
  let second: ServiceProcess;
  let secondAddr: string;
  let jobs: JobServiceClient;
  const clients: SchedulerServiceClient[] = [];

  beforeAll(async () => {
    cluster = await startCluster({ agents: 1, slots: 8, env: { ASPEN_MAX_SCHEDULES: "12" } });
    const port = await freePort();
    secondAddr = `127.0.0.1:${port}`;
    second = startService("scheduler", { ...cluster.envFor("scheduler"), ASPEN_GRPC_PORT: String(port) }, "scheduler-2");
    await waitHealthy(secondAddr, 20_000, second);
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    jobs?.close();
    await second?.[Symbol.asyncDispose]();
    await cluster?.[Symbol.asyncDispose]();
  });

  const client = (addr: string) => {
    const c = createClient(SchedulerServiceClient, addr);
    clients.push(c);
    return c;
  };
  const jobsOf = (scheduleId: string): Promise<Job[]> => jobsOfSchedule(jobs, scheduleId);

  it("a standby takes over when the leader is SIGKILLed: no instant twice, none lost", async () => {
    const a = client(cluster.addr.scheduler);
    const b = client(secondAddr);
    const leaderA = await unaryCall(a.getLeader.bind(a), {});
    const leaderB = await unaryCall(b.getLeader.bind(b), {});
    expect([leaderA.isLeader, leaderB.isLeader].filter(Boolean)).toHaveLength(1);
    expect(leaderA.token).toBe(leaderB.token);
    const [leaderProc, survivor, survivorClient] = leaderA.isLeader
      ? [cluster.scheduler, second, b]
      : [second, cluster.scheduler, a];

    await unaryCall(
      survivorClient.createSchedule.bind(survivorClient),
      CreateScheduleRequest.fromPartial({
        scheduleId: "ha",
        spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
        job: { exec: { command: "true" } },
      }),
    );
    const started = Date.now();
    await sleep(7_000);
    await leaderProc.kill("SIGKILL");
    const killedAt = Date.now();
    await waitFor(
      "the standby to lead",
      async () => (await unaryCall(survivorClient.getLeader.bind(survivorClient), {})).isLeader,
      15_000,
      100,
    );
    const firstFireAfter = await waitFor(
      "a fire by the new leader",
      () => survivor.logs.find((l) => l.msg === "fired" && l.schedule === "ha" && Date.parse(l.time as string) > killedAt),
      15_000,
      50,
    );
    const takeoverMs = Date.parse(firstFireAfter.time as string) - killedAt;
    await sleep(Math.max(0, started + 20_000 - Date.now()));
    await unaryCall(survivorClient.pauseSchedule.bind(survivorClient), { scheduleId: "ha", note: "test over" });
    await sleep(500);

    const all = await jobsOf("ha");
    const instants = all.map((j) => j.scheduledAt?.getTime() ?? NaN).sort((x, y) => x - y);
    const first = instants[0] as number;
    const last = instants[instants.length - 1] as number;
    // No instant twice: one job per instant, each started at most once.
    expect(new Set(instants).size).toBe(instants.length);
    for (const j of all) expect(j.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING).length).toBeLessThanOrEqual(1);
    // None lost: every second from the first fire to the last has its job.
    const expected = (last - first) / 1000 + 1;
    expect(instants.length).toBe(expected);
    expect(last - first).toBeGreaterThanOrEqual(17_000);
    const schedule = await unaryCall(survivorClient.getSchedule.bind(survivorClient), { scheduleId: "ha" });
    expect(schedule.status?.missedCount).toBe(0);
    const lease = await unaryCall(survivorClient.getLeader.bind(survivorClient), {});
    expect(lease.token).toBe(leaderA.token + 1);
    // Fires across both replicas' logs: no instant submitted as new twice.
    const createdJobs = [...leaderProc.logs, ...survivor.logs]
      .filter((l) => l.msg === "fired" && l.schedule === "ha" && l.created)
      .map((l) => l.job as string);
    expect(new Set(createdJobs).size).toBe(createdJobs.length);
    // The leader can die between submitting an instant and logging it: that job exists, and
    // the standby finishes the instant by its job id (a "fired" line with created=false).
    const unlogged = all.map((j) => j.id).filter((id) => !createdJobs.includes(id));
    expect(unlogged.length).toBeLessThanOrEqual(1);
    for (const id of unlogged) {
      expect(survivor.logs.some((l) => l.msg === "fired" && l.job === id && l.created === false)).toBe(true);
    }
    console.log(
      `failover: ${instants.length} instants over ${(last - first) / 1000 + 1} s, none twice, none lost; ` +
        `takeover (SIGKILL → first fire by the standby) ${takeoverMs} ms; lease token ${leaderA.token} → ${lease.token}; ` +
        `max fire lag ${schedule.status?.maxFireLag?.seconds}.${String(Math.round((schedule.status?.maxFireLag?.nanos ?? 0) / 1e6)).padStart(3, "0")} s`,
    );
    if (leaderProc === cluster.scheduler) {
      // Bring a replica back on the first address for the next tests.
      await cluster.restart("scheduler");
    }
  }, 90_000);

  it("pause with a note, resume, trigger now (under the conflict policy), backfill, update, limit", async () => {
    const c = client(cluster.addr.scheduler);
    const call = <Req, Res>(fn: (req: Req, cb: (err: unknown, res: Res) => void) => unknown, req: Req) =>
      unaryCall(fn.bind(c) as never, req) as Promise<Res>;

    // Pause / resume: no fire while paused, preview says why, resumes firing.
    await call(
      c.createSchedule,
      CreateScheduleRequest.fromPartial({
        scheduleId: "ops-pause",
        spec: { kind: { $case: "interval", value: { every: { seconds: 1, nanos: 0 } } } },
        job: { exec: { command: "true" } },
      }),
    );
    await waitFor("a fire", async () => (await jobsOf("ops-pause")).length >= 1, 10_000, 100);
    const paused = await unaryCall(c.pauseSchedule.bind(c), { scheduleId: "ops-pause", note: "db maintenance" });
    expect(paused.paused).toBe(true);
    expect(paused.pauseNote).toBe("db maintenance");
    const countAtPause = (await jobsOf("ops-pause")).length;
    const preview = await unaryCall(
      c.previewSchedule.bind(c),
      PreviewScheduleRequest.fromPartial({ target: { $case: "scheduleId", value: "ops-pause" }, count: 2 }),
    );
    expect(preview.fires[0]?.skipReason).toBe("schedule is paused: db maintenance");
    await sleep(3_000);
    expect((await jobsOf("ops-pause")).length).toBeLessThanOrEqual(countAtPause + 1);
    await unaryCall(c.resumeSchedule.bind(c), { scheduleId: "ops-pause" });
    await waitFor("fires after resume", async () => (await jobsOf("ops-pause")).length >= countAtPause + 2, 10_000, 100);
    const resumed = await unaryCall(c.getSchedule.bind(c), { scheduleId: "ops-pause" });
    expect(resumed.status?.missedCount).toBeGreaterThanOrEqual(1); // paused instants: catch-up SKIP counts them
    await unaryCall(c.pauseSchedule.bind(c), { scheduleId: "ops-pause", note: "" });

    // Trigger now on a yearly schedule: one job now, next fire unchanged; a second trigger while it runs is skipped.
    await call(
      c.createSchedule,
      CreateScheduleRequest.fromPartial({
        scheduleId: "ops-trigger",
        spec: { kind: { $case: "cron", value: { expression: "0 0 1 1 *" } }, conflict: ConflictPolicy.CONFLICT_POLICY_SKIP },
        job: { exec: { command: "sleep", args: ["3"] } },
      }),
    );
    const before = await unaryCall(c.getSchedule.bind(c), { scheduleId: "ops-trigger" });
    const t1 = await unaryCall(c.triggerSchedule.bind(c), { scheduleId: "ops-trigger" });
    expect(t1.outcome).toBe("submitted");
    expect(t1.jobId).toBe(`ops-trigger.${t1.at?.getTime()}`);
    await waitFor(
      "the triggered job to run",
      async () => (await unaryCall(jobs.getJob.bind(jobs), { jobId: t1.jobId })).state === JobState.JOB_STATE_RUNNING,
      10_000,
      100,
    );
    const t2 = await unaryCall(c.triggerSchedule.bind(c), { scheduleId: "ops-trigger" });
    expect(t2.outcome).toBe("skipped");
    expect(t2.reason).toContain(t1.jobId);
    const after = await unaryCall(c.getSchedule.bind(c), { scheduleId: "ops-trigger" });
    expect(after.status?.nextFireAt).toEqual(before.status?.nextFireAt);
    expect(after.status?.manualFireCount).toBe(1);
    expect(after.status?.skippedCount).toBe(1);

    // Backfill the last three 03:00 UTC instants; a repeat creates nothing new.
    await call(
      c.createSchedule,
      CreateScheduleRequest.fromPartial({
        scheduleId: "ops-backfill",
        spec: { kind: { $case: "cron", value: { expression: "0 3 * * *" } } },
        job: { exec: { command: "true" } },
      }),
    );
    const now = Date.now();
    const from = new Date(now - 3 * 86_400_000);
    const bf = await unaryCall(c.backfillSchedule.bind(c), { scheduleId: "ops-backfill", from, to: new Date(now) });
    expect(bf.jobIds).toHaveLength(3);
    expect(bf.created).toBe(3);
    for (const id of bf.jobIds) expect(Number(id.split(".")[1]) % 86_400_000).toBe(3 * 3_600_000);
    const again = await unaryCall(c.backfillSchedule.bind(c), { scheduleId: "ops-backfill", from, to: new Date(now) });
    expect(again.created).toBe(0);
    await waitFor(
      "backfilled jobs to succeed",
      async () => (await jobsOf("ops-backfill")).filter((j) => j.state === JobState.JOB_STATE_SUCCEEDED).length === 3,
      15_000,
      100,
    );

    // Update: a daily schedule becomes every second and fires at once.
    const updated = await unaryCall(c.updateSchedule.bind(c), {
      scheduleId: "ops-backfill",
      spec: { ...before.spec, kind: { $case: "cron", value: { expression: "* * * * * *", timeZone: "" } }, conflict: 0 } as never,
      tags: {},
      replaceTags: false,
    });
    expect((updated.status?.nextFireAt?.getTime() ?? Infinity) - Date.now()).toBeLessThan(2_000);
    await waitFor("a fire of the updated spec", async () => (await jobsOf("ops-backfill")).length >= 5, 10_000, 100);
    await unaryCall(c.pauseSchedule.bind(c), { scheduleId: "ops-backfill", note: "" });

    // The schedule limit (12 in this cluster) is RESOURCE_EXHAUSTED, with the numbers.
    let err: { code?: number; message?: string } | undefined;
    for (let i = 0; i < 20 && !err; i++) {
      await call(
        c.createSchedule,
        CreateScheduleRequest.fromPartial({
          scheduleId: `ops-limit-${i}`,
          spec: { kind: { $case: "cron", value: { expression: "0 0 1 1 *" } } },
          job: { exec: { command: "true" } },
        }),
      ).catch((e: { code?: number; message?: string }) => (err = e));
    }
    expect(err?.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(err?.message).toMatch(/schedule limit reached: 12 of 12/);
  }, 90_000);
});
