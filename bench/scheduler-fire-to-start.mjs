#!/usr/bin/env node
/**
 * Scheduler issue, figure (c): 200 schedules `* * * * * *` (all due at the
 * same instant every second) for 30 s, running /bin/true on two agents with
 * 16 slots each. Prints nominal instant → process start p50/p99/max, fires
 * missed and doubled, with the targets.
 *
 *   node bench/scheduler-fire-to-start.mjs      (needs a build: npm run build)
 * Env: BENCH_SCHEDULES (200), BENCH_SECONDS (30), BENCH_SLOTS (16 per agent),
 * BENCH_WARMUP_SECONDS (10). Jobs are read back one page of 1,000 per schedule, so
 * BENCH_WARMUP_SECONDS + BENCH_SECONDS must stay under 1,000.
 * Targets: p99 ≤ 400 ms (the spawn capacity of 2 cores bounds this), no fire missed, none doubled.
 *
 * The schedules fire for BENCH_WARMUP_SECONDS before the measured BENCH_SECONDS. The latency
 * figures cover the measured window only: they describe a running cluster, not one whose
 * processes V8 is still optimizing (in the first seconds the per-second median was ~190 ms,
 * falling to ~110 ms after 20 s). The warm-up's own figures are printed beside them.
 * Missed and doubled fires are counted over both.
 */
import { CreateScheduleRequest, JobServiceClient, JobState, ListJobsRequest, SchedulerServiceClient } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { sleep, startCluster } from "@aspen/testkit";

const SCHEDULES = Number(process.env.BENCH_SCHEDULES ?? 200);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 30);
const TARGET_P99_MS = 400;
/** Slots per agent: 16 by default; a burst of 200 then runs in ~7 waves of 32. */
const SLOTS = Number(process.env.BENCH_SLOTS ?? 16);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 10);

const cluster = await startCluster({ agents: 2, slots: SLOTS, env: { ASPEN_LOG_LEVEL: "info" } });
const scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
const jobs = createClient(JobServiceClient, cluster.addr.jobManager);
try {
  const ids = Array.from({ length: SCHEDULES }, (_, i) => `every-second-${i}`);
  await Promise.all(
    ids.map((scheduleId) =>
      unaryCall(
        scheduler.createSchedule.bind(scheduler),
        CreateScheduleRequest.fromPartial({
          scheduleId,
          spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
          job: { exec: { command: "/bin/true" } },
        }),
      ),
    ),
  );
  await sleep((WARMUP_SECONDS + SECONDS) * 1000);
  await Promise.all(
    ids.map((scheduleId) => unaryCall(scheduler.pauseSchedule.bind(scheduler), { scheduleId, note: "bench done" })),
  );
  await sleep(3000); // let the last fires finish

  const lags = [];
  const warmupLags = [];
  // Where the time goes, from the job records: instant → submitted (the job-manager's clock when it
  // created the record), submitted → assigned (queue), assigned → process start (placement and spawn).
  const parts = { submit: [], queue: [], start: [] };
  let doubled = 0;
  let missedGaps = 0;
  let missedCounted = 0;
  let notSucceeded = 0;
  // The scheduler's share: SubmitJob acknowledged − instant (GetSchedule's mean and max fire lag).
  const ackMeans = [];
  let ackMax = 0;
  const runs = new Map();
  for (const scheduleId of ids) {
    const list = (await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ scheduleId, pageSize: 1000 }))).jobs;
    runs.set(scheduleId, list);
  }
  // The measured window starts WARMUP_SECONDS after the first instant any schedule fired.
  const firstInstant = Math.min(...[...runs.values()].flat().map((j) => j.scheduledAt.getTime()));
  const measuredFrom = firstInstant + WARMUP_SECONDS * 1000;
  for (const scheduleId of ids) {
    const list = runs.get(scheduleId);
    const instants = list.map((j) => j.scheduledAt.getTime()).sort((a, b) => a - b);
    if (new Set(instants).size !== instants.length) doubled += instants.length - new Set(instants).size;
    for (let i = 1; i < instants.length; i++) missedGaps += Math.round((instants[i] - instants[i - 1]) / 1000) - 1;
    for (const j of list) {
      if (j.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING).length > 1) doubled++;
      if (j.state !== JobState.JOB_STATE_SUCCEEDED) notSucceeded++;
      else if (j.scheduledAt.getTime() < measuredFrom) warmupLags.push(j.startedAt.getTime() - j.scheduledAt.getTime());
      else {
        lags.push(j.startedAt.getTime() - j.scheduledAt.getTime());
        parts.submit.push(j.submittedAt.getTime() - j.scheduledAt.getTime());
        parts.queue.push(j.assignedAt.getTime() - j.submittedAt.getTime());
        parts.start.push(j.startedAt.getTime() - j.assignedAt.getTime());
      }
    }
    const s = await unaryCall(scheduler.getSchedule.bind(scheduler), { scheduleId });
    missedCounted += Number(s.status?.missedCount ?? 0);
    const ms = (d) => (d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : 0);
    ackMeans.push(ms(s.status?.meanFireLag));
    ackMax = Math.max(ackMax, ms(s.status?.maxFireLag));
  }
  lags.sort((a, b) => a - b);
  warmupLags.sort((a, b) => a - b);
  const p = (q) => lags[Math.min(lags.length - 1, Math.floor(q * lags.length))];
  const pw = (q) => warmupLags[Math.min(warmupLags.length - 1, Math.floor(q * warmupLags.length))];
  console.log(
    `=== scheduler (c): ${SCHEDULES} schedules * * * * * * for ${SECONDS} s after ${WARMUP_SECONDS} s of warm-up, /bin/true on 2 agents × ${SLOTS} slots ===`,
  );
  console.log(`fires run:        ${lags.length} measured + ${warmupLags.length} in the warm-up (${notSucceeded} not SUCCEEDED)`);
  console.log(
    `instant → start:  p50 ${p(0.5)} ms   p99 ${p(0.99)} ms   max ${lags.at(-1)} ms   target p99 ≤ ${TARGET_P99_MS} ms → ${p(0.99) <= TARGET_P99_MS ? "met" : "NOT met"}`,
  );
  if (warmupLags.length > 0)
    console.log(
      `  warm-up (first ${WARMUP_SECONDS} s, not in the figure above): p50 ${pw(0.5)} ms   p99 ${pw(0.99)} ms   max ${warmupLags.at(-1)} ms`,
    );
  console.log(
    `missed:           ${missedGaps} gaps between fires, ${missedCounted} counted missed by the scheduler   target 0 → ${missedGaps + missedCounted === 0 ? "met" : "NOT met"}`,
  );
  console.log(`doubled:          ${doubled}   target 0 → ${doubled === 0 ? "met" : "NOT met"}`);
  const q = (list, f) => list.sort((a, b) => a - b)[Math.min(list.length - 1, Math.floor(f * list.length))];
  console.log(
    `breakdown p50/p99: instant → submitted ${q(parts.submit, 0.5)}/${q(parts.submit, 0.99)} ms, ` +
      `→ assigned ${q(parts.queue, 0.5)}/${q(parts.queue, 0.99)} ms, → process start ${q(parts.start, 0.5)}/${q(parts.start, 0.99)} ms`,
  );
  console.log(
    `scheduler share:  instant → SubmitJob acknowledged (warm-up included) mean ${(ackMeans.reduce((a, b) => a + b, 0) / Math.max(1, ackMeans.length)).toFixed(0)} ms, max ${ackMax.toFixed(0)} ms`,
  );
} finally {
  scheduler.close();
  jobs.close();
  await cluster[Symbol.asyncDispose]();
}
