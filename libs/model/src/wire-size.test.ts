import { describe, expect, it } from "vitest";
import { AttemptEvent, JobSpec } from "@aspen/proto";
import { eventBytes, specBytes, splitByBytes } from "./wire-size.js";

describe("wire sizes", () => {
  it("bound the encoded size of a job spec and of a finished event from above", () => {
    const spec = JobSpec.fromPartial({
      name: "big",
      tags: { team: "db", ü: "ö".repeat(100) },
      dependsOn: ["a", "b"],
      exec: {
        command: "/bin/sh",
        args: ["-c", "cat", "é".repeat(1000)],
        env: { A: "1", B: "x".repeat(70_000) },
        stdin: Buffer.alloc(1_000_000),
        secretEnv: { TOKEN: { source: { $case: "sealed", value: Buffer.alloc(500) } } },
      },
      then: [{ exec: { command: "/bin/true", args: ["y".repeat(5000)] } }],
    });
    const encoded = JobSpec.encode(spec).finish().length;
    expect(specBytes(spec)).toBeGreaterThanOrEqual(encoded);
    expect(specBytes(spec)).toBeLessThan(encoded + 16_384);

    const event = AttemptEvent.fromPartial({
      jobId: "j1",
      attempt: 1,
      workerId: "w1",
      event: {
        $case: "finished",
        value: { result: { exitCode: 1, error: "boom", stdout: { text: "ä".repeat(300_000) }, stderr: { text: "e" } } },
      },
    });
    expect(eventBytes(event)).toBeGreaterThanOrEqual(AttemptEvent.encode(event).finish().length);
  });

  it("splits in order at the byte budget, an item over it alone", () => {
    expect(splitByBytes([3, 4, 2, 5, 20, 1], (x) => x, 10)).toEqual([[3, 4, 2], [5], [20], [1]]);
    expect(splitByBytes([], (x: number) => x, 10)).toEqual([]);
  });
});
