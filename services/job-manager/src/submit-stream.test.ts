/**
 * The job-manager's side of SubmitJobStream on a real gRPC server on loopback,
 * with the submission itself held in the test's hand: how many batches it
 * takes at once, and that every batch taken is answered before the stream ends.
 */
import { credentials, Server, ServerCredentials, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import {
  Job,
  JobServiceClient,
  JobServiceService,
  SubmitJobRequest,
  type SubmitJobsRequest,
  type SubmitJobsResponse,
  type SubmitJobStreamResponse,
} from "@aspen/proto";
import { createLogger } from "@aspen/runtime";
import { waitFor } from "@aspen/testkit";
import { MAX_BATCHES_IN_FLIGHT, serveSubmitStream } from "./submit-stream.js";

const log = createLogger("test", "silent");
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A server whose submissions wait until the test releases them. */
async function heldServer() {
  const held: Array<{ batch: SubmitJobsRequest; release: () => void }> = [];
  const submitBatch = (batch: SubmitJobsRequest) =>
    new Promise<SubmitJobsResponse>((resolve) =>
      held.push({
        batch,
        release: () =>
          resolve({
            results: batch.requests.map((r) => ({
              code: 0,
              message: "",
              response: { created: true, job: Job.fromPartial({ id: r.jobId }) },
            })),
          }),
      }),
    );
  const server = new Server();
  server.addService({ submitJobStream: JobServiceService.submitJobStream }, {
    submitJobStream: (call: Parameters<typeof serveSubmitStream>[0]) => serveSubmitStream(call, submitBatch, log),
  } as never);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const client = new JobServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
  cleanups.push(() => {
    client.close();
    server.forceShutdown();
  });
  return { client, held };
}

describe("serveSubmitStream", () => {
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
