/**
 * Jobs submitted directly: results, waiting for a worker that matches,
 * cancelling queued and running jobs (the process is gone afterwards), and
 * WatchJob streaming every transition to the end.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JobServiceClient, JobState, SubmitJobRequest, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { processGroupAlive, startCluster, waitFor, type Cluster } from "@aspen/testkit";

const S = JobState;

describe("jobs", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({ agents: 1, agentEnv: () => ({ ASPEN_LABELS: "zone=a", ASPEN_CAPABILITIES: "shell" }) });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });
  afterAll(async () => {
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  const submit = (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
    unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req));
  const get = (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId });
  const until = (jobId: string, state: JobState) =>
    waitFor(`${jobId} to be ${JobState[state]}`, async () => {
      const j = await get(jobId);
      return j.state === state ? j : undefined;
    });

  it("streams every transition of a job with WatchJob and ends at the terminal state", async () => {
    await submit({ jobId: "watched", spec: { exec: { command: "sh", args: ["-c", "sleep 0.3; echo ok; exit 4"] } } });
    const again = jobs.watchJob({ jobId: "watched" });
    const states: JobState[] = [];
    await new Promise<void>((resolve, reject) => {
      again.on("data", (j: Job) => states.push(j.state));
      again.on("end", resolve);
      again.on("error", reject);
    });
    expect(states.at(-1)).toBe(S.JOB_STATE_FAILED);
    expect(states).toEqual([...new Set(states)]); // each state once, in order
    const job = await get("watched");
    expect(job.reason).toBe("exit code 4");
    expect(job.result?.exitCode).toBe(4);
    expect(job.history.map((h) => h.to)).toEqual([
      S.JOB_STATE_QUEUED,
      S.JOB_STATE_ASSIGNED,
      S.JOB_STATE_RUNNING,
      S.JOB_STATE_FAILED,
    ]);
  });

  it("runs other job types from the agent's registry (echo), and refuses a malformed type", async () => {
    await submit({ jobId: "echoed", spec: { jobType: "echo", exec: { command: "unused", args: ["no", "process"] } } });
    const done = await until("echoed", S.JOB_STATE_SUCCEEDED);
    expect(done.result?.stdout?.text).toBe("no process\n");
    await expect(submit({ spec: { jobType: "Bad Type", exec: { command: "x" } } })).rejects.toMatchObject({
      code: 3,
      message: expect.stringMatching(/^spec\.job_type:/),
    });
  });

  it("submitting the same id twice makes one job", async () => {
    const first = await submit({ jobId: "once-only", spec: { exec: { command: "echo", args: ["1"] } } });
    const second = await submit({ jobId: "once-only", spec: { exec: { command: "echo", args: ["2"] } } });
    expect([first.created, second.created]).toEqual([true, false]);
    const done = await until("once-only", S.JOB_STATE_SUCCEEDED);
    expect(done.result?.stdout?.text).toBe("1\n");
  });

  it("says why a job waits when no worker matches, and cancels it at once", async () => {
    await submit({
      jobId: "needs-gpu",
      spec: { exec: { command: "echo" }, placement: { selector: { capabilities: ["gpu"], matchLabels: { zone: "a" } } } },
    });
    const waiting = await waitFor("the reason", async () => {
      const j = await get("needs-gpu");
      return j.reason.startsWith("no live worker matches") ? j : undefined;
    });
    expect(waiting.state).toBe(S.JOB_STATE_QUEUED);
    expect(waiting.reason).toBe("no live worker matches zone=a, capability=gpu");
    const cancelled = await unaryCall(jobs.cancelJob.bind(jobs), { jobId: "needs-gpu", reason: "no gpu today" });
    expect(cancelled.state).toBe(S.JOB_STATE_CANCELLED);
    expect(cancelled.reason).toBe("no gpu today");
  });

  it("cancels a running job: its process group is gone and the reason is recorded", async () => {
    await submit({
      jobId: "long",
      spec: { exec: { command: "sh", args: ["-c", "sleep 60 & sleep 60"] }, killGrace: { seconds: 1, nanos: 0 } },
    });
    await until("long", S.JOB_STATE_RUNNING);
    await unaryCall(jobs.cancelJob.bind(jobs), { jobId: "long", reason: "operator said so" });
    const done = await until("long", S.JOB_STATE_CANCELLED);
    expect(done.reason).toBe("operator said so (SIGTERM)");
    expect(done.result?.cancelled).toBe(true);
    const jobPid = done.result?.pid ?? 0;
    expect(jobPid).toBeGreaterThan(0);
    expect(await processGroupAlive(jobPid)).toBe(false);
    // Cancelling a finished job is refused.
    await expect(unaryCall(jobs.cancelJob.bind(jobs), { jobId: "long", reason: "" })).rejects.toMatchObject({ code: 9 });
  });
});
