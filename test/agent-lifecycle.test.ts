/**
 * The agent's lifecycle with running jobs (docs/agent.md, "Lifecycle"):
 * SIGTERM drains (running jobs finish within the drain timeout, the rest are
 * killed and reported); a SIGKILLed agent's jobs are killed by the next
 * agent started on the same state directory and the attempt is lost; a
 * coordinator restart does not disturb a running job: the agent reconnects,
 * re-registers with it and reports its result.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JobServiceClient, JobState, SubmitJobRequest, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import {
  freePort,
  processGroupMembers,
  startCluster,
  startService,
  waitFor,
  waitHealthy,
  type Cluster,
  type ServiceProcess,
} from "@aspen/testkit";

const S = JobState;

describe("agent lifecycle", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;
  const stateDir = mkdtempSync(join(tmpdir(), "aspen-agent-state-"));
  const started: ServiceProcess[] = [];

  beforeAll(async () => {
    // Three agents for their tokens (bound to worker ids agent-1..3); this file runs its own agents under those ids.
    cluster = await startCluster({ agents: 3, scheduler: false });
    await Promise.all(cluster.agents.map((a) => a.stop()));
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });
  afterAll(async () => {
    jobs?.close();
    await Promise.all(started.map((a) => a.stop().catch(() => undefined)));
    await cluster?.[Symbol.asyncDispose]();
    rmSync(stateDir, { recursive: true, force: true });
  });

  /** An agent on `stateDir`, registered with the cluster's coordinator. */
  const startAgent = async (workerId: string, extra: Record<string, string> = {}) => {
    const port = await freePort();
    const registered = () => cluster.coordinator.logs.filter((l) => l.msg === "agent registered" && l.worker === workerId).length;
    const before = registered();
    const agent = startService(
      "agent",
      {
        ASPEN_NATS_SERVERS: cluster.nats.url,
        ASPEN_COORDINATOR_ADDR: cluster.addr.coordinator,
        ASPEN_WORKER_ID: workerId,
        ASPEN_TOKEN: cluster.tokens.agents[Number(workerId.slice("agent-".length)) - 1] ?? "",
        ASPEN_SLOTS: "4",
        ASPEN_HEALTH_HOST: "127.0.0.1",
        ASPEN_HEALTH_PORT: String(port),
        ASPEN_STATE_DIR: join(stateDir, workerId),
        ASPEN_LOG_LEVEL: "info",
        OTEL_SDK_DISABLED: "true",
        ...extra,
      },
      workerId,
    );
    started.push(agent);
    await waitHealthy(`127.0.0.1:${port}`, 20_000, agent);
    await waitFor(`${workerId} to register`, () => registered() > before, 20_000).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${agent.logs.map((l) => JSON.stringify(l)).join("\n")}\n${agent.output()}`);
    });
    return agent;
  };
  const submit = (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
    unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req));
  const get = (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId });
  const inState = (jobId: string, pred: (j: Job) => boolean, timeoutMs = 20_000) =>
    waitFor(
      `${jobId} to reach the expected state`,
      async () => {
        const j = await get(jobId);
        return pred(j) ? j : undefined;
      },
      timeoutMs,
    );
  const terminal = (j: Job) => j.state >= S.JOB_STATE_SUCCEEDED;
  /** The process group of the live process whose command line contains `needle` (the job's own group). */
  const groupOf = (needle: string) =>
    waitFor(`a process running ${JSON.stringify(needle)}`, () => {
      for (const entry of readdirSync("/proc")) {
        if (!/^\d+$/.test(entry)) continue;
        try {
          if (!readFileSync(`/proc/${entry}/cmdline`, "utf8").replace(/\0/g, " ").includes(needle)) continue;
          const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
          return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
        } catch {
          // gone
        }
      }
      return undefined;
    });

  it("on SIGTERM lets a running job finish within the drain timeout, kills the one that does not and reports both", async () => {
    const agent = await startAgent("agent-1", { ASPEN_DRAIN_TIMEOUT: "2s" });
    await submit({
      jobId: "drain-short",
      spec: { exec: { command: "sh", args: ["-c", "sleep 1; echo finished"] }, placement: { selector: { workerId: "agent-1" } } },
    });
    await submit({
      jobId: "drain-long",
      spec: {
        exec: { command: "sleep", args: ["60"] },
        killGrace: { seconds: 1, nanos: 0 },
        placement: { selector: { workerId: "agent-1" } },
      },
    });
    await inState("drain-short", (j) => j.state === S.JOB_STATE_RUNNING);
    await inState("drain-long", (j) => j.state === S.JOB_STATE_RUNNING);
    const t = Date.now();
    const code = await agent.stop(15_000);
    expect(code).toBe(0);
    expect(Date.now() - t).toBeLessThan(8_000);
    const short = await inState("drain-short", terminal);
    expect(short.state).toBe(S.JOB_STATE_SUCCEEDED);
    expect(short.result?.stdout?.text).toBe("finished\n");
    const long = await inState("drain-long", terminal);
    expect(long.result?.cancelled).toBe(true);
    expect(long.result?.signal).toBe("SIGTERM");
    expect(long.state).toBe(S.JOB_STATE_CANCELLED);
  }, 60_000);

  it("after an agent SIGKILL, the next agent on its state directory kills the orphaned job; the attempt is lost", async () => {
    const agent = await startAgent("agent-2");
    await submit({
      jobId: "orphan",
      spec: { exec: { command: "sh", args: ["-c", "sleep 301 & sleep 301"] }, placement: { selector: { workerId: "agent-2" } } },
    });
    await inState("orphan", (j) => j.state === S.JOB_STATE_RUNNING);
    const pid = await groupOf("sleep 301");
    await waitFor("the job's group to have both sleeps", () => processGroupMembers(pid).length >= 2);
    await agent.kill("SIGKILL");
    // The group outlives the agent (it is detached, and nothing is left to signal it)...
    expect(processGroupMembers(pid).length).toBeGreaterThanOrEqual(2);
    const lost = await inState("orphan", terminal);
    expect(lost.state).toBe(S.JOB_STATE_LOST);
    // ...until an agent starts on the same state directory: it kills the group before taking work.
    const again = await startAgent("agent-2");
    await waitFor("the orphaned group to be gone", () => processGroupMembers(pid).length === 0, 5_000);
    expect(again.logs.some((l) => l.msg === "killed a job left running by a previous agent" && l.pgid === pid)).toBe(true);
  }, 60_000);

  it("a coordinator restart does not disturb a running job: the agent reconnects and its result arrives", async () => {
    await startAgent("agent-3");
    await submit({
      jobId: "through-restart",
      spec: { exec: { command: "sh", args: ["-c", "sleep 3; echo survived"] }, placement: { selector: { workerId: "agent-3" } } },
    });
    await inState("through-restart", (j) => j.state === S.JOB_STATE_RUNNING);
    await cluster.coordinator.kill("SIGKILL");
    await cluster.restart("coordinator");
    const job = await inState("through-restart", terminal, 30_000);
    expect(job.state).toBe(S.JOB_STATE_SUCCEEDED);
    expect(job.result?.stdout?.text).toBe("survived\n");
    expect(job.attempt).toBe(1); // the same attempt, not a rerun
  }, 60_000);
});
