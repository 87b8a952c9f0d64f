import { describe, expect, it } from "vitest";
import { JOB_ID, newId } from "./ids.js";

describe("newId", () => {
  it("gives distinct job ids with the prefix and 8 hex digits, across refills of the random pool", () => {
    // 4 KiB of randomness is 1,024 ids: 5,000 cross several refills.
    const ids = Array.from({ length: 5_000 }, () => newId("j"));
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) {
      expect(id).toMatch(/^j-[0-9a-z]+-[0-9a-f]{8}$/);
      expect(id).toMatch(JOB_ID);
    }
  });
});
