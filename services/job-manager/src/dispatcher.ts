/**
 * Feeds queued jobs to the coordinator, highest priority first, with up to
 * `concurrency` placements in flight. When placement reports no free slot the
 * job keeps its turn and dispatch pauses until capacity is freed (a job
 * finished) or `retryDelayMs` passes; a job no live worker matches is parked
 * and retried every `retryDelayMs`. Event-driven: no polling while idle.
 */
import type { Priority } from "@aspen/proto";
import { PriorityQueue } from "./priority-queue.js";

export type DispatchOutcome =
  | "placed" // sent to a worker
  | "gone" // no longer queued (cancelled, already placed)
  | "no-capacity" // matching workers exist but are full
  | "no-match" // no live worker matches its selector
  | "unavailable"; // the coordinator could not be reached

export class Dispatcher {
  private readonly queue = new PriorityQueue();
  private readonly parked = new Map<string, Priority>();
  /** Class of every queued or parked id, so a job put back keeps it. */
  private readonly priorities = new Map<string, Priority>();
  private readonly queued = new Set<string>();
  private inFlight = 0;
  private paused = false;
  private closed = false;
  private resumeTimer: NodeJS.Timeout | undefined;
  private parkedTimer: NodeJS.Timeout | undefined;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly dispatchOne: (id: string) => Promise<DispatchOutcome>,
    private readonly options: { concurrency: number; retryDelayMs: number },
  ) {}

  get depth(): number {
    return this.queue.size + this.parked.size;
  }

  enqueue(id: string, priority: Priority): void {
    if (this.closed || this.queued.has(id)) return;
    this.queued.add(id);
    this.priorities.set(id, priority);
    this.queue.push(id, priority);
    this.pump();
  }

  /** A slot was freed somewhere: resume a paused dispatch now. */
  capacityFreed(): void {
    if (!this.paused) return;
    this.paused = false;
    clearTimeout(this.resumeTimer);
    this.pump();
  }

  private pump(): void {
    while (!this.closed && !this.paused && this.inFlight < this.options.concurrency) {
      const id = this.queue.pop();
      if (id === undefined) break;
      this.inFlight++;
      const priority = this.priorityOf(id);
      void this.dispatchOne(id)
        .catch((): DispatchOutcome => "unavailable")
        .then((outcome) => this.settle(id, priority, outcome))
        .finally(() => {
          this.inFlight--;
          this.pump();
          if (this.inFlight === 0) this.idleWaiters.splice(0).forEach((w) => w());
        });
    }
  }

  private priorityOf(id: string): Priority {
    return this.priorities.get(id) ?? (0 as Priority);
  }

  private settle(id: string, priority: Priority, outcome: DispatchOutcome): void {
    switch (outcome) {
      case "placed":
      case "gone":
        this.queued.delete(id);
        this.priorities.delete(id);
        return;
      case "no-capacity":
      case "unavailable":
        this.queue.pushFront(id, priority);
        this.pauseUntilCapacity();
        return;
      case "no-match":
        this.queued.delete(id);
        this.parked.set(id, priority);
        this.armParkedRetry();
        return;
    }
  }

  private pauseUntilCapacity(): void {
    if (this.paused || this.closed) return;
    this.paused = true;
    this.resumeTimer = setTimeout(() => this.capacityFreed(), this.options.retryDelayMs);
    this.resumeTimer.unref();
  }

  private armParkedRetry(): void {
    if (this.parkedTimer || this.closed) return;
    this.parkedTimer = setTimeout(() => {
      this.parkedTimer = undefined;
      const parked = [...this.parked];
      this.parked.clear();
      for (const [id, priority] of parked) this.enqueue(id, priority);
    }, this.options.retryDelayMs);
    this.parkedTimer.unref();
  }

  /** Stops dispatching and waits for placements in flight. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.resumeTimer);
    clearTimeout(this.parkedTimer);
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}
