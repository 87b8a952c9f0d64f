/**
 * StreamJobOutput and ListAuditRecords: read what agents write to JetStream.
 *
 * Agents store each attempt's full stdout/stderr in the object store
 * `aspen_outputs` as "<job id>/<attempt>/<stream>", publishing the chunks
 * while the process runs under a chunk id derived from that name
 * (`liveChunkId`), so a follower can read them before the object is complete:
 * replay (finished attempt) reads the object; follow (running attempt) reads
 * the chunk subject from its first message and ends once the object's final
 * metadata names a size it has reached. When an agent stored no full copy,
 * the job record's inline head/tail is sent instead (`inline_only`).
 *
 * Audit records are appended by agents to the stream ASPEN_AUDIT, subject
 * "aspen.audit.<job id>" (docs/agent.md). These readers sit beside the
 * JobService (wired by `configureOutputStream` in main.ts) and never write.
 */
import { createHash } from "node:crypto";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { Objm, type ObjectStore } from "@nats-io/obj";
import {
  AuditRecord,
  type AttemptResult,
  type Job,
  type JobServiceServer,
  type ListAuditRecordsResponse,
  type OutputChunk,
} from "@aspen/proto";
import { InvalidArgumentError, UnavailableError, type AsyncService } from "@aspen/runtime";
import { isTerminal } from "@aspen/model";
import type { JobManager } from "./job-manager.js";

/** Object store bucket agents write full outputs to. */
export const OUTPUTS_BUCKET = "aspen_outputs";
/** Stream agents append audit records to. */
export const AUDIT_STREAM = "ASPEN_AUDIT";
const STREAMS = ["stdout", "stderr"] as const;
type StreamName = (typeof STREAMS)[number];
/** How often a follower checks whether the object is complete, ms. */
const POLL_MS = 250;
/** After the attempt ended, how long a follower waits for an object that never started, ms. */
const NO_OBJECT_GRACE_MS = 2_000;
const MAX_AUDIT_RECORDS = 1_000;

/**
 * The chunk id an agent uses for an object while it writes it (same
 * derivation in services/agent/src/output-store.ts): followers find a running
 * attempt's chunks without asking the agent.
 */
export function liveChunkId(objectName: string): string {
  return `aspen${createHash("sha256").update(objectName).digest("hex").slice(0, 40)}`;
}

let nats: { nc: NatsConnection; js: JetStreamClient; os?: ObjectStore } | undefined;

/** Gives the readers their NATS connection (main.ts). */
export function configureOutputStream(nc: NatsConnection): void {
  nats = { nc, js: jetstream(nc) };
}

async function objects(): Promise<{ js: JetStreamClient; os: ObjectStore }> {
  if (!nats) throw new UnavailableError("output streaming is not configured");
  nats.os ??= await new Objm(nats.nc).create(OUTPUTS_BUCKET);
  return { js: nats.js, os: nats.os };
}

interface Piece {
  offset: number;
  data: Uint8Array;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function hexDigest(digest: string): string {
  return Buffer.from(digest.replace(/^SHA-256=/, ""), "base64url").toString("hex");
}

/**
 * One stream of one attempt. Yields its pieces in order; returns the final
 * size and digest when the object is complete, undefined when there is no
 * (complete) object — the caller falls back to the inline text.
 */
async function* readStream(
  name: string,
  follow: boolean,
  attemptOver: () => boolean,
  cancelled: () => boolean,
): AsyncGenerator<Piece, { total: number; sha256: string } | undefined> {
  const { js, os } = await objects();
  const complete = async () => {
    const info = await os.info(name);
    return info && !info.deleted && info.digest.startsWith("SHA-256=") ? info : undefined;
  };
  const done = await complete();
  if (done) {
    const got = await os.get(name);
    if (!got) return undefined;
    let offset = 0;
    const reader = got.data.getReader();
    for (;;) {
      const { done: end, value } = await reader.read();
      if (end || cancelled()) break;
      if (value.length > 0) {
        yield { offset, data: value };
        offset += value.length;
      }
    }
    return { total: done.size, sha256: hexDigest(done.digest) };
  }
  const id = liveChunkId(name);
  const consumer = await js.consumers.getPushConsumer(`OBJ_${OUTPUTS_BUCKET}`, {
    filter_subjects: `$O.${OUTPUTS_BUCKET}.C.${id}`,
  });
  const messages = await consumer.consume();
  const it = messages[Symbol.asyncIterator]();
  let offset = 0;
  let pending: Promise<IteratorResult<{ data: Uint8Array; info: { pending: number } }>> | undefined;
  let overSince = 0;
  try {
    for (;;) {
      if (cancelled()) return undefined;
      pending ??= it.next();
      const next = await Promise.race([pending, sleep(POLL_MS).then(() => undefined)]);
      if (next) {
        pending = undefined;
        if (next.done) return undefined;
        if (next.value.data.length > 0) {
          yield { offset, data: next.value.data };
          offset += next.value.data.length;
        }
        // Without follow: what is stored now, then stop.
        if (!follow && next.value.info.pending === 0) return undefined;
        continue;
      }
      const info = await complete();
      if (info && info.nuid === id && offset >= info.size) return { total: info.size, sha256: hexDigest(info.digest) };
      if (info && info.nuid !== id) {
        // Replaced by a copy written some other way: replay that instead, from where we are.
        let skipped = 0;
        for await (const piece of readStream(name, false, attemptOver, cancelled)) {
          const end = skipped + piece.data.length;
          if (end > offset) yield { offset: Math.max(offset, skipped), data: piece.data.subarray(Math.max(0, offset - skipped)) };
          skipped = end;
        }
        return { total: info.size, sha256: hexDigest(info.digest) };
      }
      if (!follow && offset === 0) return undefined;
      if (attemptOver()) {
        overSince ||= Date.now();
        if (Date.now() - overSince > NO_OBJECT_GRACE_MS) return undefined;
      }
    }
  } finally {
    messages.stop();
  }
}

function inlineOf(result: AttemptResult | undefined, stream: StreamName) {
  return stream === "stdout" ? result?.stdout : result?.stderr;
}

export function outputStreamHandlers(
  jobs: JobManager,
): Pick<AsyncService<JobServiceServer>, "streamJobOutput" | "listAuditRecords"> {
  return {
    streamJobOutput: async (req, call) => {
      if (!req.jobId) throw new InvalidArgumentError("job_id", "required");
      const wanted = req.streams.length > 0 ? req.streams : [...STREAMS];
      for (const s of wanted) {
        if (!STREAMS.includes(s as StreamName))
          throw new InvalidArgumentError("streams", `${JSON.stringify(s)} is not stdout or stderr`);
      }
      let job: Job = await jobs.get(req.jobId);
      let cancelled = false;
      call.on("cancelled", () => (cancelled = true));
      const unsubscribe = jobs.subscribe(req.jobId, (j) => (job = j));
      try {
        if (req.attempt > job.attempt && !req.follow)
          throw new InvalidArgumentError("attempt", `job ${job.id} has had ${job.attempt} attempt(s)`);
        // Follow a job that has not been placed yet: wait for its first attempt (or its end).
        while (req.follow && !cancelled && job.attempt < Math.max(1, req.attempt) && !isTerminal(job.state)) await sleep(POLL_MS);
        const attempt = req.attempt || job.attempt;
        if (attempt === 0) return;
        const attemptOver = () => job.attempt > attempt || (job.attempt === attempt && isTerminal(job.state));
        const write = async (chunk: OutputChunk) => {
          if (!call.write(chunk)) await new Promise((r) => call.once("drain", r));
        };
        await Promise.all(
          wanted.map(async (stream) => {
            const name = `${req.jobId}/${attempt}/${stream}`;
            const gen = readStream(name, req.follow, attemptOver, () => cancelled);
            let sent = 0;
            for (;;) {
              const next = await gen.next();
              if (next.done) {
                const final = next.value;
                if (final) {
                  await write({
                    attempt,
                    stream,
                    offset: final.total,
                    data: Buffer.alloc(0),
                    eof: true,
                    totalBytes: final.total,
                    sha256: final.sha256,
                    inlineOnly: false,
                  });
                } else if (sent === 0 && attemptOver()) {
                  const inline = job.attempt === attempt ? inlineOf(job.result, stream as StreamName) : undefined;
                  if (inline) {
                    await write({
                      attempt,
                      stream,
                      offset: 0,
                      data: Buffer.from(inline.text),
                      eof: true,
                      totalBytes: inline.totalBytes,
                      sha256: inline.sha256,
                      inlineOnly: true,
                    });
                  }
                }
                return;
              }
              await write({
                attempt,
                stream,
                offset: next.value.offset,
                data: Buffer.from(next.value.data.buffer, next.value.data.byteOffset, next.value.data.length),
                eof: false,
                totalBytes: 0,
                sha256: "",
                inlineOnly: false,
              });
              sent += next.value.data.length;
            }
          }),
        );
      } finally {
        unsubscribe();
      }
    },

    listAuditRecords: async (req): Promise<ListAuditRecordsResponse> => {
      if (req.limit > MAX_AUDIT_RECORDS) throw new InvalidArgumentError("limit", `must be at most ${MAX_AUDIT_RECORDS}`);
      const limit = req.limit || 100;
      if (!nats) throw new UnavailableError("audit reading is not configured");
      const jsm = await jetstreamManager(nats.nc);
      const info = await jsm.streams.info(AUDIT_STREAM).catch(() => undefined);
      if (!info || info.state.messages === 0) return { records: [] };
      const consumer = await nats.js.consumers.getPushConsumer(AUDIT_STREAM, {
        filter_subjects: req.jobId ? `aspen.audit.${req.jobId}` : "aspen.audit.>",
      });
      const messages = await consumer.consume();
      const newest: AuditRecord[] = [];
      try {
        const it = messages[Symbol.asyncIterator]();
        for (;;) {
          // No matching message at all: the consumer stays silent, so bound the wait.
          const next = await Promise.race([it.next(), sleep(1_000).then(() => undefined)]);
          if (!next || next.done) break;
          const record = AuditRecord.decode(next.value.data);
          record.sequence = next.value.seq;
          if (!req.workerId || record.workerId === req.workerId) {
            newest.push(record);
            if (newest.length > limit) newest.shift();
          }
          if (next.value.info.pending === 0) break;
        }
      } finally {
        messages.stop();
      }
      return { records: newest.reverse() };
    },
  };
}
