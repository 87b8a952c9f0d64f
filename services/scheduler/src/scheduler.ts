/**
 * The scheduler's logic: it alone writes the `schedules` bucket. Each armed
 * schedule has one timer entry for its next nominal instant. A scheduled
 * instant is durably recorded (`status.firing_at`) before it is submitted
 * under the job id derived from (schedule id, instant): the outcome write of
 * one fire records the next instant too, so a fire on time is one submit and
 * one write. Whoever finds a recorded instant it did not record itself
 * (restart, takeover, a failed write) resolves it by its job id: the job
 * exists → only the bookkeeping is left; it does not → the instant was never
 * fired (late within the grace, else missed). Create-if-absent makes any
 * repeated submission one job.
 *
 * Several replicas may run: every replica serves the API (all writes are
 * CAS) and follows the bucket; only the holder of the firing lease arms
 * timers. `status.next_fire_at` is the next instant not yet fired: whoever
 * leads next starts from it, and what lies more than the misfire grace behind
 * now is "missed" and handled by the schedule's catch-up policy.
 */
import { performance } from "node:perf_hooks";
import {
  CatchUpPolicy,
  ConflictPolicy,
  JobState,
  Schedule,
  ScheduleSpec,
  ScheduleStatus,
  SubmitJobRequest,
  type BackfillScheduleRequest,
  type BackfillScheduleResponse,
  type CreateScheduleRequest,
  type Job,
  type ListJobsRequest,
  type ListJobsResponse,
  type ListSchedulesRequest,
  type ListSchedulesResponse,
  type PreviewScheduleRequest,
  type PreviewScheduleResponse,
  type SubmitJobResponse,
  type TriggerScheduleResponse,
  type UpdateScheduleRequest,
} from "@aspen/proto";
import {
  AlreadyExistsError,
  AspenError,
  Attr,
  ConflictError,
  durationToMs,
  FailedPreconditionError,
  InvalidArgumentError,
  isRetryable,
  msToDuration,
  NotFoundError,
  ResourceExhaustedError,
  Spans,
  trace,
  traceparentOf,
  withSpan,
  context,
  type Logger,
  type SecretSealer,
} from "@aspen/runtime";
import { fireJobId, keepStoredSecrets, newId, SCHEDULE_ID, sealJobSpec, validateJobSpec } from "@aspen/model";
import type { Bucket, Versioned } from "@aspen/store";
import {
  compileRule,
  DEFAULT_CATCH_UP_LIMIT,
  DEFAULT_MAX_QUEUED,
  firesBetween,
  validateScheduleSpec,
  type FireRule,
} from "./fire-times.js";
import type { SchedulerMetrics } from "./metrics.js";
import { preRecord, recordedAfterPause, recordedFate } from "./recorded.js";
import { TimerQueue } from "./timer-queue.js";

/** What the scheduler needs from the job-manager. */
export interface JobManagerApi {
  submit(request: SubmitJobRequest): Promise<SubmitJobResponse>;
  get(jobId: string): Promise<Job>;
  list(request: Partial<ListJobsRequest>): Promise<ListJobsResponse>;
  cancel(jobId: string, reason: string): Promise<Job>;
}

export interface SchedulerOptions {
  schedules: Bucket<Schedule>;
  jobs: JobManagerApi;
  log: Logger;
  maxSchedules: number;
  /** This replica's id (written into the records it writes). */
  replicaId?: string;
  /** An instant this much behind now is fired late; older ones are missed (catch-up policy). Default 5 s. */
  misfireGraceMs?: number;
  /** How often queued fires (conflict QUEUE) check whether the running job ended, ms. Default 500. */
  queuePollMs?: number;
  /**
   * Most fires in progress at once (record, submit, outcome); the rest wait
   * their turn, oldest first. A safety net for a stalled job-manager (fires
   * then pile up as open calls); not a pacing device: by Little's law it caps
   * throughput at this many per fire duration, so keep it well above
   * fires-per-second × a normal fire's duration. Default 1000.
   */
  maxConcurrentFires?: number;
  metrics?: SchedulerMetrics;
  clock?: () => number;
  /**
   * Seals inline secret values of job templates (Create/UpdateSchedule); from
   * ASPEN_SECRETS_PUBLIC_KEY_FILE. Absent: inline values are refused
   * (FAILED_PRECONDITION); agent references still pass.
   */
  sealer?: SecretSealer;
}

interface Armed {
  record: Versioned<Schedule>;
  rule: FireRule;
  /** The spec object the rule was compiled from: a record that carries this very object needs no comparison. */
  spec: ScheduleSpec | undefined;
  /** JSON of that spec, computed when first needed (a record with another spec object is compared by it). */
  specKey?: string;
  /**
   * The instant this leader pre-recorded in `firing_at` (in term `epoch`) and
   * has not tried to submit: when its timer goes off it is submitted with no
   * job look-up. Any doubt (another writer, a new term, a try) drops the note.
   */
  preRecorded?: { at: number; epoch: number };
}

interface FireOutcome {
  outcome: "submitted" | "queued" | "skipped";
  reason: string;
  created: boolean;
}

/**
 * schedule, catch-up: a scheduled instant (recorded, submitted, advances);
 * recover: one found submitted, only its bookkeeping is left (advances);
 * queued, trigger, backfill: fires off the timer (no record, do not advance).
 */
type FireMode = "schedule" | "catch-up" | "queued" | "trigger" | "backfill" | "recover";

interface FireOptions {
  /** The instant after this one (catch-up passes its list); computed from the rule when absent. */
  nextMs?: number;
  /** mode recover: the job found under the instant's id. */
  submitted?: Job;
}

/** gRPC NOT_FOUND, as a client call's error carries it. */
const NOT_FOUND = 5;

/** Wait before retrying a fire whose state could not be written (NATS unavailable), ms. */
const FIRE_RETRY_MS = 1_000;
const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;
const MAX_PREVIEW = 1000;
const MAX_BACKFILL = 1000;
const SUBMIT_BACKOFF_MAX_MS = 5_000;
const DEFAULT_MAX_CONCURRENT_FIRES = 1000;
const NO_STATUS: ScheduleStatus = ScheduleStatus.fromPartial({});
const S = JobState;
const ACTIVE = [S.JOB_STATE_PENDING, S.JOB_STATE_QUEUED, S.JOB_STATE_ASSIGNED, S.JOB_STATE_RUNNING];

/** A write refused because a newer lease holder already wrote the record. */
class FencedError extends AspenError {
  constructor(id: string, stored: number, mine: number) {
    super(10 /* ABORTED */, `schedule ${id}: written under fencing token ${stored}, ours is ${mine}`);
    this.name = "FencedError";
  }
}

/** The record's status (records are never mutated in place: a change builds a new one). */
function statusOf(s: Schedule): ScheduleStatus {
  return s.status ?? NO_STATUS;
}

export class Scheduler {
  private readonly schedules = new Map<string, Armed>();
  private readonly timers: TimerQueue;
  private readonly clock: () => number;
  private readonly log: Logger;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly tails = new Map<string, Promise<void>>();
  private readonly replicaId: string;
  private readonly graceMs: number;
  private readonly maxConcurrentFires: number;
  /** Fires in progress, and those waiting for a slot (FIFO). */
  private firing = 0;
  private readonly fireSlots: Array<() => void> = [];
  private leading = false;
  private token = 0;
  /** Leadership term (lead and stepDown each start a new one): pre-record notes of an old term are void. */
  private epoch = 0;
  private closed = false;
  private stopWatch: (() => void) | undefined;
  private queueTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: SchedulerOptions) {
    this.clock = options.clock ?? Date.now;
    this.log = options.log;
    this.replicaId = options.replicaId ?? "scheduler";
    this.graceMs = options.misfireGraceMs ?? 5_000;
    this.maxConcurrentFires = Math.max(1, options.maxConcurrentFires ?? DEFAULT_MAX_CONCURRENT_FIRES);
    this.timers = new TimerQueue((id, dueMs) => this.chain(id, () => this.runDue(id, dueMs)), this.clock);
  }

  get isLeading(): boolean {
    return this.leading;
  }

  get size(): number {
    return this.schedules.size;
  }

  get armedCount(): number {
    return this.timers.size;
  }

  /** Loads every schedule and follows the bucket. Fires nothing until lead() is called. */
  async start(): Promise<void> {
    // The echo of a write of ours (or of anything already read) is skipped before it is decoded.
    this.stopWatch = await this.options.schedules.watch(
      ">",
      (key, value) => this.onChange(key, value),
      (key, revision) => (this.schedules.get(key)?.record.revision ?? 0) >= revision,
    );
    const t0 = performance.now();
    const all = await this.options.schedules.all();
    const t1 = performance.now();
    for (const record of all) {
      // A change the watch already delivered is newer than the snapshot.
      if ((this.schedules.get(record.key)?.record.revision ?? 0) < record.revision) this.load(record);
    }
    this.log.info(
      { schedules: all.length, readMs: Math.round(t1 - t0), loadMs: Math.round(performance.now() - t1) },
      "schedules loaded",
    );
  }

  private load(record: Versioned<Schedule>): Armed | undefined {
    const s = record.value;
    try {
      validateScheduleSpec(s.spec, undefined);
      const rule = compileRule(s.spec, { createdAtMs: s.createdAt?.getTime() ?? this.clock(), scheduleId: s.id });
      const armed: Armed = { record, rule, spec: s.spec };
      this.schedules.set(s.id, armed);
      return armed;
    } catch (err) {
      // A stored schedule this version cannot read is reported, never silently dropped or fired blind.
      this.log.error({ schedule: s.id, err: (err as Error).message }, "stored schedule is not valid for this version; not armed");
      return undefined;
    }
  }

  /** A change written by anyone (this replica included) arrives here. */
  private onChange(key: string, value: Versioned<Schedule> | undefined): void {
    if (this.closed) return;
    const known = this.schedules.get(key);
    if (!value) {
      if (known) {
        this.schedules.delete(key);
        this.timers.disarm(key);
      }
      return;
    }
    if (known && known.record.revision >= value.revision) return;
    if (value.value.status?.writer === this.replicaId && known) {
      known.record = value;
      return;
    }
    const armed =
      known && sameSpec(known, value.value) ? Object.assign(known, { record: value, preRecorded: undefined }) : this.load(value);
    if (armed && this.leading) this.reconcile(key);
  }

  /** Becomes the firing replica under fencing token `token`: re-reads everything and arms it. */
  async lead(token: number): Promise<void> {
    this.token = token;
    this.leading = true;
    this.epoch++;
    const t0 = this.clock();
    // The map is current: loaded by start() and kept in step by the bucket watch since.
    for (const id of this.schedules.keys()) this.reconcile(id);
    this.queueTimer = setInterval(() => this.pollQueues(), this.options.queuePollMs ?? 500);
    this.queueTimer.unref();
    this.log.info({ token, schedules: this.schedules.size, armed: this.timers.size, ms: this.clock() - t0 }, "schedules armed");
  }

  /** Stops firing (the lease was lost or released). Fires in flight finish; their writes are fenced. */
  stepDown(): void {
    this.leading = false;
    this.epoch++;
    this.timers.clear();
    clearInterval(this.queueTimer);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stepDown();
    this.timers.close();
    this.stopWatch?.();
    await Promise.allSettled([...this.inFlight]);
  }

  // ---------------------------------------------------------------- API

  async create(request: CreateScheduleRequest): Promise<Schedule> {
    if (request.scheduleId && !SCHEDULE_ID.test(request.scheduleId)) {
      throw new InvalidArgumentError("schedule_id", `must match ${SCHEDULE_ID}`);
    }
    if (request.name.length > 256) throw new InvalidArgumentError("name", "longer than 256 characters");
    const now = this.clock();
    validateScheduleSpec(request.spec, now, "spec");
    validateJobSpec(request.job, "job");
    // Only the sealed form of a secret is stored (and fired).
    const job = sealJobSpec(request.job, this.options.sealer, "job");
    if (this.schedules.size >= this.options.maxSchedules) {
      throw new ResourceExhaustedError(
        `schedule limit reached: ${this.schedules.size} of ${this.options.maxSchedules} (ASPEN_MAX_SCHEDULES); delete some first`,
      );
    }
    const id = request.scheduleId || newId("s").toLowerCase();
    const rule = compileRule(request.spec, { createdAtMs: now, scheduleId: id });
    const next = request.paused ? undefined : rule.next(now, 0);
    const schedule = Schedule.fromPartial({
      id,
      name: request.name || job.name || job.exec?.command,
      spec: request.spec,
      job,
      paused: request.paused,
      tags: request.tags,
      createdAt: new Date(now),
      updatedAt: new Date(now),
      // The first instant is recorded with the schedule: its fire, too, is one submit and one write.
      status: {
        nextFireAt: next === undefined ? undefined : new Date(next),
        firingAt: next === undefined ? undefined : new Date(next),
        writer: this.replicaId,
      },
    });
    const revision = await this.options.schedules.create(id, schedule).catch((err: unknown) => {
      throw err instanceof AlreadyExistsError ? new AlreadyExistsError("schedule", id) : err;
    });
    this.schedules.set(id, {
      record: { key: id, value: schedule, revision },
      rule,
      spec: schedule.spec,
      preRecorded: next !== undefined && this.leading ? { at: next, epoch: this.epoch } : undefined,
    });
    if (next !== undefined && this.leading) this.timers.arm(id, next);
    this.log.info({ schedule: id, next: next && new Date(next).toISOString() }, "schedule created");
    return schedule;
  }

  get(id: string): Schedule {
    return this.require(id).record.value;
  }

  list(request: ListSchedulesRequest): ListSchedulesResponse {
    if (request.pageSize > MAX_PAGE) throw new InvalidArgumentError("page_size", `must be at most ${MAX_PAGE}`);
    const ids = [...this.schedules.keys()].sort().filter((id) => !request.pageToken || id > request.pageToken);
    const size = request.pageSize || DEFAULT_PAGE;
    const page = ids.slice(0, size);
    return {
      schedules: page.map((id) => this.require(id).record.value),
      nextPageToken: ids.length > size ? (page[page.length - 1] ?? "") : "",
    };
  }

  async delete(id: string): Promise<void> {
    const armed = this.require(id);
    this.timers.disarm(id);
    this.schedules.delete(id);
    await this.options.schedules.delete(id).catch((err: unknown) => {
      this.schedules.set(id, armed);
      throw err;
    });
    this.log.info({ schedule: id }, "schedule deleted");
  }

  async pause(id: string, note: string): Promise<Schedule> {
    if (note.length > 1024) throw new InvalidArgumentError("note", "longer than 1024 characters");
    const armed = this.require(id);
    this.timers.disarm(id);
    armed.preRecorded = undefined;
    const now = this.clock();
    const updated = await this.update(id, (s) => {
      const st = statusOf(s);
      // A pre-recorded instant still ahead is dropped; one due or past is resolved on resume.
      const recorded = recordedAfterPause(st.firingAt?.getTime(), now);
      return {
        ...s,
        paused: true,
        pauseNote: note,
        updatedAt: new Date(now),
        status: { ...st, nextFireAt: undefined, firingAt: recorded === undefined ? undefined : new Date(recorded) },
      };
    });
    this.log.info({ schedule: id, note }, "schedule paused");
    return updated;
  }

  /** Fires again; instants that passed while paused follow the catch-up policy. */
  async resume(id: string): Promise<Schedule> {
    const armed = this.require(id);
    if (!armed.record.value.paused) return armed.record.value;
    await this.update(id, (s) => ({
      ...s,
      paused: false,
      pauseNote: "",
      updatedAt: new Date(this.clock()),
      status: { ...statusOf(s), nextFireAt: undefined },
    }));
    if (this.leading) {
      this.reconcile(id);
      await this.tails.get(id);
    }
    this.log.info({ schedule: id }, "schedule resumed");
    return this.require(id).record.value;
  }

  async updateSchedule(request: UpdateScheduleRequest): Promise<Schedule> {
    const armed = this.require(request.scheduleId);
    const now = this.clock();
    if (request.name !== undefined && request.name.length > 256)
      throw new InvalidArgumentError("name", "longer than 256 characters");
    if (request.spec) validateScheduleSpec(request.spec, now, "spec");
    // A template read back (secrets redacted) and sent again keeps the stored secrets.
    const merged = request.job && keepStoredSecrets(request.job, armed.record.value.job);
    if (merged) validateJobSpec(merged, "job");
    const job = merged && sealJobSpec(merged, this.options.sealer, "job");
    const id = request.scheduleId;
    const specChanged = request.spec !== undefined && JSON.stringify(request.spec) !== keyOf(armed);
    const createdAtMs = armed.record.value.createdAt?.getTime() ?? now;
    const rule = request.spec && specChanged ? compileRule(request.spec, { createdAtMs, scheduleId: id }) : armed.rule;
    const epoch = this.epoch;
    if (specChanged) {
      this.timers.disarm(id);
      armed.preRecorded = undefined;
    }
    const updated = await this.update(id, (s) => {
      const status = statusOf(s);
      const next = specChanged && !s.paused ? rule.next(now, status.fireCount, 0) : status.nextFireAt?.getTime();
      // A spec change replaces the recorded instant by the new rule's next one (none while paused).
      const recorded = specChanged ? preRecord(true, next, s.paused) : status.firingAt?.getTime();
      return {
        ...s,
        name: request.name ?? s.name,
        spec: request.spec ?? s.spec,
        job: job ?? s.job,
        tags: request.replaceTags || Object.keys(request.tags).length > 0 ? request.tags : s.tags,
        updatedAt: new Date(now),
        status: {
          ...status,
          nextFireAt: next === undefined ? undefined : new Date(next),
          firingAt: recorded === undefined ? undefined : new Date(recorded),
          backoffStep: specChanged ? 0 : status.backoffStep,
        },
      };
    });
    if (specChanged) {
      const current = this.schedules.get(id);
      if (current) Object.assign(current, { rule, spec: updated.spec, specKey: specKey(updated) });
      this.notePreRecorded(id, updated.status?.firingAt?.getTime(), epoch);
      if (this.leading) this.reconcile(id);
    }
    this.log.info({ schedule: id, specChanged, next: updated.status?.nextFireAt?.toISOString() }, "schedule updated");
    return updated;
  }

  /** Fires now under the conflict policy. */
  async trigger(id: string): Promise<TriggerScheduleResponse> {
    this.require(id);
    const at = this.clock();
    let result: TriggerScheduleResponse = { at: new Date(at), jobId: fireJobId(id, at), outcome: "", reason: "" };
    await this.chain(id, async () => {
      const outcome = await this.fire(id, at, "trigger", {});
      result = { ...result, outcome: outcome.outcome, reason: outcome.reason };
    });
    if (!result.outcome) throw new FailedPreconditionError(`schedule ${id}: trigger did not complete; see the scheduler log`);
    return result;
  }

  /** Fires every instant of the spec in [from, to], each under its own derived job id. */
  async backfill(request: BackfillScheduleRequest): Promise<BackfillScheduleResponse> {
    const armed = this.require(request.scheduleId);
    if (!request.from) throw new InvalidArgumentError("from", "required");
    if (!request.to) throw new InvalidArgumentError("to", "required");
    const from = request.from.getTime();
    const to = request.to.getTime();
    if (to < from) throw new InvalidArgumentError("to", "must not be before from");
    if (to > this.clock()) throw new InvalidArgumentError("to", "is in the future: backfill fires past instants only");
    const range = firesBetween(armed.rule, from - 1, to, { fireCount: 0 }, MAX_BACKFILL + 1, MAX_BACKFILL + 1);
    if (range.total > MAX_BACKFILL) {
      throw new InvalidArgumentError("to", `the range holds more than ${MAX_BACKFILL} instants; split it`);
    }
    const jobIds: string[] = [];
    let created = 0;
    for (const at of range.instants) {
      await this.chain(request.scheduleId, async () => {
        const outcome = await this.fire(request.scheduleId, at, "backfill", {});
        if (outcome.outcome === "submitted") {
          jobIds.push(fireJobId(request.scheduleId, at));
          if (outcome.created) created++;
        }
      });
    }
    this.log.info({ schedule: request.scheduleId, instants: range.total, created }, "backfilled");
    return { jobIds, created };
  }

  preview(request: PreviewScheduleRequest): PreviewScheduleResponse {
    if (request.count > MAX_PREVIEW) throw new InvalidArgumentError("count", `must be at most ${MAX_PREVIEW}`);
    const now = this.clock();
    const target = request.target;
    let rule: FireRule;
    let fireCount = 0;
    let backoffStep = 0;
    let pausedReason = "";
    if (target?.$case === "scheduleId") {
      const armed = this.require(target.value);
      rule = armed.rule;
      fireCount = armed.record.value.status?.fireCount ?? 0;
      backoffStep = armed.record.value.status?.backoffStep ?? 0;
      const { paused, pauseNote } = armed.record.value;
      if (paused) pausedReason = `schedule is paused${pauseNote ? `: ${pauseNote}` : ""}`;
    } else if (target?.$case === "spec") {
      validateScheduleSpec(target.value, now, "spec");
      rule = compileRule(target.value, { createdAtMs: now });
    } else {
      throw new InvalidArgumentError("target", "set schedule_id or spec");
    }
    const events = rule.events(request.after?.getTime() ?? now, { fireCount, backoffStep }, request.count || 10);
    return { fires: events.map((e) => ({ at: new Date(e.at), skipReason: pausedReason || e.skip || "" })) };
  }

  // ---------------------------------------------------------------- firing

  /** Runs `work` after every earlier piece of work of the same schedule. */
  private chain(id: string, work: () => Promise<void>): Promise<void> {
    const previous = this.tails.get(id) ?? Promise.resolve();
    const next = previous.then(work).catch((err: unknown) => {
      if (err instanceof NotFoundError) return;
      this.log.error({ schedule: id, err: (err as Error).message }, "schedule task failed; reconciling it again shortly");
      // Whatever failed (NATS unreachable mid-fire or mid-catch-up), the schedule is
      // taken up again from its stored state, so it is never left unarmed.
      this.retryLater(id);
    });
    this.tails.set(id, next);
    this.inFlight.add(next);
    void next.finally(() => {
      this.inFlight.delete(next);
      if (this.tails.get(id) === next) this.tails.delete(id);
    });
    return next;
  }

  /**
   * Arms a schedule from its stored state (leader only). What needs work
   * (a recorded instant due or past, an instant more than the grace behind
   * now, a resumed schedule) is settled in the schedule's chain; a recorded
   * instant still ahead is armed as it is and resolved when due.
   */
  private reconcile(id: string): void {
    const armed = this.schedules.get(id);
    if (!armed || !this.leading) return;
    const s = armed.record.value;
    if (s.paused) {
      this.timers.disarm(id);
      return;
    }
    const status = statusOf(s);
    const next = status.nextFireAt?.getTime();
    const recorded = status.firingAt?.getTime();
    const now = this.clock();
    if ((recorded === undefined || recorded > now) && next !== undefined && next >= now - this.graceMs) {
      this.timers.arm(id, next);
      return;
    }
    if (recorded === undefined && next === undefined && status.lastFireAt === undefined && s.createdAt === undefined) return;
    void this.chain(id, () => this.settle(id));
  }

  /**
   * Brings a schedule up to date from its stored state and arms it (leader
   * only; runs in the schedule's chain, so it sees what fires before it wrote).
   */
  private async settle(id: string): Promise<void> {
    const current = this.schedules.get(id);
    if (!current || current.record.value.paused || !this.leading) return;
    const st = statusOf(current.record.value);
    // Not armed at all means resumed (or finished): what passed while paused is missed, however recent.
    const graceMs = st.nextFireAt === undefined ? 0 : this.graceMs;
    const recorded = st.firingAt?.getTime();
    if (recorded !== undefined && recorded <= this.clock()) await this.resolveRecorded(id, recorded, graceMs);
    const after = this.statusNow(id);
    const n = after.nextFireAt?.getTime();
    if (n !== undefined && n >= this.clock() - graceMs) {
      if (this.leading && !this.schedules.get(id)?.record.value.paused) this.timers.arm(id, n);
      return;
    }
    // Either never armed (resumed, or finished) or behind: everything after the last fire.
    const from =
      n !== undefined ? n - 1 : (after.lastFireAt?.getTime() ?? current.record.value.createdAt?.getTime() ?? this.clock());
    if (n === undefined && after.lastFireAt === undefined && current.record.value.createdAt === undefined) return;
    await this.catchUp(id, from, graceMs);
  }

  /**
   * A recorded instant `at`, due or past, that this leader did not pre-record
   * (or did, and the note is gone): resolved by its job id, never blindly.
   */
  private async resolveRecorded(id: string, at: number, graceMs: number): Promise<void> {
    const armed = this.schedules.get(id);
    if (!armed) return;
    const mine = this.takePreRecorded(armed, at);
    const jobId = fireJobId(id, at);
    const job = mine ? undefined : await this.findJob(jobId);
    const fate = recordedFate(at, job !== undefined, this.clock(), graceMs);
    const nominal = new Date(at).toISOString();
    if (fate === "finish") {
      this.log.info({ schedule: id, job: jobId, nominal }, "recorded instant was submitted: finishing its bookkeeping");
      await this.fire(id, at, "recover", { submitted: job });
    } else if (fate === "fire") {
      // The usual case after a takeover (the previous leader pre-recorded it); the `fired` line follows.
      this.log.debug({ schedule: id, job: jobId, nominal }, "recorded instant was never submitted: firing it");
      await this.fire(id, at, "schedule", {});
    } else {
      this.log.warn({ schedule: id, job: jobId, nominal }, "recorded instant was never submitted and is past the grace: missed");
      await this.catchUp(id, at - 1, graceMs);
    }
  }

  /** The job of a fire, or undefined when the job-manager has none (never submitted). */
  private async findJob(jobId: string): Promise<Job | undefined> {
    try {
      return await this.options.jobs.get(jobId);
    } catch (err) {
      if (err instanceof NotFoundError || (err instanceof AspenError && err.code === NOT_FOUND)) return undefined;
      throw err;
    }
  }

  /** Whether `at` is this leader's own untried pre-record (the note is used up either way). */
  private takePreRecorded(armed: Armed, at: number): boolean {
    const note = armed.preRecorded;
    armed.preRecorded = undefined;
    return (
      note !== undefined &&
      note.at === at &&
      note.epoch === this.epoch &&
      this.leading &&
      statusOf(armed.record.value).firingAt?.getTime() === at
    );
  }

  private statusNow(id: string): ScheduleStatus {
    const armed = this.schedules.get(id);
    if (!armed) throw new NotFoundError("schedule", id);
    return statusOf(armed.record.value);
  }

  /** The timer of `dueMs` went off. */
  private async runDue(id: string, dueMs: number): Promise<void> {
    const armed = this.schedules.get(id);
    if (!armed || armed.record.value.paused || !this.leading) return;
    const status = statusOf(armed.record.value);
    if (status.nextFireAt?.getTime() !== dueMs) return; // re-armed or moved meanwhile
    try {
      const recorded = status.firingAt?.getTime() === dueMs;
      if (recorded && !this.takePreRecorded(armed, dueMs)) {
        // Recorded by an earlier leader, or by an earlier try of ours that failed after:
        // it may have been submitted. Resolved by its job id (settle arms what follows).
        await this.settle(id);
        return;
      }
      if (dueMs < this.clock() - this.graceMs) {
        await this.catchUp(id, dueMs - 1);
        return;
      }
      // Pre-recorded by our previous fire: submitted at once; otherwise recorded first.
      await this.fire(id, dueMs, "schedule", {});
    } catch (err) {
      if (err instanceof NotFoundError) return;
      // NATS or the job-manager unreachable: taken up again from the stored state
      // (a recorded instant is resolved by its job id; one not recorded and older
      // than the grace follows the catch-up policy).
      this.log.warn(
        { schedule: id, nominal: new Date(dueMs).toISOString(), err: (err as Error).message },
        "fire failed; retrying",
      );
      this.retryLater(id);
      return;
    }
    this.armNext(id);
  }

  /** Reconciles the schedule from its stored state after FIRE_RETRY_MS (leader only). */
  private retryLater(id: string): void {
    if (this.closed) return;
    const timer = setTimeout(() => this.reconcile(id), FIRE_RETRY_MS);
    timer.unref();
  }

  private armNext(id: string): void {
    const armed = this.schedules.get(id);
    if (!armed || !this.leading || armed.record.value.paused) return;
    const next = statusOf(armed.record.value).nextFireAt?.getTime();
    if (next === undefined) return;
    // Behind: settled in the chain from the state it finds then (work queued meanwhile,
    // e.g. a re-lead's settle, may have caught up already).
    if (next < this.clock() - this.graceMs) void this.chain(id, () => this.settle(id));
    else this.timers.arm(id, next);
  }

  /**
   * Instants after `fromMs` up to now: those within the grace fire (late);
   * older ones are missed and handled by the catch-up policy and window.
   */
  private async catchUp(id: string, fromMs: number, graceMs = this.graceMs): Promise<void> {
    const armed = this.schedules.get(id);
    if (!armed || !this.leading) return;
    const s = armed.record.value;
    const spec = s.spec;
    if (!spec) return;
    const status = statusOf(s);
    const state = { fireCount: status.fireCount, backoffStep: status.backoffStep };
    const now = this.clock();
    const missedUpTo = now - graceMs;
    // Instants before the next one not yet fired are handled already: never counted twice.
    const pending = status.nextFireAt?.getTime();
    if (pending !== undefined && pending - 1 > fromMs) fromMs = pending - 1;
    const windowMs = durationToMs(spec.catchUpWindow);
    const windowStart = windowMs > 0 ? now - windowMs : -Infinity;
    let counted = 0;
    let from = fromMs;
    // Older than the window: skipped and counted whatever the policy.
    if (windowStart > from) {
      const old = firesBetween(armed.rule, from, Math.min(windowStart - 1, missedUpTo), state, 0);
      counted += old.total;
      from = Math.max(from, Math.min(windowStart - 1, missedUpTo));
    }
    const policy = spec.catchUp;
    const limit = policy === CatchUpPolicy.CATCH_UP_POLICY_RUN_ALL ? spec.catchUpLimit || DEFAULT_CATCH_UP_LIMIT : 1;
    const eligible = firesBetween(
      armed.rule,
      from,
      missedUpTo,
      { ...state, fireCount: state.fireCount + counted },
      Infinity,
      1_000_000,
    );
    const list = eligible.instants;
    let run: number[] = [];
    switch (policy) {
      case CatchUpPolicy.CATCH_UP_POLICY_RUN_IMMEDIATELY:
        run = list.slice(0, 1);
        break;
      case CatchUpPolicy.CATCH_UP_POLICY_RUN_LATEST:
        run = list.slice(-1);
        break;
      case CatchUpPolicy.CATCH_UP_POLICY_RUN_ALL:
        run = list.slice(-limit);
        break;
      default:
        run = [];
    }
    counted += eligible.total - run.length;
    if (eligible.capped) this.log.warn({ schedule: id }, "over a million missed instants: counted up to the cap");
    const lastMissed = eligible.lastMs ?? from;
    // Late but within the grace: fired as usual.
    const late = firesBetween(
      armed.rule,
      Math.max(lastMissed, missedUpTo),
      now,
      { ...state, fireCount: state.fireCount + eligible.total },
      1000,
    );
    const toFire = [
      ...run.map((at) => ({ at, mode: "catch-up" as const })),
      ...late.instants.map((at) => ({ at, mode: "schedule" as const })),
    ];
    const after = Math.max(lastMissed, late.lastMs ?? now, now);
    const fireCountAfter = status.fireCount + counted;
    const upcoming = (i: number) => toFire[i]?.at ?? armed.rule.next(after, fireCountAfter + toFire.length, status.backoffStep);
    // Whatever was recorded is among the instants handled here; the first to fire is recorded instead.
    armed.preRecorded = undefined;
    const epoch = this.epoch;
    let recorded: number | undefined;
    await this.update(
      id,
      (cur) => {
        const st = statusOf(cur);
        const next = upcoming(0);
        recorded = preRecord(true, next, cur.paused);
        return {
          ...cur,
          status: {
            ...st,
            missedCount: st.missedCount + counted,
            nextFireAt: next === undefined || cur.paused ? undefined : new Date(next),
            firingAt: recorded === undefined ? undefined : new Date(recorded),
          },
        };
      },
      true,
    );
    this.notePreRecorded(id, recorded, epoch);
    if (counted > 0) {
      this.options.metrics?.missed(counted);
      this.log.warn(
        { schedule: id, missed: counted, catchUp: CatchUpPolicy[policy], running: run.length },
        "fires missed while not firing",
      );
    }
    for (let i = 0; i < toFire.length; i++) {
      const f = toFire[i];
      if (!f || !this.leading) return;
      await this.fire(id, f.at, f.mode, { nextMs: upcoming(i + 1) });
    }
    this.armNext(id);
  }

  /** Notes that this leader pre-recorded `at` in a write it just made (in term `epoch`). */
  private notePreRecorded(id: string, at: number | undefined, epoch: number): void {
    const armed = this.schedules.get(id);
    if (!armed) return;
    armed.preRecorded = at !== undefined && this.leading && epoch === this.epoch ? { at, epoch } : undefined;
  }

  /** Job ids of this schedule's runs that have not finished, per the job-manager. */
  private async activeJobs(id: string, except: string): Promise<string[]> {
    const res = await this.options.jobs.list({ scheduleId: id, states: ACTIVE, pageSize: 1000 });
    return res.jobs.map((j) => j.id).filter((j) => j !== except);
  }

  /**
   * Fires instant `at`: applies the conflict policy (against job states in
   * the job-manager), records a scheduled instant unless it is recorded
   * already (pre-recorded by the previous fire's outcome write), submits,
   * then records the outcome, the next instant, and pre-records that one.
   * Mode recover (`options.submitted`) does only the outcome write.
   */
  private async fire(id: string, at: number, mode: FireMode, options: FireOptions): Promise<FireOutcome> {
    if (this.firing >= this.maxConcurrentFires) await new Promise<void>((resolve) => this.fireSlots.push(resolve));
    else this.firing++;
    try {
      return await this.fireNow(id, at, mode, options);
    } finally {
      // The slot passes straight to the oldest waiter, if any.
      const nextInLine = this.fireSlots.shift();
      if (nextInLine) nextInLine();
      else this.firing--;
    }
  }

  private async fireNow(id: string, at: number, mode: FireMode, options: FireOptions): Promise<FireOutcome> {
    const armed = this.schedules.get(id);
    if (!armed) throw new NotFoundError("schedule", id);
    const spec = armed.record.value.spec;
    const jobId = fireJobId(id, at);
    const scheduled = mode === "schedule" || mode === "catch-up";
    const advances = scheduled || mode === "recover";
    const submitted = mode === "recover" ? options.submitted : undefined;
    const fireCount = statusOf(armed.record.value).fireCount;
    const epoch = this.epoch;
    const { nextMs } = options;
    const computeNext = (s: Schedule, step: number) =>
      nextMs !== undefined ? nextMs : this.ruleFor(id, s).next(at, statusOf(s).fireCount + 1, step);
    // What an outcome write records in firing_at: the next instant for a scheduled fire, else unchanged.
    let recordedNext: number | undefined;
    const firingAfter = (s: Schedule, next: number | undefined): Date | undefined => {
      recordedNext = preRecord(advances, next, s.paused);
      if (advances) return recordedNext === undefined ? undefined : new Date(recordedNext);
      return statusOf(s).firingAt;
    };

    // Conflict policy: decided before submitting, from the job-manager's view.
    const policy = spec?.conflict ?? ConflictPolicy.CONFLICT_POLICY_UNSPECIFIED;
    const needsCheck =
      mode !== "backfill" &&
      mode !== "recover" &&
      mode !== "queued" &&
      (policy === ConflictPolicy.CONFLICT_POLICY_SKIP ||
        policy === ConflictPolicy.CONFLICT_POLICY_QUEUE ||
        policy === ConflictPolicy.CONFLICT_POLICY_CANCEL_PREVIOUS ||
        (spec?.maxConcurrent ?? 0) > 0);
    if (needsCheck && spec) {
      const active = await this.activeJobs(id, jobId);
      const limit =
        policy === ConflictPolicy.CONFLICT_POLICY_SKIP || policy === ConflictPolicy.CONFLICT_POLICY_QUEUE
          ? 1
          : spec.maxConcurrent;
      if (policy === ConflictPolicy.CONFLICT_POLICY_CANCEL_PREVIOUS && active.length > 0) {
        await Promise.all(
          active.map((j) =>
            this.options.jobs
              .cancel(j, `cancelled by schedule ${id}: fire ${new Date(at).toISOString()} replaces it`)
              .catch((err: unknown) => {
                if (!(err instanceof FailedPreconditionError)) throw err;
              }),
          ),
        );
        this.log.info({ schedule: id, cancelled: active }, "conflict CANCEL_PREVIOUS: previous runs cancelled");
      } else if (limit > 0 && active.length >= limit) {
        const queue = statusOf(armed.record.value).queued;
        const maxQueued = spec.maxQueued || DEFAULT_MAX_QUEUED;
        const queueIt = policy === ConflictPolicy.CONFLICT_POLICY_QUEUE && queue.length < maxQueued;
        const reason = queueIt
          ? `conflict QUEUE: waiting for ${active.join(", ")}`
          : `conflict ${ConflictPolicy[policy].replace("CONFLICT_POLICY_", "")}: ${active.length} run(s) still going (${active.slice(0, 3).join(", ")})${policy === ConflictPolicy.CONFLICT_POLICY_QUEUE ? `; queue full (${maxQueued})` : ""}`;
        await this.update(
          id,
          (s) => {
            const st = statusOf(s);
            const step = st.backoffStep + 1;
            const next = advances ? computeNext(s, step) : st.nextFireAt?.getTime();
            return {
              ...s,
              status: {
                ...st,
                queued: queueIt ? [...st.queued, new Date(at)] : st.queued,
                skippedCount: queueIt ? st.skippedCount : st.skippedCount + 1,
                lastSkipReason: queueIt ? st.lastSkipReason : reason,
                lastSkippedAt: queueIt ? st.lastSkippedAt : new Date(at),
                backoffStep: advances ? step : st.backoffStep,
                nextFireAt: next === undefined || s.paused ? undefined : new Date(next),
                firingAt: firingAfter(s, next),
              },
            };
          },
          true,
        );
        if (advances) this.notePreRecorded(id, recordedNext, epoch);
        if (!queueIt) this.options.metrics?.skipped(1);
        this.log.info({ schedule: id, job: jobId, reason }, queueIt ? "fire queued" : "fire skipped");
        return { outcome: queueIt ? "queued" : "skipped", reason, created: false };
      }
    }

    const started = performance.now();
    // A scheduled instant is durably recorded before it is submitted: by the previous
    // fire's outcome write (pre-recorded), an earlier try, or else here.
    if (advances && !submitted && statusOf(armed.record.value).firingAt?.getTime() !== at) {
      await this.update(id, (s) => ({ ...s, status: { ...statusOf(s), firingAt: new Date(at) } }), true);
    }
    const recorded = performance.now();
    let created = false;
    let refused = "";
    let lagMs: number;
    if (submitted) {
      // Submitted before (by an earlier leader or try): its lag is the job-manager's acceptance.
      lagMs = (submitted.submittedAt?.getTime() ?? this.clock()) - at;
    } else {
      // Each fire is the root of its own trace: fire → submit → dispatch → place → execute.
      await withSpan(
        Spans.fire,
        {
          parent: trace.deleteSpan(context.active()),
          attributes: { [Attr.scheduleId]: id, [Attr.nominalInstant]: at, [Attr.jobId]: jobId },
        },
        async () => {
          const job = armed.record.value.job;
          const firstTry = this.clock();
          for (let backoffMs = 100; ; backoffMs = Math.min(backoffMs * 2, SUBMIT_BACKOFF_MAX_MS)) {
            try {
              const res = await this.options.jobs.submit({
                ...EMPTY_SUBMIT,
                jobId,
                spec: job,
                scheduleId: id,
                scheduledAt: new Date(at),
                traceparent: traceparentOf(),
              });
              created = res.created;
              return;
            } catch (err) {
              // A refusal (bad template) would repeat forever: record it and move on; anything else is retried.
              if (!isRetryable(err)) {
                refused = (err as Error).message;
                this.log.error({ schedule: id, job: jobId, err: refused }, "job-manager refused the fire");
                return;
              }
              if (this.closed || !this.schedules.has(id)) throw err;
              // A scheduled instant is retried here for the misfire grace; after that the
              // schedule is taken up again from its stored state a second later, where the
              // recorded instant is resolved by its job id (the call may have got through).
              if (advances && this.clock() - firstTry > this.graceMs) throw err;
              this.log.warn({ schedule: id, job: jobId, err: (err as Error).message, backoffMs }, "submit failed; retrying");
              await new Promise((r) => setTimeout(r, backoffMs));
            }
          }
        },
      );
      lagMs = this.clock() - at;
    }
    const submittedAt = performance.now();
    // Exponential: the delay resets when the previous fire's job succeeded, else doubles.
    let resetBackoff = false;
    const previousJob = statusOf(armed.record.value).lastJobId;
    if (advances && spec?.kind?.$case === "exponential" && previousJob && previousJob !== jobId) {
      resetBackoff = await this.options.jobs
        .get(previousJob)
        .then((j) => j.state === S.JOB_STATE_SUCCEEDED)
        .catch(() => false);
    }
    let finished = true;
    await this.update(
      id,
      (s) => {
        const st = statusOf(s);
        const firingMatches = st.firingAt?.getTime() === at;
        // A fire found submitted is finished once: if firing_at moved on, whoever moved it did that.
        finished = mode !== "recover" || firingMatches;
        if (!finished) return undefined;
        const step = resetBackoff ? 0 : st.backoffStep + (advances ? 1 : 0);
        const count = advances ? st.fireCount + 1 : st.fireCount;
        const next = advances ? computeNext(s, resetBackoff ? 0 : step) : st.nextFireAt?.getTime();
        const mean = durationToMs(st.meanFireLag);
        return {
          ...s,
          status: {
            ...st,
            firingAt: firingAfter(s, next),
            lastFireAt: !st.lastFireAt || st.lastFireAt.getTime() < at ? new Date(at) : st.lastFireAt,
            lastJobId: jobId,
            fireCount: count,
            manualFireCount: advances ? st.manualFireCount : st.manualFireCount + 1,
            backoffStep: step,
            lastFireLag: msToDuration(lagMs),
            maxFireLag: msToDuration(Math.max(lagMs, durationToMs(st.maxFireLag))),
            meanFireLag: advances ? msToDuration(Math.round((mean * st.fireCount + lagMs) / count)) : st.meanFireLag,
            lastSkipReason: refused ? `job-manager refused the job: ${refused}` : st.lastSkipReason,
            lastSkippedAt: refused ? new Date(at) : st.lastSkippedAt,
            nextFireAt: next === undefined || s.paused ? undefined : new Date(next),
            // A queued instant leaves the queue once submitted (a crash before this write fires it again: same id).
            queued: mode === "queued" ? st.queued.filter((q) => q.getTime() !== at) : st.queued,
          },
        };
      },
      true,
    );
    if (!finished) {
      this.log.info({ schedule: id, job: jobId }, "recorded instant already finished by another write");
      return { outcome: "submitted", reason: "", created: false };
    }
    if (advances) this.notePreRecorded(id, recordedNext, epoch);
    if (scheduled) this.options.metrics?.fired(lagMs);
    this.log.info(
      {
        schedule: id,
        job: jobId,
        mode,
        created,
        lagMs,
        recordMs: round2(recorded - started),
        submitMs: round2(submittedAt - recorded),
        fireCount: fireCount + (advances ? 1 : 0),
      },
      "fired",
    );
    return { outcome: "submitted", reason: refused, created };
  }

  /** Leader: queued fires (conflict QUEUE) go when the schedule has no run left going. */
  private pollQueues(): void {
    for (const [id, armed] of this.schedules) {
      if ((armed.record.value.status?.queued.length ?? 0) === 0 || this.tails.has(id)) continue;
      void this.chain(id, async () => {
        const st = this.statusNow(id);
        const head = st.queued[0];
        if (!head || !this.leading) return;
        if ((await this.activeJobs(id, "")).length > 0) return;
        // The head leaves the queue in the fire's outcome write, once submitted.
        await this.fire(id, head.getTime(), "queued", {});
      });
    }
  }
  /**
   * CAS update of the stored schedule; keeps the in-memory copy in step.
   * `fenced`: refused when a newer lease holder wrote the record, and stamps ours.
   */
  private async update(id: string, change: (s: Schedule) => Schedule | undefined, fenced = false): Promise<Schedule> {
    const wrapped = (s: Schedule): Schedule | undefined => {
      const stored = s.status?.fence ?? 0;
      if (fenced && this.token > 0 && stored > this.token) throw new FencedError(id, stored, this.token);
      const next = change(s);
      if (!next) return undefined;
      return {
        ...next,
        status: {
          ...statusOf(next),
          writer: this.replicaId,
          fence: fenced && this.token > 0 ? this.token : (next.status?.fence ?? 0),
        },
      };
    };
    const armed = this.schedules.get(id);
    // Fast path: CAS on the revision we hold; a conflict falls back to read-modify-CAS.
    if (armed) {
      const value = wrapped(armed.record.value);
      if (!value) return armed.record.value;
      try {
        const revision = await this.options.schedules.update(id, value, armed.record.revision);
        armed.record = { key: id, value, revision };
        return value;
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
    const result = await this.options.schedules.mutate(id, wrapped);
    if (!result) {
      this.schedules.delete(id);
      this.timers.disarm(id);
      throw new NotFoundError("schedule", id);
    }
    const current = this.schedules.get(id);
    if (current && current.record.revision < result.revision) current.record = result;
    return result.value;
  }

  private require(id: string): Armed {
    if (!id) throw new InvalidArgumentError("schedule_id", "required");
    const armed = this.schedules.get(id);
    if (!armed) throw new NotFoundError("schedule", id);
    return armed;
  }

  /** The rule of a record's spec (recompiled when its spec differs from the one armed). */
  ruleFor(id: string, s: Schedule): FireRule {
    const armed = this.schedules.get(id);
    if (armed && sameSpec(armed, s)) return armed.rule;
    return compileRule(s.spec ?? ScheduleSpec.fromPartial({}), {
      createdAtMs: s.createdAt?.getTime() ?? this.clock(),
      scheduleId: id,
    });
  }
}

function specKey(s: Schedule): string {
  return JSON.stringify(s.spec ?? null);
}

function keyOf(armed: Armed): string {
  return (armed.specKey ??= JSON.stringify(armed.spec ?? null));
}

/** Whether `s` has the spec `armed`'s rule was compiled from (by identity first, then by value). */
function sameSpec(armed: Armed, s: Schedule): boolean {
  if (s.spec === armed.spec) return true;
  if (keyOf(armed) !== specKey(s)) return false;
  armed.spec = s.spec;
  return true;
}

const round2 = (ms: number) => Math.round(ms * 100) / 100;

const EMPTY_SUBMIT: SubmitJobRequest = SubmitJobRequest.fromPartial({});
