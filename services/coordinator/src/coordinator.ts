/**
 * The coordinator's logic: agent sessions (the Connect streams), worker
 * health, placement of attempts, and the relay of attempt events to the
 * job-manager. It alone writes the `workers` bucket.
 */
import type { ServerDuplexStream } from "@grpc/grpc-js";
import {
  WorkerHealth,
  type AgentMessage,
  type AttemptEvent,
  type CancelAttemptRequest,
  type CoordinatorMessage,
  type PlaceJobRequest,
  type RegisterWorker,
  type Worker,
} from "@aspen/proto";
import {
  Attr,
  FailedPreconditionError,
  InvalidArgumentError,
  msToDuration,
  NotFoundError,
  ResourceExhaustedError,
  Spans,
  toServiceError,
  traceparentOf,
  UnavailableError,
  withSpan,
  type Logger,
} from "@aspen/runtime";
import { JOB_ID, validateJobSpec, WORKER_ID } from "@aspen/model";
import type { Bucket } from "@aspen/store";
import { EventRelay } from "./event-relay.js";
import { describeSelector, matchesSelector, pickLeastLoaded, type Candidate } from "./placement.js";

export type AgentStream = ServerDuplexStream<AgentMessage, CoordinatorMessage>;

export interface CoordinatorOptions {
  workers: Bucket<Worker>;
  /** Delivers attempt events to the job-manager; resolves to one refusal ("" = applied) per event. */
  report: (events: AttemptEvent[]) => Promise<string[]>;
  log: Logger;
  /** Agents heartbeat this often, ms. */
  heartbeatIntervalMs: number;
  /** No heartbeat for this long: unhealthy (no new work), ms. */
  unhealthyAfterMs: number;
  /** No heartbeat (or no connection) for this long: dead, its attempts lost, ms. */
  deadAfterMs: number;
  /** Most workers registered at once. */
  maxWorkers: number;
  clock?: () => number;
}

interface Session {
  worker: Worker;
  stream: AgentStream | undefined;
  /** Attempts sent to this worker and not yet finished: "<job id>#<attempt>". */
  running: Set<string>;
  lastSeenMs: number;
}

export const attemptKey = (jobId: string, attempt: number) => `${jobId}#${attempt}`;

function parseAttemptKey(key: string): { jobId: string; attempt: number } | undefined {
  const at = key.lastIndexOf("#");
  const attempt = Number(key.slice(at + 1));
  return at > 0 && Number.isInteger(attempt) ? { jobId: key.slice(0, at), attempt } : undefined;
}

export class Coordinator {
  private readonly sessions = new Map<string, Session>();
  private readonly relay: EventRelay;
  private readonly clock: () => number;
  private readonly log: Logger;
  private sweepTimer: NodeJS.Timeout | undefined;
  private cursor = 0;

  constructor(private readonly options: CoordinatorOptions) {
    this.clock = options.clock ?? Date.now;
    this.log = options.log;
    this.relay = new EventRelay(options.report, options.log);
  }

  /**
   * Loads the registry. Workers known from before a restart count as
   * disconnected from now: they have `deadAfterMs` to reconnect before their
   * attempts are declared lost.
   */
  async start(): Promise<void> {
    const now = this.clock();
    for (const { value } of await this.options.workers.all()) {
      if (value.health === WorkerHealth.WORKER_HEALTH_DEAD) continue;
      this.sessions.set(value.id, { worker: value, stream: undefined, running: new Set(value.running), lastSeenMs: now });
    }
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(100, Math.floor(this.options.heartbeatIntervalMs / 2)));
    this.sweepTimer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    for (const session of this.sessions.values()) session.stream?.end();
    await this.relay.close();
  }

  /** Handles one agent's Connect stream from its first message to its end. */
  connect(stream: AgentStream): void {
    let session: Session | undefined;
    const fail = (err: unknown) => {
      stream.emit("error", toServiceError(err));
    };
    stream.on("data", (message: AgentMessage) => {
      try {
        const msg = message.msg;
        if (!session) {
          if (msg?.$case !== "register") throw new InvalidArgumentError("msg", "the first message must be register");
          session = this.register(msg.value, stream);
          return;
        }
        session.lastSeenMs = this.clock();
        if (msg?.$case === "heartbeat") {
          session.worker.load = msg.value.load;
        } else if (msg?.$case === "event") {
          this.onEvent(session, msg.value);
        } else if (msg?.$case === "register") {
          throw new FailedPreconditionError("already registered on this stream");
        }
      } catch (err) {
        fail(err);
      }
    });
    const closed = () => {
      if (session && session.stream === stream) {
        session.stream = undefined;
        this.log.info({ worker: session.worker.id }, "agent disconnected");
        this.persist(session);
      }
    };
    stream.on("end", () => {
      closed();
      stream.end();
    });
    stream.on("error", closed);
    stream.on("cancelled", closed);
  }

  private register(reg: RegisterWorker, stream: AgentStream): Session {
    if (!WORKER_ID.test(reg.workerId)) throw new InvalidArgumentError("register.worker_id", `must match ${WORKER_ID}`);
    if (reg.slots < 1 || reg.slots > 4096) throw new InvalidArgumentError("register.slots", "must be 1..4096");
    const now = this.clock();
    let session = this.sessions.get(reg.workerId);
    if (!session && this.sessions.size >= this.options.maxWorkers) {
      throw new ResourceExhaustedError(`worker limit reached (${this.options.maxWorkers} workers)`);
    }
    const previous = session?.stream;
    const worker: Worker = {
      id: reg.workerId,
      hostname: reg.hostname,
      labels: reg.labels,
      capabilities: reg.capabilities,
      slots: reg.slots,
      version: reg.version,
      health: WorkerHealth.WORKER_HEALTH_HEALTHY,
      running: [],
      connectedAt: new Date(now),
      lastHeartbeatAt: new Date(now),
      load: 0,
      groups: session?.worker.groups ?? [],
    };
    const stillRunning = new Set(reg.running);
    if (session) {
      // Reconcile: what we sent it that it no longer runs (nor holds a result for) is lost.
      for (const key of session.running) {
        if (!stillRunning.has(key)) this.reportLost(reg.workerId, key, "agent restarted; attempt not running there");
      }
      session.worker = worker;
      session.stream = stream;
      session.running = stillRunning;
      session.lastSeenMs = now;
    } else {
      session = { worker, stream, running: stillRunning, lastSeenMs: now };
      this.sessions.set(reg.workerId, session);
    }
    // A second connection with the same id takes over; the older stream is closed.
    if (previous && previous !== stream) previous.end();
    stream.write({ msg: { $case: "registered", value: { heartbeatInterval: msToDuration(this.options.heartbeatIntervalMs) } } });
    this.log.info(
      { worker: worker.id, slots: worker.slots, labels: worker.labels, running: stillRunning.size },
      "agent registered",
    );
    this.persist(session);
    return session;
  }

  private onEvent(session: Session, event: AttemptEvent): void {
    if (!JOB_ID.test(event.jobId)) throw new InvalidArgumentError("event.job_id", `must match ${JOB_ID}`);
    const key = attemptKey(event.jobId, event.attempt);
    // An agent reports only on attempts it was given; the worker id is the session's, not the message's.
    if (!session.running.has(key)) {
      this.log.warn({ worker: session.worker.id, attempt: key }, "event for an attempt not assigned to this worker: refused");
      return;
    }
    const e = event.event;
    if (e?.$case === "finished") session.running.delete(key);
    this.relay.push({ ...event, workerId: session.worker.id });
  }

  /** Chooses a worker for the attempt and sends it down that worker's stream. */
  async place(request: PlaceJobRequest): Promise<string> {
    if (!JOB_ID.test(request.jobId)) throw new InvalidArgumentError("job_id", `must match ${JOB_ID}`);
    if (request.attempt < 1) throw new InvalidArgumentError("attempt", "must be at least 1");
    validateJobSpec(request.spec, "spec");
    const spec = request.spec;
    return withSpan(
      Spans.place,
      { attributes: { [Attr.jobId]: request.jobId, [Attr.attempt]: request.attempt } },
      async (span) => {
        const selector = spec.placement?.selector;
        const matching: Array<Candidate & { session: Session }> = [];
        for (const session of this.sessions.values()) {
          const w = session.worker;
          if (!session.stream || w.health !== WorkerHealth.WORKER_HEALTH_HEALTHY) continue;
          if (!matchesSelector(w, selector)) continue;
          matching.push({ ...w, used: session.running.size, session });
        }
        if (matching.length === 0) {
          throw new FailedPreconditionError(`no live worker matches ${describeSelector(selector)}`);
        }
        const chosen = pickLeastLoaded(matching, this.cursor++);
        if (!chosen) throw new ResourceExhaustedError(`all ${matching.length} matching workers are busy`);
        const { session } = chosen;
        span.setAttribute(Attr.workerId, session.worker.id);
        const key = attemptKey(request.jobId, request.attempt);
        session.running.add(key);
        const sent = session.stream?.write({
          msg: {
            $case: "assignment",
            value: {
              jobId: request.jobId,
              attempt: request.attempt,
              spec,
              traceparent: traceparentOf(),
              submittedAt: request.submittedAt,
            },
          },
        });
        if (sent === undefined) {
          session.running.delete(key);
          throw new UnavailableError(`worker ${session.worker.id} disconnected`);
        }
        return session.worker.id;
      },
    );
  }

  cancel(request: CancelAttemptRequest): void {
    const key = attemptKey(request.jobId, request.attempt);
    for (const session of this.sessions.values()) {
      if (session.running.has(key) && session.stream) {
        session.stream.write({ msg: { $case: "cancel", value: request } });
        return;
      }
    }
    throw new NotFoundError("running attempt", key);
  }

  workers(): Worker[] {
    return [...this.sessions.values()]
      .map((s) => ({ ...s.worker, running: [...s.running], lastHeartbeatAt: new Date(s.lastSeenMs) }))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Health from heartbeat age; a dead worker's attempts are reported lost and it leaves the registry. */
  private sweep(): void {
    const now = this.clock();
    for (const session of this.sessions.values()) {
      const silentMs = now - session.lastSeenMs;
      const w = session.worker;
      if (silentMs >= this.options.deadAfterMs) {
        this.log.warn({ worker: w.id, silentMs, attempts: session.running.size }, "worker declared dead");
        for (const key of session.running) this.reportLost(w.id, key, `worker ${w.id} declared dead (silent ${silentMs} ms)`);
        session.running.clear();
        w.health = WorkerHealth.WORKER_HEALTH_DEAD;
        session.stream?.end();
        this.sessions.delete(w.id);
        this.persist(session);
      } else if (silentMs >= this.options.unhealthyAfterMs && w.health === WorkerHealth.WORKER_HEALTH_HEALTHY) {
        w.health = WorkerHealth.WORKER_HEALTH_UNHEALTHY;
        this.log.warn({ worker: w.id, silentMs }, "worker unhealthy");
        this.persist(session);
      } else if (
        silentMs < this.options.unhealthyAfterMs &&
        session.stream &&
        w.health === WorkerHealth.WORKER_HEALTH_UNHEALTHY
      ) {
        w.health = WorkerHealth.WORKER_HEALTH_HEALTHY;
        this.persist(session);
      }
    }
  }

  private reportLost(workerId: string, key: string, reason: string): void {
    const parsed = parseAttemptKey(key);
    if (!parsed) return;
    this.relay.push({ ...parsed, workerId, event: { $case: "lost", value: { reason } } });
  }

  /** Saves the worker's registry entry; a failed write is logged and retried at its next change. */
  private persist(session: Session): void {
    const record: Worker = {
      ...session.worker,
      running: [...session.running],
      lastHeartbeatAt: new Date(session.lastSeenMs),
    };
    this.options.workers.upsert(record.id, record).catch((err: unknown) => {
      this.log.warn({ worker: record.id, err: (err as Error).message }, "could not save worker record");
    });
  }
}
