import { describe, expect, it } from "vitest";
import { LabelRequirement_Operator as Op, NodeSelector, PlacementStrategy } from "@aspen/proto";
import {
  DEFAULT_STRATEGY,
  describeSelector,
  matchesSelector,
  pickLeastLoaded,
  pickWorker,
  rendezvous,
  type Candidate,
} from "./placement.js";

const worker = (id: string, labels: Record<string, string>, capabilities: string[] = [], slots = 4, used = 0): Candidate => ({
  id,
  labels,
  capabilities,
  groups: [],
  slots,
  used,
});

describe("node selector matching", () => {
  const db = worker("db-1", { region: "eu", tier: "db" }, ["database"]);
  const web = worker("web-1", { region: "us" }, []);
  const sel = (s: Parameters<typeof NodeSelector.fromPartial>[0]) => NodeSelector.fromPartial(s);

  it.each([
    ["empty selector", sel({}), true, true],
    ["label equality", sel({ matchLabels: { region: "eu" } }), true, false],
    ["capability", sel({ capabilities: ["database"] }), true, false],
    ["IN", sel({ requirements: [{ key: "region", operator: Op.OPERATOR_IN, values: ["us", "ap"] }] }), false, true],
    [
      "NOT_IN (absent label passes)",
      sel({ requirements: [{ key: "tier", operator: Op.OPERATOR_NOT_IN, values: ["db"] }] }),
      false,
      true,
    ],
    ["EXISTS", sel({ requirements: [{ key: "tier", operator: Op.OPERATOR_EXISTS }] }), true, false],
    ["DOES_NOT_EXIST", sel({ requirements: [{ key: "tier", operator: Op.OPERATOR_DOES_NOT_EXIST }] }), false, true],
    ["specific worker", sel({ workerId: "web-1" }), false, true],
    ["all conditions AND", sel({ matchLabels: { region: "eu" }, capabilities: ["gpu"] }), false, false],
  ])("%s", (_name, selector, dbMatches, webMatches) => {
    expect(matchesSelector(db, selector)).toBe(dbMatches);
    expect(matchesSelector(web, selector)).toBe(webMatches);
  });

  it("describes a selector for people", () => {
    expect(describeSelector(sel({ matchLabels: { region: "eu" }, capabilities: ["database"] }))).toBe(
      "region=eu, capability=database",
    );
    expect(describeSelector(undefined)).toBe("any worker");
  });
});

describe("least loaded", () => {
  it("picks the largest free share, skips full workers, and takes turns on ties", () => {
    const a = worker("a", {}, [], 4, 3); // 25% free
    const b = worker("b", {}, [], 16, 4); // 75% free
    const full = worker("c", {}, [], 2, 2);
    expect(pickLeastLoaded([a, b, full], 0)?.id).toBe("b");
    expect(pickLeastLoaded([full], 0)).toBeUndefined();
    const x = worker("x", {}, [], 4, 0);
    const y = worker("y", {}, [], 4, 0);
    expect([0, 1, 2, 3].map((cursor) => pickLeastLoaded([x, y], cursor)?.id)).toEqual(["x", "y", "x", "y"]);
  });
});

describe("strategies", () => {
  const S = PlacementStrategy;
  const fresh = () => ({ cursor: 0, affinity: new Map<string, string>() });
  const pool = () => [worker("a", {}, [], 2), worker("b", {}, [], 2), worker("c", {}, [], 2)];

  it("round robin takes workers in turn, skipping full ones", () => {
    const state = fresh();
    const ws = pool();
    ws[1]!.used = 2;
    expect([1, 2, 3, 4].map(() => pickWorker(ws, S.PLACEMENT_STRATEGY_ROUND_ROBIN, "k", state)?.id)).toEqual([
      "a",
      "c",
      "a",
      "c",
    ]);
  });

  it("affinity sticks a key to one worker while it is live, waits while it is busy, moves when it is gone", () => {
    const state = fresh();
    const ws = pool();
    const first = pickWorker(ws, S.PLACEMENT_STRATEGY_AFFINITY, "nightly", state)!.id;
    expect(pickWorker(ws, S.PLACEMENT_STRATEGY_AFFINITY, "nightly", state)?.id).toBe(first);
    ws.find((w) => w.id === first)!.used = 2;
    expect(pickWorker(ws, S.PLACEMENT_STRATEGY_AFFINITY, "nightly", state)).toBeUndefined();
    const without = ws.filter((w) => w.id !== first);
    const moved = pickWorker(without, S.PLACEMENT_STRATEGY_AFFINITY, "nightly", state)!.id;
    expect(moved).not.toBe(first);
    expect(pickWorker(without, S.PLACEMENT_STRATEGY_AFFINITY, "nightly", state)?.id).toBe(moved);
  });

  it("consistent hash maps a key to the same worker every time and waits while it is busy", () => {
    const ws = pool();
    const owner = pickWorker(ws, S.PLACEMENT_STRATEGY_CONSISTENT_HASH, "key-1", fresh())!.id;
    for (let i = 0; i < 5; i++) expect(pickWorker(ws, S.PLACEMENT_STRATEGY_CONSISTENT_HASH, "key-1", fresh())?.id).toBe(owner);
    ws.find((w) => w.id === owner)!.used = 2;
    expect(pickWorker(ws, S.PLACEMENT_STRATEGY_CONSISTENT_HASH, "key-1", fresh())).toBeUndefined();
  });

  it("work stealing lets an idle worker take a job whose preferred worker is busy", () => {
    const ws = pool();
    const owner = rendezvous(ws, "key-2")!.id;
    expect(pickWorker(ws, S.PLACEMENT_STRATEGY_WORK_STEALING, "key-2", fresh())?.id).toBe(owner);
    ws.find((w) => w.id === owner)!.used = 2;
    const thief = pickWorker(ws, S.PLACEMENT_STRATEGY_WORK_STEALING, "key-2", fresh());
    expect(thief?.id).toBeDefined();
    expect(thief?.id).not.toBe(owner);
  });

  it("consistent hashing: when 1 of 100 workers leaves, only its keys move (~1%)", () => {
    const workers = Array.from({ length: 100 }, (_, i) => worker(`worker-${i}`, {}, [], 4));
    const keys = Array.from({ length: 10_000 }, (_, i) => `schedule-${i}`);
    const before = new Map(keys.map((k) => [k, rendezvous(workers, k)!.id]));
    const leaving = "worker-42";
    const after = workers.filter((w) => w.id !== leaving);
    let moved = 0;
    for (const k of keys) {
      const now = rendezvous(after, k)!.id;
      if (now !== before.get(k)) {
        moved++;
        expect(before.get(k)).toBe(leaving); // nothing else moves
      }
    }
    const share = moved / keys.length;
    console.log(
      `consistent hash: ${moved} of ${keys.length} keys moved (${(share * 100).toFixed(2)}%) when 1 of 100 workers left`,
    );
    expect(share).toBeGreaterThan(0.005);
    expect(share).toBeLessThan(0.02);
    // Spread: no worker owns more than 2.5× its fair share.
    const owned = new Map<string, number>();
    for (const id of before.values()) owned.set(id, (owned.get(id) ?? 0) + 1);
    expect(Math.max(...owned.values())).toBeLessThan(250);
  });

  it("least loaded is the default", () => {
    const ws = [worker("a", {}, [], 4, 3), worker("b", {}, [], 4, 0)];
    expect(pickWorker(ws, S.PLACEMENT_STRATEGY_UNSPECIFIED, "k", fresh())?.id).toBe("b");
    expect(DEFAULT_STRATEGY).toBe(S.PLACEMENT_STRATEGY_LEAST_LOADED);
  });
});
