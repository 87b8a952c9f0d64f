/**
 * Typed access to NATS JetStream: KV buckets of protobuf records where every
 * write is create-if-absent or a compare-and-set on the key's revision, and
 * the object store for large outputs. Services build their domain stores
 * (ScheduleStore, JobStore...) on these; nothing else talks to NATS.
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import { AckedPublisher } from "./publisher.js";
import { AlreadyExistsError, ConflictError, FailedPreconditionError, UnavailableError, type Logger } from "@aspen/runtime";

/** ts-proto message functions: all a bucket needs to store a record type. */
export interface Codec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(bytes: Uint8Array): T;
}

export interface Versioned<T> {
  key: string;
  value: T;
  /** KV revision of this value: pass it to `update` to compare-and-set. */
  revision: number;
}

export interface StoreOptions {
  /** NATS server URLs, e.g. ["nats://127.0.0.1:4222"]. */
  servers: string[];
  /** Connection name shown by the NATS server (the service name). */
  name: string;
  /**
   * Replicas of every bucket this process opens. Default 1. A bucket that is
   * missing is created with this many; one that exists with another count is
   * refused with a ReplicaMismatchError (never silently used at a lower
   * durability than configured). 3 in a 3-node cluster.
   */
  replicas?: number;
  /**
   * NATS credentials. Default: ASPEN_NATS_USER / ASPEN_NATS_PASSWORD from the
   * environment, else none. Each service has its own user, allowed only the
   * buckets and streams it owns (scripts/nats-auth.mjs, docs/security.md).
   */
  user?: string;
  password?: string;
  log: Logger;
}

/** JetStream's "wrong last sequence": the key exists (create) or moved on (update). */
const WRONG_LAST_SEQUENCE = 10071;

function isWrongLastSequence(err: unknown): boolean {
  const e = err as { code?: unknown; errCode?: unknown; api_error?: { err_code?: unknown }; message?: unknown };
  return (
    e?.code === WRONG_LAST_SEQUENCE ||
    e?.errCode === WRONG_LAST_SEQUENCE ||
    e?.api_error?.err_code === WRONG_LAST_SEQUENCE ||
    (typeof e?.message === "string" && e.message.includes("wrong last sequence"))
  );
}

/**
 * An existing bucket's replica count is not the configured one. Raised on
 * start, so a service configured for R3 never runs on an R1 bucket left over
 * from a single-node setup (or the reverse). Change the bucket with
 * `nats stream edit KV_<bucket> --replicas N` (see docs/operations.md) or
 * the configuration, then start again.
 */
export class ReplicaMismatchError extends FailedPreconditionError {
  constructor(
    readonly bucket: string,
    readonly configured: number,
    readonly actual: number,
  ) {
    super(
      `bucket ${JSON.stringify(bucket)} has ${actual} replica${actual === 1 ? "" : "s"} but ASPEN_BUCKET_REPLICAS is ${configured}: ` +
        `refusing to run at a durability other than configured (change the bucket's replicas, or the setting, to match)`,
    );
    this.name = "ReplicaMismatchError";
  }
}

/**
 * A value, not a delete or purge marker. Markers have no payload, and our records always
 * encode to some bytes, so only an empty one needs its headers parsed (nats.js parses them
 * for `operation`: a tenth of reading 100,000 schedules at start).
 */
function isPut(entry: KvEntry): boolean {
  return entry.value.length > 0 || entry.operation === "PUT";
}

/** What nats.js accepts as a KV key (its validateKey): writes bypass its KV client, so the check is ours. */
const VALID_KEY = /^[-/=.\w]+$/;
const validKey = (key: string): boolean => !key.startsWith(".") && !key.endsWith(".") && VALID_KEY.test(key);

export class Bucket<T> {
  constructor(
    readonly name: string,
    private readonly kv: KV,
    private readonly codec: Codec<T>,
    private readonly publisher: AckedPublisher,
    private readonly log?: Logger,
  ) {}

  /** When writes last could not get through (see AckedPublisher.troubleAtMs). */
  troubleAtMs(now?: number): number {
    return this.publisher.troubleAtMs(now);
  }

  /** Writes the key if its last revision is `expected` (0: none), as nats.js's KV put with previousSeq. */
  private put(key: string, value: T, expected: number): Promise<number> {
    if (!validKey(key)) {
      return Promise.reject(new Error(`invalid key for bucket ${this.name}: ${JSON.stringify(key)}`));
    }
    return this.publisher.publish(`$KV.${this.name}.${key}`, this.codec.encode(value).finish(), expected);
  }

  async get(key: string): Promise<Versioned<T> | undefined> {
    const entry = await this.kv.get(key);
    if (!entry || entry.operation !== "PUT") return undefined;
    return { key, value: this.codec.decode(entry.value), revision: entry.revision };
  }

  /** Create-if-absent. Throws AlreadyExistsError when the key holds a value. */
  async create(key: string, value: T): Promise<number> {
    try {
      return await this.put(key, value, 0);
    } catch (err) {
      if (!isWrongLastSequence(err)) throw err;
    }
    // The key has history: a deleted key's tombstone may be replaced, a value may not.
    const entry = await this.kv.get(key);
    if (entry && entry.operation !== "PUT") {
      try {
        return await this.put(key, value, entry.revision);
      } catch (err) {
        if (!isWrongLastSequence(err)) throw err;
      }
    }
    throw new AlreadyExistsError(this.name, key);
  }

  /** Compare-and-set. Throws ConflictError when the key moved past `revision`. */
  async update(key: string, value: T, revision: number): Promise<number> {
    try {
      return await this.put(key, value, revision);
    } catch (err) {
      if (isWrongLastSequence(err))
        throw new ConflictError(`${this.name}/${key} changed since revision ${revision}`, { cause: err });
      throw err;
    }
  }

  /**
   * Read-modify-CAS until it sticks. `change` gets the current value and
   * returns the new one, or undefined to leave it (and return the current).
   * It may run more than once, so it must not have side effects.
   */
  async mutate(key: string, change: (current: T) => T | undefined, maxTries = 20): Promise<Versioned<T> | undefined> {
    for (let tries = 0; tries < maxTries; tries++) {
      const current = await this.get(key);
      if (!current) return undefined;
      const next = change(current.value);
      if (next === undefined) return current;
      try {
        const revision = await this.update(key, next, current.revision);
        return { key, value: next, revision };
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
    throw new ConflictError(`${this.name}/${key}: gave up after ${maxTries} conflicting updates`);
  }

  /**
   * Writes `value` whatever is there, still by create-if-absent or CAS, for
   * records with a single writer (a worker's registry entry).
   */
  async upsert(key: string, value: T, maxTries = 10): Promise<number> {
    for (let tries = 0; tries < maxTries; tries++) {
      const entry = await this.kv.get(key);
      try {
        if (!entry || entry.operation !== "PUT") {
          // A deleted key has a tombstone: CAS on its revision; an absent one is created.
          return entry ? await this.update(key, value, entry.revision) : await this.create(key, value);
        }
        return await this.update(key, value, entry.revision);
      } catch (err) {
        if (!(err instanceof ConflictError) && !(err instanceof AlreadyExistsError)) throw err;
      }
    }
    throw new ConflictError(`${this.name}/${key}: gave up after ${maxTries} conflicting writes`);
  }

  /** Deletes the key; with `revision`, only if it has not moved on. */
  async delete(key: string, revision?: number): Promise<void> {
    if (!validKey(key)) throw new Error(`invalid key for bucket ${this.name}: ${JSON.stringify(key)}`);
    try {
      // A delete marker, as nats.js writes one, through the same publisher as every other write
      // of this process, so it cannot overtake an update made before it.
      await this.publisher.publish(`$KV.${this.name}.${key}`, new Uint8Array(), revision, { "KV-Operation": "DEL" });
    } catch (err) {
      if (isWrongLastSequence(err))
        throw new ConflictError(`${this.name}/${key} changed since revision ${revision}`, { cause: err });
      throw err;
    }
  }

  /** Every live record, read in one pass over the bucket (for rebuilding state on start). */
  async all(): Promise<Versioned<T>[]> {
    const status = await this.kv.status();
    if (status.values === 0) return [];
    const out = new Map<string, Versioned<T>>();
    const watch = await this.kv.watch();
    try {
      for await (const entry of watch) {
        if (isPut(entry)) {
          out.set(entry.key, { key: entry.key, value: this.codec.decode(entry.value), revision: entry.revision });
        } else {
          out.delete(entry.key);
        }
        if (entry.delta === 0 || entry.isUpdate) break;
      }
    } finally {
      watch.stop();
    }
    return [...out.values()];
  }

  /**
   * Calls `onChange` for every change after now (value undefined on delete) until the returned stop().
   * `known(key, revision)` true skips a PUT before it is decoded (e.g. the echo of our own write).
   */
  async watch(
    key: string,
    onChange: (key: string, value: Versioned<T> | undefined) => void,
    known?: (key: string, revision: number) => boolean,
  ): Promise<() => void> {
    // nats.js's ordered consumer follows through reconnects and NATS restarts (watch.test.ts).
    const watch = await this.kv.watch({ key, include: "updates" });
    let stopped = false;
    void (async () => {
      for await (const entry of watch) {
        const put = isPut(entry);
        if (known && put && known(entry.key, entry.revision)) continue;
        try {
          onChange(
            entry.key,
            put ? { key: entry.key, value: this.codec.decode(entry.value), revision: entry.revision } : undefined,
          );
        } catch (err) {
          // One record that cannot be handled (e.g. not decodable) must not end the following.
          this.log?.error({ bucket: this.name, key: entry.key, err: (err as Error).message }, "watched change not applied");
        }
      }
    })()
      .catch((err: unknown) => this.log?.error({ bucket: this.name, err: (err as Error).message }, "watch failed"))
      .finally(() => {
        if (!stopped) this.log?.error({ bucket: this.name }, "watch ended: this replica no longer follows the bucket");
      });
    return () => {
      stopped = true;
      watch.stop();
    };
  }
}

/** Large blobs (job outputs) in a JetStream object store. */
export class ObjectBucket {
  constructor(
    readonly name: string,
    private readonly os: ObjectStore,
  ) {}

  /** Stores `data` under `name`; returns its size and hex SHA-256. */
  async put(name: string, data: Uint8Array): Promise<{ size: number; sha256: string }> {
    const info = await this.os.putBlob({ name }, data);
    return { size: info.size, sha256: digestToHex(info.digest) };
  }

  async get(name: string): Promise<Uint8Array | undefined> {
    return (await this.os.getBlob(name)) ?? undefined;
  }

  async delete(name: string): Promise<void> {
    await this.os.delete(name);
  }
}

/** "SHA-256=<base64url>" (the object store's digest) → lowercase hex. */
function digestToHex(digest: string): string {
  const b64 = digest.replace(/^SHA-256=/, "");
  return Buffer.from(b64, "base64url").toString("hex");
}

/** JetStream answers that pass once the cluster has settled (just started, electing a leader). */
const SETTLING = /no suitable peers|temporarily unavailable|timeout|no responders|jetstream not (enabled|ready)/i;

/**
 * Runs `open` (creating or opening a bucket or stream), retrying for up to
 * `waitMs` while JetStream is still settling: a cluster that answers health
 * checks may not yet know enough peers to place an R3 stream ("no suitable
 * peers for placement"). Anything else fails at once.
 */
export async function whileJetStreamSettles<T>(what: string, open: () => Promise<T>, log: Logger, waitMs = 60_000): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (let delayMs = 250; ; delayMs = Math.min(delayMs * 2, 2_000)) {
    try {
      return await open();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (!SETTLING.test(message) || Date.now() + delayMs > deadline) throw err;
      log.warn({ what, err: message, retryInMs: delayMs }, "JetStream not ready yet; retrying");
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
}

export class Store {
  private closing: Promise<void> | undefined;
  private ackedPublisher: AckedPublisher | undefined;

  private constructor(
    readonly nc: NatsConnection,
    private readonly options: StoreOptions,
  ) {}

  /** Connects, retrying for up to `waitMs` so services can start before NATS is up. */
  static async connect(options: StoreOptions, waitMs = 30_000): Promise<Store> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      try {
        const user = options.user ?? process.env.ASPEN_NATS_USER;
        const nc = await connect({
          servers: options.servers,
          name: options.name,
          ...(user ? { user, pass: options.password ?? process.env.ASPEN_NATS_PASSWORD ?? "" } : {}),
          maxReconnectAttempts: -1,
          reconnectTimeWait: 500,
          // No Error (with its stack) captured up front for every request: that was
          // ~3.5 % of the job-manager's CPU; our logs say which call failed.
          noAsyncTraces: true,
        });
        const store = new Store(nc, options);
        void (async () => {
          for await (const s of nc.status()) {
            options.log.info({ nats: s.type }, "nats connection status");
            store.publisher.noteConnection(s.type);
          }
        })();
        return store;
      } catch (err) {
        if (Date.now() > deadline)
          throw new UnavailableError(`cannot reach NATS at ${options.servers.join(",")}`, { cause: err });
        options.log.warn({ err: (err as Error).message }, "NATS not reachable yet; retrying");
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** JetStream writes of this process (every bucket, the audit logs): one reply subscription, one socket write per turn. */
  get publisher(): AckedPublisher {
    this.ackedPublisher ??= new AckedPublisher(this.nc);
    return this.ackedPublisher;
  }

  /** Replicas every bucket of this store must have. */
  get replicas(): number {
    return this.options.replicas ?? 1;
  }

  /**
   * Opens a KV bucket, creating it when missing. `history` keeps old revisions (default 1).
   * Throws ReplicaMismatchError when it exists with another replica count.
   */
  async bucket<T>(name: string, codec: Codec<T>, opts: { history?: number } = {}): Promise<Bucket<T>> {
    const kv = await whileJetStreamSettles(
      `bucket ${name}`,
      () => new Kvm(this.nc).create(name, { history: opts.history ?? 1, replicas: this.replicas }),
      this.options.log,
    );
    this.checkReplicas(name, (await kv.status()).replicas);
    return new Bucket(name, kv, codec, this.publisher, this.options.log);
  }

  /** Opens an object store bucket, creating it when missing; checks its replicas like `bucket`. */
  async objects(name: string): Promise<ObjectBucket> {
    const os = await whileJetStreamSettles(
      `object store ${name}`,
      () => new Objm(this.nc).create(name, { replicas: this.replicas }),
      this.options.log,
    );
    this.checkReplicas(name, (await os.status()).replicas);
    return new ObjectBucket(name, os);
  }

  private checkReplicas(name: string, actual: number): void {
    // Kvm/Objm.create returns an existing bucket as it is: compare, never downgrade silently.
    if (actual !== this.replicas) throw new ReplicaMismatchError(name, this.replicas, actual);
  }

  /** Flushes pending writes and closes. Safe to call twice. */
  close(): Promise<void> {
    // Drained first: writes handed over are flushed to the server. An ack that arrives after
    // the reply subscription was drained is not heard, and that write is reported failed.
    this.closing ??= (this.nc.isClosed() ? Promise.resolve() : this.nc.drain().catch(() => undefined)).then(() =>
      this.ackedPublisher?.close(),
    );
    return this.closing;
  }
}
