/**
 * Job types: JobSpec.job_type picks a handler ("shell" when empty). A handler
 * admits the job under the agent's policy (or throws a Refusal) and starts
 * it, returning an Execution the agent supervises the same way for every
 * type. Register more with `HandlerRegistry.register`.
 */
import type { AttemptResult, JobSpec } from "@aspen/proto";
import { admit, Refusal, type CompiledPolicy, type Plan, type RateLimiter } from "./admission.js";
import { BoundedCapture, execute, type Execution, type ExecutorOptions } from "./executor.js";
import type { OutputStore } from "./output-store.js";

export interface HandlerContext {
  jobId: string;
  attempt: number;
  policy: CompiledPolicy;
  rateLimiter: RateLimiter;
  executor: ExecutorOptions;
  store?: OutputStore;
}

export interface Started {
  execution: Execution;
  /** What runs, for audit (absent for handlers that run no process). */
  plan?: Plan;
}

export interface JobHandler {
  readonly name: string;
  start(spec: JobSpec, ctx: HandlerContext): Started;
}

/** Runs `exec` as a process under the policy: the default type. */
export const shellHandler: JobHandler = {
  name: "shell",
  start(spec, ctx) {
    const plan = admit(spec, ctx.policy);
    ctx.rateLimiter.take(spec.exec?.command ?? plan.program, plan.rateKey);
    const store = ctx.store;
    const writer = store ? (s: "stdout" | "stderr") => store.writer(`${ctx.jobId}/${ctx.attempt}/${s}`) : undefined;
    return { execution: execute(spec, plan, { ...ctx.executor, writer }), plan };
  },
};

/** Prints its arguments (or `exec.command`) without starting a process. For tests and smoke checks. */
export const echoHandler: JobHandler = {
  name: "echo",
  start(spec) {
    const text = `${spec.exec?.args.length ? spec.exec.args.join(" ") : (spec.exec?.command ?? "")}\n`;
    const startedAt = new Date();
    const out = new BoundedCapture(1024 * 1024);
    out.push(Buffer.from(text));
    const result: AttemptResult = {
      exitCode: 0,
      signal: "",
      timedOut: false,
      cancelled: false,
      startedAt,
      finishedAt: new Date(),
      stdout: out.output(),
      stderr: new BoundedCapture(0).output(),
      error: "",
      peakRssBytes: 0,
      pid: 0,
      details: { refused: false, limitExceeded: "", program: "", runAs: "", sandboxed: false, usageSource: "" },
    };
    return {
      execution: { started: Promise.resolve({ pid: 0, startedAt }), result: Promise.resolve(result), cancel: () => undefined },
    };
  },
};

export class HandlerRegistry {
  private readonly handlers = new Map<string, JobHandler>();

  constructor(handlers: JobHandler[] = [shellHandler, echoHandler]) {
    for (const h of handlers) this.register(h);
  }

  register(handler: JobHandler): void {
    this.handlers.set(handler.name, handler);
  }

  /** The handler for `jobType` ("" = shell) if this agent offers it, else a Refusal. */
  get(jobType: string, allowed?: string[]): JobHandler {
    const name = jobType || "shell";
    const offered = [...this.handlers.keys()].filter((n) => !allowed || allowed.includes(n));
    const handler = this.handlers.get(name);
    if (!handler || !offered.includes(name))
      throw new Refusal(`job type ${JSON.stringify(name)} is not available on this agent (available: ${offered.join(", ")})`);
    return handler;
  }
}
