import { describe, expect, it } from "vitest";
import { JOB_ID, newId, SCHEDULE_ID } from "./ids.js";

describe("newId", () => {
  it("gives job ids with the prefix and 16 hex digits, distinct across refills of the random pool", () => {
    // 4 KiB of randomness is 512 ids: 2,048 span four fills.
    const ids = Array.from({ length: 2_048 }, () => newId("j"));
    for (const id of ids) {
      expect(id).toMatch(/^j-[0-9a-z]+-[0-9a-f]{16}$/);
      expect(id).toMatch(JOB_ID);
    }
    // 64 random bits each: a repeat among 2,048 is a one-in-10^13 chance.
    expect(new Set(ids.map((id) => id.slice(-16))).size).toBe(ids.length);
  });

  it("makes schedule ids that are valid schedule ids", () => {
    for (let i = 0; i < 100; i++) expect(newId("s").toLowerCase()).toMatch(SCHEDULE_ID);
  });
});
