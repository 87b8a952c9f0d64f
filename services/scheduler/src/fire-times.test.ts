import { describe, expect, it } from "vitest";
import {
  type CatchUpPolicy,
  type ConflictPolicy,
  DstPolicy_Ambiguous as A,
  DstPolicy_Nonexistent as N,
  ScheduleSpec,
} from "@aspen/proto";
import { InvalidArgumentError } from "@aspen/runtime";
import { compileRule, countBetween, firesBetween, jitterOffset, validateScheduleSpec } from "./fire-times.js";

const T0 = Date.parse("2026-03-01T00:00:00.000Z");
const spec = (s: Parameters<typeof ScheduleSpec.fromPartial>[0]) => ScheduleSpec.fromPartial(s);
const cron = (expression: string, timeZone = "", extra: Parameters<typeof ScheduleSpec.fromPartial>[0] = {}) =>
  spec({ kind: { $case: "cron", value: { expression, timeZone } }, ...extra });
const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());
const sec = (seconds: number) => ({ seconds, nanos: 0 });

function firesAfter(s: ScheduleSpec, afterMs: number, n: number, createdAtMs = afterMs, scheduleId = ""): string[] {
  validateScheduleSpec(s, undefined);
  const rule = compileRule(s, { createdAtMs, scheduleId });
  const out: string[] = [];
  let t = afterMs;
  for (let i = 0; i < n; i++) {
    const next = rule.next(t, i);
    if (next === undefined) break;
    out.push(iso(next) as string);
    t = next;
  }
  return out;
}

/** Local wall-clock readings of fires, "YYYY-MM-DD HH:MM +offset" as a user in that zone sees them. */
function local(tz: string, ms: number): string {
  const f = new Intl.DateTimeFormat("sv-SE", {
    timeZone: tz,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    timeZoneName: "longOffset",
  });
  return f.format(new Date(ms)).replace("GMT", "").replace("\u2212", "-");
}

function previewLocal(s: ScheduleSpec, tz: string, after: string, n: number): string[] {
  const rule = compileRule(s, { createdAtMs: Date.parse(after) });
  return rule.events(Date.parse(after), { fireCount: 0 }, n).map((e) => `${local(tz, e.at)}${e.skip ? " SKIP" : ""}`);
}

function refusal(s: ScheduleSpec, now = T0): InvalidArgumentError {
  try {
    validateScheduleSpec(s, now);
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return err as InvalidArgumentError;
  }
  throw new Error("expected a refusal");
}

describe("cron fire times", () => {
  it("6-field every 2 seconds, strictly after the given instant", () => {
    expect(firesAfter(cron("*/2 * * * * *"), T0, 3)).toEqual([
      "2026-03-01T00:00:02.000Z",
      "2026-03-01T00:00:04.000Z",
      "2026-03-01T00:00:06.000Z",
    ]);
    expect(firesAfter(cron("*/2 * * * * *"), T0 + 1500, 1)).toEqual(["2026-03-01T00:00:02.000Z"]);
  });

  it("5-field daily at 02:00 in a time zone", () => {
    expect(firesAfter(cron("0 2 * * *", "Europe/Paris"), T0, 2)).toEqual([
      "2026-03-01T01:00:00.000Z",
      "2026-03-02T01:00:00.000Z",
    ]);
  });

  it("crosses the year boundary, in UTC and in a zone east of it", () => {
    expect(firesAfter(cron("0 0 1 1 *"), Date.parse("2026-12-31T23:59:59Z"), 1)).toEqual(["2027-01-01T00:00:00.000Z"]);
    expect(firesAfter(cron("0 0 1 1 *", "Australia/Lord_Howe"), Date.parse("2026-12-31T00:00:00Z"), 1)).toEqual([
      "2026-12-31T13:00:00.000Z", // midnight at +11:00 (Lord Howe summer time)
    ]);
    expect(firesAfter(cron("59 23 31 12 *"), Date.parse("2026-06-01T00:00:00Z"), 2)).toEqual([
      "2026-12-31T23:59:00.000Z",
      "2027-12-31T23:59:00.000Z",
    ]);
    // 7th field: a year.
    expect(firesAfter(cron("0 0 0 1 1 * 2030"), T0, 2)).toEqual(["2030-01-01T00:00:00.000Z"]);
  });

  it("lands on leap days, and L means the 29th in a leap February", () => {
    expect(firesAfter(cron("0 12 29 2 *"), T0, 2)).toEqual(["2028-02-29T12:00:00.000Z", "2032-02-29T12:00:00.000Z"]);
    expect(firesAfter(cron("0 0 L 2 *"), Date.parse("2027-03-01T00:00:00Z"), 2)).toEqual([
      "2028-02-29T00:00:00.000Z",
      "2029-02-28T00:00:00.000Z",
    ]);
    expect(firesAfter(cron("0 9 * * 1#1"), T0, 1)).toEqual(["2026-03-02T09:00:00.000Z"]); // first Monday
    expect(firesAfter(cron("0 9 15W * *"), Date.parse("2026-08-01T00:00:00Z"), 1)).toEqual(["2026-08-14T09:00:00.000Z"]); // Sat 15th → Fri 14th
  });

  it.each([
    ["* * *", "spec.cron.expression"],
    ["61 * * * *", "spec.cron.expression"],
    ["0 0 31 2 *", "spec.cron.expression"],
    ["", "spec.cron.expression"],
  ])("refuses %j naming %s", (expression, field) => {
    expect(refusal(cron(expression)).field).toBe(field);
  });

  it("refuses an unknown time zone up front", () => {
    expect(refusal(cron("* * * * *", "Mars/Olympus")).message).toMatch(/^spec\.cron\.time_zone: unknown IANA time zone/);
  });
});

describe("DST: both choices for both cases, in three zones", () => {
  const NY = "America/New_York";
  const LON = "Europe/London";
  const LH = "Australia/Lord_Howe";
  const dst = (nonexistent: N, ambiguous: A) => ({ dst: { nonexistent, ambiguous } });

  it("New York spring forward (02:00 → 03:00): default runs at 03:00, SKIP drops the day", () => {
    const after = "2026-03-07T12:00:00Z";
    expect(previewLocal(cron("30 2 * * *", NY), NY, after, 2)).toEqual(["2026-03-08 03:00 -04:00", "2026-03-09 02:30 -04:00"]);
    expect(previewLocal(cron("30 2 * * *", NY, dst(N.NONEXISTENT_RUN_AT_NEXT_VALID, 0)), NY, after, 1)).toEqual([
      "2026-03-08 03:00 -04:00",
    ]);
    expect(previewLocal(cron("30 2 * * *", NY, dst(N.NONEXISTENT_SKIP, 0)), NY, after, 2)).toEqual([
      "2026-03-08 03:00 -04:00 SKIP",
      "2026-03-09 02:30 -04:00",
    ]);
    expect(firesAfter(cron("30 2 * * *", NY, dst(N.NONEXISTENT_SKIP, 0)), Date.parse(after), 1)).toEqual([
      "2026-03-09T06:30:00.000Z",
    ]);
  });

  it("New York fall back (01:00–02:00 twice): default once at the first, BOTH at each", () => {
    const after = "2026-10-31T12:00:00Z";
    expect(previewLocal(cron("30 1 * * *", NY), NY, after, 3)).toEqual([
      "2026-11-01 01:30 -04:00",
      "2026-11-01 01:30 -05:00 SKIP",
      "2026-11-02 01:30 -05:00",
    ]);
    expect(previewLocal(cron("30 1 * * *", NY, dst(0, A.AMBIGUOUS_BOTH)), NY, after, 3)).toEqual([
      "2026-11-01 01:30 -04:00",
      "2026-11-01 01:30 -05:00",
      "2026-11-02 01:30 -05:00",
    ]);
    // A sub-hourly cron through the repeated hour: ONCE runs the hour once, BOTH twice, in instant order.
    const every20 = (a: A) => firesAfter(cron("*/20 * * * *", NY, dst(0, a)), Date.parse("2026-11-01T04:50:00Z"), 7);
    expect(every20(A.AMBIGUOUS_ONCE).map((t) => local(NY, Date.parse(t)).slice(11))).toEqual([
      "01:00 -04:00",
      "01:20 -04:00",
      "01:40 -04:00",
      "02:00 -05:00",
      "02:20 -05:00",
      "02:40 -05:00",
      "03:00 -05:00",
    ]);
    expect(every20(A.AMBIGUOUS_BOTH).map((t) => local(NY, Date.parse(t)).slice(11))).toEqual([
      "01:00 -04:00",
      "01:20 -04:00",
      "01:40 -04:00",
      "01:00 -05:00",
      "01:20 -05:00",
      "01:40 -05:00",
      "02:00 -05:00",
    ]);
  });

  it("London: 01:30 does not exist on the last Sunday of March, happens twice on the last of October", () => {
    expect(previewLocal(cron("30 1 * * *", LON), LON, "2026-03-28T12:00:00Z", 2)).toEqual([
      "2026-03-29 02:00 +01:00",
      "2026-03-30 01:30 +01:00",
    ]);
    expect(previewLocal(cron("30 1 * * *", LON, dst(N.NONEXISTENT_SKIP, 0)), LON, "2026-03-28T12:00:00Z", 2)).toEqual([
      "2026-03-29 02:00 +01:00 SKIP",
      "2026-03-30 01:30 +01:00",
    ]);
    expect(previewLocal(cron("30 1 * * *", LON), LON, "2026-10-24T12:00:00Z", 3)).toEqual([
      "2026-10-25 01:30 +01:00",
      "2026-10-25 01:30 +00:00 SKIP",
      "2026-10-26 01:30 +00:00",
    ]);
    expect(previewLocal(cron("30 1 * * *", LON, dst(0, A.AMBIGUOUS_BOTH)), LON, "2026-10-24T12:00:00Z", 3)).toEqual([
      "2026-10-25 01:30 +01:00",
      "2026-10-25 01:30 +00:00",
      "2026-10-26 01:30 +00:00",
    ]);
  });

  it("Lord Howe shifts by 30 minutes: 02:15 missing in October, 01:45 twice in April", () => {
    expect(previewLocal(cron("15 2 * * *", LH), LH, "2026-10-03T00:00:00Z", 2)).toEqual([
      "2026-10-04 02:30 +11:00",
      "2026-10-05 02:15 +11:00",
    ]);
    expect(previewLocal(cron("15 2 * * *", LH, dst(N.NONEXISTENT_SKIP, 0)), LH, "2026-10-03T00:00:00Z", 2)).toEqual([
      "2026-10-04 02:30 +11:00 SKIP",
      "2026-10-05 02:15 +11:00",
    ]);
    expect(previewLocal(cron("45 1 * * *", LH), LH, "2026-04-04T00:00:00Z", 3)).toEqual([
      "2026-04-05 01:45 +11:00",
      "2026-04-05 01:45 +10:30 SKIP",
      "2026-04-06 01:45 +10:30",
    ]);
    expect(previewLocal(cron("45 1 * * *", LH, dst(0, A.AMBIGUOUS_BOTH)), LH, "2026-04-04T00:00:00Z", 3)).toEqual([
      "2026-04-05 01:45 +11:00",
      "2026-04-05 01:45 +10:30",
      "2026-04-06 01:45 +10:30",
    ]);
  });

  it("business hours follow the same DST rules and the wall clock across the change", () => {
    const bh = spec({
      kind: {
        $case: "businessHours",
        value: { daysOfWeek: [0], startHour: 1, endHour: 3, timeZone: NY, every: sec(3600) },
      },
      dst: { ambiguous: A.AMBIGUOUS_BOTH },
    });
    expect(firesAfter(bh, Date.parse("2026-10-31T12:00:00Z"), 4).map((t) => local(NY, Date.parse(t)))).toEqual([
      "2026-11-01 01:00 -04:00",
      "2026-11-01 01:00 -05:00",
      "2026-11-01 02:00 -05:00",
      "2026-11-08 01:00 -05:00",
    ]);
  });
});

describe("other kinds", () => {
  it("once fires at its instant only if it is still ahead", () => {
    const s = spec({ kind: { $case: "once", value: { at: new Date(T0 + 5_000) } } });
    expect(firesAfter(s, T0, 3)).toEqual([iso(T0 + 5_000)]);
    expect(firesAfter(s, T0 + 5_000, 3)).toEqual([]);
    expect(() => validateScheduleSpec(s, T0 + 6_000)).toThrow(/spec\.once\.at: is in the past/);
    expect(() => validateScheduleSpec(s, undefined)).not.toThrow();
  });

  it("interval is phased from start_at, else from creation", () => {
    const every = sec(10);
    const phased = spec({ kind: { $case: "interval", value: { every } }, startAt: new Date(T0 + 3_000) });
    expect(firesAfter(phased, T0 + 4_000, 2)).toEqual([iso(T0 + 13_000), iso(T0 + 23_000)]);
    const fromCreation = spec({ kind: { $case: "interval", value: { every } } });
    expect(firesAfter(fromCreation, T0 + 1, 2, T0)).toEqual([iso(T0 + 10_000), iso(T0 + 20_000)]);
    expect(refusal(spec({ kind: { $case: "interval", value: { every: { seconds: 0, nanos: 1 } } } })).field).toBe(
      "spec.interval.every",
    );
  });

  it("rate_limit spreads N fires evenly over each hour", () => {
    const s = spec({ kind: { $case: "rateLimit", value: { maxPerHour: 4 } } });
    expect(firesAfter(s, T0, 5, T0)).toEqual([15, 30, 45, 60, 75].map((m) => iso(T0 + m * 60_000)));
    expect(countBetween(compileRule(s, { createdAtMs: T0 }), T0, T0 + 3_600_000, 0)).toBe(4);
    expect(refusal(spec({ kind: { $case: "rateLimit", value: { maxPerHour: 0 } } })).field).toBe("spec.rate_limit.max_per_hour");
    expect(refusal(spec({ kind: { $case: "rateLimit", value: { maxPerHour: 7200 } } })).field).toBe(
      "spec.rate_limit.max_per_hour",
    );
  });

  it("business_hours: the cadence inside the window on business days; skips say why", () => {
    const s = spec({
      kind: {
        $case: "businessHours",
        value: { daysOfWeek: [], startHour: 9, endHour: 11, timeZone: "Europe/London", every: sec(3600) },
      },
    });
    // 2026-03-06 is a Friday (GMT, UTC+0 until 29 March).
    const after = Date.parse("2026-03-06T08:00:00Z");
    expect(firesAfter(s, after, 4)).toEqual([
      "2026-03-06T09:00:00.000Z",
      "2026-03-06T10:00:00.000Z",
      "2026-03-09T09:00:00.000Z",
      "2026-03-09T10:00:00.000Z",
    ]);
    const events = compileRule(s, { createdAtMs: after }).events(after, { fireCount: 0 }, 6);
    expect(events.map((e) => [iso(e.at), e.skip ?? ""])).toEqual([
      ["2026-03-06T09:00:00.000Z", ""],
      ["2026-03-06T10:00:00.000Z", ""],
      ["2026-03-06T11:00:00.000Z", "business hours: 11:00 is outside 09:00-11:00"],
      ["2026-03-07T09:00:00.000Z", "business hours: Saturday is not a business day"],
      ["2026-03-08T09:00:00.000Z", "business hours: Sunday is not a business day"],
      ["2026-03-09T09:00:00.000Z", ""],
    ]);
    const bad = (value: object) =>
      spec({ kind: { $case: "businessHours", value: { startHour: 9, endHour: 17, every: sec(60), ...value } } });
    expect(refusal(bad({ endHour: 9 })).field).toBe("spec.business_hours.end_hour");
    expect(refusal(bad({ daysOfWeek: [7] })).field).toBe("spec.business_hours.days_of_week");
    expect(refusal(bad({ timeZone: "Nowhere/Land" })).field).toBe("spec.business_hours.time_zone");
    expect(refusal(bad({ every: sec(0) })).field).toBe("spec.business_hours.every");
  });

  it("exponential doubles the delay from base up to max; a reset starts again at base", () => {
    const s = spec({ kind: { $case: "exponential", value: { baseDelay: sec(10), maxDelay: sec(60) } } });
    const rule = compileRule(s, { createdAtMs: T0 });
    const fires: number[] = [];
    let t = T0;
    for (let step = 0; step < 6; step++) {
      t = rule.next(t, step, step) as number;
      fires.push((t - T0) / 1000);
    }
    expect(fires).toEqual([10, 30, 70, 130, 190, 250]); // +10 +20 +40 +60 +60 +60
    expect(rule.next(T0, 6, 0)).toBe(T0 + 10_000); // after a success: base again
    expect(refusal(spec({ kind: { $case: "exponential", value: { baseDelay: sec(10), maxDelay: sec(5) } } })).field).toBe(
      "spec.exponential.max_delay",
    );
  });
});

describe("options common to every kind", () => {
  it("start_at is inclusive, end_at stops (and says so), max_runs counts fires", () => {
    const bounded = cron("* * * * * *", "", { startAt: new Date(T0 + 10_000), endAt: new Date(T0 + 12_000) });
    expect(firesAfter(bounded, T0, 10)).toEqual([iso(T0 + 10_000), iso(T0 + 11_000), iso(T0 + 12_000)]);
    const events = compileRule(bounded, { createdAtMs: T0 }).events(T0, { fireCount: 0 }, 10);
    expect(events).toHaveLength(4);
    expect(events[3]?.skip).toMatch(/^end_at: /);
    const limited = cron("* * * * * *", "", { maxRuns: 2 });
    expect(firesAfter(limited, T0, 10)).toHaveLength(2);
    const limitedEvents = compileRule(limited, { createdAtMs: T0 }).events(T0, { fireCount: 0 }, 10);
    expect(limitedEvents.map((e) => e.skip ?? "")).toEqual(["", "", "max_runs: 2 fires done"]);
    expect(refusal(spec({ ...bounded, endAt: new Date(T0) })).field).toBe("spec.end_at");
    // An end_at already past for a spec that is otherwise fine: it would never fire.
    expect(refusal(cron("0 0 * * *", "", { endAt: new Date(T0 - 1) })).field).toBe("spec.end_at");
  });

  it("jitter: the same schedule always gets the same offset, below the bound; others differ", () => {
    const s = cron("0 * * * *", "", { jitter: sec(60) });
    const a = firesAfter(s, T0, 3, T0, "nightly-report");
    expect(firesAfter(s, T0, 3, T0, "nightly-report")).toEqual(a);
    const offset = jitterOffset("nightly-report", 60_000);
    expect(offset).toBeGreaterThanOrEqual(0);
    expect(offset).toBeLessThan(60_000);
    // The grid moves by the offset: the first fire after T0 is T0 + offset.
    expect(a).toEqual([0, 1, 2].map((h) => iso(T0 + h * 3_600_000 + offset)));
    const others = new Set(["a", "b", "c", "d", "e"].map((id) => jitterOffset(id, 60_000)));
    expect(others.size).toBeGreaterThan(1);
    expect(refusal(cron("* * * * *", "", { jitter: sec(200_000) })).field).toBe("spec.jitter");
  });

  it("counts the instants missed in a window, exactly, and keeps the ones to run", () => {
    const rule = compileRule(cron("* * * * * *"), { createdAtMs: T0 });
    expect(countBetween(rule, T0, T0 + 10_000, 0)).toBe(10);
    const range = firesBetween(rule, T0, T0 + 3_600_000, { fireCount: 0 }, 3);
    expect(range.total).toBe(3_600);
    expect(range.instants).toEqual([T0 + 1000, T0 + 2000, T0 + 3000]);
    expect(range.lastMs).toBe(T0 + 3_600_000);
  });

  it("refuses a spec without a kind and unknown policy values, naming the field", () => {
    expect(refusal(spec({})).field).toBe("spec.kind");
    expect(refusal(cron("* * * * *", "", { catchUp: 99 as CatchUpPolicy })).field).toBe("spec.catch_up");
    expect(refusal(cron("* * * * *", "", { conflict: 99 as ConflictPolicy })).field).toBe("spec.conflict");
    expect(refusal(cron("* * * * *", "", { dst: { nonexistent: 9 as N, ambiguous: 0 } })).field).toBe("spec.dst.nonexistent");
    expect(refusal(cron("* * * * *", "", { catchUpLimit: 1_000_000 })).field).toBe("spec.catch_up_limit");
  });
});
