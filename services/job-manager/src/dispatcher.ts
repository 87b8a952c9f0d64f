/**
 * Feeds queued jobs to the coordinator, highest priority first and in
 * submission order inside a class, with up to `concurrency` placements in
 * flight.
 *
 * Saturation: when a placement finds no free slot, the job goes back to its
 * place and dispatch is throttled — from then on one placement is allowed per
 * freed slot (a job finished), so a full cluster is not asked again and again.
 * `retryDelayMs` after throttling began, dispatch opens fully again once (a
 * new worker may have joined). A job no live worker matches is parked and
 * retried every `retryDelayMs`. Event-driven: no polling while idle.
 *
 * Direct placement: a job just submitted may skip the queue (`claimDirect`)
 * when that passes nobody — nothing waiting, not throttled, a placement slot
 * free — so its record can be created already reserved for attempt 1.
 */
import type { Priority } from "@aspen/proto";
import { PriorityQueue, type QueueEntry } from "./priority-queue.js";

export type DispatchOutcome =
  | "placed" // sent to a worker
  | "gone" // no longer queued (cancelled, already placed)
  | "no-capacity" // matching workers exist but are full
  | "no-match" // no live worker matches its selector
  | "unavailable"; // the coordinator could not be reached

export class Dispatcher {
  private readonly queue: PriorityQueue;
  /** Every id this dispatcher holds (queued, in flight or parked), with its place in line. */
  private readonly entries = new Map<string, QueueEntry>();
  private readonly parked = new Set<string>();
  private nextSeq = 0;
  private inFlight = 0;
  /** Placements allowed while throttled; Infinity when not throttled. */
  private credits = Infinity;
  private closed = false;
  private openTimer: NodeJS.Timeout | undefined;
  private parkedTimer: NodeJS.Timeout | undefined;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly dispatchOne: (id: string) => Promise<DispatchOutcome>,
    private readonly options: { concurrency: number; retryDelayMs: number; agingMs?: number; now?: () => number },
  ) {
    this.queue = new PriorityQueue(options.agingMs, options.now);
  }

  /** Jobs waiting for a worker (queued or parked, not in flight). */
  get depth(): number {
    return this.queue.size + this.parked.size;
  }

  /** Queued jobs per priority class (not counting those in flight or parked). */
  depths(): Array<{ priority: Priority; depth: number }> {
    return this.queue.depths();
  }

  /** Queues `id` unless it is already held. `queuedAtMs` (default now) is where aging counts from. */
  enqueue(id: string, priority: Priority, queuedAtMs: number = (this.options.now ?? Date.now)()): void {
    if (this.closed || this.entries.has(id)) return;
    const entry = { id, priority, seq: this.nextSeq++, queuedAtMs };
    this.entries.set(id, entry);
    this.queue.push(entry);
    this.pump();
  }

  /** A slot was freed somewhere: while throttled, that allows one more placement. */
  capacityFreed(): void {
    if (this.credits === Infinity) return;
    this.credits++;
    this.pump();
  }

  private pump(): void {
    while (!this.closed && this.credits > 0 && this.inFlight < this.options.concurrency) {
      const entry = this.queue.pop();
      if (entry === undefined) break;
      if (this.credits !== Infinity) this.credits--;
      this.inFlight++;
      void this.dispatchOne(entry.id)
        .catch((): DispatchOutcome => "unavailable")
        .then((outcome) => this.settle(entry, outcome))
        .finally(() => {
          this.inFlight--;
          this.pump();
          if (this.inFlight === 0) this.idleWaiters.splice(0).forEach((w) => w());
        });
    }
  }

  /**
   * Takes a placement slot for a job that was never queued, when placing it now
   * passes no waiting job. The caller must call `settleDirect` with the outcome.
   */
  claimDirect(): boolean {
    if (this.closed || this.queue.size > 0 || this.credits !== Infinity || this.inFlight >= this.options.concurrency)
      return false;
    this.inFlight++;
    return true;
  }

  /** Ends a `claimDirect` placement. A job put back is queued by its owner (`enqueue`), not here. */
  settleDirect(outcome: DispatchOutcome): void {
    this.inFlight--;
    if (outcome === "no-capacity" || outcome === "unavailable") this.throttle();
    this.pump();
    if (this.inFlight === 0) this.idleWaiters.splice(0).forEach((w) => w());
  }

  private settle(entry: QueueEntry, outcome: DispatchOutcome): void {
    switch (outcome) {
      case "placed":
      case "gone":
        this.entries.delete(entry.id);
        return;
      case "no-capacity":
      case "unavailable":
        this.queue.push(entry);
        this.throttle();
        return;
      case "no-match":
        this.parked.add(entry.id);
        this.armParkedRetry();
        return;
    }
  }

  private throttle(): void {
    if (this.credits !== Infinity || this.closed) return;
    this.credits = 0;
    this.openTimer = setTimeout(() => {
      this.credits = Infinity;
      this.pump();
    }, this.options.retryDelayMs);
    this.openTimer.unref();
  }

  private armParkedRetry(): void {
    if (this.parkedTimer || this.closed) return;
    this.parkedTimer = setTimeout(() => {
      this.parkedTimer = undefined;
      for (const id of this.parked) {
        const entry = this.entries.get(id);
        if (entry) this.queue.push(entry);
      }
      this.parked.clear();
      this.pump();
    }, this.options.retryDelayMs);
    this.parkedTimer.unref();
  }

  /** Stops dispatching and waits for placements in flight. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.openTimer);
    clearTimeout(this.parkedTimer);
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}
