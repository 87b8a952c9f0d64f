/**
 * The whole of NATS gone for 6 s (a single nats-server SIGKILLed and started
 * again on the same port and store) under a 1-second schedule and a stream of
 * submissions: the services reconnect by themselves, submissions fail while
 * it is down and succeed again (retried with the same id), every acknowledged
 * one runs exactly once, and the schedule fires again afterwards with each
 * instant run once or counted missed (catch-up SKIP, the default).
 */
import { describe, expect, it } from "vitest";
import {
  CreateScheduleRequest,
  JobServiceClient,
  JobState,
  ListJobsRequest,
  SchedulerServiceClient,
  type Job,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { isTerminal } from "@aspen/model";
import { sleep, startCluster, startSubmitter, waitFor } from "@aspen/testkit";

describe("NATS restart", () => {
  it("recovers without restarting any service when NATS is down for 6 s", async () => {
    await using cluster = await startCluster({
      agents: 1,
      slots: 8,
      jobManagerEnv: { ASPEN_ASSIGN_TIMEOUT: "5s", ASPEN_MAINTENANCE_INTERVAL: "500ms" },
    });
    const jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    const schedules = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    try {
      await unaryCall(
        schedules.createSchedule.bind(schedules),
        CreateScheduleRequest.fromPartial({
          scheduleId: "beat",
          spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
          job: { exec: { command: "echo", args: ["beat"] } },
        }),
      );
      const submitter = startSubmitter(jobs, { prefix: "r", pauseMs: 200, retryMs: 250 });
      const acked = submitter.acked;
      await sleep(4_000);
      await cluster.nats.kill();
      await sleep(6_000);
      await cluster.nats.restart();
      const backAt = Date.now();
      await sleep(10_000);
      await submitter.stop();
      await unaryCall(schedules.pauseSchedule.bind(schedules), { scheduleId: "beat", note: "test over" });

      const list = async (req: Partial<ListJobsRequest>): Promise<Job[]> =>
        (await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ pageSize: 1000, ...req }))).jobs;
      const streamed = await waitFor(
        "every acknowledged job to end",
        async () => {
          const all = (await list({})).filter((j) => j.id.startsWith("r-"));
          return all.length === acked.size && all.every((j) => isTerminal(j.state)) ? all : undefined;
        },
        60_000,
        250,
      );
      expect(submitter.failedCalls()).toBeGreaterThan(0); // NATS really was gone for the client
      expect(new Set(streamed.map((j) => j.id))).toEqual(acked);
      for (const job of streamed) {
        const ended = {
          id: job.id,
          state: JobState[job.state],
          reason: job.state === JobState.JOB_STATE_SUCCEEDED ? "" : job.reason,
        };
        expect(ended).toEqual({ id: job.id, state: "JOB_STATE_SUCCEEDED", reason: "" });
        expect(job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING)).toHaveLength(1);
        expect(job.result?.stdout?.text).toBe(`${job.id}\n`);
      }

      const ticks = await waitFor(
        "every fire to end",
        async () => {
          const all = await list({ scheduleId: "beat" });
          return all.every((j) => isTerminal(j.state)) ? all : undefined;
        },
        30_000,
        250,
      );
      const schedule = await unaryCall(schedules.getSchedule.bind(schedules), { scheduleId: "beat" });
      const instants = ticks.map((j) => j.scheduledAt?.getTime() ?? NaN).sort((a, b) => a - b);
      const missed = Number(schedule.status?.missedCount ?? 0);
      const span = (instants[instants.length - 1]! - instants[0]!) / 1000 + 1;
      expect(new Set(instants).size).toBe(instants.length);
      for (const job of ticks) {
        // The reason shows in a failure (e.g. LOST: "attempt 1 was not started within 5000 ms").
        const ended = {
          id: job.id,
          state: JobState[job.state],
          reason: job.state === JobState.JOB_STATE_SUCCEEDED ? "" : job.reason,
        };
        expect(ended).toEqual({ id: job.id, state: "JOB_STATE_SUCCEEDED", reason: "" });
        expect(job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING)).toHaveLength(1);
      }
      expect(instants.length + missed).toBe(span);
      expect(instants[instants.length - 1]!).toBeGreaterThan(backAt + 5_000); // fires again
      const firstAfter = instants.find((t) => t > backAt);
      console.log(
        `nats restart: ${acked.size} submissions acknowledged (${submitter.failedCalls()} calls failed while NATS was down and were retried), ` +
          `each ran once; schedule ${instants.length} fires + ${missed} missed over ${span} s, ` +
          `first fire ${firstAfter === undefined ? "never" : `${firstAfter - backAt} ms`} after NATS was back`,
      );
    } finally {
      jobs.close();
      schedules.close();
    }
  }, 120_000);
});
