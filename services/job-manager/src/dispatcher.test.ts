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

  it("probes every retryDelayMs without a freed slot (a new worker may have joined), twice as wide while all are taken", async () => {
    let capacity = 0;
    let calls = 0;
    const d = new Dispatcher(
      async () => {
        calls++;
        return capacity-- > 0 ? "placed" : "no-capacity";
      },
      { concurrency: 8, retryDelayMs: 1_000 },
    );
    for (const id of ["a", "b", "c", "d", "e"]) d.enqueue(id, Priority.PRIORITY_NORMAL);
    await settle();
    expect(calls).toBe(5); // the first burst, all refused
    capacity = 3; // a worker with three free slots joins
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toBe(10); // probes 1, then 2 (all taken), then the last 2: refused
    expect(d.depth).toBe(2);
    expect(d.claimDirect()).toBe(false); // still throttled
    capacity = 10;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(calls).toBe(12); // 1, then the last one
    expect(d.depth).toBe(0);
    expect(d.claimDirect()).toBe(true); // nothing waits: open again
    d.settleDirect("placed");
    await d.close();
  });

  it("keeps class order when the throttle window reopens just as a slot frees", async () => {
    // One slot, busy. The coordinator answers in order; the running job ends while it is
    // answering the 55th request: whichever job that is, the slot must go to the highest.
    let calls = 0;
    let busy = true;
    const placed: string[] = [];
    const d = new Dispatcher(
      async (id) => {
        const call = ++calls;
        await Promise.resolve();
        if (call === 55) busy = false;
        if (busy) return "no-capacity";
        busy = true;
        placed.push(id);
        return "placed";
      },
      { concurrency: 64, retryDelayMs: 1_000 },
    );
    const classes = [Priority.PRIORITY_LOW, Priority.PRIORITY_NORMAL, Priority.PRIORITY_HIGH, Priority.PRIORITY_CRITICAL];
    for (let i = 0; i < 40; i++) d.enqueue(`${Priority[classes[i % 4]!]}-${i}`, classes[i % 4]!);
    for (let s = 0; s < 30 && placed.length === 0; s++) await vi.advanceTimersByTimeAsync(1_000);
    expect(placed).toEqual(["PRIORITY_CRITICAL-3"]);
    await d.close();
  });

  it("hands one slot out strictly in order while jobs end at random moments", async () => {
    // One slot. Reservations end in order, 0–1 ms apart; the coordinator answers what it is
    // asked at once (one call) together and in order, 0–2 ms later; a placed job ends after
    // 0–8 ms, and the job-manager hears of it 0–2 ms after the slot is free; a probe may go
    // every 5 ms.
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 48271) % 2147483647) % n) as number;
    const ticks = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    for (let round = 0; round < 300; round++) {
      let busy = true;
      const placed: string[] = [];
      let call: Promise<unknown> | undefined;
      let reserved: Promise<unknown> = Promise.resolve();
      const d: Dispatcher = new Dispatcher(
        async (id, ready) => {
          await (reserved = reserved.then(() => ticks(rand(2))));
          await ready?.();
          await (call ??= ticks(rand(3)).finally(() => (call = undefined)));
          if (busy) return "no-capacity";
          busy = true;
          placed.push(id);
          void ticks(rand(9)).then(async () => {
            busy = false;
            await ticks(rand(3));
            d.capacityFreed();
          });
          return "placed";
        },
        { concurrency: 64, retryDelayMs: 5 },
      );
      const classes = [Priority.PRIORITY_LOW, Priority.PRIORITY_NORMAL, Priority.PRIORITY_HIGH, Priority.PRIORITY_CRITICAL];
      const ids = Array.from({ length: 40 }, (_, i) => ({ id: `j${String(i).padStart(2, "0")}`, p: classes[(i * 7) % 4]! }));
      d.enqueue(ids[0]!.id, ids[0]!.p);
      await vi.advanceTimersByTimeAsync(4); // refused: the slot is busy, so dispatch is throttled
      for (const { id, p } of ids.slice(1)) d.enqueue(id, p);
      busy = false; // the blocker ends
      d.capacityFreed();
      for (let t = 0; t < 2000 && placed.length < 40; t++) await vi.advanceTimersByTimeAsync(1);
      const expected = [...classes].reverse().flatMap((c) => ids.filter((j) => j.p === c).map((j) => j.id));
      expect(placed).toEqual(expected);
      await d.close();
    }
  });

  it("fills a worker that joins while throttled, even as finished jobs keep freeing slots", async () => {
    // Each placement takes 5 ms, each job 50 ms: a freed slot arrives during every round, so a
    // probe that waited for a round without credits would never go.
    const ticks = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    let slots = 50;
    let running = 0;
    const d: Dispatcher = new Dispatcher(
      async (_id, ready) => {
        await ticks(2); // the reservation
        await ready?.();
        await ticks(3); // the placement call
        if (running >= slots) return "no-capacity";
        running++;
        void ticks(50).then(() => {
          running--;
          d.capacityFreed();
        });
        return "placed";
      },
      { concurrency: 64, retryDelayMs: 1_000 },
    );
    for (let i = 0; i < 20_000; i++) d.enqueue(`j${i}`, Priority.PRIORITY_NORMAL);
    await vi.advanceTimersByTimeAsync(500); // full: throttled
    expect(d.claimDirect()).toBe(false);
    slots = 500; // a big worker joins
    await vi.advanceTimersByTimeAsync(2_000); // one probe window, then rounds of doubling probes
    expect(running).toBeGreaterThan(400);
    await vi.advanceTimersByTimeAsync(5_000);
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
