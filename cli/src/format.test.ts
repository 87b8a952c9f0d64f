import { describe, expect, it } from "vitest";
import { Job, JobState, Priority, ScheduleSpec } from "@aspen/proto";
import {
  ago,
  collectKeyValue,
  exitSummary,
  fields,
  formatDuration,
  formatInstant,
  formatMap,
  jobDurationMs,
  parseCount,
  parseDuration,
  parseInstant,
  priorityName,
  shellJoin,
  shortName,
  specSummary,
  table,
} from "./format.js";

describe("table", () => {
  it("pads every column but the last to its widest cell", () => {
    expect(
      table(
        ["ID", "STATE", "EXIT"],
        [
          ["hello.1", "SUCCEEDED", "0"],
          ["j-2", "RUNNING", "-"],
        ],
      ),
    ).toBe(["ID       STATE      EXIT", "hello.1  SUCCEEDED  0", "j-2      RUNNING    -"].join("\n"));
  });

  it("prints the header alone for no rows, and treats missing cells as empty", () => {
    expect(table(["A", "B"], [])).toBe("A  B");
    expect(table(["A", "B", "C"], [["x"]])).toBe("A  B  C\nx");
  });
});

describe("fields", () => {
  it("aligns values after the longest key", () => {
    expect(
      fields([
        ["id", "hello"],
        ["next fire", "-"],
      ]),
    ).toBe("id:         hello\nnext fire:  -");
  });
});

describe("formatInstant", () => {
  it("prints UTC to the second, '-' when unset", () => {
    expect(formatInstant(new Date("2030-01-02T03:04:05.678Z"))).toBe("2030-01-02T03:04:05Z");
    expect(formatInstant(undefined)).toBe("-");
  });
});

describe("formatDuration", () => {
  it.each([
    [0, "0ms"],
    [250, "250ms"],
    [1_000, "1s"],
    [1_500, "1.5s"],
    [59_960, "1m"],
    [123_000, "2m3s"],
    [300_000, "5m"],
    [3_900_000, "1h5m"],
    [7_200_000, "2h"],
    [86_400_000 * 3 + 3_600_000 * 4, "3d4h"],
    [-5, "0ms"],
  ])("%d ms → %s", (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it("prints what parseDuration reads back", () => {
    for (const ms of [250, 1_500, 123_000, 3_900_000, 86_400_000]) expect(parseDuration(formatDuration(ms))).toBe(ms);
  });
});

describe("ago", () => {
  it("is relative to now", () => {
    expect(ago(new Date(10_000), 13_000)).toBe("3s ago");
    expect(ago(undefined, 13_000)).toBe("-");
  });
});

describe("shortName", () => {
  it("drops the enum prefix; unknown values print as numbers", () => {
    expect(shortName(JobState, JobState.JOB_STATE_TIMED_OUT, "JOB_STATE_")).toBe("TIMED_OUT");
    expect(shortName(JobState, 99, "JOB_STATE_")).toBe("99");
  });

  it("prints an unspecified priority as '-'", () => {
    expect(priorityName(Priority.PRIORITY_CRITICAL)).toBe("CRITICAL");
    expect(priorityName(Priority.PRIORITY_UNSPECIFIED)).toBe("-");
  });
});

describe("formatMap and shellJoin", () => {
  it("prints maps sorted by key", () => {
    expect(formatMap({ zone: "eu", env: "dev" })).toBe("env=dev,zone=eu");
    expect(formatMap({})).toBe("-");
  });

  it("quotes only the arguments a shell would split or expand", () => {
    expect(shellJoin(["echo", "hello world", "it's", "a=b", "", "$HOME"])).toBe(`echo 'hello world' 'it'\\''s' a=b '' '$HOME'`);
  });
});

describe("specSummary", () => {
  it("summarises each kind", () => {
    const cron = ScheduleSpec.fromPartial({
      kind: { $case: "cron", value: { expression: "0 9 * * 1-5", timeZone: "Europe/Paris" } },
    });
    const utc = ScheduleSpec.fromPartial({ kind: { $case: "cron", value: { expression: "* * * * *", timeZone: "UTC" } } });
    const every = ScheduleSpec.fromPartial({ kind: { $case: "interval", value: { every: { seconds: 90, nanos: 0 } } } });
    const once = ScheduleSpec.fromPartial({ kind: { $case: "once", value: { at: new Date("2030-01-01T09:00:00Z") } } });
    expect(specSummary(cron)).toBe("cron 0 9 * * 1-5 (Europe/Paris)");
    expect(specSummary(utc)).toBe("cron * * * * *");
    expect(specSummary(every)).toBe("every 1m30s");
    expect(specSummary(once)).toBe("once at 2030-01-01T09:00:00Z");
    expect(specSummary(undefined)).toBe("-");
  });
});

describe("job summaries", () => {
  const started = new Date("2030-01-01T00:00:00Z");

  it("measures the attempt until it finished, or until now while it runs", () => {
    expect(jobDurationMs(Job.fromPartial({}), 0)).toBeUndefined();
    expect(jobDurationMs(Job.fromPartial({ startedAt: started }), started.getTime() + 5_000)).toBe(5_000);
    expect(jobDurationMs(Job.fromPartial({ startedAt: started, finishedAt: new Date(started.getTime() + 12) }), 0)).toBe(12);
  });

  it("prints the exit code, or the signal that ended the process", () => {
    expect(exitSummary(Job.fromPartial({}))).toBe("-");
    expect(exitSummary(Job.fromPartial({ result: { exitCode: 3 } }))).toBe("3");
    expect(exitSummary(Job.fromPartial({ result: { exitCode: -1, signal: "SIGTERM" } }))).toBe("SIGTERM");
  });
});

describe("option parsers", () => {
  it("collects key=value pairs; the value may contain '='", () => {
    expect(collectKeyValue("b=2=x", collectKeyValue("a=1"))).toEqual({ a: "1", b: "2=x" });
    expect(collectKeyValue("empty=")).toEqual({ empty: "" });
    expect(() => collectKeyValue("novalue")).toThrow(/key=value/);
    expect(() => collectKeyValue("=v")).toThrow(/key=value/);
  });

  it("parses positive durations and counts", () => {
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(() => parseDuration("5x")).toThrow(/duration/);
    expect(() => parseDuration("0s")).toThrow(/duration/);
    expect(parseCount("3")).toBe(3);
    expect(() => parseCount("0")).toThrow(/at least 1/);
    expect(() => parseCount("2.5")).toThrow(/at least 1/);
  });

  it("reads instants without an offset as UTC", () => {
    expect(parseInstant("2030-01-01T09:00:00").toISOString()).toBe("2030-01-01T09:00:00.000Z");
    expect(parseInstant("2030-01-01T09:00:00+02:00").toISOString()).toBe("2030-01-01T07:00:00.000Z");
    expect(parseInstant("2030-01-01").toISOString()).toBe("2030-01-01T00:00:00.000Z");
    expect(() => parseInstant("tomorrow")).toThrow(/ISO 8601/);
  });
});
