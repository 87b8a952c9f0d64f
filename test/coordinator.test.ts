/**
 * Placement with real agents: capability filters, least loaded across
 * unequal capacities, fan-out to every agent, draining, worker groups.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CoordinatorServiceClient,
  JobServiceClient,
  JobState,
  SubmitJobRequest,
  WorkerGroup,
  WorkerHealth,
  type Job,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor, type Cluster } from "@aspen/testkit";

const S = JobState;
// agent-1: 1 slot, agent-2: 2 slots, agent-3: 4 slots and the `database` capability.
const SLOTS = [1, 2, 4];

describe("coordinator placement", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;
  let coordinator: CoordinatorServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({
      agents: 3,
      scheduler: false,
      agentEnv: (i) => ({
        ASPEN_SLOTS: String(SLOTS[i]),
        ASPEN_LABELS: `zone=${i === 0 ? "a" : "b"}`,
        ASPEN_CAPABILITIES: i === 2 ? "shell,database" : "shell",
      }),
    });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    coordinator = createClient(CoordinatorServiceClient, cluster.addr.coordinator);
  });
  afterAll(async () => {
    jobs?.close();
    coordinator?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  const submit = (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
    unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req));
  const result = (jobId: string) =>
    unaryCall(jobs.getJobResult.bind(jobs), { jobId, wait: { seconds: 30, nanos: 0 } }, { deadlineMs: 35_000 });

  it("puts jobs with a capability filter only on agents that have it", async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `db-${i}`);
    for (const id of ids) {
      await submit({
        jobId: id,
        spec: { exec: { command: "sh", args: ["-c", "sleep 0.05"] }, placement: { selector: { capabilities: ["database"] } } },
      });
    }
    const done = await Promise.all(ids.map(result));
    expect(done.every((j) => j.state === S.JOB_STATE_SUCCEEDED)).toBe(true);
    expect(new Set(done.map((j) => j.workerId))).toEqual(new Set(["agent-3"]));
  });

  it("spreads 100 jobs by free capacity: more on bigger agents, never more than an agent's slots at once", async () => {
    const ids = Array.from({ length: 100 }, (_, i) => `spread-${String(i).padStart(3, "0")}`);
    await Promise.all(ids.map((id) => submit({ jobId: id, spec: { exec: { command: "sleep", args: ["0.2"] } } })));
    const done = await Promise.all(ids.map(result));
    expect(done.every((j) => j.state === S.JOB_STATE_SUCCEEDED)).toBe(true);
    const per = (w: string) => done.filter((j) => j.workerId === w);
    const counts = ["agent-1", "agent-2", "agent-3"].map((w) => per(w).length);
    // Equal job lengths: each agent's share follows its capacity (1 : 2 : 4 of 7 slots).
    expect(counts[0]!).toBeLessThan(counts[1]!);
    expect(counts[1]!).toBeLessThan(counts[2]!);
    counts.forEach((n, i) => expect(Math.abs(n - (100 * SLOTS[i]!) / 7)).toBeLessThan(12));
    for (const [i, w] of ["agent-1", "agent-2", "agent-3"].entries()) expect(maxOverlap(per(w))).toBeLessThanOrEqual(SLOTS[i]!);
    console.log(`least loaded over 1/2/4 slots: ${counts.join(" / ")} jobs`);
  }, 60_000);

  it("fans a job out to every matching agent and aggregates the result", async () => {
    const { job } = await submit({ jobId: "everywhere", spec: { exec: { command: "hostname" }, placement: { fanOut: -1 } } });
    expect(job?.children).toHaveLength(3);
    const parent = await result("everywhere");
    expect(parent.state).toBe(S.JOB_STATE_SUCCEEDED);
    expect(parent.reason).toBe("fan-out: 3 of 3 succeeded");
    const children = await Promise.all(parent.children.map((id) => unaryCall(jobs.getJob.bind(jobs), { jobId: id })));
    expect(new Set(children.map((c) => c.workerId))).toEqual(new Set(["agent-1", "agent-2", "agent-3"]));
    expect(children.every((c) => c.parentId === "everywhere" && c.state === S.JOB_STATE_SUCCEEDED)).toBe(true);

    // Fan-out to N of them, with one failing: the parent fails and says how many succeeded.
    await submit({
      jobId: "two-of-zone-b",
      spec: {
        exec: { command: "sh", args: ["-c", '[ "$(hostname)" != nope ] && exit 3'] },
        placement: { fanOut: 2, selector: { matchLabels: { zone: "b" } } },
      },
    });
    const failed = await result("two-of-zone-b");
    expect(failed.children).toHaveLength(2);
    expect(failed.state).toBe(S.JOB_STATE_FAILED);
    expect(failed.reason).toBe("fan-out: 0 of 2 succeeded");
  });

  it("drains a worker: it finishes what runs and takes nothing new", async () => {
    await submit({
      jobId: "on-agent-1",
      spec: { exec: { command: "sh", args: ["-c", "sleep 1; echo finished"] }, placement: { selector: { workerId: "agent-1" } } },
    });
    await waitFor(
      "the job on agent-1 to run",
      async () => (await unaryCall(jobs.getJob.bind(jobs), { jobId: "on-agent-1" })).state === S.JOB_STATE_RUNNING,
    );
    const drained = await unaryCall(coordinator.drainWorker.bind(coordinator), { workerId: "agent-1", undrain: false });
    expect(drained.health).toBe(WorkerHealth.WORKER_HEALTH_DRAINING);
    const ids = Array.from({ length: 10 }, (_, i) => `after-drain-${i}`);
    for (const id of ids) await submit({ jobId: id, spec: { exec: { command: "true" } } });
    const done = await Promise.all(ids.map(result));
    expect(done.some((j) => j.workerId === "agent-1")).toBe(false);
    const running = await result("on-agent-1");
    expect(running.state).toBe(S.JOB_STATE_SUCCEEDED);
    expect(running.result?.stdout?.text).toBe("finished\n");
    // A job only agent-1 may run waits, and says why.
    await submit({
      jobId: "needs-agent-1",
      spec: { exec: { command: "true" }, placement: { selector: { workerId: "agent-1" } } },
    });
    const waiting = await waitFor("the reason", async () => {
      const j = await unaryCall(jobs.getJob.bind(jobs), { jobId: "needs-agent-1" });
      return j.reason.startsWith("no live worker matches") ? j : undefined;
    });
    expect(waiting.state).toBe(S.JOB_STATE_QUEUED);
    await unaryCall(coordinator.drainWorker.bind(coordinator), { workerId: "agent-1", undrain: true });
    expect((await result("needs-agent-1")).workerId).toBe("agent-1");
  });

  it("places by worker group, and manages groups", async () => {
    await unaryCall(coordinator.createWorkerGroup.bind(coordinator), {
      group: WorkerGroup.fromPartial({ name: "small", description: "agents with few slots", workerIds: ["agent-1", "agent-2"] }),
    });
    await expect(
      unaryCall(coordinator.createWorkerGroup.bind(coordinator), { group: WorkerGroup.fromPartial({ name: "small" }) }),
    ).rejects.toMatchObject({ code: 6 });
    await expect(
      unaryCall(coordinator.createWorkerGroup.bind(coordinator), { group: WorkerGroup.fromPartial({ name: "Bad Name" }) }),
    ).rejects.toMatchObject({ code: 3, message: expect.stringMatching(/^group\.name:/) });
    const ids = Array.from({ length: 8 }, (_, i) => `grouped-${i}`);
    for (const id of ids)
      await submit({ jobId: id, spec: { exec: { command: "true" }, placement: { selector: { workerGroup: "small" } } } });
    const done = await Promise.all(ids.map(result));
    expect(done.every((j) => ["agent-1", "agent-2"].includes(j.workerId))).toBe(true);
    const listed = await unaryCall(coordinator.listWorkerGroups.bind(coordinator), {});
    expect(listed.groups.map((g) => g.name)).toEqual(["small"]);
    const worker = await unaryCall(coordinator.getWorker.bind(coordinator), { workerId: "agent-2" });
    expect(worker.groups).toEqual(["small"]);
    await unaryCall(coordinator.deleteWorkerGroup.bind(coordinator), { name: "small" });
    await expect(unaryCall(coordinator.getWorkerGroup.bind(coordinator), { name: "small" })).rejects.toMatchObject({ code: 5 });
  });
});

/** Most jobs that ran at the same moment. */
function maxOverlap(jobs: Job[]): number {
  const edges = jobs.flatMap((j) => [
    [j.startedAt!.getTime(), 1],
    [j.finishedAt!.getTime(), -1],
  ]);
  edges.sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]!);
  let now = 0;
  let max = 0;
  for (const [, d] of edges) max = Math.max(max, (now += d!));
  return max;
}
