/**
 * Authentication and roles on every RPC, driven by the service descriptors
 * (a new RPC is covered the day it is added), plus agent identity.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { Client, Metadata, status, type ServiceDefinition, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CoordinatorServiceClient,
  CoordinatorServiceService,
  JobServiceClient,
  JobServiceService,
  JobState,
  RegisterWorker,
  SchedulerServiceService,
  SubmitJobRequest,
  type AgentMessage,
  type CoordinatorMessage,
} from "@aspen/proto";
import { createClient, permissionFor, unaryCall, type Permission } from "@aspen/runtime";
import { startCluster, waitFor, type Cluster } from "@aspen/testkit";

const SERVICES: Array<[string, ServiceDefinition, "scheduler" | "jobManager" | "coordinator"]> = [
  ["aspen.v1.SchedulerService", SchedulerServiceService, "scheduler"],
  ["aspen.v1.JobService", JobServiceService, "jobManager"],
  ["aspen.v1.CoordinatorService", CoordinatorServiceService, "coordinator"],
];

const RPCS = SERVICES.flatMap(([service, definition, addr]) =>
  Object.values(definition).map((m) => ({ service, addr, method: m.path.split("/").pop()!, def: m })),
);

/** Calls any RPC with an empty request and resolves with the status code it ends with. */
function callStatus(client: Client, rpc: (typeof RPCS)[number], token: string | undefined): Promise<number> {
  const md = new Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  const request = rpc.def.requestDeserialize(Buffer.alloc(0));
  const deadline = Date.now() + 5_000;
  const { path, requestSerialize: ser, responseDeserialize: de } = rpc.def;
  return new Promise((resolve) => {
    if (!rpc.def.requestStream && !rpc.def.responseStream) {
      client.makeUnaryRequest(path, ser, de, request, md, { deadline }, (err: ServiceError | null) =>
        resolve(err ? err.code : status.OK),
      );
      return;
    }
    const call = rpc.def.requestStream
      ? client.makeBidiStreamRequest(path, ser, de, md, { deadline })
      : client.makeServerStreamRequest(path, ser, de, request, md, { deadline });
    call.on("data", () => undefined);
    call.on("error", (err: ServiceError) => resolve(err.code));
    call.on("status", (s: { code: number }) => resolve(s.code));
    if (rpc.def.requestStream) {
      // A heartbeat first: refused as "not register" once past authentication. Then the
      // client's side ends, so a stream that takes the message (SubmitJobStream) ends too.
      const duplex = call as unknown as { write(m: unknown): void; end(): void };
      duplex.write(request);
      duplex.end();
    }
  });
}

const AUTH_ERRORS = new Set([status.UNAUTHENTICATED, status.PERMISSION_DENIED]);

describe("authentication and roles", () => {
  let cluster: Cluster;
  const clients = new Map<string, Client>();

  beforeAll(async () => {
    cluster = await startCluster({ agents: 1, scheduler: true });
    for (const [, , addr] of SERVICES)
      clients.set(addr, new Client(cluster.addr[addr], (await import("@grpc/grpc-js")).credentials.createInsecure()));
  });
  afterAll(async () => {
    for (const c of clients.values()) c.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  it("covers every RPC of every service", () => {
    expect(RPCS.length).toBeGreaterThan(30);
  });

  it("gives each batch stream the permission of its unary batch call (the stream is the same call, carried differently)", () => {
    const twins = [
      ["SubmitJobStream", "SubmitJobs"],
      ["PlaceJobStream", "PlaceJobs"],
      ["ReportAttemptStream", "ReportAttempts"],
    ];
    for (const [stream, unary] of twins) {
      expect(RPCS.some((r) => r.method === stream)).toBe(true);
      expect([stream, permissionFor(stream!)]).toEqual([stream, permissionFor(unary!)]);
    }
    // Pinned, so a new name cannot slip into "operate" unnoticed: placements and reports are between services only.
    expect(["PlaceJobStream", "ReportAttemptStream"].map(permissionFor)).toEqual(["internal", "internal"]);
  });

  it.each(RPCS.map((r) => [`${r.service}/${r.method}`, r] as const))(
    "%s: UNAUTHENTICATED without a token or with a bad one",
    async (_n, rpc) => {
      expect(await callStatus(clients.get(rpc.addr)!, rpc, undefined)).toBe(status.UNAUTHENTICATED);
      expect(await callStatus(clients.get(rpc.addr)!, rpc, "aspen_not-a-real-token")).toBe(status.UNAUTHENTICATED);
    },
  );

  it.each(RPCS.map((r) => [`${r.service}/${r.method}`, r] as const))(
    "%s: viewer only reads; the right role passes authorization",
    async (_n, rpc) => {
      const permission: Permission = permissionFor(rpc.method);
      const asViewer = await callStatus(clients.get(rpc.addr)!, rpc, cluster.tokens.viewer);
      if (permission === "read") expect(AUTH_ERRORS.has(asViewer)).toBe(false);
      else expect(asViewer).toBe(status.PERMISSION_DENIED);
      const right = {
        read: cluster.tokens.viewer,
        operate: cluster.tokens.operator,
        admin: cluster.tokens.admin,
        internal: cluster.tokens.service,
        connect: cluster.tokens.join,
      }[permission];
      expect(AUTH_ERRORS.has(await callStatus(clients.get(rpc.addr)!, rpc, right))).toBe(false);
    },
  );

  it("a service token cannot do what only an admin may, nor act as an agent", async () => {
    const purge = RPCS.find((r) => r.method === "PurgeDeadLetters")!;
    const connect = RPCS.find((r) => r.method === "Connect")!;
    expect(await callStatus(clients.get(purge.addr)!, purge, cluster.tokens.service)).toBe(status.PERMISSION_DENIED);
    expect(await callStatus(clients.get(connect.addr)!, connect, cluster.tokens.service)).toBe(status.PERMISSION_DENIED);
    expect(await callStatus(clients.get(purge.addr)!, purge, cluster.tokens.operator)).toBe(status.PERMISSION_DENIED);
  });

  /** Opens a Connect stream with `token` and registers as `workerId`; resolves with the first answer. */
  function registerAs(token: string, workerId: string) {
    const coord = createClient(CoordinatorServiceClient, cluster.addr.coordinator, { token });
    const stream = coord.connect();
    const first = new Promise<CoordinatorMessage | { code: number; details: string }>((resolve) => {
      stream.on("data", (m: CoordinatorMessage) => resolve(m));
      stream.on("error", (e: { code: number; details: string }) => resolve(e));
    });
    stream.write({
      msg: {
        $case: "register",
        value: RegisterWorker.fromPartial({ workerId, hostname: "intruder", slots: 1, version: "x" }),
      },
    } satisfies AgentMessage);
    return { coord, stream, first };
  }

  it("binds an agent token to its worker id, and a worker id to the token that registered it", async () => {
    const wrongId = registerAs(cluster.tokens.agents[0]!, "agent-2");
    expect(await wrongId.first).toMatchObject({
      code: status.PERMISSION_DENIED,
      details: expect.stringContaining("may register only as worker agent-1"),
    });
    wrongId.coord.close();
    // agent-1 is registered with its own token: a shared join token cannot take it over.
    const takeover = registerAs(cluster.tokens.join, "agent-1");
    expect(await takeover.first).toMatchObject({
      code: status.PERMISSION_DENIED,
      details: expect.stringContaining("bound to another token"),
    });
    takeover.coord.close();
  });

  it("refuses and records a report on an attempt the reporting agent does not hold", async () => {
    const jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    try {
      await unaryCall(
        jobs.submitJob.bind(jobs),
        SubmitJobRequest.fromPartial({ jobId: "victim-job", spec: { exec: { command: "sleep", args: ["1"] } } }),
      );
      await waitFor(
        "the job to run on agent-1",
        async () => (await unaryCall(jobs.getJob.bind(jobs), { jobId: "victim-job" })).state === JobState.JOB_STATE_RUNNING,
      );
      const intruder = registerAs(cluster.tokens.join, "intruder");
      expect(await intruder.first).toMatchObject({ msg: { $case: "registered" } });
      intruder.stream.write({
        msg: {
          $case: "event",
          value: {
            jobId: "victim-job",
            attempt: 1,
            workerId: "agent-1", // a lie: the coordinator uses the session's id
            event: {
              $case: "finished",
              value: {
                result: { exitCode: 0, signal: "", timedOut: false, cancelled: false, error: "", peakRssBytes: 0, pid: 1 },
              },
            },
          },
        },
      } as AgentMessage);
      const job = await waitFor("the forged report to be recorded", async () => {
        const j = await unaryCall(jobs.getJob.bind(jobs), { jobId: "victim-job" });
        return j.refusedReports.length > 0 ? j : undefined;
      });
      expect(job.refusedReports[0]).toMatch(/attempt 1 finished .* from intruder: worker intruder does not hold attempt 1/);
      intruder.coord.close();
      const done = await unaryCall(
        jobs.getJobResult.bind(jobs),
        { jobId: "victim-job", wait: { seconds: 10, nanos: 0 } },
        { deadlineMs: 15_000 },
      );
      expect(done.state).toBe(JobState.JOB_STATE_SUCCEEDED);
      expect(done.workerId).toBe("agent-1");
    } finally {
      jobs.close();
    }
  });

  // Last: it takes agent-1 out.
  it("ends an agent's Connect stream once its token is revoked, and refuses it back", async () => {
    const before = readFileSync(cluster.tokens.file, "utf8");
    try {
      const { tokens } = JSON.parse(before) as { tokens: Array<{ name: string }> };
      writeFileSync(cluster.tokens.file, JSON.stringify({ tokens: tokens.filter((t) => t.name !== "agent-1") }));
      // The file is re-read within a second or two; the agent's next heartbeat is then refused.
      await waitFor(
        "agent-1 to be disconnected",
        () => cluster.coordinator.logs.some((l) => l.msg === "agent disconnected" && l.worker === "agent-1") || undefined,
        15_000,
      );
      // It reconnects at once, and is refused.
      const refused = registerAs(cluster.tokens.agents[0]!, "agent-1");
      expect(await refused.first).toMatchObject({ code: status.UNAUTHENTICATED });
      refused.coord.close();
    } finally {
      writeFileSync(cluster.tokens.file, before);
    }
  });
});
