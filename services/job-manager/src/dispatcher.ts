/**
 * Feeds queued jobs to the coordinator, highest priority first and in
 * submission order inside a class, with up to `concurrency` placements in
 * flight.
 *
 * Saturation: when a placement finds no free slot, the job goes back to its
 * place and dispatch is throttled — from then on one placement is allowed per
 * freed slot (a job finished), so a full cluster is not asked again and again,
 * and the slots go to the jobs at the head of the line, in rounds (see pump).
 * Every `retryDelayMs` while throttled, the next round carries a probe at its
 * end (a new worker may have joined): when every probe of a round is placed,
 * the next round carries twice as many, until one is refused (the window starts
 * again) or nothing waits (dispatch is open again; also once a slot was freed
 * while nothing waited). Probes ride at the end of a round because a separate
 * burst could hand a slot that frees mid-burst to a lower job while a higher
 * one was just refused.
 *
 * A job no live worker matches is parked with the others of its group (its
 * node selector): every `retryDelayMs` one of them is tried again as a probe,
 * and only when a worker takes it (or the workers are merely full) does the
 * whole group go back in line — 10,000 jobs for a missing capability cost one
 * placement a second, not 10,000.
 * Event-driven: no polling while idle.
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
  /** Parked entries by group, oldest first; and the ids out as a group's probe. */
  private readonly parked = new Map<string, QueueEntry[]>();
  private parkedCount = 0;
  private readonly probes = new Set<string>();
  private nextSeq = 0;
  private inFlight = 0;
  /** Placements allowed while throttled (freed slots); Infinity when not throttled. */
  private credits = Infinity;
  /** Throttled: the next round carries `probeWidth` capacity probes at its end. */
  private probeDue = false;
  private probeWidth = 1;
  /** The capacity probes in flight, and whether one of them was refused. */
  private readonly capacityProbes = new Set<string>();
  private probeRefused = false;
  private closed = false;
  private openTimer: NodeJS.Timeout | undefined;
  private parkedTimer: NodeJS.Timeout | undefined;
  private idleWaiters: Array<() => void> = [];

  constructor(
    /** Places one job; `ready`, when given, is awaited once its attempt is reserved, just before it is placed. */
    private readonly dispatchOne: (id: string, ready?: () => Promise<void>) => Promise<DispatchOutcome>,
    private readonly options: { concurrency: number; retryDelayMs: number; agingMs?: number; now?: () => number },
  ) {
    this.queue = new PriorityQueue(options.agingMs, options.now);
  }

  /** Jobs waiting for a worker (queued or parked, not in flight). */
  get depth(): number {
    return this.queue.size + this.parkedCount;
  }

  /** Queued jobs per priority class (not counting those in flight or parked). */
  depths(): Array<{ priority: Priority; depth: number }> {
    return this.queue.depths();
  }

  /**
   * Queues `id` unless it is already held. `queuedAtMs` (default now) is where aging counts from;
   * `group`: jobs that match the same workers (the node selector), parked and retried together.
   */
  enqueue(id: string, priority: Priority, queuedAtMs: number = (this.options.now ?? Date.now)(), group = ""): void {
    if (this.closed || this.entries.has(id)) return;
    const entry = { id, priority, seq: this.nextSeq++, queuedAtMs, group };
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
    if (this.closed) return;
    if (this.credits === Infinity) {
      while (this.inFlight < this.options.concurrency) {
        const entry = this.queue.pop();
        if (entry === undefined) return;
        this.launch(entry);
      }
      return;
    }
    // Throttled: jobs go in rounds, and a round waits until the last one is answered. A round is
    // the head of the line: one job per slot known to be free (credits), then the probes when
    // they are due. Its placements leave in one call once all are reserved (`ready`), and the
    // coordinator answers one call's placements in order with nothing in between, so no job
    // gets a slot a job ahead of it was just refused. Credits can be stale (a probe may take a
    // slot before the report of the job that freed it arrives), so a slot freeing between two
    // calls could otherwise go to the later one: that is why a round is one call and rounds do
    // not overlap.
    if (this.inFlight > 0) return;
    if (this.queue.size === 0) {
      // Nothing waits, nothing is out, and a slot was freed (or a probe is due): no order left
      // to keep. Open, so the next burst goes at once (a refusal throttles again) rather than
      // slot by slot on counts that may be stale.
      if (this.credits > 0 || this.probeDue) this.open();
      return;
    }
    const paid = Math.min(this.credits, this.queue.size, this.options.concurrency);
    const probes = this.probeDue ? Math.min(this.probeWidth, this.queue.size - paid, this.options.concurrency - paid) : 0;
    if (paid + probes === 0) return;
    const round = new Round(paid + probes);
    this.credits -= paid;
    for (let i = 0; i < paid; i++) this.launch(this.queue.pop()!, round);
    if (probes > 0) {
      this.probeDue = false;
      this.probeRefused = false;
      for (let i = 0; i < probes; i++) {
        const entry = this.queue.pop()!;
        this.capacityProbes.add(entry.id);
        this.launch(entry, round);
      }
    }
  }

  private launch(entry: QueueEntry, round?: Round): void {
    this.inFlight++;
    const member = round?.member();
    void this.dispatchOne(entry.id, member?.ready)
      .catch((): DispatchOutcome => "unavailable")
      .then((outcome) => this.settle(entry, outcome))
      .finally(() => {
        member?.leave();
        this.slotDone();
      });
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
    if (outcome === "no-capacity" || outcome === "unavailable") this.throttle();
    this.slotDone();
  }

  /** A placement in flight ended: the slot goes to the next job; close() waits for the last. */
  private slotDone(): void {
    this.inFlight--;
    this.pump();
    if (this.inFlight === 0) this.idleWaiters.splice(0).forEach((w) => w());
  }

  private settle(entry: QueueEntry, outcome: DispatchOutcome): void {
    const group = entry.group ?? "";
    const probe = this.probes.delete(entry.id);
    if (this.capacityProbes.delete(entry.id)) {
      if (outcome === "no-capacity" || outcome === "unavailable") this.probeRefused = true;
      if (this.capacityProbes.size === 0 && this.credits !== Infinity) {
        // All taken (or not about capacity): the next round probes twice as wide; one refused:
        // the window starts again (throttle, below or now).
        if (this.probeRefused) {
          this.probeWidth = 1;
          this.armProbeTimer();
        } else {
          this.probeWidth = Math.min(this.probeWidth * 2, this.options.concurrency);
          this.probeDue = true;
        }
      }
    }
    switch (outcome) {
      case "placed":
        this.entries.delete(entry.id);
        this.releaseGroup(group); // its workers are back
        return;
      case "gone":
        this.entries.delete(entry.id);
        if (probe) this.probeGroup(group); // cancelled meanwhile: the next one probes
        return;
      case "no-capacity":
      case "unavailable":
        this.queue.push(entry);
        this.throttle();
        this.releaseGroup(group); // workers exist (full, or unknown): back in line, throttled
        return;
      case "no-match": {
        const list = this.parked.get(group);
        if (!list) this.parked.set(group, [entry]);
        else if (probe) list.unshift(entry);
        else list.push(entry);
        this.parkedCount++;
        this.armParkedRetry();
        return;
      }
    }
  }

  /** Every parked job of `group` back in line, each in its old place. */
  private releaseGroup(group: string): void {
    const list = this.parked.get(group);
    if (!list) return;
    this.parked.delete(group);
    this.parkedCount -= list.length;
    for (const entry of list) this.queue.push(entry);
  }

  /** The oldest parked job of `group` goes back in line as the group's probe. */
  private probeGroup(group: string): void {
    const list = this.parked.get(group);
    const entry = list?.shift();
    if (!entry) return;
    if (list!.length === 0) this.parked.delete(group);
    this.parkedCount--;
    this.probes.add(entry.id);
    this.queue.push(entry);
  }

  /** No free slot somewhere: one placement per freed slot, and a probe every retryDelayMs. */
  private throttle(): void {
    if (this.closed) return;
    if (this.credits === Infinity) this.credits = 0;
    this.armProbeTimer();
  }

  /** The next probe window, unless one is armed, due, or its probes are still out. */
  private armProbeTimer(): void {
    if (this.closed || this.openTimer || this.capacityProbes.size > 0 || this.probeDue) return;
    this.openTimer = setTimeout(() => {
      this.openTimer = undefined;
      this.probeDue = true;
      this.pump();
    }, this.options.retryDelayMs);
    this.openTimer.unref();
  }

  private open(): void {
    this.credits = Infinity;
    this.probeDue = false;
    this.probeWidth = 1;
    clearTimeout(this.openTimer);
    this.openTimer = undefined;
  }

  private armParkedRetry(): void {
    if (this.parkedTimer || this.closed) return;
    this.parkedTimer = setTimeout(() => {
      this.parkedTimer = undefined;
      for (const group of [...this.parked.keys()]) this.probeGroup(group);
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

/** The jobs of one throttled round: each waits (`ready`) until every other one is ready or gone. */
class Round {
  private pending: number;
  private release!: () => void;
  private readonly released = new Promise<void>((resolve) => (this.release = resolve));

  constructor(readonly size: number) {
    this.pending = size;
  }

  member(): { ready: () => Promise<void>; leave: () => void } {
    let counted = false;
    const leave = () => {
      if (counted) return;
      counted = true;
      if (--this.pending === 0) this.release();
    };
    return {
      ready: () => {
        leave();
        return this.released;
      },
      leave,
    };
  }
}
