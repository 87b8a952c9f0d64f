/**
 * Thousands of random and malformed requests to every RPC (raw bytes that are
 * not valid protobuf, and well-formed messages with random field values), as
 * an admin so they get past authentication: no crash, no unhandled
 * rejection, every answer a gRPC status, and the state that was there before
 * left unchanged.
 */
import { Client, credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CoordinatorServiceService,
  CreateScheduleRequest,
  JobServiceClient,
  JobServiceService,
  SchedulerServiceClient,
  SchedulerServiceService,
  SubmitJobRequest,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor, waitHealthy, type Cluster } from "@aspen/testkit";

const TARGETS = [
  [SchedulerServiceService, "scheduler"],
  [JobServiceService, "jobManager"],
  [CoordinatorServiceService, "coordinator"],
] as const;
const RPCS = TARGETS.flatMap(([definition, addr]) =>
  Object.values(definition)
    .filter((m) => !m.requestStream) // Connect (the agent stream) has its own tests
    .map((m) => ({ addr, def: m })),
);

describe("fuzzing every RPC", () => {
  let cluster: Cluster;
  const clients = new Map<string, Client>();
  let scheduler: SchedulerServiceClient;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({ agents: 1 });
    for (const [, addr] of TARGETS) clients.set(addr, new Client(cluster.addr[addr], credentials.createInsecure()));
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });
  afterAll(async () => {
    for (const c of clients.values()) c.close();
    scheduler?.close();
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  /** Sends `payload` (already serialized) to the RPC and resolves with the final status code. */
  function send(rpc: (typeof RPCS)[number], payload: Buffer): Promise<number> {
    const md = new Metadata();
    md.set("authorization", `Bearer ${cluster.tokens.admin}`);
    const client = clients.get(rpc.addr)!;
    const raw = (b: Buffer) => b;
    const deadline = Date.now() + 5_000;
    return new Promise((resolve) => {
      if (!rpc.def.responseStream) {
        client.makeUnaryRequest(rpc.def.path, raw, raw, payload, md, { deadline }, (err: ServiceError | null) =>
          resolve(err ? err.code : status.OK),
        );
      } else {
        const call = client.makeServerStreamRequest(rpc.def.path, raw, raw, payload, md, { deadline });
        call.on("data", () => undefined);
        call.on("status", (s: { code: number }) => resolve(s.code));
        call.on("error", () => undefined);
      }
    });
  }

  it("answers every random request with a status (never INTERNAL) and loses nothing", async () => {
    // State that must survive: a paused schedule and a finished job.
    const keep = await unaryCall(
      scheduler.createSchedule.bind(scheduler),
      CreateScheduleRequest.fromPartial({
        scheduleId: "keep-me",
        paused: true,
        spec: { kind: { $case: "cron", value: { expression: "0 3 * * *" } } },
        job: { exec: { command: "true" } },
      }),
    );
    await unaryCall(
      jobs.submitJob.bind(jobs),
      SubmitJobRequest.fromPartial({ jobId: "keep-job", spec: { exec: { command: "true" } } }),
    );
    const keptJob = await waitFor("the job to finish", async () => {
      const j = await unaryCall(jobs.getJob.bind(jobs), { jobId: "keep-job" });
      return j.state === 5 ? j : undefined;
    });

    const codes = new Map<number, number>();
    const record = (code: number) => codes.set(code, (codes.get(code) ?? 0) + 1);
    // Raw bytes: mostly not valid protobuf for the method.
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...RPCS), fc.uint8Array({ maxLength: 256 }), async (rpc, bytes) => {
        const code = await send(rpc, Buffer.from(bytes));
        record(code);
        return Number.isInteger(code) && code >= 0 && code <= 16;
      }),
      { numRuns: 1500 },
    );
    // Well-formed messages with random values: valid protobuf, nonsense content.
    const jsonValue = fc.jsonValue({ maxDepth: 3 });
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...RPCS),
        fc.dictionary(fc.string({ maxLength: 12 }), jsonValue, { maxKeys: 6 }),
        async (rpc, object) => {
          let payload: Buffer;
          try {
            payload = rpc.def.requestSerialize(rpc.def.requestDeserialize(rpc.def.requestSerialize(object as never)));
          } catch {
            payload = Buffer.alloc(0); // the client-side encoder refused it: send an empty message instead
          }
          const code = await send(rpc, payload);
          record(code);
          return code >= 0 && code <= 16;
        },
      ),
      { numRuns: 1500 },
    );
    console.log(`fuzz: ${[...codes].map(([c, n]) => `${status[c]} ${n}`).join(", ")}`);
    // Bad input is the client's error: never INTERNAL or UNKNOWN.
    expect(codes.has(status.INTERNAL)).toBe(false);
    expect(codes.has(status.UNKNOWN)).toBe(false);

    // Still serving, nothing crashed or leaked an unhandled rejection.
    for (const p of [cluster.scheduler, cluster.jobManager, cluster.coordinator, ...cluster.agents]) {
      expect(await Promise.race([p.exited, new Promise((r) => setTimeout(() => r("running"), 10))])).toBe("running");
      expect(p.logs.filter((l) => l.msg === "unhandled rejection" || (l.level as number) >= 60)).toEqual([]);
    }
    await waitHealthy(cluster.addr.scheduler, 2_000);
    await waitHealthy(cluster.addr.jobManager, 2_000);
    await waitHealthy(cluster.addr.coordinator, 2_000);
    // What was there before is as it was.
    const scheduleNow = await unaryCall(scheduler.getSchedule.bind(scheduler), { scheduleId: "keep-me" });
    expect({ ...scheduleNow, status: undefined }).toEqual({ ...keep, status: undefined });
    expect(await unaryCall(jobs.getJob.bind(jobs), { jobId: "keep-job" })).toEqual(keptJob);
  }, 180_000);
});
