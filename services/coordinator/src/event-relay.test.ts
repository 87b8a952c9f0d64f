/** The event relay against a job-manager that fails for a while (no servers; fake timers). */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { AttemptEvent } from "@aspen/proto";
import { createLogger } from "@aspen/runtime";
import { EventRelay } from "./event-relay.js";

const event = (jobId: string) =>
  ({ jobId, attempt: 1, workerId: "w", event: { $case: "started", value: { pid: 1 } } }) as unknown as AttemptEvent;

describe("event relay", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("keeps retrying at most a second apart through a long outage, and delivers in order", async () => {
    const calls: number[] = [];
    const delivered: string[] = [];
    let failing = true;
    const relay = new EventRelay(
      async (events) => {
        calls.push(Date.now());
        if (failing) throw new Error("UNAVAILABLE: store electing a leader");
        delivered.push(...events.map((e) => e.jobId));
        return events.map(() => "");
      },
      createLogger("test", "silent"),
    );
    relay.push(event("a"));
    relay.push(event("b"));
    await vi.advanceTimersByTimeAsync(20_000);
    failing = false;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(delivered).toEqual(["a", "b"]);
    const gaps = calls.slice(1).map((t, i) => t - calls[i]!);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(1_000);
    expect(calls.length).toBeGreaterThan(20); // 20 s of outage: a try every second once backed off
    await relay.close();
  });
});
