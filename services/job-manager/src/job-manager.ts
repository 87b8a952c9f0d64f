/**
 * The job-manager's logic: it alone writes the `jobs` bucket. Every change to
 * a job is serialized per job in this process and applied with a
 * compare-and-set on the record, through the state machine.
 */
import { EventEmitter } from "node:events";
import {
  Job,
  JobState,
  type AttemptEvent,
  type AttemptResult,
  type CancelAttemptRequest,
  type ListJobsRequest,
  type ListJobsResponse,
  type PlaceJobRequest,
  type SubmitJobRequest,
  type SubmitJobResponse,
} from "@aspen/proto";
import {
  activeTraceId,
  AlreadyExistsError,
  Attr,
  ConflictError,
  contextFromTraceparent,
  durationToMs,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  Spans,
  traceparentOf,
  withSpan,
  type Logger,
} from "@aspen/runtime";
import { isTerminal, JOB_ID, JOB_ID_MAX, newId, SCHEDULE_ID, stateName, validateJobSpec } from "@aspen/model";
import type { Bucket, ObjectBucket, Versioned } from "@aspen/store";
import { Dispatcher, type DispatchOutcome } from "./dispatcher.js";
import { KeyedSerial } from "./keyed-serial.js";
import { offloadLargeOutput } from "./output.js";
import { transition } from "./state-machine.js";

/** How the job-manager reaches the coordinator (a gRPC client in production). */
export interface Placer {
  /** Chooses a worker and sends it the attempt; resolves to the worker id. */
  place(request: PlaceJobRequest): Promise<string>;
  cancel(request: CancelAttemptRequest): Promise<void>;
}

export interface JobManagerOptions {
  jobs: Bucket<Job>;
  outputs: ObjectBucket;
  placer: Placer;
  log: Logger;
  /** Placements in flight at once. */
  dispatchConcurrency: number;
  /** Wait before retrying a job that could not be placed, ms. */
  retryDelayMs: number;
  clock?: () => Date;
}

const S = JobState;
const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

export class JobManager {
  /** Latest known record of every job, with its KV revision (the CAS base). */
  private readonly index = new Map<string, Versioned<Job>>();
  private readonly serial = new KeyedSerial();
  private readonly changes = new EventEmitter().setMaxListeners(0);
  private readonly dispatcher: Dispatcher;
  private readonly clock: () => Date;
  private readonly log: Logger;

  constructor(private readonly options: JobManagerOptions) {
    this.clock = options.clock ?? (() => new Date());
    this.log = options.log;
    this.dispatcher = new Dispatcher((id) => this.dispatchOne(id), {
      concurrency: options.dispatchConcurrency,
      retryDelayMs: options.retryDelayMs,
    });
  }

  /** Rebuilds the index and the queue from KV: queued jobs go back in submission order. */
  async start(): Promise<void> {
    const all = await this.options.jobs.all();
    for (const entry of all) this.index.set(entry.key, entry);
    const queued = all
      .filter((e) => e.value.state === S.JOB_STATE_QUEUED)
      .sort((a, b) => (a.value.submittedAt?.getTime() ?? 0) - (b.value.submittedAt?.getTime() ?? 0));
    for (const e of queued) this.dispatcher.enqueue(e.key, e.value.spec?.priority ?? 0);
    this.log.info({ jobs: all.length, queued: queued.length }, "job index loaded");
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
    this.changes.removeAllListeners();
  }

  async submit(request: SubmitJobRequest): Promise<SubmitJobResponse> {
    if (request.jobId && (request.jobId.length > JOB_ID_MAX || !JOB_ID.test(request.jobId))) {
      throw new InvalidArgumentError("job_id", `must be at most ${JOB_ID_MAX} characters of ${JOB_ID}`);
    }
    if (request.scheduleId && !SCHEDULE_ID.test(request.scheduleId)) {
      throw new InvalidArgumentError("schedule_id", `must match ${SCHEDULE_ID}`);
    }
    validateJobSpec(request.spec, "spec");
    const spec = request.spec;
    const id = request.jobId || newId("j");
    return withSpan(Spans.submit, { attributes: { [Attr.jobId]: id, [Attr.scheduleId]: request.scheduleId } }, async () => {
      const now = this.clock();
      const draft = Job.fromPartial({
        id,
        spec,
        scheduleId: request.scheduleId,
        scheduledAt: request.scheduledAt,
        submittedAt: now,
        traceId: activeTraceId(),
        traceparent: traceparentOf(),
      });
      const job = transition(draft, S.JOB_STATE_QUEUED, {
        actor: request.scheduleId ? "scheduler" : "client",
        at: now,
        reason: "waiting for a worker",
      });
      let revision: number;
      try {
        revision = await this.options.jobs.create(id, job);
      } catch (err) {
        if (!(err instanceof AlreadyExistsError)) throw err;
        const existing = await this.options.jobs.get(id);
        if (!existing) throw new ResourceExhaustedError(`job ${id} is being replaced; retry`);
        return { job: existing.value, created: false };
      }
      this.remember({ key: id, value: job, revision });
      this.dispatcher.enqueue(id, spec.priority);
      return { job, created: true };
    });
  }

  async get(id: string): Promise<Job> {
    if (!id) throw new InvalidArgumentError("job_id", "required");
    const entry = await this.options.jobs.get(id);
    if (!entry) throw new NotFoundError("job", id);
    return entry.value;
  }

  /** Newest first. The page token is the last id of the previous page. */
  list(request: ListJobsRequest): ListJobsResponse {
    if (request.pageSize > MAX_PAGE) throw new InvalidArgumentError("page_size", `must be at most ${MAX_PAGE}`);
    const states = new Set(request.states);
    const jobs = [...this.index.values()]
      .map((e) => e.value)
      .filter(
        (j) =>
          (states.size === 0 || states.has(j.state)) &&
          (!request.scheduleId || j.scheduleId === request.scheduleId) &&
          (!request.workerId || j.workerId === request.workerId),
      )
      .sort(newestFirst);
    let start = 0;
    if (request.pageToken) {
      const at = jobs.findIndex((j) => j.id === request.pageToken);
      if (at < 0) throw new InvalidArgumentError("page_token", "unknown or expired token");
      start = at + 1;
    }
    const size = request.pageSize || DEFAULT_PAGE;
    const page = jobs.slice(start, start + size);
    const last = page[page.length - 1];
    return { jobs: page, nextPageToken: start + size < jobs.length && last ? last.id : "" };
  }

  async cancel(id: string, reason: string): Promise<Job> {
    const current = await this.get(id);
    if (isTerminal(current.state)) {
      throw new FailedPreconditionError(`job ${id} already finished (${stateName(current.state)})`);
    }
    if (current.state === S.JOB_STATE_QUEUED || current.state === S.JOB_STATE_PENDING) {
      const job = await this.write(id, (j) =>
        j.state === S.JOB_STATE_QUEUED || j.state === S.JOB_STATE_PENDING
          ? transition(j, S.JOB_STATE_CANCELLED, { actor: "user", at: this.clock(), reason: reason || "cancelled" })
          : undefined,
      );
      if (job.state === S.JOB_STATE_CANCELLED) return job;
    }
    // Assigned or running: the agent stops it (TERM, grace, KILL) and reports CANCELLED.
    const cancelReason = reason || "cancelled by user";
    const live = await this.write(id, (j) => (isTerminal(j.state) ? undefined : { ...j, cancelReason }));
    if (isTerminal(live.state)) return live;
    await this.options.placer.cancel({ jobId: id, attempt: live.attempt, reason: cancelReason });
    return live;
  }

  /** Calls `onChange` with every later version of the job; returns the unsubscribe. */
  subscribe(id: string, onChange: (job: Job) => void): () => void {
    this.changes.on(id, onChange);
    return () => this.changes.off(id, onChange);
  }

  /**
   * Applies attempt events reported by the coordinator. An event for an
   * attempt other than the job's current one is fenced: refused, never applied.
   */
  async report(events: AttemptEvent[]): Promise<string[]> {
    return Promise.all(
      events.map((event) =>
        this.applyEvent(event).then(
          () => "",
          (err: unknown) => {
            const message = err instanceof Error ? err.message : String(err);
            this.log.warn(
              { job: event.jobId, attempt: event.attempt, worker: event.workerId, reason: message },
              "attempt event refused",
            );
            return message;
          },
        ),
      ),
    );
  }

  private async applyEvent(event: AttemptEvent): Promise<void> {
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
        await this.write(event.jobId, (job) => {
          fence(job);
          if (job.state === S.JOB_STATE_RUNNING) return undefined;
          return transition(job, S.JOB_STATE_RUNNING, {
            actor,
            at: this.clock(),
            reason: `running on ${event.workerId}`,
            patch: { startedAt: e.value.startedAt ?? this.clock(), workerId: event.workerId },
          });
        });
        return;
      case "finished": {
        const result = await offloadLargeOutput(e.value.result, event.jobId, event.attempt, this.options.outputs);
        await this.write(event.jobId, (job) => {
          fence(job);
          const [to, reason] = outcome(result, job);
          return transition(job, to, {
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
        });
        this.dispatcher.capacityFreed();
        return;
      }
      case "lost":
        await this.write(event.jobId, (job) => {
          fence(job);
          return transition(job, S.JOB_STATE_LOST, { actor: "coordinator", at: this.clock(), reason: e.value.reason });
        });
        this.dispatcher.capacityFreed();
        return;
    }
  }

  private async dispatchOne(id: string): Promise<DispatchOutcome> {
    return this.serial.run(id, async () => {
      const current = this.index.get(id)?.value;
      if (!current || current.state !== S.JOB_STATE_QUEUED) return "gone";
      const attempt = current.attempt + 1;
      return withSpan(
        Spans.dispatch,
        { parent: contextFromTraceparent(current.traceparent), attributes: { [Attr.jobId]: id, [Attr.attempt]: attempt } },
        async (span) => {
          let workerId: string;
          try {
            workerId = await this.options.placer.place({
              jobId: id,
              attempt,
              spec: current.spec,
              traceparent: traceparentOf(),
              submittedAt: current.submittedAt,
            });
          } catch (err) {
            const outcome: DispatchOutcome =
              err instanceof FailedPreconditionError
                ? "no-match"
                : err instanceof ResourceExhaustedError
                  ? "no-capacity"
                  : "unavailable";
            const message = err instanceof Error ? err.message : String(err);
            if (outcome === "unavailable") this.log.warn({ job: id, err: message }, "placement failed; will retry");
            const reason = outcome === "no-capacity" ? `waiting for capacity: ${message}` : message;
            await this.writeLocked(id, (j) =>
              j.reason === reason || j.state !== S.JOB_STATE_QUEUED ? undefined : { ...j, reason },
            );
            return outcome;
          }
          span.setAttribute(Attr.workerId, workerId);
          const now = this.clock();
          await this.writeLocked(id, (j) =>
            transition(j, S.JOB_STATE_ASSIGNED, {
              actor: "job-manager",
              at: now,
              reason: `assigned to ${workerId}`,
              patch: { attempt, workerId, assignedAt: now },
            }),
          );
          return "placed";
        },
      );
    });
  }

  /** Applies `change` to the job in this process's per-job order. */
  private write(id: string, change: (job: Job) => Job | undefined): Promise<Job> {
    return this.serial.run(id, () => this.writeLocked(id, change));
  }

  /** Compare-and-set against the indexed revision; on a lost race, re-read and re-apply. */
  private async writeLocked(id: string, change: (job: Job) => Job | undefined): Promise<Job> {
    for (let tries = 0; tries < 10; tries++) {
      const current = this.index.get(id) ?? (await this.options.jobs.get(id));
      if (!current) throw new NotFoundError("job", id);
      const next = change(current.value);
      if (!next) return current.value;
      try {
        const revision = await this.options.jobs.update(id, next, current.revision);
        this.remember({ key: id, value: next, revision });
        return next;
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
        const fresh = await this.options.jobs.get(id);
        if (fresh) this.index.set(id, fresh);
        else this.index.delete(id);
      }
    }
    throw new ConflictError(`job ${id}: too many concurrent updates`);
  }

  private remember(entry: Versioned<Job>): void {
    this.index.set(entry.key, entry);
    this.changes.emit(entry.key, entry.value);
  }
}

function newestFirst(a: Job, b: Job): number {
  const d = (b.submittedAt?.getTime() ?? 0) - (a.submittedAt?.getTime() ?? 0);
  return d !== 0 ? d : a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
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
