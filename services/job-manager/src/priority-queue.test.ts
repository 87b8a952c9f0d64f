import { describe, expect, it } from "vitest";
import { Priority } from "@aspen/proto";
import { PriorityQueue } from "./priority-queue.js";

describe("priority queue", () => {
  it("pops strictly by class, FIFO inside a class, UNSPECIFIED as NORMAL", () => {
    const q = new PriorityQueue();
    q.push("low-1", Priority.PRIORITY_LOW);
    q.push("normal-1", Priority.PRIORITY_NORMAL);
    q.push("unspecified-1", Priority.PRIORITY_UNSPECIFIED);
    q.push("critical-1", Priority.PRIORITY_CRITICAL);
    q.push("high-1", Priority.PRIORITY_HIGH);
    q.push("critical-2", Priority.PRIORITY_CRITICAL);
    expect(q.size).toBe(6);
    const order = [];
    for (let id = q.pop(); id !== undefined; id = q.pop()) order.push(id);
    expect(order).toEqual(["critical-1", "critical-2", "high-1", "normal-1", "unspecified-1", "low-1"]);
  });

  it("gives a job put back its turn at the head of its class", () => {
    const q = new PriorityQueue();
    for (let i = 0; i < 3000; i++) q.push(`n${i}`, Priority.PRIORITY_NORMAL);
    for (let i = 0; i < 2000; i++) q.pop();
    q.pushFront("back", Priority.PRIORITY_NORMAL);
    expect(q.pop()).toBe("back");
    expect(q.pop()).toBe("n2000");
    expect(q.size).toBe(999);
  });
});
