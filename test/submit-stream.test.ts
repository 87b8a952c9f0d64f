/**
 * SubmitJobStream as a client sees it: SubmitJobs batches on one stream, each
 * answered with its batch_id; bad input refused naming the field, never a
 * crash; every submission audited; and a job-manager shutting down ends the
 * stream at once instead of holding its shutdown.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { Client, credentials, Metadata, status, type ClientDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  JobServiceClient,
  JobServiceService,
  SubmitJobRequest,
  type SubmitJobStreamRequest,
  type SubmitJobStreamResponse,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { startCluster, waitFor, waitHealthy, type Cluster } from "@aspen/testkit";

const job = (command: string) => ({ exec: { command, args: ["hi"] } });

/** The answers of a stream as they come, and its final status. */
function follow(stream: ClientDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>) {
  const answers = new Map<number, SubmitJobStreamResponse>();
  stream.on("data", (a: SubmitJobStreamResponse) => answers.set(a.batchId, a));
  stream.on("error", () => undefined); // the status below says it
  const ended = new Promise<{ code: status; details: string }>((resolve) => stream.on("status", resolve));
  return { answers, ended };
}

describe("SubmitJobStream", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({ agents: 0, scheduler: false });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });

  afterAll(async () => {
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  it("answers each batch by its batch_id, each submission on its own, and refuses a batch over the limit naming requests", async () => {
    const stream = jobs.submitJobStream();
    const { answers, ended } = follow(stream);
    stream.write({
      batchId: 7,
      batch: {
        brief: true,
        requests: [
          SubmitJobRequest.fromPartial({ jobId: "streamed-ok", spec: job("echo") }),
          SubmitJobRequest.fromPartial({ jobId: "a..b", spec: job("echo") }),
        ],
      },
    });
    stream.write({
      batchId: 8,
      batch: { brief: true, requests: Array.from({ length: 1001 }, () => SubmitJobRequest.fromPartial({ spec: job("echo") })) },
    });
    await waitFor("batches 7 and 8 answered", () => answers.size === 2 || undefined);
    stream.write({
      batchId: 9,
      batch: { brief: false, requests: [SubmitJobRequest.fromPartial({ jobId: "streamed-ok", spec: job("echo") })] },
    });
    stream.end();
    expect(await ended).toMatchObject({ code: status.OK }); // every batch answered first

    const first = answers.get(7)!;
    expect(first.code).toBe(0);
    expect(first.answer?.results.map((r) => [r.code, r.response?.job?.id ?? "", r.response?.created ?? false])).toEqual([
      [status.OK, "streamed-ok", true],
      [status.INVALID_ARGUMENT, "", false],
    ]);
    expect(first.answer?.results[1]?.message).toMatch(/^job_id:/);
    const tooMany = answers.get(8)!;
    expect(tooMany.code).toBe(status.INVALID_ARGUMENT);
    expect(tooMany.message).toMatch(/^requests: at most 1000/);
    expect(tooMany.answer).toBeUndefined();
    // The same id again: the existing job, whole (not brief), not created twice.
    const again = answers.get(9)!.answer?.results[0];
    expect(again?.response?.created).toBe(false);
    expect(again?.response?.job?.spec?.exec?.command).toBe("echo");
    const stored = await unaryCall(jobs.getJob.bind(jobs), { jobId: "streamed-ok" });
    expect(stored.submittedBy).toBe("test-admin");
    await expect(unaryCall(jobs.getJob.bind(jobs), { jobId: "a..b" })).rejects.toMatchObject({ code: status.INVALID_ARGUMENT });

    // Audited per submission, as SubmitJobs is.
    const records = await waitFor("the audit records", async () => {
      const r = await unaryCall(jobs.listControlAudit.bind(jobs), { target: "", actor: "", limit: 100 });
      const mine = r.records.filter((x) => x.method === "aspen.v1.JobService/SubmitJobStream");
      return mine.length >= 4 ? mine : undefined;
    });
    expect(records.map((r) => [r.actor, r.target, r.outcome.split(":")[0]])).toEqual(
      expect.arrayContaining([
        ["test-admin", "streamed-ok", "OK"],
        ["test-admin", "a..b", "INVALID_ARGUMENT"],
      ]),
    );
    expect(records.some((r) => r.outcome.startsWith("INVALID_ARGUMENT: requests: at most 1000"))).toBe(true);
  });

  it("refuses a caller without the operate permission, and ends a stream whose message is not protobuf with INVALID_ARGUMENT", async () => {
    const viewer = createClient(JobServiceClient, cluster.addr.jobManager, { token: cluster.tokens.viewer });
    try {
      const refused = follow(viewer.submitJobStream());
      expect(await refused.ended).toMatchObject({ code: status.PERMISSION_DENIED });
    } finally {
      viewer.close();
    }

    const raw = new Client(cluster.addr.jobManager, credentials.createInsecure());
    try {
      const md = new Metadata();
      md.set("authorization", `Bearer ${cluster.tokens.admin}`);
      const method = JobServiceService.submitJobStream;
      const stream = raw.makeBidiStreamRequest<Buffer, Buffer>(
        method.path,
        (b) => b,
        (b) => b,
        md,
      );
      const status$ = new Promise<ServiceError>((resolve) => stream.on("error", resolve));
      stream.write(Buffer.from([0xff, 0xff, 0xff, 0x0f, 0x01]));
      const err = await status$;
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/^request: not a valid protobuf message/);
    } finally {
      raw.close();
    }
    await waitHealthy(cluster.addr.jobManager);
  });

  it("stops taking batches from a token revoked while its stream is open", async () => {
    const operator = createClient(JobServiceClient, cluster.addr.jobManager, { token: cluster.tokens.operator });
    const before = readFileSync(cluster.tokens.file, "utf8");
    try {
      const stream = operator.submitJobStream();
      const { answers, ended } = follow(stream);
      stream.write({
        batchId: 1,
        batch: { brief: true, requests: [SubmitJobRequest.fromPartial({ jobId: "by-operator-1", spec: job("echo") })] },
      });
      await waitFor("batch 1 answered", () => answers.get(1));
      expect(answers.get(1)?.answer?.results[0]?.code).toBe(status.OK);

      const { tokens } = JSON.parse(before) as { tokens: Array<{ name: string }> };
      writeFileSync(cluster.tokens.file, JSON.stringify({ tokens: tokens.filter((t) => t.name !== "test-operator") }));
      await waitFor("the revocation to be read", () =>
        unaryCall(operator.getStats.bind(operator), {}).then(
          () => undefined,
          (e: { code?: number }) => e.code === status.UNAUTHENTICATED || undefined,
        ),
      );
      stream.write({
        batchId: 2,
        batch: { brief: true, requests: [SubmitJobRequest.fromPartial({ jobId: "by-operator-2", spec: job("echo") })] },
      });
      expect(await ended).toMatchObject({ code: status.UNAUTHENTICATED });
      expect(answers.has(2)).toBe(false);
      await expect(unaryCall(jobs.getJob.bind(jobs), { jobId: "by-operator-2" })).rejects.toMatchObject({
        code: status.NOT_FOUND,
      });
    } finally {
      writeFileSync(cluster.tokens.file, before);
      operator.close();
    }
  });

  it("is ended with OK by a job-manager shutting down, after the batches in progress are answered, without holding the shutdown", async () => {
    const stream = jobs.submitJobStream();
    const { answers, ended } = follow(stream);
    const answeredAt = new Map<number, number>();
    stream.on("data", (a: SubmitJobStreamResponse) => answeredAt.set(a.batchId, Date.now()));
    // Ten batches of 1,000 (about a second of work here): in progress when the SIGTERM lands.
    const batches = Array.from({ length: 10 }, (_, b) => b + 1);
    for (const b of batches) {
      stream.write({
        batchId: b,
        batch: {
          brief: true,
          requests: Array.from({ length: 1000 }, (_, i) =>
            SubmitJobRequest.fromPartial({ jobId: `stop-${b}-${i}`, spec: job("echo") }),
          ),
        },
      });
    }
    await waitFor(
      "the first job of batch 1 stored",
      () => unaryCall(jobs.getJob.bind(jobs), { jobId: "stop-1-0" }).catch(() => undefined),
      10_000,
      2,
    );
    const stopping = Date.now();
    const code = await cluster.jobManager.stop();
    const stopMs = Date.now() - stopping;
    expect(code).toBe(0);
    expect(await ended).toMatchObject({ code: status.OK });
    // Every batch it took is answered, whole, before the stream ends; some of them after the SIGTERM
    // (in progress then).
    expect(answers.size).toBeGreaterThan(0);
    for (const a of answers.values()) {
      expect(a.answer?.results.filter((r) => r.code === status.OK && r.response?.created)).toHaveLength(1000);
    }
    expect(Math.max(...answeredAt.values())).toBeGreaterThan(stopping);
    console.log(
      `${answers.size} of 10 batches answered, the last ${Math.max(...answeredAt.values()) - stopping} ms after the SIGTERM; stopped in ${stopMs} ms`,
    );
    // An open stream does not hold the server's drain for its 5 s grace.
    expect(stopMs).toBeLessThan(4_000);
    await cluster.restart("job-manager");
    // A batch it had not taken when the drain began got no answer and created nothing (the client sends it again).
    for (const b of batches.filter((b) => !answers.has(b))) {
      await expect(unaryCall(jobs.getJob.bind(jobs), { jobId: `stop-${b}-0` })).rejects.toMatchObject({ code: status.NOT_FOUND });
    }
  });
});
