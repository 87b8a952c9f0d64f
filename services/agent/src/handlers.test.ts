/** The job-type registry: shell by default, echo for tests, unknown or disallowed types refused. */
import { describe, expect, it } from "vitest";
import { JobSpec } from "@aspen/proto";
import { compilePolicy, RateLimiter, Refusal } from "./admission.js";
import { HandlerRegistry, type JobHandler } from "./handlers.js";
import { PolicySchema } from "./policy.js";

const policy = compilePolicy(PolicySchema.parse({ workRoot: "/tmp" }), {
  defaultWorkRoot: "/tmp",
  agentEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
  isRoot: false,
});
const ctx = {
  jobId: "j",
  attempt: 1,
  policy,
  rateLimiter: new RateLimiter(policy.policy.rateLimit),
  executor: { maxInlineOutputBytes: 65536 },
};

describe("handler registry", () => {
  it("runs shell by default and echo without a process", async () => {
    const registry = new HandlerRegistry();
    expect(registry.get("").name).toBe("shell");
    const shell = registry.get("").start(JobSpec.fromPartial({ exec: { command: "echo", args: ["from", "shell"] } }), ctx);
    expect((await shell.execution.result).stdout?.text).toBe("from shell\n");
    const echo = registry
      .get("echo")
      .start(JobSpec.fromPartial({ jobType: "echo", exec: { command: "x", args: ["hello"] } }), ctx);
    const r = await echo.execution.result;
    expect(r).toMatchObject({ exitCode: 0, pid: 0, error: "" });
    expect(r.stdout?.text).toBe("hello\n");
  });

  it("refuses types it does not have or the policy does not allow, listing what it offers", () => {
    const registry = new HandlerRegistry();
    expect(() => registry.get("docker")).toThrow(
      new Refusal('job type "docker" is not available on this agent (available: shell, echo)'),
    );
    expect(() => registry.get("echo", ["shell"])).toThrow(/job type "echo" is not available on this agent \(available: shell\)/);
  });

  it("takes new handlers", async () => {
    const registry = new HandlerRegistry();
    const custom: JobHandler = { name: "noop", start: (spec, c) => registry.get("echo").start(spec, c) };
    registry.register(custom);
    expect(registry.get("noop")).toBe(custom);
  });
});
