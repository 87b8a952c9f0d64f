/**
 * Batch streams, through the scheduler's (SubmitJobStream): against a real
 * job-manager (submits, a restart of it, and the stream reopened after), and
 * against gRPC servers on loopback that play what a real one cannot be made
 * to do on cue: answer out of order, never answer, predate the stream, or
 * hold its batches (the server side's in-flight cap).
 */
import {
  Server,
  ServerCredentials,
  status,
  type sendUnaryData,
  type ServerDuplexStream,
  type ServerUnaryCall,
} from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import {
  Job,
  JobServiceClient,
  JobServiceService,
  SubmitJobRequest,
  type SubmitJobsRequest,
  type SubmitJobsResponse,
  type SubmitJobStreamRequest,
  type SubmitJobStreamResponse,
} from "@aspen/proto";
import { startCluster, waitFor } from "@aspen/testkit";
import { BatchStream, MAX_BATCHES_IN_FLIGHT, serveBatchStream } from "./batch-stream.js";
import { isRetryable } from "./errors.js";
import { createClient, unaryCall } from "./grpc.js";
import { createLogger } from "./logger.js";

const log = createLogger("test", "silent");
const batchOf = (...jobIds: string[]): SubmitJobsRequest => ({
  brief: true,
  requests: jobIds.map((jobId) => SubmitJobRequest.fromPartial({ jobId, spec: { exec: { command: "true" } } })),
});
const accepted = (batch: SubmitJobsRequest): SubmitJobsResponse => ({
  results: batch.requests.map((r) => ({
    code: 0,
    message: "",
    response: { created: true, job: Job.fromPartial({ id: r.jobId }) },
  })),
});
const ids = (answer: SubmitJobsResponse) => answer.results.map((r) => r.response?.job?.id);

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A gRPC server on loopback serving only the given JobService methods. */
async function serve(methods: Partial<Record<keyof typeof JobServiceService, unknown>>): Promise<{ client: JobServiceClient }> {
  const server = new Server();
  const definition = Object.fromEntries(
    Object.keys(methods).map((k) => [k, JobServiceService[k as keyof typeof JobServiceService]]),
  );
  server.addService(definition, methods as never);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const client = createClient(JobServiceClient, `127.0.0.1:${port}`, {});
  cleanups.push(() => {
    client.close();
    server.forceShutdown();
  });
  return { client };
}

/** The scheduler's stream to a job-manager. */
const submitStream = (client: JobServiceClient, deadlineMs?: number) =>
  new BatchStream<SubmitJobsRequest, SubmitJobsResponse>({
    name: "SubmitJobStream",
    open: () => client.submitJobStream(),
    unary: (batch, ms) => unaryCall(client.submitJobs.bind(client), batch, { deadlineMs: ms }),
    empty: { results: [] },
    log,
    deadlineMs,
  });

describe("BatchStream", () => {
  it("submits to a real job-manager, fails retryably while it is down, and reopens the stream once it is back", async () => {
    const cluster = await startCluster({ agents: 0, scheduler: false });
    cleanups.push(() => cluster[Symbol.asyncDispose]());
    const client = createClient(JobServiceClient, cluster.addr.jobManager);
    const submits = submitStream(client);
    cleanups.push(() => {
      submits.close();
      client.close();
    });

    const [first, second] = await Promise.all([submits.send(batchOf("s-1", "s-2")), submits.send(batchOf("s-3"))]);
    expect(first.results.map((r) => [r.code, r.response?.created])).toEqual([
      [0, true],
      [0, true],
    ]);
    expect(ids(second)).toEqual(["s-3"]);

    await cluster.jobManager.stop();
    const down = await submits.send(batchOf("s-4")).catch((e: unknown) => e);
    expect(down).toBeInstanceOf(Error);
    expect(isRetryable(down)).toBe(true);

    await cluster.restart("job-manager");
    // The channel may still be backing off from the outage (≤ 2 s): the scheduler retries a fire so too.
    const again = await waitFor("a submission to the restarted job-manager", () =>
      submits.send(batchOf("s-4", "s-1")).catch(() => undefined),
    );
    expect(again.results.map((r) => [r.response?.job?.id, r.response?.created])).toEqual([
      ["s-4", true],
      ["s-1", false],
    ]);
  });

  it("settles each batch with its own answer when answers come out of order", async () => {
    const { client } = await serve({
      submitJobStream: (call: ServerDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>) => {
        const held: SubmitJobStreamRequest[] = [];
        call.on("data", (m: SubmitJobStreamRequest) => {
          held.push(m);
          if (held.length < 3) return;
          for (const h of held.reverse()) call.write({ batchId: h.batchId, answer: accepted(h.batch!), code: 0, message: "" });
        });
      },
    });
    const submits = submitStream(client);
    cleanups.push(() => submits.close());
    const answers = await Promise.all([submits.send(batchOf("a")), submits.send(batchOf("b", "c")), submits.send(batchOf("d"))]);
    expect(answers.map(ids)).toEqual([["a"], ["b", "c"], ["d"]]);
  });

  it("rejects a batch left unanswered past its deadline with a retryable DEADLINE_EXCEEDED, alone: the stream and its other batches go on", async () => {
    let streams = 0;
    const { client } = await serve({
      submitJobStream: (call: ServerDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>) => {
        streams++;
        const held: SubmitJobStreamRequest[] = [];
        call.on("data", (m: SubmitJobStreamRequest) => {
          const id = m.batch!.requests[0]!.jobId;
          if (id === "late") return; // never answered
          if (id === "slow")
            held.push(m); // answered once "after" comes
          else {
            call.write({ batchId: m.batchId, answer: accepted(m.batch!), code: 0, message: "" });
            for (const h of held.splice(0)) call.write({ batchId: h.batchId, answer: accepted(h.batch!), code: 0, message: "" });
          }
        });
      },
    });
    const submits = submitStream(client, 400);
    cleanups.push(() => submits.close());
    const started = Date.now();
    const late = submits.send(batchOf("late")).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 200));
    const slow = submits.send(batchOf("slow")); // its deadline is 200 ms after late's
    const err = (await late) as { code?: number };
    expect(err.code).toBe(status.DEADLINE_EXCEEDED);
    expect(isRetryable(err)).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
    // The batch sent with it is still pending on the same stream (the peer may be doing it), and is answered there.
    const after = await submits.send(batchOf("after"));
    expect(ids(after)).toEqual(["after"]);
    expect(ids(await slow)).toEqual(["slow"]);
    expect(streams).toBe(1);
  });

  it("fails a stream's unanswered batches retryably when it ends with an error, and sends the next on a new stream", async () => {
    let streams = 0;
    const { client } = await serve({
      submitJobStream: (call: ServerDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>) => {
        const first = ++streams === 1;
        call.on("data", (m: SubmitJobStreamRequest) => {
          // The first stream ends as a whole, as after a message the server could not decode.
          if (first) call.emit("error", { code: status.INVALID_ARGUMENT, details: "request: not a valid protobuf message" });
          else call.write({ batchId: m.batchId, answer: accepted(m.batch!), code: 0, message: "" });
        });
      },
    });
    const submits = submitStream(client);
    cleanups.push(() => submits.close());
    const failed = await Promise.all(
      [submits.send(batchOf("e-1")), submits.send(batchOf("e-2"))].map((p) => p.catch((e: unknown) => e)),
    );
    for (const err of failed) {
      // Not the batch's fault: a retry, not "the job-manager refused the fire".
      expect(err).toMatchObject({ code: status.UNAVAILABLE });
      expect(isRetryable(err)).toBe(true);
    }
    expect(ids(await submits.send(batchOf("e-1")))).toEqual(["e-1"]);
    expect(streams).toBe(2);
  });

  it("falls back to unary SubmitJobs with a job-manager that predates the stream", async () => {
    const unary: string[][] = [];
    const { client } = await serve({
      submitJobs: (call: ServerUnaryCall<SubmitJobsRequest, SubmitJobsResponse>, done: sendUnaryData<SubmitJobsResponse>) => {
        unary.push(call.request.requests.map((r) => r.jobId));
        done(null, accepted(call.request));
      },
    });
    const submits = submitStream(client);
    cleanups.push(() => submits.close());
    expect(ids(await submits.send(batchOf("old-1")))).toEqual(["old-1"]);
    expect(ids(await submits.send(batchOf("old-2")))).toEqual(["old-2"]);
    // The first went on the stream, came back UNIMPLEMENTED, and was sent again unary; the second went unary at once.
    expect(unary).toEqual([["old-1"], ["old-2"]]);
  });

  it("rejects what is unanswered when closed, and everything after", async () => {
    const { client } = await serve({
      submitJobStream: (call: ServerDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>) => {
        call.on("data", () => undefined);
      },
    });
    const submits = submitStream(client);
    const waiting = submits.send(batchOf("x")).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 50));
    submits.close();
    expect(await waiting).toMatchObject({ code: status.UNAVAILABLE });
    await expect(submits.send(batchOf("y"))).rejects.toMatchObject({ code: status.UNAVAILABLE });
  });
});

/** A server whose submissions wait until the test releases them. */
async function heldServer() {
  const held: Array<{ batch: SubmitJobsRequest; release: () => void }> = [];
  const submitBatch = (batch: SubmitJobsRequest) =>
    new Promise<SubmitJobsResponse>((resolve) => held.push({ batch, release: () => resolve(accepted(batch)) }));
  const { client } = await serve({
    submitJobStream: (call: ServerDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>) =>
      serveBatchStream(call, (batch) => submitBatch(batch!), log),
  });
  return { client, held };
}

describe("serveBatchStream", () => {
  it(`works on at most ${MAX_BATCHES_IN_FLIGHT} batches of a stream at once, and answers every one before ending it`, async () => {
    const { client, held } = await heldServer();
    const stream = client.submitJobStream();
    const answers: SubmitJobStreamResponse[] = [];
    stream.on("data", (a: SubmitJobStreamResponse) => answers.push(a));
    const ended = new Promise<{ code: status }>((resolve) => stream.on("status", resolve));
    const total = MAX_BATCHES_IN_FLIGHT + 10;
    for (let i = 1; i <= total; i++) {
      stream.write({ batchId: i, batch: { brief: true, requests: [SubmitJobRequest.fromPartial({ jobId: `b-${i}` })] } });
    }
    stream.end();
    await waitFor("the first batches taken", () => held.length >= MAX_BATCHES_IN_FLIGHT || undefined);
    await new Promise((r) => setTimeout(r, 200)); // time to take more, if it would
    expect(held.length).toBe(MAX_BATCHES_IN_FLIGHT);
    expect(answers).toEqual([]);

    // Each answer frees a place: the rest are taken as the first ones are answered.
    for (let n = 0; n < total; n++) {
      await waitFor(`batch ${n + 1} taken`, () => held[n]);
      held[n]!.release();
    }
    expect((await ended).code).toBe(status.OK); // ended by the client, after the last answer
    expect(answers.map((a) => a.batchId).sort((a, b) => a - b)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(answers.every((a) => a.answer?.results[0]?.response?.job?.id === `b-${a.batchId}`)).toBe(true);
  });
});
