import { describe, expect, it } from "vitest";
import { preRecord, recordedAfterPause, recordedFate } from "./recorded.js";

const T = Date.UTC(2025, 0, 1, 12);

describe("a recorded instant", () => {
  it("found submitted: only the bookkeeping is left, however old", () => {
    expect(recordedFate(T, true, T + 10, 5_000)).toBe("finish");
    expect(recordedFate(T, true, T + 86_400_000, 5_000)).toBe("finish");
    expect(recordedFate(T, true, T + 10, 0)).toBe("finish");
  });

  it("never submitted: fired within the grace (bound included), missed past it", () => {
    expect(recordedFate(T, false, T, 5_000)).toBe("fire");
    expect(recordedFate(T, false, T + 5_000, 5_000)).toBe("fire");
    expect(recordedFate(T, false, T + 5_001, 5_000)).toBe("catch-up");
    // Resumed: no grace, what passed while paused is missed.
    expect(recordedFate(T, false, T + 1, 0)).toBe("catch-up");
  });

  it("is pre-recorded only for a scheduled fire that leaves a next instant on an unpaused schedule", () => {
    expect(preRecord(true, T + 1_000, false)).toBe(T + 1_000);
    expect(preRecord(true, undefined, false)).toBeUndefined(); // once, max_runs, end_at
    expect(preRecord(true, T + 1_000, true)).toBeUndefined(); // paused meanwhile
    expect(preRecord(false, T + 1_000, false)).toBeUndefined(); // trigger, backfill, queued
  });

  it("is dropped by a pause when still ahead, kept for resume when due or past", () => {
    expect(recordedAfterPause(T + 1, T)).toBeUndefined();
    expect(recordedAfterPause(T, T)).toBe(T);
    expect(recordedAfterPause(T - 1_000, T)).toBe(T - 1_000);
    expect(recordedAfterPause(undefined, T)).toBeUndefined();
  });
});
