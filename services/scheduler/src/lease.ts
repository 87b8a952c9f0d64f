/**
 * The firing lease: one record in KV that says which scheduler replica fires.
 * Every write is create-if-absent or compare-and-set on the record's
 * revision (NATS 2.9 ignores per-key TTL, so expiry is not the server's job):
 *   - the holder renews it every ttl/4, bumping `renewed_at`;
 *   - a standby that sees the same revision for a whole `ttl` on its own
 *     monotonic clock takes it over by CAS, with token + 1 (the fencing
 *     token); clock skew between replicas plays no part;
 *   - a holder that has not renewed successfully for ttl/2 steps down by
 *     itself, before any standby can take over (at ttl at the earliest);
 *   - close() releases it (holder "") so a standby takes over at once.
 */
import { performance } from "node:perf_hooks";
import { SchedulerLease } from "@aspen/proto";
import { AlreadyExistsError, ConflictError, msToDuration, type Logger } from "@aspen/runtime";
import type { Bucket } from "@aspen/store";

export const LEASE_KEY = "firing";

export interface LeaseOptions {
  bucket: Bucket<SchedulerLease>;
  replicaId: string;
  ttlMs: number;
  log: Logger;
  /** Called when this replica becomes the holder, with the new fencing token. */
  onAcquire: (token: number) => void;
  /** Called when this replica stops holding it (lost, stepped down, closing). */
  onLose: () => void;
  clock?: () => number;
}

export class Lease {
  private token = 0;
  private leading = false;
  private lastRenewOk = 0;
  private observed: { revision: number; since: number } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  private running: Promise<void> = Promise.resolve();
  private current: SchedulerLease | undefined;

  constructor(private readonly options: LeaseOptions) {}

  get isLeader(): boolean {
    return this.leading;
  }

  get fencingToken(): number {
    return this.token;
  }

  /** The lease as last read, for GetLeader. */
  view(): SchedulerLease {
    return SchedulerLease.fromPartial({
      ...this.current,
      ttl: msToDuration(this.options.ttlMs),
      replica: this.options.replicaId,
      isLeader: this.leading,
    });
  }

  start(): void {
    this.loop();
  }

  private loop(): void {
    if (this.closing) return;
    this.running = this.tick().catch((err: unknown) =>
      this.options.log.warn({ err: (err as Error).message }, "lease check failed"),
    );
    void this.running.finally(() => {
      if (this.closing) return;
      this.timer = setTimeout(() => this.loop(), Math.max(50, Math.floor(this.options.ttlMs / 4)));
      this.timer.unref();
    });
  }

  private now(): number {
    return (this.options.clock ?? Date.now)();
  }

  private async tick(): Promise<void> {
    const { bucket, replicaId, ttlMs, log } = this.options;
    const mono = performance.now();
    if (this.leading && mono - this.lastRenewOk > ttlMs / 2) {
      log.warn({ token: this.token }, "lease not renewed for ttl/2: stepping down");
      this.lose();
    }
    const entry = await bucket.get(LEASE_KEY);
    this.current = entry?.value;
    const mine = (token: number) =>
      SchedulerLease.fromPartial({ holder: replicaId, token, renewedAt: new Date(this.now()), ttl: msToDuration(ttlMs) });
    if (!entry) {
      try {
        await bucket.create(LEASE_KEY, mine(1));
        this.acquire(1);
      } catch (err) {
        if (!(err instanceof AlreadyExistsError)) throw err;
      }
      return;
    }
    const lease = entry.value;
    if (this.leading && lease.holder === replicaId && lease.token === this.token) {
      try {
        await bucket.update(LEASE_KEY, mine(this.token), entry.revision);
        this.lastRenewOk = mono;
        this.current = mine(this.token);
      } catch (err) {
        if (err instanceof ConflictError) this.lose();
        else throw err;
      }
      return;
    }
    if (this.leading) {
      log.warn({ holder: lease.holder, token: lease.token }, "lease taken by another replica");
      this.lose();
    }
    if (!this.observed || this.observed.revision !== entry.revision) this.observed = { revision: entry.revision, since: mono };
    const silentFor = mono - this.observed.since;
    if (lease.holder !== "" && silentFor < ttlMs) return;
    try {
      const token = lease.token + 1;
      await bucket.update(LEASE_KEY, mine(token), entry.revision);
      log.info(
        { previous: lease.holder, token, silentMs: Math.round(silentFor) },
        lease.holder ? "lease taken over from a silent holder" : "lease acquired",
      );
      this.lastRenewOk = mono;
      this.current = mine(token);
      this.acquire(token);
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err;
    }
  }

  private acquire(token: number): void {
    this.token = token;
    this.leading = true;
    this.lastRenewOk = performance.now();
    this.options.log.info({ token }, "leading: this replica fires");
    this.options.onAcquire(token);
  }

  private lose(): void {
    if (!this.leading) return;
    this.leading = false;
    this.options.log.warn({ token: this.token }, "no longer leading: firing stopped");
    this.options.onLose();
  }

  /** Stops, and releases the lease when held so that a standby takes over at once. Safe to call twice. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.timer);
      await this.running;
      if (!this.leading) return;
      const token = this.token;
      this.lose();
      const entry = await this.options.bucket.get(LEASE_KEY).catch(() => undefined);
      if (entry && entry.value.holder === this.options.replicaId && entry.value.token === token) {
        await this.options.bucket
          .update(LEASE_KEY, { ...entry.value, holder: "", renewedAt: new Date(this.now()) }, entry.revision)
          .catch(() => undefined);
      }
    })();
    return this.closing;
  }
}
