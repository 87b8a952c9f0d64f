import { describe, expect, it } from "vitest";
import { CatchUpPolicy, ScheduleSpec } from "@aspen/proto";
import { AspenError, InvalidArgumentError, UnimplementedError } from "@aspen/runtime";
import { compileRule, countBetween, validateScheduleSpec } from "./fire-times.js";

const T0 = Date.parse("2026-03-01T00:00:00.000Z");
const spec = (s: Parameters<typeof ScheduleSpec.fromPartial>[0]) => ScheduleSpec.fromPartial(s);
const cron = (expression: string, timeZone = "") => spec({ kind: { $case: "cron", value: { expression, timeZone } } });
const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

function firesAfter(s: ScheduleSpec, afterMs: number, n: number, createdAtMs = afterMs): string[] {
  validateScheduleSpec(s, undefined);
  const rule = compileRule(s, { createdAtMs });
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

  it("crosses the year boundary and lands on leap days", () => {
    expect(firesAfter(cron("0 0 1 1 *"), Date.parse("2026-12-31T23:59:59Z"), 1)).toEqual(["2027-01-01T00:00:00.000Z"]);
    expect(firesAfter(cron("0 12 29 2 *"), T0, 1)).toEqual(["2028-02-29T12:00:00.000Z"]);
  });

  it.each([
    ["* * *", "spec.cron.expression"],
    ["61 * * * *", "spec.cron.expression"],
    ["0 0 31 2 *", "spec.cron.expression"],
    ["", "spec.cron.expression"],
  ])("refuses %j naming %s", (expression, field) => {
    expect(() => validateScheduleSpec(cron(expression), T0)).toThrow(InvalidArgumentError);
    try {
      validateScheduleSpec(cron(expression), T0);
    } catch (err) {
      expect((err as InvalidArgumentError).field).toBe(field);
    }
  });

  it("refuses an unknown time zone up front", () => {
    expect(() => validateScheduleSpec(cron("* * * * *", "Mars/Olympus"), T0)).toThrow(/spec\.cron\.time_zone/);
  });
});

describe("once and interval", () => {
  it("once fires at its instant only if it is still ahead", () => {
    const s = spec({ kind: { $case: "once", value: { at: new Date(T0 + 5_000) } } });
    expect(firesAfter(s, T0, 3)).toEqual([iso(T0 + 5_000)]);
    expect(firesAfter(s, T0 + 5_000, 3)).toEqual([]);
    // A new schedule in the past is refused; a stored one that already fired is still readable.
    expect(() => validateScheduleSpec(s, T0 + 6_000)).toThrow(/spec\.once\.at: is in the past/);
    expect(() => validateScheduleSpec(s, undefined)).not.toThrow();
  });

  it("interval is phased from start_at, else from creation", () => {
    const every = { seconds: 10, nanos: 0 };
    const phased = spec({ kind: { $case: "interval", value: { every } }, startAt: new Date(T0 + 3_000) });
    expect(firesAfter(phased, T0 + 4_000, 2)).toEqual([iso(T0 + 13_000), iso(T0 + 23_000)]);
    const fromCreation = spec({ kind: { $case: "interval", value: { every } } });
    expect(firesAfter(fromCreation, T0 + 1, 2, T0)).toEqual([iso(T0 + 10_000), iso(T0 + 20_000)]);
    expect(() =>
      validateScheduleSpec(spec({ kind: { $case: "interval", value: { every: { seconds: 0, nanos: 1 } } } }), T0),
    ).toThrow(/spec\.interval\.every/);
  });
});

describe("bounds", () => {
  it("start_at is inclusive, end_at stops, max_runs counts fires", () => {
    const bounded = spec({
      kind: { $case: "cron", value: { expression: "* * * * * *", timeZone: "" } },
      startAt: new Date(T0 + 10_000),
      endAt: new Date(T0 + 12_000),
    });
    expect(firesAfter(bounded, T0, 10)).toEqual([iso(T0 + 10_000), iso(T0 + 11_000), iso(T0 + 12_000)]);
    const limited = spec({ kind: { $case: "cron", value: { expression: "* * * * * *", timeZone: "" } }, maxRuns: 2 });
    expect(firesAfter(limited, T0, 10)).toHaveLength(2);
    expect(() => validateScheduleSpec(spec({ ...bounded, endAt: new Date(T0) }), T0)).toThrow(/spec\.end_at/);
  });

  it("counts the instants missed in a window", () => {
    const rule = compileRule(cron("* * * * * *"), { createdAtMs: T0 });
    expect(countBetween(rule, T0, T0 + 10_000, 0)).toBe(10);
    expect(countBetween(rule, T0, T0 + 10_000, 0, 4)).toBe(4);
  });

  it("refuses policies that are not built yet instead of ignoring them", () => {
    const s = spec({ ...cron("* * * * *"), catchUp: CatchUpPolicy.CATCH_UP_POLICY_RUN_ALL });
    expect(() => validateScheduleSpec(s, T0)).toThrow(UnimplementedError);
    expect(() => validateScheduleSpec(spec({}), T0)).toThrow(AspenError);
  });
});
