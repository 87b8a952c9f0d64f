/**
 * JetStream publishes with acknowledgements, pipelined on one connection.
 *
 * nats.js sends a JetStream publish as a request: per write it builds a
 * request object, a timer and an Error (built, and thrown away, even on
 * success), and flushes the socket once per microtask turn. In a profile of
 * the job-manager under load, that path with its socket writes was about a
 * fifth of the busy time. Here every write shares one reply subscription
 * (`<inbox>.<n>`), timeouts are swept once a second, and the writes made
 * during one event-loop turn leave in one socket write.
 *
 * The protocol is JetStream's own: a PUB to the stream's subject with the
 * `Nats-Expected-Last-Subject-Sequence` header for compare-and-set, answered
 * by a PubAck (`{"stream":…,"seq":N}`) or an API error
 * (`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"}}`).
 */
import { createInbox, headers, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { UnavailableError } from "@aspen/runtime";

/** An API error JetStream answered a publish with. */
export class JetStreamPublishError extends Error {
  constructor(
    readonly code: number,
    readonly errCode: number,
    description: string,
  ) {
    super(description);
    this.name = "JetStreamPublishError";
  }
}

interface Pending {
  resolve: (seq: number) => void;
  reject: (err: Error) => void;
  deadline: number;
}

interface Queued {
  subject: string;
  data: Uint8Array;
  expectedLastSubjectSequence: number | undefined;
  extraHeaders: Record<string, string> | undefined;
  token: string;
}

const SWEEP_MS = 1_000;
/** A write unanswered this long means the store is in trouble now (a healthy one answers in ms). */
const STALL_MS = 1_000;

export class AckedPublisher {
  private inbox = "";
  private subscription: Subscription | undefined;
  private readonly pending = new Map<string, Pending>();
  private queued: Queued[] = [];
  private flushing: NodeJS.Immediate | undefined;
  private readonly sweeper: NodeJS.Timeout;
  private next = 0;
  private connected = true;
  /** When the connection last came back (the end of the last outage). */
  private reconnectedAtMs = -Infinity;
  /** When a write last went unanswered (timed out, or its reply subscription failed). */
  private failedAtMs = -Infinity;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs = 5_000,
  ) {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS).unref();
  }

  /**
   * Publishes `data` to `subject` and resolves to its stream sequence once stored.
   * With `expectedLastSubjectSequence` (0: the subject has no message), JetStream
   * stores it only if the subject's last message has that sequence.
   */
  publish(
    subject: string,
    data: Uint8Array,
    expectedLastSubjectSequence?: number,
    extraHeaders?: Record<string, string>,
  ): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const token = String(this.next++);
      this.pending.set(token, { resolve, reject, deadline: Date.now() + this.timeoutMs });
      this.queued.push({ subject, data, expectedLastSubjectSequence, extraHeaders, token });
      this.flushing ??= setImmediate(() => this.flush());
    });
  }

  close(): void {
    clearInterval(this.sweeper);
    if (this.flushing) clearImmediate(this.flushing);
    this.flushing = undefined;
    this.failAll(new UnavailableError("store closed before the write was acknowledged"));
    if (!this.nc.isClosed()) this.subscription?.unsubscribe();
  }

  /** The reply subscription, made again if it ended (an error such as a permissions violation ends it). */
  private replies(): void {
    if (this.subscription && !this.subscription.isClosed()) return;
    const inbox = createInbox();
    const subscription = this.nc.subscribe(`${inbox}.*`, {
      callback: (err, msg) => (err ? this.failAll(err) : this.onAck(msg)),
    });
    void subscription.closed.then(() => {
      // Writes still waiting on this inbox will never hear back.
      if (this.subscription === subscription)
        this.failAll(new UnavailableError("the reply subscription ended before the write was acknowledged"));
    });
    this.inbox = inbox;
    this.subscription = subscription;
  }

  /** Hands every write of this turn to the connection at once: they leave in one socket write. */
  private flush(): void {
    this.flushing = undefined;
    const batch = this.queued;
    this.queued = [];
    if (batch.length > 0 && !this.nc.isClosed()) this.replies();
    for (const q of batch) {
      try {
        let h;
        if (q.expectedLastSubjectSequence !== undefined || q.extraHeaders) {
          h = headers();
          if (q.expectedLastSubjectSequence !== undefined)
            h.set("Nats-Expected-Last-Subject-Sequence", String(q.expectedLastSubjectSequence));
          for (const [k, v] of Object.entries(q.extraHeaders ?? {})) h.set(k, v);
        }
        this.nc.publish(q.subject, q.data, { reply: `${this.inbox}.${q.token}`, headers: h });
      } catch (err) {
        this.settle(q.token, undefined, err instanceof Error ? err : new Error(String(err)));
      }
    }
  }
  private onAck(msg: Msg): void {
    const token = msg.subject.slice(this.inbox.length + 1);
    if (msg.headers?.code === 503) {
      this.settle(token, undefined, new UnavailableError("JetStream is not available (no responders)"));
      return;
    }
    let ack: { seq?: unknown; error?: { code?: number; err_code?: number; description?: string } };
    try {
      ack = msg.json();
    } catch {
      this.settle(token, undefined, new UnavailableError("JetStream answered a publish with something other than an ack"));
      return;
    }
    if (ack.error) {
      const e = ack.error;
      this.settle(token, undefined, new JetStreamPublishError(e.code ?? 0, e.err_code ?? 0, e.description ?? "publish refused"));
    } else if (typeof ack.seq === "number") this.settle(token, ack.seq);
    else this.settle(token, undefined, new UnavailableError("JetStream ack without a sequence"));
  }

  /** The connection's state, from nats.js status events (Store follows them). */
  noteConnection(type: string): void {
    if (type === "disconnect" || type === "reconnecting" || type === "staleConnection" || type === "forceReconnect") {
      this.connected = false;
    } else if (type === "reconnect") {
      this.connected = true;
      this.reconnectedAtMs = Date.now();
    }
  }

  /**
   * When writes last could not get through: `now` while the connection is down or a write
   * has waited more than STALL_MS (its failure shows only at the timeout), else the later of
   * when the connection last came back and when a write last went unanswered. -Infinity: never.
   * A refusal (e.g. a compare-and-set that lost) is an answer, not trouble.
   */
  troubleAtMs(now = Date.now()): number {
    if (!this.connected) return now;
    const oldest = this.pending.values().next().value; // a Map keeps insertion order
    if (oldest && now - (oldest.deadline - this.timeoutMs) > STALL_MS) return now;
    return Math.max(this.reconnectedAtMs, this.failedAtMs);
  }

  private settle(token: string, seq: number | undefined, err?: Error): void {
    const p = this.pending.get(token);
    if (!p) return; // timed out already
    this.pending.delete(token);
    if (err) p.reject(err);
    else p.resolve(seq as number);
  }

  private sweep(): void {
    const now = Date.now();
    for (const [token, p] of this.pending) {
      if (p.deadline <= now) {
        this.failedAtMs = now;
        this.settle(token, undefined, new UnavailableError(`JetStream did not acknowledge a write within ${this.timeoutMs} ms`));
      }
    }
  }

  private failAll(err: Error): void {
    if (this.pending.size > 0) this.failedAtMs = Date.now();
    for (const token of [...this.pending.keys()]) this.settle(token, undefined, err);
    // A queued write not yet handed over is failed too (the loop above covered it); drop it.
    this.queued = [];
  }
}
