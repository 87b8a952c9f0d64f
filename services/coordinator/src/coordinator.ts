/**
 * The coordinator's logic: agent sessions (the Connect streams), worker
 * health and draining, worker groups, placement of attempts by strategy, and
 * the relay of attempt events to the job-manager. It alone writes the
 * `workers` and `worker groups` buckets.
 *
 * Fencing: when a worker is declared dead, each of its attempts is reported
 * lost and remembered as fenced. If that worker comes back still running one
 * of them, it is told to kill it; any result it sends for it is passed to
 * the job-manager, which refuses and records it (the job has moved on).
 */
import { performance } from "node:perf_hooks";
import type { ServerDuplexStream } from "@grpc/grpc-js";
import {
  PlacementStrategy,
  WorkerHealth,
  type AgentMessage,
  type Assignment,
  type AttemptEvent,
  type CancelAttemptRequest,
  type CoordinatorMessage,
  type NodeSelector,
  type PlaceJobRequest,
  type PlaceJobResult,
  type RegisterWorker,
  type Worker,
  type WorkerGroup,
} from "@aspen/proto";
import {
  AlreadyExistsError,
  Attr,
  contextFromTraceparent,
  FailedPreconditionError,
  InvalidArgumentError,
  itemRefusal,
  msToDuration,
  NotFoundError,
  PermissionDeniedError,
  principalOf,
  readmit,
  ResourceExhaustedError,
  Spans,
  toServiceError,
  traceparentOf,
  UnavailableError,
  withSpan,
  type Logger,
  type Principal,
} from "@aspen/runtime";
import { GROUP_NAME, JOB_ID, Limits, specBytes, splitByBytes, validateJobSpec, WORKER_ID } from "@aspen/model";
import type { Bucket } from "@aspen/store";
import { EventRelay } from "./event-relay.js";
import { describeSelector, matchesSelector, pickWorker, type Candidate, type StrategyState } from "./placement.js";

export type AgentStream = ServerDuplexStream<AgentMessage, CoordinatorMessage>;

export interface CoordinatorOptions {
  workers: Bucket<Worker>;
  groups: Bucket<WorkerGroup>;
  /**
   * Delivers attempt events to the job-manager (`notHeld`: positions of reports from a
   * worker that does not hold that attempt); resolves to one refusal ("" = applied) per event.
   */
  report: (events: AttemptEvent[], notHeld: number[]) => Promise<string[]>;
  log: Logger;
  /** Agents heartbeat this often, ms. */
  heartbeatIntervalMs: number;
  /** No heartbeat for this long: unhealthy (no new work), ms. */
  unhealthyAfterMs: number;
  /** No heartbeat for this long on an open stream: dead, its attempts lost, ms. */
  deadAfterMs: number;
  /** Stream closed (process or host gone) and not reconnected within this: dead, ms. */
  reconnectGraceMs: number;
  /** Most registered workers. */
  maxWorkers: number;
  /** Most worker groups. */
  maxGroups: number;
  /** Called with the duration of every placement decision (metrics), ms. */
  onPlacement?: (ms: number) => void;
  clock?: () => number;
}

interface Session {
  worker: Worker;
  /** Name of the token that registered this worker id: only it may register it again. */
  owner: string;
  stream: AgentStream | undefined;
  /** Attempts sent to this worker and not yet finished: "<job id>#<attempt>". */
  running: Set<string>;
  lastSeenMs: number;
  /** When the stream closed; undefined while connected. */
  disconnectedAtMs: number | undefined;
  /** The agent takes CoordinatorMessage.assignments. */
  takesBatches: boolean;
  /** Assignments of the PlaceJobs call in progress, written together when it is done. */
  unsent: Assignment[];
}

export const attemptKey = (jobId: string, attempt: number) => `${jobId}#${attempt}`;

function parseAttemptKey(key: string): { jobId: string; attempt: number } | undefined {
  const at = key.lastIndexOf("#");
  const attempt = Number(key.slice(at + 1));
  return at > 0 && Number.isInteger(attempt) ? { jobId: key.slice(0, at), attempt } : undefined;
}

/** Fenced attempts remembered, so a returning worker is told to kill them. */
const MAX_FENCED = 100_000;

export class Coordinator {
  private readonly sessions = new Map<string, Session>();
  private readonly groups = new Map<string, WorkerGroup>();
  private readonly fenced = new Set<string>();
  private readonly relay: EventRelay;
  private readonly clock: () => number;
  private readonly log: Logger;
  private readonly strategyState: StrategyState = { cursor: 0, affinity: new Map() };
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: CoordinatorOptions) {
    this.clock = options.clock ?? Date.now;
    this.log = options.log;
    this.relay = new EventRelay(options.report, options.log);
  }

  /**
   * Loads the registry and the groups. Workers known from before a restart
   * count as disconnected from now: they have `reconnectGraceMs` to come back
   * before their attempts are declared lost.
   */
  async start(): Promise<void> {
    const now = this.clock();
    for (const { value } of await this.options.groups.all()) this.groups.set(value.name, value);
    for (const { value } of await this.options.workers.all()) {
      if (value.health === WorkerHealth.WORKER_HEALTH_DEAD) continue;
      this.sessions.set(value.id, {
        worker: value,
        owner: "",
        stream: undefined,
        running: new Set(value.running),
        lastSeenMs: now,
        disconnectedAtMs: now,
        takesBatches: false,
        unsent: [],
      });
    }
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(100, Math.floor(this.options.heartbeatIntervalMs / 2)));
    this.sweepTimer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    for (const session of this.sessions.values()) session.stream?.end();
    await this.relay.close();
  }

  // ---- agent sessions ----------------------------------------------------

  /** Handles one agent's Connect stream from its first message to its end. */
  connect(stream: AgentStream): void {
    let session: Session | undefined;
    stream.on("data", (message: AgentMessage) => {
      try {
        // A token revoked since the stream opened ends it at the agent's next message (a heartbeat a second).
        readmit(stream);
        const msg = message.msg;
        if (!session) {
          if (msg?.$case !== "register") throw new InvalidArgumentError("msg", "the first message must be register");
          session = this.register(msg.value, stream, principalOf(stream));
          return;
        }
        session.lastSeenMs = this.clock();
        if (msg?.$case === "heartbeat") {
          session.worker.load = msg.value.load;
        } else if (msg?.$case === "event") {
          this.onEvent(session, msg.value);
        } else if (msg?.$case === "events") {
          for (const event of msg.value.events) this.onEvent(session, event);
        } else if (msg?.$case === "register") {
          throw new FailedPreconditionError("already registered on this stream");
        }
      } catch (err) {
        stream.emit("error", toServiceError(err));
      }
    });
    const closed = () => {
      if (session && session.stream === stream) {
        session.stream = undefined;
        session.disconnectedAtMs = this.clock();
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

  private register(reg: RegisterWorker, stream: AgentStream, principal: Principal | undefined): Session {
    if (!WORKER_ID.test(reg.workerId)) throw new InvalidArgumentError("register.worker_id", `must match ${WORKER_ID}`);
    if (reg.slots < 1 || reg.slots > 4096) throw new InvalidArgumentError("register.slots", "must be 1..4096");
    const now = this.clock();
    let session = this.sessions.get(reg.workerId);
    // Identity: a token bound to a worker id registers only as that id; a worker id
    // registered by one token is taken over (reconnect, restart) only by the same token.
    const owner = principal?.name ?? "anonymous";
    if (principal?.workerId && principal.workerId !== reg.workerId) {
      throw new PermissionDeniedError(
        `token ${principal.name} may register only as worker ${principal.workerId}, not ${reg.workerId}`,
      );
    }
    if (session && session.owner && session.owner !== owner) {
      throw new PermissionDeniedError(`worker id ${reg.workerId} is bound to another token (${session.owner})`);
    }
    if (!session && this.sessions.size >= this.options.maxWorkers) {
      throw new ResourceExhaustedError(`worker limit reached (${this.options.maxWorkers} workers)`);
    }
    const previous = session?.stream;
    const draining = session?.worker.health === WorkerHealth.WORKER_HEALTH_DRAINING;
    const worker: Worker = {
      id: reg.workerId,
      hostname: reg.hostname,
      labels: reg.labels,
      capabilities: reg.capabilities,
      slots: reg.slots,
      version: reg.version,
      health: draining ? WorkerHealth.WORKER_HEALTH_DRAINING : WorkerHealth.WORKER_HEALTH_HEALTHY,
      running: [],
      connectedAt: new Date(now),
      lastHeartbeatAt: new Date(now),
      load: 0,
      groups: [],
    };
    // Reconcile: what it still runs is adopted, unless that attempt was fenced
    // meanwhile (then it is told to kill it); what we had sent it that it no
    // longer knows is lost.
    const adopted = new Set<string>();
    const kill: string[] = [];
    for (const key of reg.running) {
      if (this.fenced.has(key)) kill.push(key);
      else adopted.add(key);
    }
    if (session) {
      for (const key of session.running) {
        if (!adopted.has(key) && !kill.includes(key))
          this.reportLost(reg.workerId, key, "agent restarted; attempt not running there");
      }
      session.worker = worker;
      session.owner = owner;
      session.stream = stream;
      session.running = adopted;
      session.lastSeenMs = now;
      session.disconnectedAtMs = undefined;
      session.takesBatches = reg.takesAssignmentBatches;
    } else {
      session = {
        worker,
        owner,
        stream,
        running: adopted,
        lastSeenMs: now,
        disconnectedAtMs: undefined,
        takesBatches: reg.takesAssignmentBatches,
        unsent: [],
      };
      this.sessions.set(reg.workerId, session);
    }
    // A second connection with the same id takes over; the older stream is closed.
    if (previous && previous !== stream) previous.end();
    stream.write({
      msg: {
        $case: "registered",
        value: { heartbeatInterval: msToDuration(this.options.heartbeatIntervalMs), takesEventBatches: true },
      },
    });
    for (const key of kill) {
      const parsed = parseAttemptKey(key);
      if (parsed)
        stream.write({
          msg: {
            $case: "cancel",
            value: { ...parsed, reason: "fenced: the attempt was declared lost while this worker was away" },
          },
        });
    }
    this.log.info(
      { worker: worker.id, slots: worker.slots, labels: worker.labels, adopted: adopted.size, killed: kill.length },
      "agent registered",
    );
    this.persist(session);
    return session;
  }

  private onEvent(session: Session, event: AttemptEvent): void {
    if (!JOB_ID.test(event.jobId)) throw new InvalidArgumentError("event.job_id", `must match ${JOB_ID}`);
    const key = attemptKey(event.jobId, event.attempt);
    const finished = event.event?.$case === "finished";
    const held = session.running.has(key);
    if (!held) {
      // Not an attempt this worker holds (fenced, or never sent to it): the job-manager
      // refuses and records it; it is never counted as running here.
      this.log.warn(
        { worker: session.worker.id, attempt: key, fenced: this.fenced.has(key) },
        "event for an attempt this worker does not hold",
      );
    } else if (finished) {
      session.running.delete(key);
    }
    // The worker id is the session's, never the message's; a report on an attempt this
    // worker does not hold goes on marked, so the job-manager refuses and records it.
    this.relay.push({ ...event, workerId: session.worker.id }, !held);
  }

  // ---- placement ----------------------------------------------------------

  /** Live workers that take new work and match `selector`, sorted by id. */
  private eligible(selector: NodeSelector | undefined): Array<Candidate & { session: Session }> {
    const out: Array<Candidate & { session: Session }> = [];
    for (const session of this.sessions.values()) {
      const w = session.worker;
      if (!session.stream || w.health !== WorkerHealth.WORKER_HEALTH_HEALTHY) continue;
      const groups = this.groupsOf(w);
      if (!matchesSelector({ ...w, groups }, selector)) continue;
      out.push({
        id: w.id,
        labels: w.labels,
        capabilities: w.capabilities,
        groups,
        slots: w.slots,
        used: session.running.size,
        session,
      });
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /**
   * Places each attempt in order (PlaceJobs): one result per request, a refusal
   * (no match, no slot, bad input) standing for that attempt alone.
   */
  async placeMany(
    requests: PlaceJobRequest[],
    fieldOf: (i: number) => string = (i) => `placements[${i}].`,
  ): Promise<PlaceJobResult[]> {
    if (requests.length > Limits.placementsPerCall) {
      throw new InvalidArgumentError("placements", `at most ${Limits.placementsPerCall} per call, got ${requests.length}`);
    }
    const results: PlaceJobResult[] = [];
    const touched = new Set<Session>();
    for (const [i, request] of requests.entries()) {
      const t0 = performance.now();
      try {
        results.push({
          workerId: await this.place(request, fieldOf(i), touched),
          code: 0,
          message: "",
        });
      } catch (err) {
        const onInternal = (e: unknown) => this.log.error({ err: e, job: request.jobId }, "placement failed");
        results.push({ workerId: "", ...itemRefusal(err, onInternal) });
      } finally {
        this.options.onPlacement?.(performance.now() - t0);
      }
    }
    // Each worker's assignments go down its stream in one message where it takes them
    // (cut by size: a message over the gRPC limit would end the agent's stream).
    for (const session of touched) {
      const assignments = session.unsent;
      session.unsent = [];
      if (!session.stream) continue; // gone meanwhile: its attempts are lost like any running one
      if (!session.takesBatches) {
        for (const assignment of assignments) session.stream.write({ msg: { $case: "assignment", value: assignment } });
        continue;
      }
      for (const run of splitByBytes(assignments, (a) => specBytes(a.spec))) {
        session.stream.write(
          run.length === 1
            ? { msg: { $case: "assignment", value: run[0]! } }
            : { msg: { $case: "assignments", value: { assignments: run } } },
        );
      }
    }
    return results;
  }

  /** Chooses a worker for the attempt by the job's strategy and sends it down that worker's stream. */
  private async place(request: PlaceJobRequest, field: string, touched: Set<Session>): Promise<string> {
    if (!JOB_ID.test(request.jobId)) throw new InvalidArgumentError(`${field}job_id`, `must match ${JOB_ID}`);
    if (request.attempt < 1) throw new InvalidArgumentError(`${field}attempt`, "must be at least 1");
    validateJobSpec(request.spec, `${field}spec`);
    const spec = request.spec;
    return withSpan(
      Spans.place,
      {
        // The job-manager's dispatch span: the batch call itself belongs to no one job's trace.
        parent: contextFromTraceparent(request.traceparent),
        attributes: { [Attr.jobId]: request.jobId, [Attr.attempt]: request.attempt },
      },
      async (span) => {
        const selector = spec.placement?.selector;
        const matching = this.eligible(selector);
        if (matching.length === 0) throw new FailedPreconditionError(`no live worker matches ${describeSelector(selector)}`);
        const strategy = spec.placement?.strategy ?? PlacementStrategy.PLACEMENT_STRATEGY_UNSPECIFIED;
        const key = request.affinityKey || spec.placement?.affinityKey || request.jobId;
        const chosen = pickWorker(matching, strategy, key, this.strategyState);
        if (!chosen) throw new ResourceExhaustedError(`all ${matching.length} matching workers are busy`);
        const { session } = chosen;
        span.setAttribute(Attr.workerId, session.worker.id);
        const attempt = attemptKey(request.jobId, request.attempt);
        session.running.add(attempt);
        if (!session.stream) {
          session.running.delete(attempt);
          throw new UnavailableError(`worker ${session.worker.id} disconnected`);
        }
        session.unsent.push({
          jobId: request.jobId,
          attempt: request.attempt,
          spec,
          traceparent: traceparentOf(),
          submittedAt: request.submittedAt,
          submittedBy: request.submittedBy,
        });
        touched.add(session);
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

  // ---- operations ---------------------------------------------------------

  workers(): Worker[] {
    return [...this.sessions.values()].map((s) => this.view(s)).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  worker(id: string): Worker {
    if (!id) throw new InvalidArgumentError("worker_id", "required");
    const session = this.sessions.get(id);
    if (!session) throw new NotFoundError("worker", id);
    return this.view(session);
  }

  /** Live workers a selector matches (healthy, not draining). */
  match(selector: NodeSelector | undefined): Worker[] {
    return this.eligible(selector).map((c) => this.view(c.session));
  }

  drain(id: string, undrain: boolean): Worker {
    const session = this.sessions.get(id);
    if (!id) throw new InvalidArgumentError("worker_id", "required");
    if (!session) throw new NotFoundError("worker", id);
    const w = session.worker;
    if (undrain && w.health === WorkerHealth.WORKER_HEALTH_DRAINING) w.health = WorkerHealth.WORKER_HEALTH_HEALTHY;
    if (!undrain && w.health !== WorkerHealth.WORKER_HEALTH_DEAD) w.health = WorkerHealth.WORKER_HEALTH_DRAINING;
    this.log.info({ worker: id, draining: !undrain }, undrain ? "worker undrained" : "worker draining");
    this.persist(session);
    return this.view(session);
  }

  async createGroup(group: WorkerGroup | undefined): Promise<WorkerGroup> {
    const g = this.checkGroup(group);
    if (this.groups.has(g.name)) throw new AlreadyExistsError("worker group", g.name);
    if (this.groups.size >= this.options.maxGroups) {
      throw new ResourceExhaustedError(`worker group limit reached (${this.options.maxGroups} groups)`);
    }
    const now = new Date(this.clock());
    const stored = { ...g, createdAt: now, updatedAt: now };
    await this.options.groups.create(g.name, stored).catch((err: unknown) => {
      throw err instanceof AlreadyExistsError ? new AlreadyExistsError("worker group", g.name) : err;
    });
    this.groups.set(g.name, stored);
    return stored;
  }

  group(name: string): WorkerGroup {
    const g = this.groups.get(name);
    if (!g) throw new NotFoundError("worker group", name);
    return g;
  }

  listGroups(): WorkerGroup[] {
    return [...this.groups.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async updateGroup(group: WorkerGroup | undefined): Promise<WorkerGroup> {
    const g = this.checkGroup(group);
    const current = this.group(g.name);
    const updated = await this.options.groups.mutate(g.name, () => ({
      ...current,
      description: g.description,
      workerIds: g.workerIds,
      selector: g.selector,
      updatedAt: new Date(this.clock()),
    }));
    if (!updated) throw new NotFoundError("worker group", g.name);
    this.groups.set(g.name, updated.value);
    return updated.value;
  }

  async deleteGroup(name: string): Promise<void> {
    this.group(name);
    await this.options.groups.delete(name);
    this.groups.delete(name);
  }

  private checkGroup(group: WorkerGroup | undefined): WorkerGroup {
    if (!group) throw new InvalidArgumentError("group", "required");
    if (!GROUP_NAME.test(group.name)) throw new InvalidArgumentError("group.name", `must match ${GROUP_NAME}`);
    if (group.description.length > 1024) throw new InvalidArgumentError("group.description", "longer than 1024 characters");
    if (group.workerIds.length > this.options.maxWorkers)
      throw new InvalidArgumentError("group.worker_ids", `more than ${this.options.maxWorkers} ids`);
    group.workerIds.forEach((id, i) => {
      if (!WORKER_ID.test(id)) throw new InvalidArgumentError(`group.worker_ids[${i}]`, `must match ${WORKER_ID}`);
    });
    if (group.selector?.workerGroup)
      throw new InvalidArgumentError("group.selector.worker_group", "a group cannot be defined by another group");
    return group;
  }

  /** Names of the groups a worker belongs to (by id or by a group's selector). */
  private groupsOf(worker: Worker): string[] {
    const names: string[] = [];
    for (const g of this.groups.values()) {
      if (g.workerIds.includes(worker.id) || (g.selector && matchesSelector({ ...worker, groups: [] }, g.selector)))
        names.push(g.name);
    }
    return names;
  }

  private view(session: Session): Worker {
    return {
      ...session.worker,
      running: [...session.running],
      lastHeartbeatAt: new Date(session.lastSeenMs),
      groups: this.groupsOf(session.worker),
    };
  }

  // ---- health -------------------------------------------------------------

  /**
   * Health from heartbeat age and connection: silent for unhealthyAfter →
   * unhealthy; silent for deadAfter, or disconnected for reconnectGrace → dead:
   * its attempts are reported lost (and fenced) and it leaves the registry.
   */
  private sweep(): void {
    const now = this.clock();
    for (const session of this.sessions.values()) {
      const silentMs = now - session.lastSeenMs;
      const goneMs = session.disconnectedAtMs === undefined ? 0 : now - session.disconnectedAtMs;
      const w = session.worker;
      if (silentMs >= this.options.deadAfterMs || goneMs >= this.options.reconnectGraceMs) {
        const why = goneMs >= this.options.reconnectGraceMs ? `disconnected for ${goneMs} ms` : `silent for ${silentMs} ms`;
        this.log.warn({ worker: w.id, why, attempts: session.running.size }, "worker declared dead");
        for (const key of session.running) this.reportLost(w.id, key, `worker ${w.id} declared dead (${why})`);
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
    this.fenced.add(key);
    if (this.fenced.size > MAX_FENCED) this.fenced.delete(this.fenced.values().next().value as string);
    this.relay.push({ ...parsed, workerId, event: { $case: "lost", value: { reason } } });
  }

  /** Saves the worker's registry entry; a failed write is logged and retried at its next change. */
  private persist(session: Session): void {
    const record: Worker = { ...session.worker, running: [...session.running], lastHeartbeatAt: new Date(session.lastSeenMs) };
    this.options.workers.upsert(record.id, record).catch((err: unknown) => {
      this.log.warn({ worker: record.id, err: (err as Error).message }, "could not save worker record");
    });
  }
}
