/**
 * Delivers attempt events to the job-manager in the order agents sent them:
 * one ReportAttempts call in flight, carrying everything that queued up
 * meanwhile (batching grows with load). A failed call is retried with
 * backoff; events are never dropped while the process lives.
 */
import type { AttemptEvent } from "@aspen/proto";
import { eventBytes, splitByBytes } from "@aspen/model";
import type { Logger } from "@aspen/runtime";

const MAX_BATCH = 1000;
/**
 * At most this long between tries. The job-manager declares an assignment lost once its
 * store has worked for a whole ASPEN_ASSIGN_TIMEOUT without hearing the attempt start, so
 * after an outage the held-up reports must arrive well within that (5 s in tests).
 */
const MAX_BACKOFF_MS = 1_000;

export class EventRelay {
  private pending: Array<{ event: AttemptEvent; notHeld: boolean }> = [];
  private sending: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly report: (events: AttemptEvent[], notHeld: number[]) => Promise<string[]>,
    private readonly log: Logger,
  ) {}

  /** Queues an event; `notHeld` marks a report from a worker that does not hold the attempt. */
  push(event: AttemptEvent, notHeld = false): void {
    this.pending.push({ event, notHeld });
    // Started after the current I/O callbacks: events that came in together (an agent's
    // "started" and "finished" of a short attempt) go in one call, one write per job.
    this.sending ??= new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.drain())
      .finally(() => (this.sending = undefined));
  }

  private async drain(): Promise<void> {
    let backoffMs = 100;
    while (this.pending.length > 0) {
      // At most MAX_BATCH events and BATCH_BYTES (finished events carry output), at least one.
      const [first] = splitByBytes(this.pending.slice(0, MAX_BATCH), (e) => eventBytes(e.event));
      const batch = first ?? [];
      try {
        const notHeld = batch.flatMap((e, i) => (e.notHeld ? [i] : []));
        const refusals = await this.report(
          batch.map((e) => e.event),
          notHeld,
        );
        this.pending.splice(0, batch.length);
        backoffMs = 100;
        refusals.forEach((reason, i) => {
          if (reason) this.log.warn({ event: batch[i]?.event, reason }, "job-manager refused attempt event");
        });
      } catch (err) {
        if (this.closed) return;
        this.log.warn(
          { err: (err as Error).message, pending: this.pending.length, backoffMs },
          "reporting to job-manager failed; retrying",
        );
        await new Promise((r) => setTimeout(r, backoffMs));
        backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
      }
    }
  }

  /** Waits (up to 5 s) for queued events to be delivered. */
  async close(): Promise<void> {
    const deadline = new Promise((r) => setTimeout(r, 5_000).unref());
    await Promise.race([this.sending, deadline]);
    this.closed = true;
  }
}
