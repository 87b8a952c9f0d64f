/**
 * Catch-up and conflict policies with real processes: nats-server,
 * scheduler, job-manager, coordinator and one agent. Instants are 1 s apart;
 * the misfire grace is 500 ms so that a few seconds of downtime make misses.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CatchUpPolicy,
  ConflictPolicy,
  CreateScheduleRequest,
  JobServiceClient,
  JobState,
  SchedulerServiceClient,
  type Job,
  type Schedule,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { sleep, startCluster, waitFor, type Cluster, jobsOfSchedule } from "@aspen/testkit";

const GRACE_MS = 500;

describe("scheduler policies", () => {
  let cluster: Cluster;
  let scheduler: SchedulerServiceClient;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({
      agents: 1,
      slots: 12,
      env: { ASPEN_MISFIRE_GRACE_MS: String(GRACE_MS), ASPEN_LEASE_TTL_MS: "1000", ASPEN_QUEUE_POLL_MS: "100" },
    });
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });

  afterAll(async () => {
    scheduler?.close();
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  const jobsOf = async (scheduleId: string): Promise<Job[]> =>
    (await jobsOfSchedule(jobs, scheduleId)).sort((a, b) => (a.scheduledAt?.getTime() ?? 0) - (b.scheduledAt?.getTime() ?? 0));
  const getSchedule = (scheduleId: string): Promise<Schedule> => unaryCall(scheduler.getSchedule.bind(scheduler), { scheduleId });
  const create = (req: Parameters<typeof CreateScheduleRequest.fromPartial>[0]) =>
    unaryCall(scheduler.createSchedule.bind(scheduler), CreateScheduleRequest.fromPartial(req));
  const pause = (scheduleId: string) => unaryCall(scheduler.pauseSchedule.bind(scheduler), { scheduleId, note: "test over" });
  const everySecond = { kind: { $case: "cron" as const, value: { expression: "* * * * * *", timeZone: "" } } };
  const at = (j: Job) => j.scheduledAt?.getTime() ?? NaN;

  it("applies each catch-up policy to the instants missed while the scheduler was stopped", async () => {
    const policies = {
      "cu-skip": { catchUp: CatchUpPolicy.CATCH_UP_POLICY_SKIP },
      "cu-immediately": { catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_IMMEDIATELY },
      "cu-all": { catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_ALL, catchUpLimit: 3 },
      "cu-latest": { catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_LATEST },
      "cu-window": {
        catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_ALL,
        catchUpLimit: 100,
        catchUpWindow: { seconds: 2, nanos: 0 },
      },
    };
    for (const [id, policy] of Object.entries(policies)) {
      await create({ scheduleId: id, spec: { ...everySecond, ...policy }, job: { exec: { command: "true" } } });
    }
    await waitFor("first fires", async () => (await jobsOf("cu-window")).length >= 2, 10_000, 100);
    await cluster.scheduler.stop();
    const stoppedAt = Date.now();
    await sleep(6_000);
    const restartedAt = Date.now();
    const restarted = await cluster.restart("scheduler");
    scheduler.close();
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    await waitFor(
      "regular fires after the restart",
      async () => (await jobsOf("cu-skip")).some((j) => at(j) > restartedAt + 1_000),
      15_000,
      100,
    );
    for (const id of Object.keys(policies)) await pause(id);
    await sleep(300);

    const report: Record<string, { jobs: number; late: number; missed: number; span: number }> = {};
    for (const id of Object.keys(policies)) {
      const all = await jobsOf(id);
      const status = (await getSchedule(id)).status;
      const first = at(all[0] as Job);
      const last = at(all[all.length - 1] as Job);
      const span = (last - first) / 1000 + 1; // every instant from the first fire to the last
      // What the restarted scheduler fired as catch-up (its log says which mode each fire had).
      const caughtUp = new Set(
        restarted.logs.filter((l) => l.msg === "fired" && l.mode === "catch-up" && l.schedule === id).map((l) => l.job),
      );
      const lateJobs = all.filter((j) => caughtUp.has(j.id));
      expect(lateJobs.length, id).toBe(caughtUp.size);
      report[id] = { jobs: all.length, late: lateJobs.length, missed: status?.missedCount ?? -1, span };
      // Nothing silently dropped: every instant either ran or is counted missed.
      expect(all.length + (status?.missedCount ?? 0), id).toBe(span);
      // Late (catch-up) runs are instants from the downtime.
      for (const j of lateJobs) {
        expect(at(j), id).toBeGreaterThan(stoppedAt - 1_000);
        expect(at(j), id).toBeLessThan(restartedAt + 5_000);
      }
    }
    const missedWhileDown = (report["cu-skip"]?.missed ?? 0) as number;
    expect(missedWhileDown).toBeGreaterThanOrEqual(4);
    expect(report["cu-skip"]?.late).toBe(0);
    expect(report["cu-immediately"]?.late).toBe(1);
    expect(report["cu-latest"]?.late).toBe(1);
    expect(report["cu-all"]?.late).toBe(3);
    // The window keeps only misses younger than 2 s: at most 2 of them ran.
    expect(report["cu-window"]?.late).toBeGreaterThanOrEqual(1);
    expect(report["cu-window"]?.late).toBeLessThanOrEqual(3);
    // RUN_IMMEDIATELY runs the first missed instant, RUN_LATEST the last.
    const caughtUp = (id: string) =>
      restarted.logs.find((l) => l.msg === "fired" && l.mode === "catch-up" && l.schedule === id)?.job as string;
    const instantOf = (jobId: string) => Number(jobId.split(".")[1]);
    expect(instantOf(caughtUp("cu-immediately"))).toBeLessThan(instantOf(caughtUp("cu-latest")));
    expect(restarted.logs.some((l) => l.msg === "fires missed while not firing")).toBe(true);
    console.log("catch-up:", JSON.stringify(report));
  }, 60_000);

  it("applies each conflict policy using job states from the job-manager", async () => {
    const sleepJob = { exec: { command: "sleep", args: ["2.5"] } };
    const specs = {
      "cf-skip": { conflict: ConflictPolicy.CONFLICT_POLICY_SKIP },
      "cf-queue": { conflict: ConflictPolicy.CONFLICT_POLICY_QUEUE, maxQueued: 1 },
      "cf-parallel": { conflict: ConflictPolicy.CONFLICT_POLICY_PARALLEL, maxConcurrent: 2 },
      "cf-cancel": { conflict: ConflictPolicy.CONFLICT_POLICY_CANCEL_PREVIOUS },
    };
    for (const [id, policy] of Object.entries(specs)) {
      await create({ scheduleId: id, spec: { ...everySecond, ...policy }, job: sleepJob });
    }
    await sleep(8_500);
    for (const id of Object.keys(specs)) await pause(id);
    // Let queued and running jobs finish.
    await waitFor(
      "jobs to finish",
      async () => {
        for (const id of Object.keys(specs)) {
          if (
            (await jobsOf(id)).some(
              (j) => ![JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_CANCELLED, JobState.JOB_STATE_FAILED].includes(j.state),
            )
          )
            return false;
        }
        return true;
      },
      20_000,
      200,
    );
    const intervals = (js: Job[]) =>
      js
        .filter((j) => j.startedAt && j.finishedAt)
        .map((j) => [j.startedAt?.getTime() ?? 0, j.finishedAt?.getTime() ?? 0] as const);
    const maxOverlap = (js: Job[]) => {
      const points = intervals(js).flatMap(([s, e]) => [
        [s, 1],
        [e, -1],
      ]);
      points.sort((a, b) => (a[0] as number) - (b[0] as number) || (a[1] as number) - (b[1] as number));
      let cur = 0;
      let max = 0;
      for (const [, d] of points) max = Math.max(max, (cur += d as number));
      return max;
    };
    const summary: Record<string, object> = {};
    for (const id of Object.keys(specs)) {
      const js = await jobsOf(id);
      const st = (await getSchedule(id)).status;
      summary[id] = { jobs: js.length, overlap: maxOverlap(js), skipped: st?.skippedCount, reason: st?.lastSkipReason };
    }
    console.log("conflict:", JSON.stringify(summary, null, 1));

    const skip = await jobsOf("cf-skip");
    expect(maxOverlap(skip)).toBe(1);
    expect((await getSchedule("cf-skip")).status?.skippedCount).toBeGreaterThanOrEqual(3);
    expect((await getSchedule("cf-skip")).status?.lastSkipReason).toMatch(
      /^conflict SKIP: 1 run\(s\) still going \(cf-skip\.\d+\)/,
    );

    const queue = await jobsOf("cf-queue");
    expect(maxOverlap(queue)).toBe(1);
    // A queued fire starts only after the previous run finished, and was submitted late.
    expect(queue.some((j) => (j.submittedAt?.getTime() ?? 0) - at(j) > 1_000)).toBe(true);
    expect((await getSchedule("cf-queue")).status?.skippedCount).toBeGreaterThanOrEqual(1); // queue of 1 overflowed
    expect((await getSchedule("cf-queue")).status?.queued).toEqual([]);

    const parallel = await jobsOf("cf-parallel");
    expect(maxOverlap(parallel)).toBe(2);
    expect((await getSchedule("cf-parallel")).status?.skippedCount).toBeGreaterThanOrEqual(1);

    const cancel = await jobsOf("cf-cancel");
    const cancelled = cancel.filter((j) => j.state === JobState.JOB_STATE_CANCELLED);
    expect(cancelled.length).toBeGreaterThanOrEqual(3);
    expect(cancelled[0]?.cancelReason).toMatch(/^cancelled by schedule cf-cancel: fire .* replaces it$/);
    expect((await getSchedule("cf-cancel")).status?.skippedCount).toBe(0);
  }, 60_000);
});
