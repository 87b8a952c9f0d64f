import { describe, expect, it } from "vitest";
import { JOB_ID, newId } from "./ids.js";

describe("newId", () => {
  it("gives job ids with the prefix and 8 hex digits, and fresh random parts after the pool refills", () => {
    // 4 KiB of randomness is 1,024 ids: 3,072 span three refills.
    const ids = Array.from({ length: 3_072 }, () => newId("j"));
    for (const id of ids) {
      expect(id).toMatch(/^j-[0-9a-z]+-[0-9a-f]{8}$/);
      expect(id).toMatch(JOB_ID);
    }
    const random = ids.map((id) => id.slice(-8));
    const fills = [random.slice(0, 1024), random.slice(1024, 2048), random.slice(2048)].map((f) => f.join(""));
    expect(new Set(fills).size).toBe(3);
    // Distinct within a fill too (1,024 draws of 32 bits: a repeat is a one-in-8,000 chance, so allow one).
    expect(new Set(random.slice(0, 1024)).size).toBeGreaterThanOrEqual(1023);
  });
});
