/** The dispatcher against a simulated cluster of slots (no servers; fake timers). */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Priority } from "@aspen/proto";
import { Dispatcher, type DispatchOutcome } from "./dispatcher.js";

/** A cluster with `slots` slots; placement takes one tick; `finish()` frees a slot. */
function cluster(slots: number) {
  const running: string[] = [];
  const placed: string[] = [];
  let calls = 0;
  let refused = 0;
  const place = async (id: string): Promise<DispatchOutcome> => {
    calls++;
    await Promise.resolve();
    if (running.length >= slots) {
      refused++;
      return "no-capacity";
    }
    running.push(id);
    placed.push(id);
    return "placed";
  };
  return {
    place,
    placed,
    running,
    stats: () => ({ calls, refused }),
    finish(d: Dispatcher) {
      running.shift();
      d.capacityFreed();
    },
  };
}

const settle = async () => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
};

describe("dispatcher", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("places in priority then submission order and keeps that order through refusals", async () => {
    const c = cluster(2);
    const d = new Dispatcher(c.place, { concurrency: 8, retryDelayMs: 1_000 });
    for (let i = 0; i < 10; i++) d.enqueue(`n${i}`, Priority.PRIORITY_NORMAL);
    d.enqueue("urgent", Priority.PRIORITY_CRITICAL);
    await settle();
    while (c.placed.length < 11) {
      c.finish(d);
      await settle();
    }
    // n0..n7 were in flight when the cluster filled; the refused ones regain their places.
    expect(c.placed).toEqual(["n0", "n1", "urgent", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"]);
    await d.close();
  });

  it("once saturated, asks the coordinator once per freed slot, not for every queued job", async () => {
    const c = cluster(4);
    const d = new Dispatcher(c.place, { concurrency: 64, retryDelayMs: 1_000 });
    for (let i = 0; i < 200; i++) d.enqueue(`j${i}`, Priority.PRIORITY_NORMAL);
    await settle();
    const afterBurst = c.stats();
    for (let i = 0; i < 100; i++) {
      c.finish(d);
      await settle();
    }
    const after = c.stats();
    expect(c.placed).toHaveLength(104);
    // The first burst may overshoot; after that every call places a job.
    expect(after.refused - afterBurst.refused).toBe(0);
    expect(after.calls - afterBurst.calls).toBe(100);
    await d.close();
  });

  it("opens again after retryDelayMs without a freed slot (a new worker may have joined)", async () => {
    let capacity = 0;
    let calls = 0;
    const d = new Dispatcher(
      async () => {
        calls++;
        return capacity-- > 0 ? "placed" : "no-capacity";
      },
      { concurrency: 4, retryDelayMs: 1_000 },
    );
    d.enqueue("a", Priority.PRIORITY_NORMAL);
    await settle();
    expect(calls).toBe(1);
    capacity = 1;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toBe(2);
    expect(d.depth).toBe(0);
    await d.close();
  });

  it("lets a new job skip the queue only when that passes nobody", async () => {
    const c = cluster(1);
    const d = new Dispatcher(c.place, { concurrency: 2, retryDelayMs: 1_000 });
    // Idle: a direct placement takes a slot of the concurrency limit.
    expect(d.claimDirect()).toBe(true);
    expect(d.claimDirect()).toBe(true);
    expect(d.claimDirect()).toBe(false); // both placement slots in flight
    d.settleDirect("placed");
    d.settleDirect("placed");
    // A refused direct placement throttles: nothing skips the queue until capacity returns.
    expect(d.claimDirect()).toBe(true);
    d.settleDirect("no-capacity");
    expect(d.claimDirect()).toBe(false);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(d.claimDirect()).toBe(true);
    d.settleDirect("placed");
    // A job waiting in the queue is never passed.
    c.running.push("busy");
    d.enqueue("waiting", Priority.PRIORITY_LOW);
    await settle();
    expect(d.depth).toBe(1);
    expect(d.claimDirect()).toBe(false);
    await d.close();
  });

  it("retries a parked group with one probe, and lets the group go once a worker takes it", async () => {
    let gpuWorkers = false;
    const calls: string[] = [];
    const d = new Dispatcher(
      async (id) => {
        calls.push(id);
        return id.startsWith("gpu") && !gpuWorkers ? "no-match" : "placed";
      },
      { concurrency: 8, retryDelayMs: 1_000 },
    );
    for (let i = 0; i < 1000; i++) d.enqueue(`gpu-${i}`, Priority.PRIORITY_NORMAL, 0, "gpu");
    await vi.advanceTimersByTimeAsync(0);
    expect(calls).toHaveLength(1000); // each tried once on arrival
    expect(d.depth).toBe(1000);
    calls.length = 0;
    await vi.advanceTimersByTimeAsync(3_000);
    expect(calls).toEqual(["gpu-0", "gpu-0", "gpu-0"]); // one probe a retry, not 1,000
    d.enqueue("cpu-0", Priority.PRIORITY_NORMAL, 0, "");
    await vi.advanceTimersByTimeAsync(0);
    expect(calls.at(-1)).toBe("cpu-0"); // other groups are not held up
    gpuWorkers = true;
    calls.length = 0;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toHaveLength(1000);
    expect(calls.slice(0, 3)).toEqual(["gpu-0", "gpu-1", "gpu-2"]); // in their old order
    expect(d.depth).toBe(0);
    await d.close();
  });

  it("parks jobs no worker matches and retries them, dropping cancelled ones", async () => {
    const outcomes: Record<string, DispatchOutcome[]> = { x: ["no-match", "placed"], y: ["no-match", "gone"] };
    const d = new Dispatcher(async (id) => outcomes[id]!.shift()!, { concurrency: 4, retryDelayMs: 1_000 });
    d.enqueue("x", Priority.PRIORITY_NORMAL);
    d.enqueue("y", Priority.PRIORITY_NORMAL);
    await settle();
    expect(d.depth).toBe(2);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(d.depth).toBe(0);
    expect(outcomes).toEqual({ x: [], y: [] });
    await d.close();
  });
});
