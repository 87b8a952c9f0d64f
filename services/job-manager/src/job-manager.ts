/**
 * The job-manager's logic: it alone writes the `jobs` bucket. Every change to
 * a job is serialized per job in this process and applied with a
 * compare-and-set on the record, through the state machine; after each
 * applied change, `react` moves the job on (queue it, arm its delay, release
 * or cancel its dependants).
 */
import { createHash } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { EventEmitter } from "node:events";
import {
  type IdempotencyRecord,
  Job,
  JobState,
  NodeSelector,
  type AttemptEvent,
  type AttemptResult,
  type CancelAttemptRequest,
  type JobSpec,
  type JobStats,
  type ListJobsRequest,
  type ListJobsResponse,
  type PlaceJobRequest,
  type SubmitJobRequest,
  type SubmitJobResponse,
} from "@aspen/proto";
import {
  activeTraceId,
  AlreadyExistsError,
  AspenError,
  Attr,
  ConflictError,
  contextFromTraceparent,
  durationToMs,
  FailedPreconditionError,
  InvalidArgumentError,
  isRetryable,
  msToDuration,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  Spans,
  traceparentOf,
  withSpan,
  type Logger,
  type SecretSealer,
} from "@aspen/runtime";
import {
  decideRetry,
  isTerminal,
  JOB_ID,
  JOB_ID_MAX,
  newId,
  SCHEDULE_ID,
  sealJobSpec,
  stateName,
  validateJobSpec,
} from "@aspen/model";
import type { Bucket, ObjectBucket, Versioned } from "@aspen/store";
import { Dispatcher, type DispatchOutcome } from "./dispatcher.js";
import { pageOfJobs } from "./job-page.js";
import { KeyedSerial } from "./keyed-serial.js";
import { expiredJobs, queuedSince, stuckAssignments, type RetentionPolicy } from "./maintenance.js";
import { offloadLargeOutput } from "./output.js";
import { effectivePriority } from "./priority-queue.js";
import { transition } from "./state-machine.js";

/** How the job-manager reaches the coordinator (a gRPC client in production). */
export interface Placer {
  /** Chooses a worker and sends it the attempt; resolves to the worker id. */
  place(request: PlaceJobRequest): Promise<string>;
  cancel(request: CancelAttemptRequest): Promise<void>;
  /** Ids of the live workers a selector matches (for fan-out). */
  match(selector: NodeSelector | undefined): Promise<string[]>;
}

export interface JobManagerOptions {
  jobs: Bucket<Job>;
  /** Idempotency keys → job ids. */
  keys: Bucket<IdempotencyRecord>;
  outputs: ObjectBucket;
  placer: Placer;
  log: Logger;
  /** Placements in flight at once. */
  dispatchConcurrency: number;
  /** Wait before retrying a job that could not be placed, ms. */
  retryDelayMs: number;
  /** A queued job's class rises by one for every this long it waits, ms. */
  agingMs: number;
  /** An assigned attempt not started within this is declared lost, ms. */
  assignTimeoutMs: number;
  retention: RetentionPolicy;
  /** How often retention and assignment timeouts are checked, ms. */
  maintenanceIntervalMs: number;
  /**
   * Replicas: a job another replica queued is dispatched here only once it has
   * waited this long (that replica died or is saturated), ms. Default 5000.
   */
  takeoverMs?: number;
  /** This replica's name, stamped on every version it writes (Job.writer). */
  replicaId?: string;
  clock?: () => Date;
  random?: () => number;
  /**
   * Seals inline secret values (ExecSpec.secret_env) on SubmitJob; from
   * ASPEN_SECRETS_PUBLIC_KEY_FILE. Absent: inline values are refused
   * (FAILED_PRECONDITION); agent references and sealed values still pass.
   */
  sealer?: SecretSealer;
  /** Called with the stdout + stderr bytes of every reported finished attempt (metrics). */
  onOutputBytes?: (bytes: number) => void;
}

const S = JobState;
const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;
const DEFAULT_RESULT_WAIT_MS = 30_000;
const MAX_RESULT_WAIT_MS = 300_000;
const MAX_IDEMPOTENCY_KEY_BYTES = 256;
/** Refused reports kept per job, newest last. */
const MAX_REFUSED_REPORTS = 20;
const FAILURES = new Set([S.JOB_STATE_FAILED, S.JOB_STATE_TIMED_OUT, S.JOB_STATE_LOST]);

export class JobManager {
  /** Latest known record of every job, with its KV revision (the CAS base). */
  private readonly index = new Map<string, Versioned<Job>>();
  /** Pending jobs by the job they wait for. */
  private readonly dependants = new Map<string, Set<string>>();
  /** Selectors no live worker matched, until when that answer is trusted, and its reason. */
  private readonly unmatched = new Map<string, { untilMs: number; reason: string }>();
  /** Timers of jobs waiting for their not_before (retry backoff, delayed start). */
  private readonly delays = new Map<string, NodeJS.Timeout>();
  private readonly serial = new KeyedSerial();
  private readonly changes = new EventEmitter().setMaxListeners(0);
  private readonly dispatcher: Dispatcher;
  private readonly clock: () => Date;
  private readonly random: () => number;
  private readonly log: Logger;
  private readonly takeoverMs: number;
  private readonly replicaId: string;
  private maintenanceTimer: NodeJS.Timeout | undefined;
  private stopFollowing: (() => void) | undefined;
  /**
   * When a write to the store last failed for a reason other than a lost race, or when this
   * process started (ms): either way, reports may be held up for a while.
   */
  private storeTroubleAtMs = -Infinity;
  private closed = false;

  constructor(private readonly options: JobManagerOptions) {
    this.clock = options.clock ?? (() => new Date());
    this.random = options.random ?? Math.random;
    this.log = options.log;
    this.takeoverMs = options.takeoverMs ?? 5000;
    this.replicaId = options.replicaId ?? "";
    this.dispatcher = new Dispatcher((id, ready) => this.dispatchOne(id, ready), {
      concurrency: options.dispatchConcurrency,
      retryDelayMs: options.retryDelayMs,
      agingMs: options.agingMs,
      now: () => this.clock().getTime(),
    });
  }

  /**
   * Rebuilds the index, dependencies and the queue from KV, in the order jobs
   * were queued, then follows the bucket: what other replicas write reaches the
   * index (ListJobs, stats, WatchJob, dependants, their queued jobs after takeoverMs).
   */
  async start(): Promise<void> {
    this.stopFollowing = await this.options.jobs.watch(
      ">",
      (key, entry) => this.onStored(key, entry),
      (key, revision) => (this.index.get(key)?.revision ?? 0) >= revision,
    );
    const all = await this.options.jobs.all();
    for (const entry of all) if ((this.index.get(entry.key)?.revision ?? 0) < entry.revision) this.index.set(entry.key, entry);
    const byQueueTime = [...all].sort((a, b) => queuedSince(a.value) - queuedSince(b.value));
    for (const entry of byQueueTime) this.react(entry.value);
    const queued = all.filter((e) => e.value.state === S.JOB_STATE_QUEUED).length;
    this.log.info({ jobs: all.length, queued }, "job index loaded");
    // Reports that came while this process was down wait in the coordinator, which sends them
    // again once it reaches this process (its relay retries at most 1 s apart; the channel's
    // reconnect backoff is at most 2 s ± 20 %). An assignment is declared lost only once this
    // process has itself waited a whole assign timeout for its start report, as after a store
    // outage.
    this.storeTroubleAtMs = this.clock().getTime();
    this.maintenanceTimer = setInterval(() => void this.maintain(), this.options.maintenanceIntervalMs);
    this.maintenanceTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stopFollowing?.();
    clearInterval(this.maintenanceTimer);
    for (const timer of this.delays.values()) clearTimeout(timer);
    this.delays.clear();
    await this.dispatcher.close();
    this.changes.removeAllListeners();
  }

  // ---- submission -------------------------------------------------------

  /** `caller`: the authenticated submitter (its token name), recorded on the job and in the agent's audit. */
  async submit(request: SubmitJobRequest, caller = ""): Promise<SubmitJobResponse> {
    if (request.jobId && (request.jobId.length > JOB_ID_MAX || !JOB_ID.test(request.jobId))) {
      throw new InvalidArgumentError("job_id", `must be at most ${JOB_ID_MAX} characters of ${JOB_ID}`);
    }
    if (request.scheduleId && !SCHEDULE_ID.test(request.scheduleId)) {
      throw new InvalidArgumentError("schedule_id", `must match ${SCHEDULE_ID}`);
    }
    if (Buffer.byteLength(request.idempotencyKey) > MAX_IDEMPOTENCY_KEY_BYTES) {
      throw new InvalidArgumentError("idempotency_key", `longer than ${MAX_IDEMPOTENCY_KEY_BYTES} bytes`);
    }
    if (request.traceparent && !TRACEPARENT.test(request.traceparent)) {
      throw new InvalidArgumentError("traceparent", "must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
    }
    validateJobSpec(request.spec, "spec");
    // Inline secret values are sealed here and never stored or passed on in clear.
    const spec = sealJobSpec(request.spec, this.options.sealer, "spec");
    let id = request.jobId || "";
    if (request.idempotencyKey) {
      id = await this.claimKey(request.idempotencyKey, id || newId("j"));
      if (request.jobId && id !== request.jobId) {
        throw new InvalidArgumentError(
          "idempotency_key",
          `already names job ${JSON.stringify(id)}, not ${JSON.stringify(request.jobId)}`,
        );
      }
    }
    id ||= newId("j");
    const submittedBy = request.scheduleId ? `schedule:${request.scheduleId}${caller ? ` (${caller})` : ""}` : caller;
    await this.checkDependencies(id, spec.dependsOn, "spec.depends_on");
    const span = {
      // A submission from a batch names its caller's trace; a single call's trace comes with the call.
      ...(request.traceparent ? { parent: contextFromTraceparent(request.traceparent) } : {}),
      attributes: { [Attr.jobId]: id, [Attr.scheduleId]: request.scheduleId },
    };
    return withSpan(Spans.submit, span, async () => {
      const created =
        (spec.placement?.fanOut ?? 0) !== 0
          ? await this.submitFanOut(id, spec, request, activeTraceId(), traceparentOf(), submittedBy)
          : await this.createJob(id, spec, request, activeTraceId(), traceparentOf(), { submittedBy });
      // A chain: each step depends on the one before. Created (if absent) on every
      // submission, so a crash between the steps is repaired by submitting again.
      let previous = id;
      for (const [i, step] of spec.then.entries()) {
        const stepId = `${id}.then${i + 1}`;
        await this.createJob(
          stepId,
          { ...step, dependsOn: [previous] },
          { ...request, idempotencyKey: "" },
          created.job?.traceId ?? "",
          created.job?.traceparent ?? "",
          { submittedBy },
        );
        previous = stepId;
      }
      return created;
    });
  }

  /** Creates the job if absent; either way returns the stored one. */
  private async createJob(
    id: string,
    spec: JobSpec,
    request: SubmitJobRequest,
    traceId: string,
    traceparent: string,
    extra: Partial<Job> = {},
  ): Promise<SubmitJobResponse> {
    const now = this.clock();
    const fanOut = spec.placement?.fanOut ?? 0;
    const waits = spec.dependsOn.length > 0 || fanOut !== 0 || (request.notBefore !== undefined && request.notBefore > now);
    const draft = Job.fromPartial({
      id,
      spec: { ...spec, then: [] },
      scheduleId: request.scheduleId,
      scheduledAt: request.scheduledAt,
      submittedAt: now,
      traceId,
      traceparent,
      idempotencyKey: request.idempotencyKey,
      notBefore: request.notBefore,
      ...extra,
    });
    // A selector no live worker matched a moment ago: the job says so from its first record.
    const knownUnmatched = this.unmatched.get(selectorKey(spec));
    const unmatched = knownUnmatched && knownUnmatched.untilMs > now.getTime() ? knownUnmatched : undefined;
    const queued = transition({ ...draft, writer: this.replicaId }, waits ? S.JOB_STATE_PENDING : S.JOB_STATE_QUEUED, {
      actor: request.scheduleId ? "scheduler" : "client",
      at: now,
      reason: waits
        ? waitReason(spec, request.notBefore, extra.children?.length ?? 0)
        : (unmatched?.reason ?? "waiting for a worker"),
    });
    // Nothing waiting ahead of it and a placement slot free: created already reserved for
    // attempt 1 (one write instead of two), then placed. Otherwise it queues.
    const direct = !waits && !unmatched && !this.closed && this.dispatcher.claimDirect();
    const job = direct ? assign(queued, 1, now) : queued;
    try {
      const revision = await this.options.jobs.create(id, job);
      this.remember({ key: id, value: job, revision });
      if (direct) this.placeDirect(id);
      return { job, created: true };
    } catch (err) {
      if (direct) this.dispatcher.settleDirect("gone");
      if (!(err instanceof AlreadyExistsError)) throw err;
      const existing = await this.options.jobs.get(id);
      if (!existing) throw new ResourceExhaustedError(`job ${id} is being replaced; retry`);
      return { job: existing.value, created: false };
    }
  }

  /**
   * Fan-out: one child job per chosen worker (every live matching worker, or
   * the first N), each pinned to its worker; the parent waits in PENDING and
   * ends with their aggregate ("2 of 3 succeeded").
   */
  private async submitFanOut(
    id: string,
    spec: JobSpec,
    request: SubmitJobRequest,
    traceId: string,
    traceparent: string,
    submittedBy: string,
  ): Promise<SubmitJobResponse> {
    const placement = spec.placement!;
    const existing = this.index.get(id)?.value;
    if (existing) return { job: existing, created: false };
    const workers = await this.options.placer.match(placement.selector);
    const chosen = placement.fanOut === -1 ? workers : workers.slice(0, placement.fanOut);
    const childId = (worker: string) => `${id}.on-${worker.replace(/\./g, "_")}`;
    const parent = await this.createJob(id, { ...spec, then: [] }, request, traceId, traceparent, {
      children: chosen.map(childId),
      submittedBy,
    });
    if (!parent.created) return parent;
    for (const worker of chosen) {
      const pinned: JobSpec = {
        ...spec,
        then: [],
        placement: { ...placement, fanOut: 0, selector: NodeSelector.fromPartial({ ...placement.selector, workerId: worker }) },
      };
      await this.createJob(childId(worker), pinned, { ...request, idempotencyKey: "" }, traceId, traceparent, {
        parentId: id,
        submittedBy,
      });
    }
    return parent;
  }

  /** The job id an idempotency key names, claiming it for `id` when new. */
  private async claimKey(key: string, id: string): Promise<string> {
    const hash = keyHash(key);
    const existing = await this.options.keys.get(hash);
    if (existing) return existing.value.jobId;
    try {
      await this.options.keys.create(hash, { jobId: id, createdAt: this.clock() });
      return id;
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
      return (await this.options.keys.get(hash))?.value.jobId ?? id;
    }
  }

  /** Dependencies must exist when the job is submitted, so no cycle can form except a job naming itself. */
  private async checkDependencies(id: string, dependsOn: string[], field: string): Promise<void> {
    for (const [i, dep] of dependsOn.entries()) {
      if (dep === id) throw new InvalidArgumentError(`${field}[${i}]`, "a job cannot depend on itself (cycle)");
      if (!this.index.has(dep) && !(await this.options.jobs.get(dep))) {
        throw new InvalidArgumentError(`${field}[${i}]`, `unknown job ${JSON.stringify(dep)}`);
      }
    }
  }

  // ---- reading ----------------------------------------------------------

  async get(id: string): Promise<Job> {
    if (!id) throw new InvalidArgumentError("job_id", "required");
    // No job has it, and it is no valid store key (which would fail as INTERNAL there).
    if (!JOB_ID.test(id)) throw new InvalidArgumentError("job_id", `not a job id (${JOB_ID})`);
    const entry = await this.options.jobs.get(id);
    if (!entry) throw new NotFoundError("job", id);
    return entry.value;
  }

  /** Newest first. The page token is a cursor (job-page.ts). */
  list(request: ListJobsRequest): ListJobsResponse {
    if (request.pageSize > MAX_PAGE) throw new InvalidArgumentError("page_size", `must be at most ${MAX_PAGE}`);
    const states = new Set(request.states);
    const tags = Object.entries(request.tags);
    const after = request.submittedAfter?.getTime() ?? -Infinity;
    const before = request.submittedBefore?.getTime() ?? Infinity;
    const matches = (j: Job) => {
      const submitted = j.submittedAt?.getTime() ?? 0;
      return (
        (states.size === 0 || states.has(j.state)) &&
        (!request.scheduleId || j.scheduleId === request.scheduleId) &&
        (!request.workerId || j.workerId === request.workerId) &&
        tags.every(([k, v]) => j.spec?.tags[k] === v) &&
        submitted >= after &&
        submitted < before
      );
    };
    const jobs = Array.from(this.index.values(), (entry) => entry.value);
    return pageOfJobs(jobs, matches, request.pageSize || DEFAULT_PAGE, request.pageToken, (id) => this.index.get(id)?.value);
  }

  /** The job once terminal, or as it is when `waitMs` or `signal` runs out. */
  async result(id: string, waitMs: number, signal?: AbortSignal): Promise<Job> {
    if (waitMs > MAX_RESULT_WAIT_MS) throw new InvalidArgumentError("wait", `must be at most ${MAX_RESULT_WAIT_MS / 1000} s`);
    // Subscribe before reading, so a change in between is not missed.
    let latest: Job | undefined;
    let finish: () => void = () => {};
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const unsubscribe = this.subscribe(id, (job) => {
      latest = job;
      if (isTerminal(job.state)) finish();
    });
    const timer = setTimeout(finish, waitMs || DEFAULT_RESULT_WAIT_MS);
    signal?.addEventListener("abort", finish);
    try {
      const now = await this.get(id);
      latest ??= now;
      if (!isTerminal(latest.state)) await finished;
      return latest;
    } finally {
      clearTimeout(timer);
      unsubscribe();
      signal?.removeEventListener("abort", finish);
    }
  }

  stats(): JobStats {
    const byState: Record<string, number> = {};
    for (const value of Object.values(JobState)) {
      if (typeof value === "number" && value > 0) byState[stateName(value)] = 0;
    }
    const depth = new Map<number, number>();
    let oldest = Infinity;
    for (const { value: job } of this.index.values()) {
      const name = stateName(job.state);
      byState[name] = (byState[name] ?? 0) + 1;
      if (job.state === S.JOB_STATE_QUEUED) {
        const p = effectivePriority(job.spec?.priority ?? 0);
        depth.set(p, (depth.get(p) ?? 0) + 1);
        oldest = Math.min(oldest, queuedSince(job));
      }
    }
    return {
      byState,
      queueDepth: this.dispatcher.depths().map(({ priority }) => ({ priority, depth: depth.get(priority) ?? 0 })),
      oldestQueuedAge: oldest === Infinity ? undefined : msToDuration(Math.max(0, this.clock().getTime() - oldest)),
    };
  }

  /** Calls `onChange` with every later version of the job; returns the unsubscribe. */
  subscribe(id: string, onChange: (job: Job) => void): () => void {
    this.changes.on(id, onChange);
    return () => this.changes.off(id, onChange);
  }

  // ---- control ----------------------------------------------------------

  async cancel(id: string, reason: string): Promise<Job> {
    const current = await this.get(id);
    if (isTerminal(current.state)) {
      throw new FailedPreconditionError(`job ${id} already finished (${stateName(current.state)})`);
    }
    const cancelReason = reason || "cancelled by user";
    const waiting = (j: Job) => j.state === S.JOB_STATE_QUEUED || j.state === S.JOB_STATE_PENDING;
    if (waiting(current)) {
      const job = await this.write(id, (j) =>
        waiting(j)
          ? transition(j, S.JOB_STATE_CANCELLED, {
              actor: "user",
              at: this.clock(),
              reason: cancelReason,
              patch: { cancelReason },
            })
          : undefined,
      );
      if (job.state === S.JOB_STATE_CANCELLED) return job;
    }
    // Assigned or running: the agent stops it (TERM, grace, KILL) and reports CANCELLED.
    const live = await this.write(id, (j) => (isTerminal(j.state) ? undefined : { ...j, cancelReason }));
    if (isTerminal(live.state)) return live;
    try {
      await this.options.placer.cancel({ jobId: id, attempt: live.attempt, reason: cancelReason });
    } catch (err) {
      // Still being placed: the cancel is applied when the attempt reports it started.
      if (!(err instanceof AspenError && err.code === status.NOT_FOUND)) throw err;
    }
    return live;
  }

  /** A failed, timed-out, lost or dead job goes back to the queue for a new attempt. */
  async requeue(id: string, reason: string): Promise<Job> {
    const current = await this.get(id);
    if (!FAILURES.has(current.state) && current.state !== S.JOB_STATE_DEAD) {
      throw new FailedPreconditionError(
        `job ${id} is ${stateName(current.state)}; only DEAD, FAILED, TIMED_OUT or LOST jobs can be requeued`,
      );
    }
    return this.write(id, (j) =>
      transition(j, S.JOB_STATE_QUEUED, {
        actor: "user",
        at: this.clock(),
        reason: `requeued${reason ? `: ${reason}` : ""}`,
        patch: { notBefore: undefined, retryDelay: undefined, cancelReason: "", attemptBase: j.attempt },
      }),
    );
  }

  /** Deletes DEAD jobs (all, or the listed ones) with their stored outputs. */
  async purgeDeadLetters(ids: string[]): Promise<number> {
    const targets =
      ids.length > 0 ? ids : [...this.index.values()].filter((e) => e.value.state === S.JOB_STATE_DEAD).map((e) => e.key);
    let purged = 0;
    for (const [i, id] of targets.entries()) {
      const job = this.index.get(id)?.value ?? (await this.options.jobs.get(id))?.value;
      if (!job) throw new NotFoundError("job", id);
      if (job.state !== S.JOB_STATE_DEAD)
        throw new FailedPreconditionError(`job_ids[${i}]: job ${id} is ${stateName(job.state)}, not DEAD`);
      if (await this.remove(id, (j) => j.state === S.JOB_STATE_DEAD)) purged++;
    }
    return purged;
  }

  // ---- attempt events ---------------------------------------------------

  /**
   * Applies attempt events reported by the coordinator. An event for an
   * attempt other than the job's current one is fenced: refused, never applied.
   */
  async report(events: AttemptEvent[], notHeld: ReadonlySet<number> = new Set()): Promise<string[]> {
    const refusals: string[] = events.map(() => "");
    let transient: unknown;
    // Events of one job (a short job's "started" and "finished" often arrive together)
    // are applied in order in a single compare-and-set.
    const byJob = new Map<string, number[]>();
    events.forEach((event, i) => {
      const list = byJob.get(event.jobId);
      if (list) list.push(i);
      else byJob.set(event.jobId, [i]);
    });
    await Promise.all(
      [...byJob].map(async ([jobId, indexes]) => {
        const steps = await Promise.all(
          indexes.map((i) =>
            notHeld.has(i)
              ? Promise.resolve(
                  new PermissionDeniedError(
                    `worker ${events[i]!.workerId} does not hold attempt ${events[i]!.attempt} (fenced, or never assigned to it)`,
                  ),
                )
              : this.prepareEvent(events[i]!).catch((err: unknown) => err as Error),
          ),
        );
        let freed = false;
        try {
          const job = await this.write(jobId, (current) => {
            let job = current;
            freed = false;
            indexes.forEach((i, k) => {
              const step = steps[k]!;
              try {
                if (step instanceof Error) throw step;
                job = step.change(job) ?? job;
                refusals[i] = "";
                freed ||= step.freesSlot;
              } catch (err) {
                refusals[i] = err instanceof Error ? err.message : String(err);
                // Refused, never applied, but recorded on the job for people to see.
                const e = events[i]!;
                const what =
                  e.event?.$case === "finished" ? `finished (${exitSummary(e.event.value.result)})` : (e.event?.$case ?? "event");
                const line = `${this.clock().toISOString()} attempt ${e.attempt} ${what} from ${e.workerId}: ${refusals[i]}`;
                job = { ...job, refusedReports: [...job.refusedReports, line].slice(-MAX_REFUSED_REPORTS) };
              }
            });
            return job === current ? undefined : job;
          });
          // A cancel that came while the attempt was being placed takes effect once it runs.
          if (job.cancelReason && job.state === S.JOB_STATE_RUNNING) {
            this.options.placer
              .cancel({ jobId, attempt: job.attempt, reason: job.cancelReason })
              .catch((err: unknown) => this.log.warn({ job: jobId, err: (err as Error).message }, "late cancel failed"));
          }
        } catch (err) {
          // NATS unreachable or electing a leader: not a refusal. The whole report fails so
          // the coordinator sends it again (an event already applied is then a no-op).
          if (isRetryable(err)) {
            transient ??= err;
            this.storeTroubleAtMs = this.clock().getTime();
            return;
          }
          for (const i of indexes) refusals[i] ||= err instanceof Error ? err.message : String(err);
        }
        if (freed) this.dispatcher.capacityFreed();
      }),
    );
    if (transient) throw transient;
    refusals.forEach((reason, i) => {
      const e = events[i]!;
      if (reason) this.log.warn({ job: e.jobId, attempt: e.attempt, worker: e.workerId, reason }, "attempt event refused");
    });
    return refusals;
  }

  /**
   * The change one attempt event makes to its job, as a pure function (it may
   * be re-applied after a lost compare-and-set). Throws to refuse the event:
   * an event for another attempt than the job's current one is fenced.
   */
  private async prepareEvent(event: AttemptEvent): Promise<{ change: (job: Job) => Job | undefined; freesSlot: boolean }> {
    const actor = `agent:${event.workerId}`;
    const fence = (job: Job) => {
      if (job.attempt !== event.attempt) {
        throw new FailedPreconditionError(
          `job ${job.id}: attempt ${event.attempt} is fenced (current attempt is ${job.attempt})`,
        );
      }
    };
    const e = event.event;
    if (!e) throw new InvalidArgumentError("events[].event", "required");
    switch (e.$case) {
      case "started":
        return {
          freesSlot: false,
          change: (job) => {
            fence(job);
            // Already running, or already past it (a report sent again): nothing to do.
            if (job.state === S.JOB_STATE_RUNNING || reportedEnd(job, event)) return undefined;
            return transition(job, S.JOB_STATE_RUNNING, {
              actor,
              at: this.clock(),
              reason: `running on ${event.workerId}`,
              patch: { startedAt: e.value.startedAt ?? this.clock(), workerId: event.workerId },
            });
          },
        };
      case "finished": {
        const reported = e.value.result;
        this.options.onOutputBytes?.((reported?.stdout?.totalBytes ?? 0) + (reported?.stderr?.totalBytes ?? 0));
        const result = await offloadLargeOutput(e.value.result, event.jobId, event.attempt, this.options.outputs);
        return {
          freesSlot: true,
          change: (current) => {
            fence(current);
            if (reportedEnd(current, event)) return undefined; // the same report, delivered again
            // An attempt that ended within the agent's report delay comes as "finished" alone:
            // it ran (it has a pid), so its RUNNING is recorded first, from the result.
            const job =
              current.state === S.JOB_STATE_ASSIGNED && (result?.pid ?? 0) > 0
                ? transition(current, S.JOB_STATE_RUNNING, {
                    actor,
                    at: this.clock(),
                    reason: `running on ${event.workerId}`,
                    patch: { startedAt: result?.startedAt ?? this.clock(), workerId: event.workerId },
                  })
                : current;
            const [to, reason] = outcome(result, job);
            const ended = transition(job, to, {
              actor,
              at: this.clock(),
              reason,
              patch: {
                result,
                workerId: event.workerId,
                startedAt: job.startedAt ?? result.startedAt,
                finishedAt: result.finishedAt ?? this.clock(),
              },
            });
            return this.afterFailure(
              ended,
              result.exitCode >= 0 && !result.signal && !result.error ? result.exitCode : undefined,
            );
          },
        };
      }
      case "lost":
        return {
          freesSlot: true,
          change: (job) => {
            fence(job);
            const lost = transition(job, S.JOB_STATE_LOST, { actor: "coordinator", at: this.clock(), reason: e.value.reason });
            return this.afterFailure(lost, undefined);
          },
        };
    }
  }

  /** Applies the retry policy to a job that just ended FAILED, TIMED_OUT or LOST (in the same write). */
  private afterFailure(job: Job, exitCode: number | undefined): Job {
    if (!FAILURES.has(job.state)) return job;
    const verdict = decideRetry(
      job.spec?.retry,
      job.spec?.atMostOnce ?? false,
      { state: job.state, attempt: job.attempt - job.attemptBase, exitCode },
      this.random,
    );
    const at = this.clock();
    if (verdict.action === "retry") {
      return transition(job, S.JOB_STATE_QUEUED, {
        actor: "job-manager",
        at,
        reason: `${job.reason}; ${verdict.reason}`,
        patch: { notBefore: new Date(at.getTime() + verdict.delayMs), retryDelay: msToDuration(verdict.delayMs) },
      });
    }
    if (verdict.action === "dead") {
      return transition(job, S.JOB_STATE_DEAD, { actor: "job-manager", at, reason: `${job.reason}; ${verdict.reason}` });
    }
    return job;
  }

  // ---- dispatch ---------------------------------------------------------

  /**
   * Places the job's next attempt. The attempt number is reserved in the
   * record (QUEUED → ASSIGNED) before the coordinator is asked, so a crash
   * can never send the same attempt twice; a refused placement puts it back.
   * `ready` (a throttled round) is awaited between the reservation and the placement.
   */
  private async dispatchOne(id: string, ready?: () => Promise<void>): Promise<DispatchOutcome> {
    return this.serial.run(id, async () => {
      const current = this.index.get(id)?.value;
      if (!current || current.state !== S.JOB_STATE_QUEUED) return "gone";
      if (current.notBefore && current.notBefore.getTime() > this.clock().getTime()) return "gone"; // its timer queues it
      // A selector no worker matched a moment ago is not asked again until retryDelayMs has passed.
      const selector = selectorKey(current.spec);
      const unmatched = this.unmatched.get(selector);
      if (unmatched && unmatched.untilMs > this.clock().getTime()) {
        await this.writeLocked(id, (j) =>
          j.reason === unmatched.reason || j.state !== S.JOB_STATE_QUEUED ? undefined : { ...j, reason: unmatched.reason },
        );
        return "no-match";
      }
      const attempt = current.attempt + 1;
      return this.placeAttempt(current, attempt, async () => {
        const now = this.clock();
        // Another replica may reserve this attempt first (its CAS wins): then it is theirs.
        let reserved = false;
        await this.writeLocked(id, (j) => {
          reserved = j.state === S.JOB_STATE_QUEUED && j.attempt === attempt - 1;
          return reserved ? assign(j, attempt, now) : undefined;
        });
        if (reserved) await ready?.();
        return reserved;
      });
    });
  }

  /**
   * Reserves attempt `attempt` (`reserve`, false: someone else did) and asks the
   * coordinator to place it; a refused placement returns the job to QUEUED.
   * Runs under the job's serial lock.
   */
  private async placeAttempt(current: Job, attempt: number, reserve: () => Promise<boolean>): Promise<DispatchOutcome> {
    const id = current.id;
    const selector = selectorKey(current.spec);
    return withSpan(
      Spans.dispatch,
      { parent: contextFromTraceparent(current.traceparent), attributes: { [Attr.jobId]: id, [Attr.attempt]: attempt } },
      async (span) => {
        if (!(await reserve())) return "gone";
        try {
          const workerId = await this.options.placer.place({
            jobId: id,
            attempt,
            spec: current.spec,
            traceparent: traceparentOf(),
            submittedAt: current.submittedAt,
            affinityKey: current.spec?.placement?.affinityKey || current.scheduleId || current.id,
            submittedBy: current.submittedBy,
          });
          span.setAttribute(Attr.workerId, workerId);
          this.unmatched.delete(selector);
          return "placed";
        } catch (err) {
          const outcome: DispatchOutcome =
            err instanceof FailedPreconditionError
              ? "no-match"
              : err instanceof ResourceExhaustedError
                ? "no-capacity"
                : "unavailable";
          const message = err instanceof Error ? err.message : String(err);
          if (outcome === "unavailable") this.log.warn({ job: id, err: message }, "placement failed; will retry");
          if (outcome === "no-match")
            this.unmatched.set(selector, { untilMs: this.clock().getTime() + this.options.retryDelayMs, reason: message });
          await this.writeLocked(id, (j) =>
            j.state !== S.JOB_STATE_ASSIGNED || j.attempt !== attempt
              ? undefined
              : transition(j, S.JOB_STATE_QUEUED, {
                  actor: "job-manager",
                  at: this.clock(),
                  reason: outcome === "no-capacity" ? `waiting for capacity: ${message}` : message,
                  patch: { attempt: attempt - 1, assignedAt: undefined },
                }),
          );
          return outcome;
        }
      },
    );
  }

  /**
   * Places a job created already reserved for attempt 1 (the dispatcher's
   * direct path), unless a cancel or another change came first.
   */
  private placeDirect(id: string): void {
    void this.serial
      .run(id, async () => {
        const current = this.index.get(id)?.value;
        if (
          !current ||
          current.state !== S.JOB_STATE_ASSIGNED ||
          current.attempt !== 1 ||
          current.workerId ||
          current.cancelReason
        )
          return "gone";
        return this.placeAttempt(current, 1, () => Promise.resolve(true));
      })
      .catch((err: unknown): DispatchOutcome => {
        this.log.warn({ job: id, err: (err as Error).message }, "direct placement failed; will retry");
        return "unavailable";
      })
      .then((outcome) => this.dispatcher.settleDirect(outcome));
  }

  // ---- reacting to changes ----------------------------------------------

  /**
   * Moves a job on after any change: queue or delay it, track or release its dependencies.
   * `foreign`: written by another replica, whose queued jobs this one takes only after takeoverMs.
   */
  private react(job: Job, foreign = false): void {
    if (this.closed) return;
    const now = this.clock().getTime();
    let notBefore = job.notBefore?.getTime() ?? 0;
    if (foreign && job.state === S.JOB_STATE_QUEUED) notBefore = Math.max(notBefore, queuedSince(job) + this.takeoverMs);
    if (job.state === S.JOB_STATE_QUEUED || job.state === S.JOB_STATE_PENDING) {
      if (notBefore > now) {
        this.delay(job.id, notBefore - now);
        return;
      }
    }
    if (job.state === S.JOB_STATE_QUEUED) {
      this.dispatcher.enqueue(job.id, job.spec?.priority ?? 0, queuedSince(job), selectorKey(job.spec));
    } else if (job.state === S.JOB_STATE_PENDING) {
      for (const dep of job.spec?.dependsOn ?? []) {
        let set = this.dependants.get(dep);
        if (!set) this.dependants.set(dep, (set = new Set()));
        set.add(job.id);
      }
      void this.resolvePending(job.id);
    } else if (isTerminal(job.state)) {
      if (job.parentId) void this.resolvePending(job.parentId);
      const waiting = this.dependants.get(job.id);
      if (waiting) for (const dependant of waiting) void this.resolvePending(dependant);
    }
  }

  private delay(id: string, ms: number): void {
    clearTimeout(this.delays.get(id));
    const timer = setTimeout(() => {
      this.delays.delete(id);
      const job = this.index.get(id)?.value;
      if (!job) return;
      if (job.state === S.JOB_STATE_PENDING) void this.resolvePending(id);
      else this.react(job);
    }, ms);
    timer.unref();
    this.delays.set(id, timer);
  }

  /** A pending job whose time has come and whose dependencies all succeeded is queued; one whose dependency failed is cancelled. */
  private async resolvePending(id: string): Promise<void> {
    try {
      await this.write(id, (job) => {
        if (job.state !== S.JOB_STATE_PENDING) return undefined;
        const now = this.clock();
        if (job.notBefore && job.notBefore > now) return undefined;
        if ((job.spec?.placement?.fanOut ?? 0) !== 0) return this.aggregate(job, now);
        for (const dep of job.spec?.dependsOn ?? []) {
          const d = this.index.get(dep)?.value;
          if (!d) {
            return transition(job, S.JOB_STATE_CANCELLED, {
              actor: "job-manager",
              at: now,
              reason: `dependency ${dep} no longer exists`,
            });
          }
          if (isTerminal(d.state) && d.state !== S.JOB_STATE_SUCCEEDED) {
            return transition(job, S.JOB_STATE_CANCELLED, {
              actor: "job-manager",
              at: now,
              reason: `dependency ${dep} ended ${stateName(d.state)}`,
            });
          }
          if (d.state !== S.JOB_STATE_SUCCEEDED) return undefined;
        }
        return transition(job, S.JOB_STATE_QUEUED, {
          actor: "job-manager",
          at: now,
          reason: "dependencies succeeded; waiting for a worker",
        });
      });
    } catch (err) {
      this.log.error({ job: id, err: (err as Error).message }, "could not resolve a pending job");
    }
  }

  /** A fan-out parent ends once every child has: SUCCEEDED if all did, else FAILED. */
  private aggregate(parent: Job, now: Date): Job | undefined {
    if (parent.children.length === 0) {
      return transition(parent, S.JOB_STATE_FAILED, {
        actor: "job-manager",
        at: now,
        reason: `fan-out: no live worker matches ${describe(parent.spec?.placement?.selector)}`,
      });
    }
    const children = parent.children.map((id) => this.index.get(id)?.value);
    if (children.some((c) => !c || !isTerminal(c.state))) return undefined;
    const succeeded = children.filter((c) => c?.state === S.JOB_STATE_SUCCEEDED).length;
    const to = succeeded === children.length ? S.JOB_STATE_SUCCEEDED : S.JOB_STATE_FAILED;
    return transition(parent, to, {
      actor: "job-manager",
      at: now,
      reason: `fan-out: ${succeeded} of ${children.length} succeeded`,
      patch: { finishedAt: now },
    });
  }

  // ---- maintenance ------------------------------------------------------

  /**
   * While our store had trouble, start reports could not be written either: an
   * assignment is declared lost only after a whole timeout of a working store. Trouble
   * is a write that failed, the connection being down (or back only lately), or a write
   * waiting too long — the last shows at once, where its failure would show only at the
   * write's own timeout, and a LOST write made meanwhile would go out on reconnect.
   */
  private storeTroubled(now: number): boolean {
    return now - Math.max(this.storeTroubleAtMs, this.options.jobs.troubleAtMs(now)) < this.options.assignTimeoutMs;
  }

  /** Declares never-started assignments lost and applies retention. Runs every maintenanceIntervalMs. */
  private async maintain(): Promise<void> {
    const now = this.clock().getTime();
    const jobs = [...this.index.values()].map((e) => e.value);
    const stuck = this.storeTroubled(now) ? [] : stuckAssignments(jobs, now, this.options.assignTimeoutMs);
    for (const job of stuck) {
      await this.write(job.id, (j) =>
        // Checked again: the write may have waited for the job's lock while trouble began.
        j.state === S.JOB_STATE_ASSIGNED && j.attempt === job.attempt && !this.storeTroubled(this.clock().getTime())
          ? this.afterFailure(
              transition(j, S.JOB_STATE_LOST, {
                actor: "job-manager",
                at: this.clock(),
                reason: `attempt ${j.attempt} was not started within ${this.options.assignTimeoutMs} ms`,
              }),
              undefined,
            )
          : undefined,
      ).catch((err: unknown) => this.log.warn({ job: job.id, err: (err as Error).message }, "could not expire an assignment"));
    }
    const pinned = new Set<string>();
    for (const [dep, waiting] of this.dependants) if (waiting.size > 0) pinned.add(dep);
    for (const id of expiredJobs(jobs, now, this.options.retention, pinned)) {
      await this.remove(id, (j) => isTerminal(j.state) && j.state !== S.JOB_STATE_DEAD).catch((err: unknown) =>
        this.log.warn({ job: id, err: (err as Error).message }, "retention could not remove a job"),
      );
    }
  }

  /** Deletes a job record (if `still` holds for its current version), its outputs and its idempotency key. */
  private async remove(id: string, still: (job: Job) => boolean): Promise<boolean> {
    return this.serial.run(id, async () => {
      const entry = this.index.get(id) ?? (await this.options.jobs.get(id));
      if (!entry || !still(entry.value)) return false;
      await this.options.jobs.delete(id, entry.revision);
      this.index.delete(id);
      this.dependants.delete(id);
      const job = entry.value;
      const objects = [job.result?.stdout?.objectName, job.result?.stderr?.objectName].filter((n): n is string => !!n);
      await Promise.all(objects.map((name) => this.options.outputs.delete(name).catch(() => undefined)));
      if (job.idempotencyKey) await this.options.keys.delete(keyHash(job.idempotencyKey)).catch(() => undefined);
      return true;
    });
  }

  // ---- writes -----------------------------------------------------------

  /** Applies `change` to the job in this process's per-job order. */
  private write(id: string, change: (job: Job) => Job | undefined): Promise<Job> {
    return this.serial.run(id, () => this.writeLocked(id, change));
  }

  /** Compare-and-set against the indexed revision; on a lost race, re-read and re-apply. */
  private async writeLocked(id: string, change: (job: Job) => Job | undefined): Promise<Job> {
    for (let tries = 0; tries < 10; tries++) {
      const current = this.index.get(id) ?? (await this.options.jobs.get(id));
      if (!current) throw new NotFoundError("job", id);
      const changed = change(current.value);
      if (!changed) return current.value;
      const next = changed.writer === this.replicaId ? changed : { ...changed, writer: this.replicaId };
      try {
        const revision = await this.options.jobs.update(id, next, current.revision);
        this.remember({ key: id, value: next, revision });
        return next;
      } catch (err) {
        if (!(err instanceof ConflictError)) {
          this.storeTroubleAtMs = this.clock().getTime();
          throw err;
        }
        const fresh = await this.options.jobs.get(id);
        if (fresh) this.remember(fresh, fresh.value.writer !== this.replicaId);
        else this.index.delete(id);
      }
    }
    throw new ConflictError(`job ${id}: too many concurrent updates`);
  }

  /** Indexes a version of a job (ours, or another replica's: `foreign`) unless a newer one is known. */
  private remember(entry: Versioned<Job>, foreign = false): void {
    const known = this.index.get(entry.key);
    if (known && known.revision >= entry.revision) return;
    const previous = known?.value.state;
    this.index.set(entry.key, entry);
    this.changes.emit(entry.key, entry.value);
    if (previous === entry.value.state) return;
    // Another replica received the report that freed a slot: our throttled queue may go on.
    // (ASSIGNED → RUNNING frees none: the attempt holds its slot on.)
    const freed = previous === S.JOB_STATE_ASSIGNED || previous === S.JOB_STATE_RUNNING;
    if (foreign && freed && entry.value.state !== S.JOB_STATE_RUNNING) this.dispatcher.capacityFreed();
    this.react(entry.value, foreign);
  }

  /** A change in the bucket (echoes of our own writes are skipped before they get here). */
  private onStored(key: string, entry: Versioned<Job> | undefined): void {
    if (this.closed) return;
    if (entry) {
      this.remember(entry, entry.value.writer !== this.replicaId);
      return;
    }
    // Deleted by another replica's retention or purge.
    this.index.delete(key);
    this.dependants.delete(key);
  }
}

/** QUEUED → ASSIGNED: attempt `attempt` is reserved in the record before the coordinator is asked. */
function assign(job: Job, attempt: number, at: Date): Job {
  return transition(job, S.JOB_STATE_ASSIGNED, {
    actor: "job-manager",
    at,
    reason: `placing attempt ${attempt}`,
    patch: { attempt, workerId: "", assignedAt: at, startedAt: undefined, finishedAt: undefined },
  });
}

/** True when this attempt's end was already applied from the same worker (a report sent again). */
function reportedEnd(job: Job, event: AttemptEvent): boolean {
  const actor = `agent:${event.workerId}`;
  return job.history.some((h) => h.attempt === event.attempt && h.actor === actor && ENDS.has(h.to));
}

const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

const ENDS = new Set([S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_TIMED_OUT, S.JOB_STATE_CANCELLED]);

function exitSummary(result: AttemptResult | undefined): string {
  if (!result) return "no result";
  return result.error || (result.signal ? result.signal : `exit code ${result.exitCode}`);
}

function describe(selector: NodeSelector | undefined): string {
  return selector ? JSON.stringify(NodeSelector.toJSON(selector)) : "any worker";
}

/** Identity of a job's placement constraints, for the no-match cache. */
function selectorKey(spec: JobSpec | undefined): string {
  const sel = spec?.placement?.selector;
  return sel ? JSON.stringify(NodeSelector.toJSON(sel)) : "";
}

function keyHash(key: string): string {
  return createHash("sha256").update(key).digest("base64url");
}

function waitReason(spec: JobSpec, notBefore: Date | undefined, children: number): string {
  if ((spec.placement?.fanOut ?? 0) !== 0) return `fan-out: waiting for ${children} job(s), one per worker`;
  if (spec.dependsOn.length > 0) return `waiting for ${spec.dependsOn.join(", ")}`;
  return `waiting until ${notBefore?.toISOString()}`;
}

/** The end state and the human reason for a finished attempt. */
function outcome(result: AttemptResult, job: Job): [JobState, string] {
  if (result.cancelled) {
    return [S.JOB_STATE_CANCELLED, `${job.cancelReason || "cancelled"}${result.signal ? ` (${result.signal})` : ""}`];
  }
  if (result.timedOut) {
    return [
      S.JOB_STATE_TIMED_OUT,
      `timed out after ${durationToMs(job.spec?.timeout) / 1000} s${result.signal ? ` (${result.signal})` : ""}`,
    ];
  }
  if (result.error) return [S.JOB_STATE_FAILED, result.error];
  if (result.signal) return [S.JOB_STATE_FAILED, `killed by ${result.signal}`];
  if (result.exitCode !== 0) return [S.JOB_STATE_FAILED, `exit code ${result.exitCode}`];
  return [S.JOB_STATE_SUCCEEDED, "exit code 0"];
}
