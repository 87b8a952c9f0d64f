/**
 * The job lifecycle with real processes: priority order under contention,
 * retry policies, the dead-letter queue, dependency chains, idempotent
 * submission, results, stats and retention.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  JobServiceClient,
  JobState,
  ListJobsRequest,
  Priority,
  RetryPolicy_Kind as K,
  SubmitJobRequest,
  type Job,
} from "@aspen/proto";
import { createClient, durationToMs, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor, type Cluster } from "@aspen/testkit";

const S = JobState;
const dir = mkdtempSync(join(tmpdir(), "aspen-lifecycle-"));

/** A command that fails until it has run `failures` times, then succeeds (state in a counter file). */
function flaky(name: string, failures: number) {
  const counter = join(dir, name);
  return {
    command: "sh",
    args: [
      "-c",
      `n=$(cat ${counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${counter}; echo run $n; [ $n -gt ${failures} ]`,
    ],
  };
}

describe("job lifecycle", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({
      agents: 1,
      slots: 1,
      scheduler: false,
      jobManagerEnv: { ASPEN_RETAIN_PER_SCHEDULE: "3", ASPEN_MAINTENANCE_INTERVAL: "200ms" },
    });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });
  afterAll(async () => {
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  const submit = (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
    unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req));
  const get = (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId });
  const result = (jobId: string, waitSeconds = 20) =>
    unaryCall(
      jobs.getJobResult.bind(jobs),
      { jobId, wait: { seconds: waitSeconds, nanos: 0 } },
      { deadlineMs: (waitSeconds + 5) * 1000 },
    );
  const list = async (req: Parameters<typeof ListJobsRequest.fromPartial>[0]) =>
    (await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ pageSize: 1000, ...req }))).jobs;

  it("runs queued jobs by priority class, FIFO inside a class, with one slot under contention", async () => {
    await submit({ jobId: "blocker", spec: { exec: { command: "sleep", args: ["1"] } } });
    await waitFor("the blocker to run", async () => (await get("blocker")).state === S.JOB_STATE_RUNNING);
    const classes = [Priority.PRIORITY_LOW, Priority.PRIORITY_NORMAL, Priority.PRIORITY_HIGH, Priority.PRIORITY_CRITICAL];
    const submitted: Array<{ id: string; priority: Priority }> = [];
    for (let i = 0; i < 40; i++) {
      const priority = classes[(i * 7) % 4]!;
      const id = `prio-${String(i).padStart(2, "0")}`;
      await submit({ jobId: id, spec: { exec: { command: "true" }, priority } });
      submitted.push({ id, priority });
    }
    const done = await Promise.all(submitted.map((s) => result(s.id, 60)));
    expect(done.every((j) => j.state === S.JOB_STATE_SUCCEEDED)).toBe(true);
    const startOrder = [...done].sort((a, b) => a.startedAt!.getTime() - b.startedAt!.getTime()).map((j) => j.id);
    const expected = [...classes].reverse().flatMap((p) => submitted.filter((s) => s.priority === p).map((s) => s.id));
    expect(startOrder).toEqual(expected);
  }, 60_000);

  it.each([
    ["fixed", { kind: K.KIND_FIXED, delay: { seconds: 0, nanos: 200e6 } }, [200, 200]],
    ["exponential", { kind: K.KIND_EXPONENTIAL, base: { seconds: 0, nanos: 100e6 }, factor: 3 }, [100, 300]],
    [
      "custom",
      {
        kind: K.KIND_CUSTOM,
        delays: [
          { seconds: 0, nanos: 50e6 },
          { seconds: 0, nanos: 400e6 },
        ],
      },
      [50, 400],
    ],
  ])("retries with a %s policy until the command succeeds", async (name, retry, delays) => {
    const id = `retry-${name}`;
    await submit({ jobId: id, spec: { exec: flaky(id, 2), retry: { ...retry, maxAttempts: 5 } } });
    const job = await result(id);
    expect(job.state).toBe(S.JOB_STATE_SUCCEEDED);
    expect(job.attempt).toBe(3);
    expect(job.result?.stdout?.text).toBe("run 3\n");
    const requeues = job.history.filter((h) => h.from === S.JOB_STATE_FAILED && h.to === S.JOB_STATE_QUEUED);
    expect(requeues.map((h) => h.reason)).toEqual([
      `exit code 1; retry 2/5 in ${delays[0]} ms`,
      `exit code 1; retry 3/5 in ${delays[1]} ms`,
    ]);
    // Each retry waited at least its delay between the failure and the next start.
    const failedAt = job.history.filter((h) => h.to === S.JOB_STATE_FAILED).map((h) => h.at!.getTime());
    const startedAt = job.history.filter((h) => h.to === S.JOB_STATE_RUNNING).map((h) => h.at!.getTime());
    expect(startedAt[1]! - failedAt[0]!).toBeGreaterThanOrEqual(delays[0]!);
    expect(startedAt[2]! - failedAt[1]!).toBeGreaterThanOrEqual(delays[1]!);
  });

  it("puts a job that exhausts its retries in the dead-letter queue, from where it can be requeued or purged", async () => {
    await submit({
      jobId: "doomed",
      spec: { exec: flaky("doomed", 10), retry: { kind: K.KIND_FIXED, delay: { seconds: 0, nanos: 1e6 }, maxAttempts: 2 } },
    });
    const dead = await result("doomed");
    expect(dead.state).toBe(S.JOB_STATE_DEAD);
    expect(dead.reason).toBe("exit code 1; retries exhausted after 2 of 2 attempts");
    expect(dead.result?.stdout?.text).toBe("run 2\n");
    expect(dead.history.map((h) => h.to)).toEqual([
      S.JOB_STATE_QUEUED,
      S.JOB_STATE_ASSIGNED,
      S.JOB_STATE_RUNNING,
      S.JOB_STATE_FAILED,
      S.JOB_STATE_QUEUED,
      S.JOB_STATE_ASSIGNED,
      S.JOB_STATE_RUNNING,
      S.JOB_STATE_FAILED,
      S.JOB_STATE_DEAD,
    ]);
    expect((await list({ states: [S.JOB_STATE_DEAD] })).map((j) => j.id)).toContain("doomed");

    // Fix the cause, requeue: a new attempt succeeds.
    writeFileSync(join(dir, "doomed"), "100\n");
    const requeued = await unaryCall(jobs.requeueJob.bind(jobs), { jobId: "doomed", reason: "fixed the input" });
    expect(requeued.state).toBe(S.JOB_STATE_QUEUED);
    const revived = await result("doomed");
    expect(revived.state).toBe(S.JOB_STATE_SUCCEEDED);
    expect(revived.attempt).toBe(3);
    expect(revived.history.some((h) => h.reason === "requeued: fixed the input")).toBe(true);

    // Another dead job is purged from the queue and is gone.
    await submit({
      jobId: "purged",
      spec: { exec: { command: "false" }, retry: { kind: K.KIND_FIXED, delay: { seconds: 0, nanos: 1e6 }, maxAttempts: 1 } },
    });
    expect((await result("purged")).state).toBe(S.JOB_STATE_DEAD);
    const purge = await unaryCall(jobs.purgeDeadLetters.bind(jobs), { jobIds: ["purged"] });
    expect(purge.purged).toBe(1);
    await expect(get("purged")).rejects.toMatchObject({ code: 5 });
  });

  it("runs a chain of three in order, and cancels what follows a failing step", async () => {
    const step = (text: string) => ({ exec: { command: "sh", args: ["-c", `echo ${text}; sleep 0.1`] } });
    await submit({ jobId: "chain", spec: { ...step("A"), then: [step("B"), step("C")] } });
    const c = await result("chain.then2");
    expect(c.state).toBe(S.JOB_STATE_SUCCEEDED);
    const [a, b] = await Promise.all([get("chain"), get("chain.then1")]);
    expect(b.spec?.dependsOn).toEqual(["chain"]);
    expect(c.spec?.dependsOn).toEqual(["chain.then1"]);
    expect(a.finishedAt!.getTime()).toBeLessThanOrEqual(b.startedAt!.getTime());
    expect(b.finishedAt!.getTime()).toBeLessThanOrEqual(c.startedAt!.getTime());
    expect([a, b, c].map((j) => j.result?.stdout?.text)).toEqual(["A\n", "B\n", "C\n"]);

    // depends_on by hand, with a failing middle.
    await submit({ jobId: "dep-a", spec: step("a") });
    await submit({ jobId: "dep-b", spec: { exec: { command: "false" }, dependsOn: ["dep-a"] } });
    await submit({ jobId: "dep-c", spec: { ...step("c"), dependsOn: ["dep-b"] } });
    const cancelled = await result("dep-c");
    expect(cancelled.state).toBe(S.JOB_STATE_CANCELLED);
    expect(cancelled.reason).toBe("dependency dep-b ended FAILED");
    expect(cancelled.attempt).toBe(0); // never started
    expect((await get("dep-a")).state).toBe(S.JOB_STATE_SUCCEEDED);
  });

  it("refuses unknown dependencies and cycles at submit, naming the field", async () => {
    await expect(
      submit({ jobId: "orphan", spec: { exec: { command: "true" }, dependsOn: ["no-such-job"] } }),
    ).rejects.toMatchObject({
      code: 3,
      message: 'spec.depends_on[0]: unknown job "no-such-job"',
    });
    await expect(submit({ jobId: "self", spec: { exec: { command: "true" }, dependsOn: ["self"] } })).rejects.toMatchObject({
      code: 3,
      message: "spec.depends_on[0]: a job cannot depend on itself (cycle)",
    });
    await expect(get("orphan")).rejects.toMatchObject({ code: 5 });
  });

  it("makes one job per idempotency key and answers GetJobResult, Stats and filtered ListJobs", async () => {
    const first = await submit({
      idempotencyKey: "order-42",
      spec: { exec: { command: "echo", args: ["once"] }, tags: { team: "billing" } },
    });
    const again = await submit({ idempotencyKey: "order-42", spec: { exec: { command: "echo", args: ["twice"] } } });
    expect(first.created).toBe(true);
    expect(again.created).toBe(false);
    expect(again.job?.id).toBe(first.job?.id);
    const done = await result(first.job!.id);
    expect(done.result?.stdout?.text).toBe("once\n");

    const byTag = await list({ tags: { team: "billing" } });
    expect(byTag.map((j) => j.id)).toEqual([first.job!.id]);
    const inWindow = await list({
      submittedAfter: new Date(first.job!.submittedAt!.getTime()),
      submittedBefore: new Date(Date.now() + 1000),
    });
    expect(inWindow.map((j) => j.id)).toContain(first.job!.id);
    expect(await list({ submittedAfter: new Date(Date.now() + 60_000) })).toEqual([]);

    const stats = await unaryCall(jobs.getStats.bind(jobs), {});
    expect(stats.byState.SUCCEEDED).toBeGreaterThan(0);
    expect(stats.queueDepth.map((d) => d.priority)).toEqual([
      Priority.PRIORITY_CRITICAL,
      Priority.PRIORITY_HIGH,
      Priority.PRIORITY_NORMAL,
      Priority.PRIORITY_LOW,
    ]);

    // A job still running: GetJobResult returns it as it is when the wait runs out.
    await submit({ jobId: "slow", spec: { exec: { command: "sleep", args: ["2"] } } });
    const early = await unaryCall(jobs.getJobResult.bind(jobs), { jobId: "slow", wait: { seconds: 0, nanos: 300e6 } });
    expect([S.JOB_STATE_QUEUED, S.JOB_STATE_ASSIGNED, S.JOB_STATE_RUNNING]).toContain(early.state);
    const busy = await unaryCall(jobs.getStats.bind(jobs), {});
    expect(durationToMs(busy.oldestQueuedAge) >= 0).toBe(true);
    expect((await result("slow")).state).toBe(S.JOB_STATE_SUCCEEDED);
  });

  it("keeps only the newest finished jobs of a schedule (retention: 3)", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) {
      const id = `kept.${1000 + i}`;
      ids.push(id);
      await submit({ jobId: id, scheduleId: "kept", spec: { exec: { command: "true" } } });
      await result(id);
    }
    const remaining = await waitFor("retention", async () => {
      const left = (await list({ scheduleId: "kept" })).map((j: Job) => j.id);
      return left.length === 3 ? left : undefined;
    });
    expect(remaining.sort()).toEqual(ids.slice(3));
    await expect(get(ids[0]!)).rejects.toMatchObject({ code: 5 });
  });
});
