/**
 * Full job output into the JetStream object store, streamed as it is
 * produced with bounded memory. It writes the object store's own wire format
 * (chunks on `$O.<bucket>.C.<id>`, then the metadata on `$O.<bucket>.M.<name>`
 * with a subject rollup), so any nats.js `ObjectStore.get` reads the result,
 * with two differences from the library's `put`:
 *  - the chunk id is derived from the object name (`liveChunkId`, same as the
 *    job-manager's StreamJobOutput), so followers read a running attempt's
 *    chunks before the object is complete;
 *  - partial chunks are flushed after `flushMs` of quiet, so a follower sees
 *    a slow job's lines within that time, and several chunk publishes are in
 *    flight at once (throughput), never more than `maxInFlight`.
 * The writer pauses its producer (`write` returns false, then `drain`) while
 * more than `highWaterBytes` wait, so a fast job is slowed to NATS speed
 * instead of growing the agent's memory.
 */
import { createHash, type Hash } from "node:crypto";
import { EventEmitter } from "node:events";
import { headers, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type PubAck } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";

export const OUTPUTS_BUCKET = "aspen_outputs";

/** Same derivation as services/job-manager/src/output-stream.ts. */
export function liveChunkId(objectName: string): string {
  return `aspen${createHash("sha256").update(objectName).digest("hex").slice(0, 40)}`;
}

export interface OutputStoreOptions {
  bucket?: string;
  /** Replicas when this call creates the bucket (an existing one is left as it is). Default 1. */
  replicas?: number;
  /** Bytes per chunk message. Default 512 KiB (at most the server's max_payload). */
  chunkBytes?: number;
  /** Publish a partial chunk after this long without more output, ms. */
  flushMs?: number;
  /** Bytes waiting or in flight above which the producer is paused (resumed at half). Default 4 MiB. */
  highWaterBytes?: number;
  /** Chunk publishes awaiting their ack at once. Default 8. */
  maxInFlight?: number;
}

/** Opens the outputs bucket (creating it like the job-manager does) and makes writers. */
export class OutputStore {
  readonly bucket: string;
  private constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly options: Required<OutputStoreOptions>,
  ) {
    this.bucket = options.bucket;
  }

  static async open(nc: NatsConnection, options: OutputStoreOptions = {}): Promise<OutputStore> {
    const o: Required<OutputStoreOptions> = {
      bucket: options.bucket ?? OUTPUTS_BUCKET,
      replicas: options.replicas ?? 1,
      // 512 KiB chunks, 8 in flight: 180 MiB/s here against 116 MiB/s with the library's 128 KiB (docs/agent.md).
      chunkBytes: Math.min(options.chunkBytes ?? 512 * 1024, nc.info?.max_payload ?? Infinity),
      flushMs: options.flushMs ?? 200,
      highWaterBytes: options.highWaterBytes ?? 4 * 1024 * 1024,
      maxInFlight: options.maxInFlight ?? 8,
    };
    await new Objm(nc).create(o.bucket, { replicas: o.replicas });
    return new OutputStore(jetstream(nc), await jetstreamManager(nc), o);
  }

  writer(name: string): ObjectWriter {
    return new ObjectWriter(this.js, this.jsm, name, this.options);
  }
}

export interface StoredObject {
  name: string;
  size: number;
  sha256: string;
}

export class ObjectWriter extends EventEmitter {
  private chunkSubjectName: string | undefined;
  private readonly stream: string;
  private readonly waiting: Buffer[] = [];
  private waitingBytes = 0;
  private inFlight: Array<Promise<PubAck>> = [];
  private inFlightBytes = 0;
  private hashState: Hash | undefined;
  private size = 0;
  private chunks = 0;
  private started: Promise<void> | undefined;
  private pump: Promise<void> = Promise.resolve();
  private flushTimer: NodeJS.Timeout | undefined;
  private failure: Error | undefined;
  private paused = false;
  private ending = false;

  constructor(
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    readonly name: string,
    private readonly o: Required<OutputStoreOptions>,
  ) {
    super();
    this.stream = `OBJ_${o.bucket}`;
  }

  // Made on first use: most jobs write nothing to one stream or both.
  private get chunkSubject(): string {
    return (this.chunkSubjectName ??= `$O.${this.o.bucket}.C.${liveChunkId(this.name)}`);
  }

  private get hash(): Hash {
    return (this.hashState ??= createHash("sha256"));
  }

  /** True while the producer is asked to wait. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** The first error the store gave, if any; the writer then drops data. */
  get error(): Error | undefined {
    return this.failure;
  }

  /** Queues bytes; false asks the producer to pause until `drain`. */
  write(data: Buffer): boolean {
    if (this.failure) return true;
    // A previous run of this very attempt (agent crash) may have left chunks under the same id.
    if (!this.started) {
      this.started = this.jsm.streams.purge(this.stream, { filter: this.chunkSubject }).then(() => undefined);
      // Awaited by the pump later; until then a failure must not count as an unhandled rejection.
      this.started.catch(() => undefined);
    }
    this.waiting.push(data);
    this.waitingBytes += data.length;
    this.schedule();
    if (this.waitingBytes + this.inFlightBytes > this.o.highWaterBytes) {
      this.paused = true;
      return false;
    }
    return true;
  }

  private schedule(): void {
    if (this.waitingBytes >= this.o.chunkBytes || this.ending) {
      this.kick();
    } else if (!this.flushTimer && this.waitingBytes > 0) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.kick(true);
      }, this.o.flushMs);
    }
  }

  private kick(partial = false): void {
    this.pump = this.pump.then(() => this.drainQueue(partial)).catch((err: unknown) => this.fail(err as Error));
  }

  private take(limit: number): Buffer {
    const parts: Buffer[] = [];
    let taken = 0;
    while (taken < limit && this.waiting.length > 0) {
      const head = this.waiting[0] as Buffer;
      const room = limit - taken;
      if (head.length <= room) {
        parts.push(head);
        this.waiting.shift();
        taken += head.length;
      } else {
        parts.push(head.subarray(0, room));
        this.waiting[0] = head.subarray(room);
        taken += room;
      }
    }
    this.waitingBytes -= taken;
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, taken);
  }

  private async drainQueue(partial: boolean): Promise<void> {
    await this.started;
    while (!this.failure && (this.waitingBytes >= this.o.chunkBytes || ((partial || this.ending) && this.waitingBytes > 0))) {
      const payload = this.take(this.o.chunkBytes);
      this.hash.update(payload);
      this.size += payload.length;
      this.chunks++;
      this.inFlightBytes += payload.length;
      const ack = this.js.publish(this.chunkSubject, payload).finally(() => {
        this.inFlightBytes -= payload.length;
        this.maybeResume();
      });
      ack.catch(() => undefined);
      this.inFlight.push(ack);
      if (this.inFlight.length >= this.o.maxInFlight) await this.inFlight.shift();
      this.maybeResume();
    }
    this.maybeResume();
  }

  private maybeResume(): void {
    if (this.paused && this.waitingBytes + this.inFlightBytes <= this.o.highWaterBytes / 2) {
      this.paused = false;
      this.emit("drain");
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.waiting.length = 0;
    this.waitingBytes = 0;
    if (this.paused) {
      this.paused = false;
      this.emit("drain");
    }
  }

  /**
   * Flushes what is left and publishes the object's metadata. Resolves to the
   * stored object, or undefined when nothing was written; rejects when the
   * store failed (the chunks are then purged).
   */
  async end(): Promise<StoredObject | undefined> {
    clearTimeout(this.flushTimer);
    this.ending = true;
    if (!this.started) return undefined;
    this.kick();
    await this.pump;
    try {
      if (this.failure) throw this.failure;
      await Promise.all(this.inFlight);
      const digest = this.hash.digest();
      const info = {
        name: this.name,
        description: "",
        options: { max_chunk_size: this.o.chunkBytes },
        bucket: this.o.bucket,
        nuid: liveChunkId(this.name),
        size: this.size,
        chunks: this.chunks,
        mtime: new Date().toISOString(),
        digest: `SHA-256=${padBase64(digest.toString("base64url"))}`,
        deleted: false,
      };
      const h = headers();
      h.set("Nats-Rollup", "sub");
      await this.js.publish(
        `$O.${this.o.bucket}.M.${padBase64(Buffer.from(this.name).toString("base64url"))}`,
        JSON.stringify(info),
        {
          headers: h,
        },
      );
      return { name: this.name, size: this.size, sha256: digest.toString("hex") };
    } catch (err) {
      await this.jsm.streams.purge(this.stream, { filter: this.chunkSubject }).catch(() => undefined);
      throw err;
    }
  }
}

function padBase64(s: string): string {
  return s + "=".repeat((4 - (s.length % 4)) % 4);
}
