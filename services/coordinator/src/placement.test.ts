import { describe, expect, it } from "vitest";
import { LabelRequirement_Operator as Op, NodeSelector } from "@aspen/proto";
import { describeSelector, matchesSelector, pickLeastLoaded, type Candidate } from "./placement.js";

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
