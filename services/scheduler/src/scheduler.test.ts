/**
 * The firing loop against an in-memory bucket and job-manager, on fake
 * timers: how many writes a fire costs, and what becomes of an instant
 * recorded in `firing_at` (pre-recorded by the previous fire) after a
 * restart, a failed write, a pause or an update.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  CatchUpPolicy,
  ConflictPolicy,
  CreateScheduleRequest,
  Job,
  JobState,
  Schedule,
  type ListJobsRequest,
  type ListJobsResponse,
  type ScheduleSpec,
  type SubmitJobRequest,
  type SubmitJobResponse,
  UpdateScheduleRequest,
} from "@aspen/proto";
import { AspenError, ConflictError, createLogger, UnavailableError } from "@aspen/runtime";
import { fireJobId } from "@aspen/model";
import type { Bucket, Versioned } from "@aspen/store";
import { Scheduler, type JobManagerApi } from "./scheduler.js";

const T0 = Date.UTC(2025, 0, 1, 12); // a whole second
const GRACE_MS = 500;

/** The KV bucket's contract (create-if-absent, CAS, mutate, watch) in memory, records encoded as stored. */
class MemoryBucket {
  private readonly records = new Map<string, { bytes: Uint8Array; revision: number }>();
  private readonly watchers: Array<(key: string, value: Versioned<Schedule> | undefined) => void> = [];
  private sequence = 0;
  /** Writes (create, update) that succeeded. */
  writes = 0;
  /** The next n updates fail as if NATS were unreachable. */
  failUpdates = 0;

  asBucket(): Bucket<Schedule> {
    return this as unknown as Bucket<Schedule>;
  }

  read(key: string): Schedule | undefined {
    const r = this.records.get(key);
    return r && Schedule.decode(r.bytes);
  }

  async get(key: string): Promise<Versioned<Schedule> | undefined> {
    await Promise.resolve();
    const r = this.records.get(key);
    return r && { key, value: Schedule.decode(r.bytes), revision: r.revision };
  }

  async create(key: string, value: Schedule): Promise<number> {
    await Promise.resolve();
    if (this.records.has(key)) throw new Error(`exists: ${key}`);
    return this.put(key, value);
  }

  async update(key: string, value: Schedule, revision: number): Promise<number> {
    await Promise.resolve();
    if (this.failUpdates > 0) {
      this.failUpdates--;
      throw new UnavailableError("nats unreachable (test)");
    }
    if (this.records.get(key)?.revision !== revision) throw new ConflictError(`${key} changed since ${revision}`);
    return this.put(key, value);
  }

  async mutate(key: string, change: (current: Schedule) => Schedule | undefined): Promise<Versioned<Schedule> | undefined> {
    for (;;) {
      const current = await this.get(key);
      if (!current) return undefined;
      const next = change(current.value);
      if (next === undefined) return current;
      try {
        return { key, value: next, revision: await this.update(key, next, current.revision) };
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
  }

  async delete(key: string): Promise<void> {
    await Promise.resolve();
    this.records.delete(key);
    for (const w of this.watchers) queueMicrotask(() => w(key, undefined));
  }

  async all(): Promise<Versioned<Schedule>[]> {
    await Promise.resolve();
    return [...this.records].map(([key, r]) => ({ key, value: Schedule.decode(r.bytes), revision: r.revision }));
  }

  async watch(
    _key: string,
    onChange: (key: string, value: Versioned<Schedule> | undefined) => void,
    known?: (key: string, revision: number) => boolean,
  ): Promise<() => void> {
    await Promise.resolve();
    const w = (key: string, value: Versioned<Schedule> | undefined) => {
      if (value && known?.(key, value.revision)) return;
      onChange(key, value);
    };
    this.watchers.push(w);
    return () => this.watchers.splice(this.watchers.indexOf(w), 1);
  }

  /** Writes a record as another process would (before the scheduler starts, or behind its back). */
  put(key: string, value: Schedule): number {
    const revision = ++this.sequence;
    const bytes = Schedule.encode(value).finish();
    this.records.set(key, { bytes, revision });
    this.writes++;
    const copy = { key, value: Schedule.decode(bytes), revision };
    for (const w of this.watchers) queueMicrotask(() => w(key, copy));
    return revision;
  }
}

/** A job-manager: create-if-absent by job id; GetJob of an unknown id is NOT_FOUND as the gRPC client raises it. */
class FakeJobs implements JobManagerApi {
  readonly jobs = new Map<string, Job>();
  submits: Array<{ jobId: string; created: boolean }> = [];
  gets: string[] = [];
  /** Active jobs ListJobs reports (conflict policy). */
  active: string[] = [];
  /** While set, submissions wait for it (a job-manager that cannot write). */
  hold: Promise<void> | undefined;
  /** Unreachable: every call fails as UNAVAILABLE; with `lostReplies`, a submission gets through first. */
  down = false;
  lostReplies = false;

  async submit(request: SubmitJobRequest): Promise<SubmitJobResponse> {
    await Promise.resolve();
    if (this.hold) await this.hold;
    if (this.down) {
      if (this.lostReplies && !this.jobs.has(request.jobId))
        this.add(request.jobId, request.scheduledAt?.getTime() ?? 0, Date.now());
      throw new UnavailableError("job-manager unreachable (test)");
    }
    const created = !this.jobs.has(request.jobId);
    if (created) this.add(request.jobId, request.scheduledAt?.getTime() ?? 0, Date.now());
    this.submits.push({ jobId: request.jobId, created });
    return { job: this.jobs.get(request.jobId), created };
  }

  async get(jobId: string): Promise<Job> {
    await Promise.resolve();
    if (this.down) throw new UnavailableError("job-manager unreachable (test)");
    this.gets.push(jobId);
    const job = this.jobs.get(jobId);
    if (!job) throw Object.assign(new AspenError(5, `job "${jobId}" not found`), { name: "NotFoundError" });
    return job;
  }

  async list(_request: Partial<ListJobsRequest>): Promise<ListJobsResponse> {
    await Promise.resolve();
    return { jobs: this.active.map((id) => Job.fromPartial({ id, state: JobState.JOB_STATE_RUNNING })), nextPageToken: "" };
  }

  async cancel(jobId: string): Promise<Job> {
    await Promise.resolve();
    return Job.fromPartial({ id: jobId });
  }

  add(jobId: string, scheduledAt: number, submittedAt: number): void {
    this.jobs.set(
      jobId,
      Job.fromPartial({
        id: jobId,
        state: JobState.JOB_STATE_QUEUED,
        scheduledAt: new Date(scheduledAt),
        submittedAt: new Date(submittedAt),
      }),
    );
  }

  /** Instants of the jobs of `scheduleId`, oldest first. */
  instants(scheduleId: string): number[] {
    return [...this.jobs.values()]
      .filter((j) => j.id.startsWith(`${scheduleId}.`))
      .map((j) => j.scheduledAt?.getTime() ?? NaN)
      .sort((a, b) => a - b);
  }
}

const everySecond = (extra: Partial<ScheduleSpec> = {}) =>
  ({ kind: { $case: "cron", value: { expression: "* * * * * *", timeZone: "" } }, ...extra }) as ScheduleSpec;

/** A stored schedule as a previous scheduler left it: instant `recorded` in firing_at (and next_fire_at). */
function storedWithRecorded(id: string, recorded: number, spec: ScheduleSpec, fireCount = 3): Schedule {
  return Schedule.fromPartial({
    id,
    name: id,
    spec,
    job: { exec: { command: "true" } },
    createdAt: new Date(T0 - 60_000),
    updatedAt: new Date(T0 - 60_000),
    status: {
      nextFireAt: new Date(recorded),
      firingAt: new Date(recorded),
      lastFireAt: new Date(recorded - 1_000),
      lastJobId: fireJobId(id, recorded - 1_000),
      fireCount,
      fence: 1,
      writer: "previous",
    },
  });
}

describe("scheduler: one write per fire, recorded instants resolved by job id", () => {
  let bucket: MemoryBucket;
  let jobs: FakeJobs;
  let scheduler: Scheduler;
  /** Added to the (fake) time the scheduler reads: a stalled event loop, seen from inside. */
  let stalledMs = 0;

  beforeEach(() => {
    stalledMs = 0;
    vi.useFakeTimers();
    vi.setSystemTime(T0 + 100);
    bucket = new MemoryBucket();
    jobs = new FakeJobs();
    scheduler = new Scheduler({
      schedules: bucket.asBucket(),
      jobs,
      log: createLogger("scheduler-test", "silent"),
      maxSchedules: 100,
      misfireGraceMs: GRACE_MS,
      replicaId: "me",
      queuePollMs: 100,
      clock: () => Date.now() + stalledMs,
    });
  });

  afterEach(async () => {
    await scheduler.close();
    vi.useRealTimers();
  });

  const start = async (token = 2) => {
    await scheduler.start();
    await scheduler.lead(token);
    await vi.advanceTimersByTimeAsync(0);
  };
  const status = (id: string) => bucket.read(id)?.status;
  const create = (scheduleId: string, spec: ScheduleSpec) =>
    scheduler.create(CreateScheduleRequest.fromPartial({ scheduleId, spec, job: { exec: { command: "true" } } }));

  it("after the first fire, each fire is one write and pre-records the next instant (no job look-up)", async () => {
    await start();
    await create("steady", everySecond());
    // The first instant is recorded with the schedule.
    expect(status("steady")?.firingAt?.getTime()).toBe(T0 + 1_000);
    const afterCreate = bucket.writes;
    await vi.advanceTimersByTimeAsync(1_000); // first instant T0+1s: submit, outcome
    expect(jobs.instants("steady")).toEqual([T0 + 1_000]);
    expect(bucket.writes - afterCreate).toBe(1);
    expect(status("steady")?.firingAt?.getTime()).toBe(T0 + 2_000);
    expect(status("steady")?.nextFireAt?.getTime()).toBe(T0 + 2_000);
    const before = bucket.writes;
    await vi.advanceTimersByTimeAsync(5_000);
    expect(jobs.instants("steady")).toEqual([1, 2, 3, 4, 5, 6].map((s) => T0 + s * 1_000));
    expect(bucket.writes - before).toBe(5); // one write per fire
    expect(jobs.gets).toEqual([]);
    expect(jobs.submits.every((s) => s.created)).toBe(true);
    const st = status("steady");
    expect(st?.fireCount).toBe(6);
    expect(st?.lastFireAt?.getTime()).toBe(T0 + 6_000);
    expect(st?.firingAt?.getTime()).toBe(T0 + 7_000);
    expect(st?.missedCount).toBe(0);
  });

  it("a recorded past instant with no job, older than the grace, is a miss under SKIP: not fired", async () => {
    const X = T0 - 3_000;
    bucket.put("skip", storedWithRecorded("skip", X, everySecond({ catchUp: CatchUpPolicy.CATCH_UP_POLICY_SKIP })));
    await start();
    expect(jobs.gets).toEqual([fireJobId("skip", X)]);
    expect(jobs.instants("skip")).toEqual([T0]); // late, within the grace
    const st = status("skip");
    // X-3s .. T0 (T0 is within the grace and fires late): X, X+1s, X+2s missed.
    expect(st?.missedCount).toBe(3);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(jobs.instants("skip")).toEqual([T0, T0 + 1_000, T0 + 2_000]);
    expect(jobs.instants("skip")).not.toContain(X);
    expect(status("skip")?.fireCount).toBe(3 + 3);
  });

  it("a recorded past instant with no job runs once under RUN_LATEST / RUN_IMMEDIATELY", async () => {
    const X = T0 - 3_000;
    bucket.put("latest", storedWithRecorded("latest", X, everySecond({ catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_LATEST })));
    bucket.put("first", storedWithRecorded("first", X, everySecond({ catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_IMMEDIATELY })));
    await start();
    expect(jobs.instants("latest")).toEqual([X + 2_000, T0]); // the latest miss, then T0 (late, within the grace)
    expect(status("latest")?.missedCount).toBe(2);
    expect(jobs.instants("first")).toEqual([X, T0]); // the first miss, under its own id
    expect(status("first")?.missedCount).toBe(2);
    for (const s of jobs.submits) expect(s.created).toBe(true);
  });

  it("a recorded instant within the grace with no job is fired once, late", async () => {
    const X = T0; // now is T0 + 100 ms
    bucket.put("late", storedWithRecorded("late", X, everySecond()));
    await start();
    expect(jobs.gets).toEqual([fireJobId("late", X)]);
    expect(jobs.submits).toEqual([{ jobId: fireJobId("late", X), created: true }]);
    expect(status("late")?.missedCount).toBe(0);
    expect(status("late")?.fireCount).toBe(4);
    expect(status("late")?.lastFireAt?.getTime()).toBe(X);
    expect(status("late")?.firingAt?.getTime()).toBe(X + 1_000);
  });

  it("a recorded instant whose job exists is not submitted again: only its bookkeeping is finished", async () => {
    bucket.put("done", storedWithRecorded("done", T0, everySecond()));
    jobs.add(fireJobId("done", T0), T0, T0 + 3);
    // Older than the grace: finished all the same, then the instants after it follow RUN_ALL.
    const X = T0 - 3_000;
    bucket.put("old", storedWithRecorded("old", X, everySecond({ catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_ALL })));
    jobs.add(fireJobId("old", X), X, X + 3);
    await start();
    expect(jobs.submits.filter((s) => s.jobId === fireJobId("done", T0) || s.jobId === fireJobId("old", X))).toEqual([]);
    expect(jobs.instants("done")).toEqual([T0]);
    const st = status("done");
    expect(st?.fireCount).toBe(4);
    expect(st?.lastFireAt?.getTime()).toBe(T0);
    expect(st?.lastJobId).toBe(fireJobId("done", T0));
    expect(st?.lastFireLag).toEqual({ seconds: 0, nanos: 3_000_000 }); // from the job's submitted_at
    expect(st?.firingAt?.getTime()).toBe(T0 + 1_000);
    // X finished (fire 4), X+1s and X+2s run by RUN_ALL, T0 late within the grace.
    expect(jobs.instants("old")).toEqual([X, X + 1_000, X + 2_000, T0]);
    expect(status("old")?.fireCount).toBe(3 + 4);
    expect(status("old")?.missedCount).toBe(0);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(jobs.instants("done")).toEqual([T0, T0 + 1_000]);
  });

  it("a write that fails after the submit: the retry finds the job and submits nothing twice", async () => {
    await start();
    await create("retry", everySecond());
    await vi.advanceTimersByTimeAsync(1_000); // T0+1s fired, T0+2s pre-recorded
    bucket.failUpdates = 1; // the outcome write of T0+2s fails
    await vi.advanceTimersByTimeAsync(1_000);
    expect(jobs.instants("retry")).toEqual([T0 + 1_000, T0 + 2_000]);
    expect(status("retry")?.firingAt?.getTime()).toBe(T0 + 2_000); // still recorded, outcome not written
    await vi.advanceTimersByTimeAsync(1_000); // retry after FIRE_RETRY_MS
    expect(jobs.gets).toContain(fireJobId("retry", T0 + 2_000));
    expect(jobs.submits.filter((s) => s.jobId === fireJobId("retry", T0 + 2_000))).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(2_000);
    const st = status("retry");
    expect(jobs.instants("retry")).toEqual([1, 2, 3, 4, 5].map((s) => T0 + s * 1_000));
    expect(st?.fireCount).toBe(5);
    expect(st?.missedCount).toBe(0);
  });

  it("pause after a fire: the pre-recorded instant does not fire; resume goes on from now", async () => {
    await start();
    await create("paused", everySecond());
    await vi.advanceTimersByTimeAsync(1_000);
    expect(status("paused")?.firingAt?.getTime()).toBe(T0 + 2_000);
    await scheduler.pause("paused", "maintenance");
    expect(status("paused")?.firingAt).toBeUndefined(); // still ahead: dropped
    expect(status("paused")?.nextFireAt).toBeUndefined();
    await vi.advanceTimersByTimeAsync(3_000);
    expect(jobs.instants("paused")).toEqual([T0 + 1_000]);
    await scheduler.resume("paused");
    await vi.advanceTimersByTimeAsync(1_200);
    // T0+2s..T0+4s passed while paused: missed (SKIP); T0+5s fires.
    expect(jobs.instants("paused")).toEqual([T0 + 1_000, T0 + 5_000]);
    expect(status("paused")?.missedCount).toBe(3);
  });

  it("pause while a recorded instant is due: kept, never fired while paused, resolved by job id on resume", async () => {
    const X = T0 - 1_000;
    bucket.put("held", { ...storedWithRecorded("held", X, everySecond()), paused: true });
    await start();
    await vi.advanceTimersByTimeAsync(3_000);
    expect(jobs.submits).toEqual([]);
    await scheduler.resume("held");
    // Resumed: X passed while paused and has no job: a miss (no grace), like T0 .. T0+3s.
    expect(jobs.gets).toEqual([fireJobId("held", X)]);
    expect(jobs.instants("held")).toEqual([]);
    expect(status("held")?.missedCount).toBe(5); // X, T0, T0+1s, T0+2s, T0+3s
    expect(status("held")?.firingAt?.getTime()).toBe(status("held")?.nextFireAt?.getTime());
  });

  it("an update that changes the spec replaces the pre-recorded instant by the new rule's next", async () => {
    await start();
    await create("upd", everySecond());
    await vi.advanceTimersByTimeAsync(1_000);
    expect(status("upd")?.firingAt?.getTime()).toBe(T0 + 2_000);
    await scheduler.updateSchedule(
      UpdateScheduleRequest.fromPartial({
        scheduleId: "upd",
        spec: { kind: { $case: "cron", value: { expression: "*/5 * * * * *", timeZone: "" } } },
      }),
    );
    expect(status("upd")?.firingAt?.getTime()).toBe(T0 + 5_000);
    expect(status("upd")?.nextFireAt?.getTime()).toBe(T0 + 5_000);
    const before = bucket.writes;
    await vi.advanceTimersByTimeAsync(5_000);
    expect(jobs.instants("upd")).toEqual([T0 + 1_000, T0 + 5_000]);
    expect(bucket.writes - before).toBe(1);
    expect(jobs.gets).toEqual([]);
    expect(status("upd")?.firingAt?.getTime()).toBe(T0 + 10_000);
  });

  it("a timer that goes off past the grace for its own pre-record: a miss under SKIP, no job look-up", async () => {
    await start();
    await create("stall", everySecond());
    await vi.advanceTimersByTimeAsync(1_000);
    // The event loop stalls for 2 s: the timer of T0+2s goes off at T0+4s.
    stalledMs = 2_000;
    await vi.advanceTimersByTimeAsync(900);
    expect(jobs.gets).toEqual([]);
    expect(jobs.instants("stall")).toEqual([T0 + 1_000, T0 + 4_000]); // T0+4s: due now
    expect(status("stall")?.missedCount).toBe(2); // T0+2s, T0+3s
  });

  it("a conflict-skipped fire pre-records the next instant (one write)", async () => {
    await start();
    await create("busy", everySecond({ conflict: ConflictPolicy.CONFLICT_POLICY_SKIP }));
    await vi.advanceTimersByTimeAsync(1_000);
    jobs.active = [fireJobId("busy", T0 + 1_000)];
    const before = bucket.writes;
    await vi.advanceTimersByTimeAsync(2_000);
    expect(bucket.writes - before).toBe(2);
    expect(jobs.instants("busy")).toEqual([T0 + 1_000]);
    const st = status("busy");
    expect(st?.skippedCount).toBe(2);
    expect(st?.firingAt?.getTime()).toBe(T0 + 4_000);
    jobs.active = [];
    await vi.advanceTimersByTimeAsync(1_000);
    expect(jobs.instants("busy")).toEqual([T0 + 1_000, T0 + 4_000]);
  });

  it("a fire held across a lost and retaken lease counts the instants it fell behind once", async () => {
    await start();
    await create("held-fire", everySecond());
    await vi.advanceTimersByTimeAsync(1_000);
    let release = () => {};
    jobs.hold = new Promise<void>((resolve) => (release = resolve));
    await vi.advanceTimersByTimeAsync(1_000); // T0+2s: submitting, held
    scheduler.stepDown(); // the lease is lost while NATS is away...
    await vi.advanceTimersByTimeAsync(5_000);
    await scheduler.lead(3); // ...and taken again: the schedule is settled behind the held fire
    jobs.hold = undefined;
    release();
    await vi.advanceTimersByTimeAsync(3_000);
    const instants = jobs.instants("held-fire");
    const st = status("held-fire");
    expect(new Set(instants).size).toBe(instants.length);
    expect(instants.length + (st?.missedCount ?? 0)).toBe((instants[instants.length - 1]! - instants[0]!) / 1_000 + 1);
    expect(st?.missedCount).toBeGreaterThan(0);
  });

  it("an instant another replica recorded (a create served by a standby) is looked up when due, then fired once", async () => {
    await start();
    bucket.put("elsewhere", {
      ...storedWithRecorded("elsewhere", T0 + 1_000, everySecond()),
      status: { ...storedWithRecorded("elsewhere", T0 + 1_000, everySecond()).status!, fireCount: 0, lastFireAt: undefined },
    });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(jobs.gets).toEqual([fireJobId("elsewhere", T0 + 1_000)]);
    expect(jobs.submits).toEqual([{ jobId: fireJobId("elsewhere", T0 + 1_000), created: true }]);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(jobs.gets).toHaveLength(1); // the next one is this leader's own pre-record
    expect(jobs.instants("elsewhere")).toEqual([T0 + 1_000, T0 + 2_000]);
  });

  it("a submit that fails past the grace is resolved by job id: never submitted → missed, got through → finished", async () => {
    await start();
    await create("jm-down", everySecond());
    await create("jm-lost", everySecond());
    await vi.advanceTimersByTimeAsync(1_000); // T0+1s fired
    jobs.down = true;
    jobs.lostReplies = false;
    await vi.advanceTimersByTimeAsync(8_000);
    jobs.down = false;
    await vi.advanceTimersByTimeAsync(3_000);
    const down = jobs.instants("jm-down");
    const st = status("jm-down");
    expect(down).not.toContain(T0 + 2_000); // never got through, past the grace: missed (SKIP)
    expect(down[0]).toBe(T0 + 1_000);
    expect(down.length + (st?.missedCount ?? 0)).toBe((down[down.length - 1]! - T0 - 1_000) / 1_000 + 1);
    expect(st?.firingAt?.getTime()).toBe(st?.nextFireAt?.getTime());

    // The same outage where each submission got through and only the reply was lost.
    jobs.down = true;
    jobs.lostReplies = true;
    const outage = Date.now();
    await vi.advanceTimersByTimeAsync(8_000);
    jobs.down = false;
    await vi.advanceTimersByTimeAsync(3_000);
    const lost = jobs.instants("jm-lost").filter((t) => t > outage);
    expect(new Set(lost).size).toBe(lost.length);
    // The instant whose submission got through at the outage's start is finished, not missed.
    const firstInOutage = Math.ceil(outage / 1_000) * 1_000;
    expect(lost).toContain(firstInOutage);
    expect(jobs.gets).toContain(fireJobId("jm-lost", firstInOutage));
    const stLost = status("jm-lost");
    const all = jobs.instants("jm-lost");
    expect(all.length + (stLost?.missedCount ?? 0)).toBe((all[all.length - 1]! - all[0]!) / 1_000 + 1);
  });

  it("a trigger leaves the pre-recorded instant in place", async () => {
    await start();
    await create("trig", everySecond());
    await vi.advanceTimersByTimeAsync(1_000);
    await vi.advanceTimersByTimeAsync(300);
    const res = await scheduler.trigger("trig");
    expect(res.outcome).toBe("submitted");
    expect(status("trig")?.firingAt?.getTime()).toBe(T0 + 2_000);
    expect(status("trig")?.manualFireCount).toBe(1);
    await vi.advanceTimersByTimeAsync(700);
    expect(jobs.gets).toEqual([]);
    expect(jobs.instants("trig")).toEqual([T0 + 1_000, T0 + 1_400, T0 + 2_000]);
  });
});
