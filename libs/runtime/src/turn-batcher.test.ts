import { describe, expect, it } from "vitest";
import { status } from "@grpc/grpc-js";
import { TurnBatcher } from "./turn-batcher.js";

describe("TurnBatcher", () => {
  it("sends the calls of one turn as one batch and gives each caller its own result", async () => {
    const batches: number[][] = [];
    const batcher = new TurnBatcher<number, string>(
      async (xs) => {
        batches.push(xs);
        return xs.map((x) => (x === 3 ? new Error("three refused") : `r${x}`));
      },
      { maxItems: 100 },
    );
    const calls = [1, 2, 3, 4].map((x) => batcher.call(x));
    const settled = await Promise.allSettled(calls);
    expect(batches).toEqual([[1, 2, 3, 4]]);
    expect(settled.map((s) => (s.status === "fulfilled" ? s.value : (s.reason as Error).message))).toEqual([
      "r1",
      "r2",
      "three refused",
      "r4",
    ]);
    // A later turn is a new batch.
    expect(await batcher.call(5)).toBe("r5");
    expect(batches).toEqual([[1, 2, 3, 4], [5]]);
  });

  it("sends at maxBatch without waiting for the turn to end", async () => {
    const batches: number[][] = [];
    const batcher = new TurnBatcher<number, number>(
      async (xs) => {
        batches.push(xs);
        return xs;
      },
      { maxItems: 2 },
    );
    const calls = [1, 2, 3, 4, 5].map((x) => batcher.call(x));
    expect(batches).toEqual([
      [1, 2],
      [3, 4],
    ]);
    expect(await Promise.all(calls)).toEqual([1, 2, 3, 4, 5]);
    expect(batches).toEqual([[1, 2], [3, 4], [5]]);
  });

  it("fails every item of a batch whose call failed, and items the answer left out", async () => {
    const failing = new TurnBatcher<number, number>(() => Promise.reject(new Error("coordinator unreachable")), { maxItems: 10 });
    const results = await Promise.allSettled([failing.call(1), failing.call(2)]);
    expect(results.map((r) => r.status === "rejected" && (r.reason as Error).message)).toEqual([
      "coordinator unreachable",
      "coordinator unreachable",
    ]);
    const short = new TurnBatcher<number, number>(async () => [7], { maxItems: 10 });
    const [a, b] = await Promise.allSettled([short.call(1), short.call(2)]);
    expect(a).toEqual({ status: "fulfilled", value: 7 });
    expect(b.status === "rejected" && (b.reason as Error).message).toBe("batch answered 1 of 2 items");
  });

  it("cuts a batch at maxBytes, and an item over it goes alone", async () => {
    const batches: number[][] = [];
    const batcher = new TurnBatcher<number, number>(
      async (xs) => {
        batches.push(xs);
        return xs;
      },
      { maxItems: 100, maxBytes: 10, sizeOf: (x) => x },
    );
    await Promise.all([3, 4, 2, 5, 20, 1].map((x) => batcher.call(x)));
    expect(batches).toEqual([[3, 4, 2], [5], [20], [1]]);
  });

  it("falls back to one call per item when the peer does not know the batch call (UNIMPLEMENTED)", async () => {
    let batchCalls = 0;
    const singles: number[] = [];
    const batcher = new TurnBatcher<number, number>(
      () => {
        batchCalls++;
        return Promise.reject(Object.assign(new Error("unknown method"), { code: status.UNIMPLEMENTED }));
      },
      {
        maxItems: 100,
        single: async (x) => {
          singles.push(x);
          return x * 10;
        },
      },
    );
    expect(await Promise.all([1, 2].map((x) => batcher.call(x)))).toEqual([10, 20]);
    // Later calls go one by one at once, without trying the batch again (for a while).
    expect(await batcher.call(3)).toBe(30);
    expect(batchCalls).toBe(1);
    expect(singles).toEqual([1, 2, 3]);
  });
});
