import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { TimerQueue } from "./timer-queue.js";

describe("timer queue", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(0);
  });
  afterEach(() => vi.useRealTimers());

  it("fires each armed id once at its due time, earliest first, with one timer", () => {
    const fired: Array<[string, number, number]> = [];
    const q = new TimerQueue((id, due) => fired.push([id, due, Date.now()]));
    q.arm("c", 3_000);
    q.arm("a", 1_000);
    q.arm("b", 2_000);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(2_500);
    expect(fired).toEqual([
      ["a", 1_000, 1_000],
      ["b", 2_000, 2_000],
    ]);
    vi.advanceTimersByTime(10_000);
    expect(fired.map((f) => f[0])).toEqual(["a", "b", "c"]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("re-arming replaces the old due time and disarming cancels", () => {
    const fired: string[] = [];
    const q = new TimerQueue((id) => fired.push(id));
    q.arm("x", 1_000);
    q.arm("x", 5_000);
    q.arm("y", 2_000);
    q.disarm("y");
    vi.advanceTimersByTime(4_000);
    expect(fired).toEqual([]);
    vi.advanceTimersByTime(1_000);
    expect(fired).toEqual(["x"]);
    expect(q.size).toBe(0);
  });

  it("keeps order across many random due times", () => {
    const fired: number[] = [];
    const q = new TimerQueue((_id, due) => fired.push(due));
    const dues = Array.from({ length: 500 }, (_, i) => ((i * 7919) % 1000) * 10 + 10);
    dues.forEach((due, i) => q.arm(`s${i}`, due));
    vi.advanceTimersByTime(20_000);
    expect(fired).toEqual([...dues].sort((a, b) => a - b));
  });

  it("stops on close", () => {
    const fired: string[] = [];
    const q = new TimerQueue((id) => fired.push(id));
    q.arm("x", 1_000);
    q.close();
    q.arm("y", 1_000);
    vi.advanceTimersByTime(5_000);
    expect(fired).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });
});
