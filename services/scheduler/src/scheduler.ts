/**
 * The scheduler's logic: it alone writes the `schedules` bucket. Each armed
 * schedule has one timer entry for its next nominal instant. A fire records
 * the instant in the schedule (`status.firing_at`) before it submits, submits
 * the job under the id derived from (schedule id, instant), then advances.
 * A crash between record and submit is resolved on restart by submitting the
 * same id again: the job-manager's create-if-absent makes it one job.
 */
import {
  Schedule,
  type CreateScheduleRequest,
  type ListSchedulesRequest,
  type ListSchedulesResponse,
  type PreviewScheduleRequest,
  type PreviewScheduleResponse,
  type SubmitJobRequest,
  type SubmitJobResponse,
} from "@aspen/proto";
import {
  AlreadyExistsError,
  Attr,
  InvalidArgumentError,
  isRetryable,
  msToDuration,
  NotFoundError,
  ResourceExhaustedError,
  Spans,
  trace,
  withSpan,
  context,
  type Logger,
} from "@aspen/runtime";
import { fireJobId, newId, SCHEDULE_ID, validateJobSpec } from "@aspen/model";
import type { Bucket, Versioned } from "@aspen/store";
import { compileRule, countBetween, validateScheduleSpec, type FireRule } from "./fire-times.js";
import { TimerQueue } from "./timer-queue.js";

export interface SchedulerOptions {
  schedules: Bucket<Schedule>;
  /** SubmitJob on the job-manager. */
  submit: (request: SubmitJobRequest) => Promise<SubmitJobResponse>;
  log: Logger;
  maxSchedules: number;
  clock?: () => number;
}

interface Armed {
  record: Versioned<Schedule>;
  rule: FireRule;
}

const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;
const MAX_PREVIEW = 1000;
const SUBMIT_BACKOFF_MAX_MS = 5_000;

export class Scheduler {
  private readonly schedules = new Map<string, Armed>();
  private readonly timers: TimerQueue;
  private readonly clock: () => number;
  private readonly log: Logger;
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly options: SchedulerOptions) {
    this.clock = options.clock ?? Date.now;
    this.log = options.log;
    this.timers = new TimerQueue((id, dueMs) => this.track(this.fire(id, dueMs)), this.clock);
  }

  /** Loads every schedule, finishes fires a crash interrupted, and arms the rest. */
  async start(): Promise<void> {
    const now = this.clock();
    const all = await this.options.schedules.all();
    for (const record of all) {
      const s = record.value;
      let rule: FireRule;
      try {
        validateScheduleSpec(s.spec, undefined);
        rule = compileRule(s.spec, { createdAtMs: s.createdAt?.getTime() ?? now });
      } catch (err) {
        // A stored schedule this version cannot read is reported, never silently dropped or fired blind.
        this.log.error(
          { schedule: s.id, err: (err as Error).message },
          "stored schedule is not valid for this version; not armed",
        );
        continue;
      }
      this.schedules.set(s.id, { record, rule });
      if (s.paused) continue;
      const firingAt = s.status?.firingAt;
      if (firingAt) {
        this.log.warn(
          { schedule: s.id, nominal: firingAt.toISOString() },
          "resuming a fire interrupted before it was recorded as submitted",
        );
        this.track(this.fire(s.id, firingAt.getTime()));
      } else {
        this.track(this.catchUpAndArm(s.id, now));
      }
    }
    this.log.info({ schedules: all.length, armed: this.timers.size }, "schedules loaded");
  }

  async close(): Promise<void> {
    this.closed = true;
    this.timers.close();
    await Promise.allSettled([...this.inFlight]);
  }

  async create(request: CreateScheduleRequest): Promise<Schedule> {
    if (request.scheduleId && !SCHEDULE_ID.test(request.scheduleId)) {
      throw new InvalidArgumentError("schedule_id", `must match ${SCHEDULE_ID}`);
    }
    if (request.name.length > 256) throw new InvalidArgumentError("name", "longer than 256 characters");
    const now = this.clock();
    validateScheduleSpec(request.spec, now, "spec");
    validateJobSpec(request.job, "job");
    if (this.schedules.size >= this.options.maxSchedules) {
      throw new ResourceExhaustedError(`schedule limit reached (${this.options.maxSchedules} schedules)`);
    }
    const id = request.scheduleId || newId("s").toLowerCase();
    const rule = compileRule(request.spec, { createdAtMs: now });
    const next = request.paused ? undefined : rule.next(now, 0);
    const schedule = Schedule.fromPartial({
      id,
      name: request.name || request.job.name || request.job.exec?.command,
      spec: request.spec,
      job: request.job,
      paused: request.paused,
      tags: request.tags,
      createdAt: new Date(now),
      updatedAt: new Date(now),
      status: { nextFireAt: next === undefined ? undefined : new Date(next) },
    });
    const revision = await this.options.schedules.create(id, schedule).catch((err: unknown) => {
      throw err instanceof AlreadyExistsError ? new AlreadyExistsError("schedule", id) : err;
    });
    this.schedules.set(id, { record: { key: id, value: schedule, revision }, rule });
    if (next !== undefined) this.timers.arm(id, next);
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
    this.require(id);
    this.timers.disarm(id);
    const updated = await this.update(id, (s) => ({
      ...s,
      paused: true,
      pauseNote: note,
      updatedAt: new Date(this.clock()),
      status: { ...emptyStatus(), ...s.status, nextFireAt: undefined },
    }));
    this.log.info({ schedule: id, note }, "schedule paused");
    return updated;
  }

  async resume(id: string): Promise<Schedule> {
    const armed = this.require(id);
    if (!armed.record.value.paused) return armed.record.value;
    await this.update(id, (s) => ({ ...s, paused: false, pauseNote: "", updatedAt: new Date(this.clock()) }));
    await this.catchUpAndArm(id, this.clock());
    this.log.info({ schedule: id }, "schedule resumed");
    return this.require(id).record.value;
  }

  preview(request: PreviewScheduleRequest): PreviewScheduleResponse {
    if (request.count > MAX_PREVIEW) throw new InvalidArgumentError("count", `must be at most ${MAX_PREVIEW}`);
    const now = this.clock();
    const target = request.target;
    let rule: FireRule;
    let fireCount = 0;
    let skipReason = "";
    if (target?.$case === "scheduleId") {
      const armed = this.require(target.value);
      rule = armed.rule;
      fireCount = armed.record.value.status?.fireCount ?? 0;
      const { paused, pauseNote } = armed.record.value;
      if (paused) skipReason = `schedule is paused${pauseNote ? `: ${pauseNote}` : ""}`;
    } else if (target?.$case === "spec") {
      validateScheduleSpec(target.value, now, "spec");
      rule = compileRule(target.value, { createdAtMs: now });
    } else {
      throw new InvalidArgumentError("target", "set schedule_id or spec");
    }
    const fires: PreviewScheduleResponse["fires"] = [];
    let t = request.after?.getTime() ?? now;
    for (let i = 0; i < (request.count || 10); i++) {
      const next = rule.next(t, fireCount + i);
      if (next === undefined) break;
      fires.push({ at: new Date(next), skipReason });
      t = next;
    }
    return { fires };
  }

  /**
   * Fires the nominal instant `nominalMs` of schedule `id`: record, submit
   * (retrying until the job-manager answers), advance and re-arm.
   */
  private async fire(id: string, nominalMs: number): Promise<void> {
    const armed = this.schedules.get(id);
    if (!armed || armed.record.value.paused || this.closed) return;
    const nominal = new Date(nominalMs);
    try {
      await this.update(id, (s) => ({ ...s, status: { ...emptyStatus(), ...s.status, firingAt: nominal } }));
    } catch (err) {
      this.log.error({ schedule: id, err: (err as Error).message }, "could not record the fire; retrying");
      this.retryLater(id, nominalMs);
      return;
    }
    const job = armed.record.value.job;
    const jobId = fireJobId(id, nominalMs);
    let created = false;
    // Each fire is the root of its own trace: fire → submit → dispatch → place → execute.
    await withSpan(
      Spans.fire,
      {
        parent: trace.deleteSpan(context.active()),
        attributes: { [Attr.scheduleId]: id, [Attr.nominalInstant]: nominalMs, [Attr.jobId]: jobId },
      },
      async () => {
        for (let backoffMs = 100; ; backoffMs = Math.min(backoffMs * 2, SUBMIT_BACKOFF_MAX_MS)) {
          try {
            const res = await this.options.submit({ jobId, spec: job, scheduleId: id, scheduledAt: nominal });
            created = res.created;
            return;
          } catch (err) {
            // A refusal (bad template) would repeat forever: record it and move on; anything else is retried.
            if (!isRetryable(err)) {
              this.log.error({ schedule: id, job: jobId, err: (err as Error).message }, "job-manager refused the fire");
              return;
            }
            if (this.closed || !this.schedules.has(id)) throw err;
            this.log.warn({ schedule: id, job: jobId, err: (err as Error).message, backoffMs }, "submit failed; retrying");
            await new Promise((r) => setTimeout(r, backoffMs));
          }
        }
      },
    ).catch(() => undefined);
    if (this.closed) return;
    const now = this.clock();
    const lagMs = now - nominalMs;
    const current = this.schedules.get(id);
    if (!current) return;
    const fireCount = (current.record.value.status?.fireCount ?? 0) + 1;
    // Instants that passed while this fire was being submitted are missed (catch-up SKIP).
    const missed = countBetween(current.rule, nominalMs, now, fireCount);
    const next = current.rule.next(Math.max(nominalMs, now), fireCount + missed);
    try {
      const updated = await this.update(id, (s) => {
        const status = { ...emptyStatus(), ...s.status };
        return {
          ...s,
          status: {
            ...status,
            firingAt: undefined,
            lastFireAt: nominal,
            lastJobId: jobId,
            fireCount,
            missedCount: status.missedCount + missed,
            lastFireLag: msToDuration(lagMs),
            nextFireAt: s.paused || next === undefined ? undefined : new Date(next),
          },
        };
      });
      this.log.info({ schedule: id, job: jobId, created, lagMs, missed }, "fired");
      if (!updated.paused && next !== undefined) this.timers.arm(id, next);
    } catch (err) {
      if (err instanceof NotFoundError) return; // deleted meanwhile
      this.log.error({ schedule: id, err: (err as Error).message }, "could not record the fire as done; retrying it");
      this.retryLater(id, nominalMs);
    }
  }

  /** Counts instants missed since the last fire (catch-up SKIP) and arms the next one after `nowMs`. */
  private async catchUpAndArm(id: string, nowMs: number): Promise<void> {
    const armed = this.schedules.get(id);
    if (!armed) return;
    const s = armed.record.value;
    const fireCount = s.status?.fireCount ?? 0;
    const since = s.status?.lastFireAt?.getTime() ?? s.createdAt?.getTime() ?? nowMs;
    const missed = countBetween(armed.rule, since, nowMs, fireCount);
    const next = armed.rule.next(nowMs, fireCount + missed);
    await this.update(id, (rec) => {
      const status = { ...emptyStatus(), ...rec.status };
      return {
        ...rec,
        status: {
          ...status,
          missedCount: status.missedCount + missed,
          nextFireAt: next === undefined ? undefined : new Date(next),
        },
      };
    }).catch((err: unknown) => this.log.error({ schedule: id, err: (err as Error).message }, "could not save schedule status"));
    if (missed > 0) this.log.warn({ schedule: id, missed }, "fires missed while not running (catch-up: skip)");
    if (next !== undefined && !this.closed) this.timers.arm(id, next);
  }

  private retryLater(id: string, nominalMs: number): void {
    if (this.closed) return;
    const timer = setTimeout(() => this.track(this.fire(id, nominalMs)), 1_000);
    timer.unref();
  }

  /** CAS update of the stored schedule; keeps the in-memory copy in step. */
  private async update(id: string, change: (s: Schedule) => Schedule): Promise<Schedule> {
    const result = await this.options.schedules.mutate(id, change);
    if (!result) {
      this.schedules.delete(id);
      this.timers.disarm(id);
      throw new NotFoundError("schedule", id);
    }
    const armed = this.schedules.get(id);
    if (armed) armed.record = result;
    return result.value;
  }

  private require(id: string): Armed {
    if (!id) throw new InvalidArgumentError("schedule_id", "required");
    const armed = this.schedules.get(id);
    if (!armed) throw new NotFoundError("schedule", id);
    return armed;
  }

  private track(work: Promise<void>): void {
    const tracked = work.catch((err: unknown) => this.log.error({ err }, "scheduler task failed"));
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }
}

function emptyStatus() {
  return {
    fireCount: 0,
    missedCount: 0,
    skippedCount: 0,
    lastJobId: "",
  };
}
