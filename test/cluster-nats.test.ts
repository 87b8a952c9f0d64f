/**
 * Scale-out on a real 3-node NATS cluster (three nats-server processes on
 * loopback, JetStream, every Aspen bucket at 3 replicas): the control
 * services and two agents connected to all three nodes, a 1-second schedule
 * and a steady stream of submitted jobs. The node leading the jobs bucket is
 * SIGKILLed for 10 s and brought back. Afterwards: no schedule, job or result
 * is lost, every acknowledged submission ran exactly once, and every instant
 * of the schedule either ran or is counted missed (catch-up SKIP, the default).
 * The same run scrapes the job-manager's and the coordinator's Prometheus
 * endpoints. One outage scenario (beforeAll), then one test per promise.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
import {
  freePort,
  sleep,
  startNatsCluster,
  startService,
  startSubmitter,
  waitFor,
  waitHealthy,
  type NatsCluster,
  type NatsClusterNode,
  type ServiceProcess,
} from "@aspen/testkit";

interface StreamDetail {
  name: string;
  config?: { num_replicas?: number };
  cluster?: { leader?: string; replicas?: Array<{ name: string; current: boolean }> };
}

/** Every stream of the default account as one node's /jsz reports it (replicas, leader). */
async function streamsOn(node: NatsClusterNode): Promise<StreamDetail[]> {
  const res = await fetch(`http://127.0.0.1:${node.httpPort}/jsz?accounts=true&streams=true&config=true`);
  const body = (await res.json()) as { account_details?: Array<{ stream_detail?: StreamDetail[] }> };
  return (body.account_details ?? []).flatMap((a) => a.stream_detail ?? []);
}

/** The value of one Prometheus sample line (`name{labels} value`), undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(" ").pop());
  }
  return undefined;
}

describe("3-node NATS cluster, buckets at R3, one node SIGKILLed for 10 s", () => {
  const disposers: Array<() => PromiseLike<void>> = [];
  const addr = { scheduler: "", jobManager: "", coordinator: "" };
  const metricsPort = { scheduler: 0, jobManager: 0, coordinator: 0 };
  let nats: NatsCluster;
  let scheduler: ServiceProcess;
  let jobs: JobServiceClient;
  let schedules: SchedulerServiceClient;
  /** What the outage did, for the tests below and the closing line. */
  const run = {
    acked: new Set<string>(),
    failedCalls: 0,
    duringOutage: 0,
    victim: "",
    downMs: 0,
    backAt: 0,
    streams: [] as StreamDetail[],
  };

  const list = async (req: Partial<ListJobsRequest>): Promise<Job[]> =>
    (await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ pageSize: 1000, ...req }))).jobs;

  beforeAll(async () => {
    nats = await startNatsCluster({ size: 3 });
    disposers.push(() => nats[Symbol.asyncDispose]());
    const [sp, jp, cp, jmMetrics, coMetrics, scMetrics] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    Object.assign(addr, { scheduler: `127.0.0.1:${sp}`, jobManager: `127.0.0.1:${jp}`, coordinator: `127.0.0.1:${cp}` });
    Object.assign(metricsPort, { scheduler: scMetrics, jobManager: jmMetrics, coordinator: coMetrics });
    const common: Record<string, string> = {
      ASPEN_NATS_SERVERS: nats.urls.join(","),
      ASPEN_BUCKET_REPLICAS: "3",
      ASPEN_GRPC_HOST: "127.0.0.1",
      ASPEN_JOB_MANAGER_ADDR: addr.jobManager,
      ASPEN_COORDINATOR_ADDR: addr.coordinator,
      ASPEN_METRICS_HOST: "127.0.0.1",
      OTEL_SDK_DISABLED: "true",
    };
    const start = (name: Parameters<typeof startService>[0], env: Record<string, string>, label?: string) => {
      const proc = startService(name, { ...common, ...env }, label);
      // Stopped newest first: agents (they drain), then the control plane, then NATS.
      disposers.push(() =>
        proc.stop().then(
          () => undefined,
          () => undefined,
        ),
      );
      return proc;
    };
    const jobManager = start("job-manager", {
      ASPEN_GRPC_PORT: String(jp),
      ASPEN_METRICS_PORT: String(jmMetrics),
      ASPEN_ASSIGN_TIMEOUT: "5s",
      ASPEN_MAINTENANCE_INTERVAL: "500ms",
    });
    const coordinator = start("coordinator", { ASPEN_GRPC_PORT: String(cp), ASPEN_METRICS_PORT: String(coMetrics) });
    await Promise.all([waitHealthy(addr.jobManager, 30_000, jobManager), waitHealthy(addr.coordinator, 30_000, coordinator)]);
    scheduler = start("scheduler", { ASPEN_GRPC_PORT: String(sp), ASPEN_METRICS_PORT: String(scMetrics) });
    await waitHealthy(addr.scheduler, 30_000, scheduler);
    for (let i = 1; i <= 2; i++) {
      const health = await freePort();
      const agent = start(
        "agent",
        { ASPEN_WORKER_ID: `agent-${i}`, ASPEN_SLOTS: "4", ASPEN_HEALTH_HOST: "127.0.0.1", ASPEN_HEALTH_PORT: String(health) },
        `agent-${i}`,
      );
      await waitHealthy(`127.0.0.1:${health}`, 30_000, agent);
    }
    await waitFor(
      "both agents registered",
      () => coordinator.logs.filter((l) => l.msg === "agent registered").length >= 2,
      20_000,
    );
    run.streams = await streamsOn(nats.nodes[0]!);

    jobs = createClient(JobServiceClient, addr.jobManager);
    schedules = createClient(SchedulerServiceClient, addr.scheduler);
    await unaryCall(
      schedules.createSchedule.bind(schedules),
      CreateScheduleRequest.fromPartial({
        scheduleId: "tick",
        spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
        job: { exec: { command: "echo", args: ["tick"] } },
      }),
    );

    // A client submitting one job every 100 ms; a failed call is retried with the same id until acknowledged.
    const submitter = startSubmitter(jobs, { prefix: "stream", pauseMs: 100, retryMs: 200 });
    run.acked = submitter.acked;

    await sleep(6_000);
    // The node leading the jobs bucket goes: the worst one to lose.
    const leaderName = (await streamsOn(nats.nodes[0]!)).find((s) => s.name === "KV_aspen_jobs")?.cluster?.leader;
    const victim = nats.nodes.find((n) => n.name === leaderName) ?? nats.nodes[0]!;
    run.victim = victim.name;
    const before = run.acked.size;
    await victim.kill();
    const killedAt = Date.now();
    await sleep(10_000);
    run.duringOutage = run.acked.size - before;
    await victim.restart();
    await nats.healthy();
    run.downMs = Date.now() - killedAt;
    run.backAt = Date.now();
    await sleep(8_000);
    await submitter.stop();
    run.failedCalls = submitter.failedCalls();
    await unaryCall(schedules.pauseSchedule.bind(schedules), { scheduleId: "tick", note: "test over" });
    await sleep(1_500);
  }, 150_000);

  afterAll(async () => {
    jobs?.close();
    schedules?.close();
    for (const dispose of disposers.reverse()) await dispose();
  }, 60_000);

  it("creates every Aspen bucket (and the agents' audit stream) with 3 replicas", () => {
    const aspen = run.streams.filter((s) => /^(KV|OBJ)_aspen_|^ASPEN_AUDIT$/.test(s.name));
    expect(aspen.map((s) => s.name)).toEqual(
      expect.arrayContaining(["KV_aspen_jobs", "KV_aspen_schedules", "OBJ_aspen_outputs", "ASPEN_AUDIT"]),
    );
    for (const s of aspen) expect({ stream: s.name, replicas: s.config?.num_replicas }).toEqual({ stream: s.name, replicas: 3 });
  });

  it("completes every acknowledged submission exactly once, with its result", async () => {
    const streamed = await waitFor(
      "every acknowledged job to end",
      async () => {
        const all = (await list({})).filter((j) => j.id.startsWith("stream-"));
        return all.length === run.acked.size && all.every((j) => isTerminal(j.state)) ? all : undefined;
      },
      60_000,
      250,
    );
    expect(new Set(streamed.map((j) => j.id))).toEqual(run.acked);
    for (const job of streamed) {
      expect({ id: job.id, state: JobState[job.state] }).toEqual({ id: job.id, state: "JOB_STATE_SUCCEEDED" });
      expect(job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING)).toHaveLength(1);
      expect(job.result?.stdout?.text).toBe(`${job.id}\n`);
    }
    expect(run.duringOutage).toBeGreaterThan(0); // submissions went on while the node was down
    console.log(
      `nats cluster: killed ${run.victim} (leader of KV_aspen_jobs) for ${(run.downMs / 1000).toFixed(1)} s; ` +
        `${run.acked.size} submissions acknowledged (${run.duringOutage} while it was down, ` +
        `${run.failedCalls} calls failed and were retried), each ran once`,
    );
  });

  it("serves jobs by state, output bytes, slots and placement time to Prometheus", async () => {
    const jmText = await (await fetch(`http://127.0.0.1:${metricsPort.jobManager}/metrics`)).text();
    const all = await list({});
    const succeeded = all.filter((j) => j.state === JobState.JOB_STATE_SUCCEEDED).length;
    expect(sample(jmText, "aspen_jobs", { state: "SUCCEEDED" })).toBe(succeeded);
    expect(sample(jmText, "aspen_jobs", { state: "QUEUED" })).toBe(0);
    expect(sample(jmText, "aspen_job_manager_output_bytes_total")).toBeGreaterThan(0);
    const coText = await (await fetch(`http://127.0.0.1:${metricsPort.coordinator}/metrics`)).text();
    expect(sample(coText, "aspen_coordinator_slots", { worker: "agent-1", kind: "total" })).toBe(4);
    expect(sample(coText, "aspen_coordinator_slots", { worker: "agent-2", kind: "used" })).toBe(0);
    expect(sample(coText, "aspen_coordinator_placement_duration_count")).toBeGreaterThanOrEqual(run.acked.size);
    const scText = await (await fetch(`http://127.0.0.1:${metricsPort.scheduler}/metrics`)).text();
    expect(sample(scText, "aspen_scheduler_leading")).toBe(1);
    expect(sample(scText, "aspen_scheduler_schedules")).toBe(1);
    expect(sample(scText, "aspen_scheduler_fires_total")).toBeGreaterThan(0);
    expect(sample(scText, "aspen_scheduler_fire_lag_count")).toBe(sample(scText, "aspen_scheduler_fires_total"));
  });

  const fires = async () => {
    const schedule = await unaryCall(schedules.getSchedule.bind(schedules), { scheduleId: "tick" });
    const ticks = await waitFor(
      "every fire to end",
      async () => {
        const all = await list({ scheduleId: "tick" });
        return all.every((j) => isTerminal(j.state)) ? all : undefined;
      },
      30_000,
      250,
    );
    const instants = ticks.map((j) => j.scheduledAt?.getTime() ?? NaN).sort((a, b) => a - b);
    return { schedule, ticks, instants, missed: Number(schedule.status?.missedCount ?? 0) };
  };

  it("keeps the schedule: each instant from its first fire to its last ran once or is counted missed", async () => {
    const { ticks, instants, missed } = await fires();
    expect(new Set(instants).size).toBe(instants.length);
    const span = (instants[instants.length - 1]! - instants[0]!) / 1000 + 1;
    for (const job of ticks) {
      expect(job.state).toBe(JobState.JOB_STATE_SUCCEEDED);
      expect(job.history.filter((h) => h.to === JobState.JOB_STATE_RUNNING)).toHaveLength(1);
      expect(job.result?.stdout?.text).toBe("tick\n");
    }
    // Nothing lost: every instant of the span ran or is counted missed. The missed count
    // covers the schedule's whole life, so an instant counted missed just outside the
    // span (at the edge of the outage) can make the sum exceed it by one.
    expect(instants.length + missed).toBeGreaterThanOrEqual(span);
    expect(instants.length + missed).toBeLessThanOrEqual(span + 1);
    console.log(`nats cluster: schedule ${instants.length} fires + ${missed} missed over ${span} s`);
  });

  it("fires again after the node is back", async () => {
    const { instants } = await fires();
    // 8 s passed between the node's return and the pause.
    expect(instants[instants.length - 1]!).toBeGreaterThan(run.backAt + 5_000);
  });
});
