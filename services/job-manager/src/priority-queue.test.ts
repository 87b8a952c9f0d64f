import { describe, expect, it } from "vitest";
import { Priority } from "@aspen/proto";
import { PriorityQueue } from "./priority-queue.js";

describe("priority queue", () => {
  it("pops strictly by class, in sequence inside a class, UNSPECIFIED as NORMAL", () => {
    const q = new PriorityQueue();
    let seq = 0;
    const push = (id: string, priority: Priority) => q.push({ id, priority, seq: seq++, queuedAtMs: 0 });
    push("low-1", Priority.PRIORITY_LOW);
    push("normal-1", Priority.PRIORITY_NORMAL);
    push("unspecified-1", Priority.PRIORITY_UNSPECIFIED);
    push("critical-1", Priority.PRIORITY_CRITICAL);
    push("high-1", Priority.PRIORITY_HIGH);
    push("critical-2", Priority.PRIORITY_CRITICAL);
    expect(q.size).toBe(6);
    const order = [];
    for (let e = q.pop(); e !== undefined; e = q.pop()) order.push(e.id);
    expect(order).toEqual(["critical-1", "critical-2", "high-1", "normal-1", "unspecified-1", "low-1"]);
  });

  it("gives jobs put back their original place, whatever order they come back in", () => {
    const q = new PriorityQueue();
    for (let i = 0; i < 100; i++) q.push({ id: `n${i}`, priority: Priority.PRIORITY_NORMAL, seq: i, queuedAtMs: 0 });
    const taken = Array.from({ length: 10 }, () => q.pop()!);
    // Refusals arrive in any order; each goes back with its own sequence number.
    for (const e of [...taken].reverse()) q.push(e);
    expect(Array.from({ length: 12 }, () => q.pop()!.id)).toEqual([
      "n0",
      "n1",
      "n2",
      "n3",
      "n4",
      "n5",
      "n6",
      "n7",
      "n8",
      "n9",
      "n10",
      "n11",
    ]);
    expect(q.size).toBe(88);
  });

  it("ages waiting jobs up one class per agingMs, so LOW never starves", () => {
    let now = 0;
    const q = new PriorityQueue(1_000, () => now);
    q.push({ id: "old-low", priority: Priority.PRIORITY_LOW, seq: 0, queuedAtMs: 0 });
    now = 2_500; // old-low has aged two classes: it competes as HIGH
    q.push({ id: "new-high", priority: Priority.PRIORITY_HIGH, seq: 1, queuedAtMs: now });
    q.push({ id: "new-normal", priority: Priority.PRIORITY_NORMAL, seq: 2, queuedAtMs: now });
    q.push({ id: "new-critical", priority: Priority.PRIORITY_CRITICAL, seq: 3, queuedAtMs: now });
    // CRITICAL first; then HIGH beats the equally ranked aged LOW (higher base class wins ties).
    expect([q.pop()?.id, q.pop()?.id, q.pop()?.id, q.pop()?.id]).toEqual(["new-critical", "new-high", "old-low", "new-normal"]);
    expect(q.depths().every((d) => d.depth === 0)).toBe(true);
  });
});
