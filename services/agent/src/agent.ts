/**
 * The agent's session with the coordinator: it connects out, registers,
 * heartbeats, runs the attempts it is assigned and reports them. When the
 * stream breaks it reconnects with backoff and re-registers, listing what it
 * still runs or holds a result for; reports that could not be sent wait in an
 * outbox and go first on the next session.
 */
import { hostname, loadavg } from "node:os";
import type { ClientDuplexStream } from "@grpc/grpc-js";
import {
  CoordinatorServiceClient,
  type AgentMessage,
  type Assignment,
  type AttemptResult,
  type AttemptEvent,
  type CoordinatorMessage,
} from "@aspen/proto";
import { Attr, contextFromTraceparent, createClient, durationToMs, Spans, withSpan, type Logger } from "@aspen/runtime";
import { eventBytes, splitByBytes } from "@aspen/model";
import { Refusal, RateLimiter, type CompiledPolicy, type Plan } from "./admission.js";
import type { AuditLog } from "./audit.js";
import type { Execution, ExecutorOptions } from "./executor.js";
import { HandlerRegistry, type Started } from "./handlers.js";
import type { OutputStore } from "./output-store.js";
import type { GroupRegistry } from "./reaper.js";

export interface AgentOptions {
  coordinatorAddr: string;
  workerId: string;
  labels: Record<string, string>;
  capabilities: string[];
  slots: number;
  version: string;
  executor: ExecutorOptions;
  /** The agent's policy (admission.ts): the last word on what runs. */
  policy: CompiledPolicy;
  /** Full outputs go here when set (else inline capture only). */
  store?: OutputStore;
  /** One record per execution or refusal when set. */
  audit?: AuditLog;
  handlers?: HandlerRegistry;
  /** Records running process groups so a restarted agent can kill what a crashed one left. */
  groups?: GroupRegistry;
  log: Logger;
  /** Longest wait between reconnection attempts, ms. */
  maxBackoffMs: number;
  /**
   * How long "started" is held back, ms: an attempt that ends within it is
   * reported once, started and finished together, which the job-manager
   * records in one write instead of two. 0 reports at once.
   */
  startedReportDelayMs?: number;
}

type Stream = ClientDuplexStream<AgentMessage, CoordinatorMessage>;
type AgentState = "starting" | "running" | "draining" | "stopped";

const key = (jobId: string, attempt: number) => `${jobId}#${attempt}`;

export class Agent {
  private readonly client: CoordinatorServiceClient;
  private readonly active = new Map<string, Execution>();
  private readonly outbox: AttemptEvent[] = [];
  /** Events of this event-loop turn, sent together when it ends (one message instead of one each). */
  private unsent: AttemptEvent[] = [];
  private sendScheduled = false;
  /** The coordinator of this session takes AgentMessage.events. */
  private batchesEvents = false;
  private stream: Stream | undefined;
  private registered = false;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private state: AgentState = "starting";
  private loop: Promise<void> = Promise.resolve();
  private wake: (() => void) | undefined;
  private closing: Promise<void> | undefined;
  private idleWaiters: Array<() => void> = [];
  private readonly handlers: HandlerRegistry;
  private readonly rateLimiter: RateLimiter;

  constructor(private readonly options: AgentOptions) {
    this.client = createClient(CoordinatorServiceClient, options.coordinatorAddr);
    this.handlers = options.handlers ?? new HandlerRegistry();
    this.rateLimiter = new RateLimiter(options.policy.policy.rateLimit);
  }

  /** Attempts running now ("<job id>#<attempt>"). */
  get running(): string[] {
    return [...this.active.keys()];
  }

  get connected(): boolean {
    return this.registered;
  }

  start(): void {
    if (this.state !== "starting") return;
    this.state = "running";
    this.loop = this.sessionLoop();
  }

  private async sessionLoop(): Promise<void> {
    let backoffMs = 100;
    while (this.state === "running" || (this.state === "draining" && this.active.size > 0)) {
      const wasRegistered = await this.session();
      if ((this.state as AgentState) === "stopped") return;
      backoffMs = wasRegistered ? 100 : Math.min(backoffMs * 2, this.options.maxBackoffMs);
      this.options.log.info({ backoffMs }, "coordinator stream closed; reconnecting");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, backoffMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** One Connect stream, from register to its end. Resolves true if it got registered. */
  private session(): Promise<boolean> {
    return new Promise((resolve) => {
      let didRegister = false;
      const stream = this.client.connect();
      this.stream = stream;
      const finish = () => {
        if (this.stream !== stream) return;
        this.stream = undefined;
        this.registered = false;
        clearInterval(this.heartbeatTimer);
        resolve(didRegister);
      };
      stream.on("data", (message: CoordinatorMessage) => {
        const msg = message.msg;
        if (msg?.$case === "registered") {
          didRegister = true;
          this.registered = true;
          this.batchesEvents = msg.value.takesEventBatches;
          this.options.log.info({ coordinator: this.options.coordinatorAddr }, "registered with coordinator");
          const intervalMs = durationToMs(msg.value.heartbeatInterval) || 1_000;
          this.heartbeatTimer = setInterval(() => this.heartbeat(), intervalMs);
          this.heartbeatTimer.unref();
          // What waited for this session goes first, before events of this turn (started before finished).
          this.unsent = [...this.outbox.splice(0), ...this.unsent];
          this.scheduleSend();
        } else if (msg?.$case === "assignment") {
          this.run(msg.value);
        } else if (msg?.$case === "assignments") {
          for (const assignment of msg.value.assignments) this.run(assignment);
        } else if (msg?.$case === "cancel") {
          this.active.get(key(msg.value.jobId, msg.value.attempt))?.cancel(msg.value.reason);
        }
      });
      stream.on("error", (err: Error) => {
        this.options.log.warn({ err: err.message }, "coordinator stream error");
        finish();
      });
      stream.on("end", finish);
      stream.on("close", finish);
      // Events still waiting for this turn's end join the outbox: the register names their
      // attempts (they are no longer running) and they are replayed first once registered.
      this.flushEvents();
      const pendingResults = this.outbox.map((e) => key(e.jobId, e.attempt));
      stream.write({
        msg: {
          $case: "register",
          value: {
            workerId: this.options.workerId,
            hostname: hostname(),
            labels: this.options.labels,
            capabilities: this.options.capabilities,
            slots: this.options.slots,
            version: this.options.version,
            running: [...this.active.keys(), ...pendingResults],
            takesAssignmentBatches: true,
          },
        },
      });
    });
  }

  private heartbeat(): void {
    this.stream?.write({ msg: { $case: "heartbeat", value: { running: [...this.active.keys()], load: loadavg()[0] ?? 0 } } });
  }

  /** Sends an event when this turn ends (with the others of the turn), or keeps it for the next session. */
  private send(event: AttemptEvent): void {
    this.unsent.push(event);
    this.scheduleSend();
  }

  private scheduleSend(): void {
    if (this.sendScheduled || this.unsent.length === 0) return;
    this.sendScheduled = true;
    setImmediate(() => this.flushEvents());
  }

  private flushEvents(): void {
    this.sendScheduled = false;
    const events = this.unsent;
    this.unsent = [];
    if (events.length === 0) return;
    if (!this.stream || !this.registered) {
      this.outbox.push(...events);
      return;
    }
    if (!this.batchesEvents) {
      for (const event of events) this.stream.write({ msg: { $case: "event", value: event } });
      return;
    }
    // Cut by size: finished events carry output, and a message over the gRPC limit would end the stream.
    for (const run of splitByBytes(events, eventBytes)) {
      this.stream.write(
        run.length === 1 ? { msg: { $case: "event", value: run[0]! } } : { msg: { $case: "events", value: { events: run } } },
      );
    }
  }

  private run(assignment: Assignment): void {
    const { jobId, attempt } = assignment;
    const k = key(jobId, attempt);
    const base = { jobId, attempt, workerId: this.options.workerId };
    const traceId = assignment.traceparent.split("-")[1] ?? "";
    const refuse = (error: string, byPolicy: boolean) => {
      const now = new Date();
      this.send({
        ...base,
        event: {
          $case: "finished",
          value: {
            result: {
              exitCode: -1,
              signal: "",
              timedOut: false,
              cancelled: false,
              error,
              peakRssBytes: 0,
              pid: 0,
              startedAt: now,
              finishedAt: now,
              details: { refused: true, limitExceeded: "", program: "", runAs: "", sandboxed: false, usageSource: "" },
            },
          },
        },
      });
      if (byPolicy) this.options.log.warn({ job: jobId, attempt, reason: error }, "attempt refused");
      this.audit(assignment, undefined, { refused: true, error, at: now, traceId });
    };
    if (this.active.has(k)) return; // duplicate delivery: already running
    if (this.state !== "running") return refuse("agent is shutting down", false);
    if (this.active.size >= this.options.slots) return refuse(`agent ${this.options.workerId} has no free slot`, false);
    if (!assignment.spec) return refuse("assignment without a job spec", false);
    const spec = assignment.spec;
    void withSpan(
      Spans.execute,
      {
        parent: contextFromTraceparent(assignment.traceparent),
        attributes: {
          [Attr.jobId]: jobId,
          [Attr.attempt]: attempt,
          [Attr.workerId]: this.options.workerId,
          [Attr.command]: spec.exec?.command ?? "",
        },
      },
      async (span) => {
        let started: Started;
        try {
          const handler = this.handlers.get(spec.jobType, this.options.policy.policy.jobTypes);
          started = handler.start(spec, {
            jobId,
            attempt,
            policy: this.options.policy,
            rateLimiter: this.rateLimiter,
            executor: this.options.executor,
            store: this.options.store,
          });
        } catch (err) {
          if (!(err instanceof Refusal)) this.options.log.error({ err, job: jobId }, "attempt could not start");
          refuse((err as Error).message, err instanceof Refusal);
          return;
        }
        const execution = started.execution;
        this.active.set(k, execution);
        let pgid = 0;
        let reportStarted: (() => void) | undefined;
        let startedTimer: NodeJS.Timeout | undefined;
        execution.started.then(
          ({ pid, startedAt }) => {
            if (pid > 0 && this.options.groups) this.options.groups.add((pgid = pid), k);
            reportStarted = () => {
              reportStarted = undefined;
              clearTimeout(startedTimer);
              this.send({ ...base, event: { $case: "started", value: { startedAt, pid } } });
            };
            const delayMs = this.options.startedReportDelayMs ?? 0;
            if (delayMs > 0) startedTimer = setTimeout(reportStarted, delayMs);
            else reportStarted();
          },
          () => undefined,
        );
        const result = await execution.result;
        if (pgid > 0) this.options.groups?.remove(pgid);
        this.active.delete(k);
        span.setAttributes({
          [Attr.exitCode]: result.exitCode,
          [Attr.outputBytes]: (result.stdout?.totalBytes ?? 0) + (result.stderr?.totalBytes ?? 0),
        });
        // Still held back: "finished" says it all (its result carries the pid and start time, and
        // the job-manager records RUNNING from it), so no separate event goes up for the start.
        if (reportStarted) {
          clearTimeout(startedTimer);
          reportStarted = undefined;
        }
        this.send({ ...base, event: { $case: "finished", value: { result } } });
        this.audit(assignment, started.plan, { result, traceId });
        this.options.log.debug({ job: jobId, attempt, exitCode: result.exitCode }, "attempt finished");
        if (this.active.size === 0) this.idleWaiters.splice(0).forEach((w) => w());
      },
    );
  }

  private audit(
    assignment: Assignment,
    plan: Plan | undefined,
    what: { result?: AttemptResult; refused?: boolean; error?: string; at?: Date; traceId: string },
  ): void {
    if (!this.options.audit) return;
    const spec = assignment.spec;
    const r = what.result;
    const outcome = what.refused
      ? `refused: ${what.error}`
      : !r
        ? "unknown"
        : r.timedOut
          ? "timed out"
          : r.cancelled
            ? "cancelled"
            : r.error
              ? `failed: ${r.error}`
              : r.signal
                ? `signal ${r.signal}`
                : `exit ${r.exitCode}`;
    this.options.audit.append({
      jobId: assignment.jobId,
      attempt: assignment.attempt,
      workerId: this.options.workerId,
      hostname: hostname(),
      submittedBy: assignment.submittedBy || (spec?.tags["submitted-by"] ?? ""),
      jobType: spec?.jobType || "shell",
      command: plan?.program ?? spec?.exec?.command ?? "",
      args: plan?.args ?? spec?.exec?.args ?? [],
      shell: spec?.exec?.shell ?? false,
      cwd: plan?.cwd ?? spec?.exec?.cwd ?? "",
      envNames: Object.keys(spec?.exec?.env ?? {}),
      secretEnvNames: Object.keys(spec?.exec?.secretEnv ?? {}),
      runAs: plan?.runAs?.label ?? "",
      startedAt: r?.startedAt ?? what.at,
      finishedAt: r?.finishedAt ?? what.at,
      outcome,
      exitCode: r?.exitCode ?? -1,
      error: r?.error ?? what.error ?? "",
      refused: what.refused ?? false,
      stdoutBytes: r?.stdout?.totalBytes ?? 0,
      stdoutSha256: r?.stdout?.sha256 ?? "",
      stderrBytes: r?.stderr?.totalBytes ?? 0,
      stderrSha256: r?.stderr?.sha256 ?? "",
      traceId: what.traceId,
      sequence: 0,
    });
  }

  /**
   * Stops taking work, lets running attempts finish for `drainTimeoutMs`,
   * then kills the rest (their results are still reported), and disconnects.
   */
  close(drainTimeoutMs = 30_000): Promise<void> {
    this.closing ??= (async () => {
      this.state = "draining";
      if (this.active.size > 0) {
        this.options.log.info({ running: this.active.size, drainTimeoutMs }, "draining running attempts");
        const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
        const timer = setTimeout(() => {
          for (const execution of this.active.values()) execution.cancel("agent shutting down");
        }, drainTimeoutMs);
        await idle;
        clearTimeout(timer);
      }
      // Give the last reports a moment to reach the coordinator before the stream ends.
      this.flushEvents();
      if (this.outbox.length > 0 && this.stream) await new Promise((r) => setTimeout(r, 200));
      this.state = "stopped";
      clearInterval(this.heartbeatTimer);
      const stream = this.stream;
      stream?.end();
      this.wake?.();
      const ended = await Promise.race([this.loop.then(() => true), new Promise((r) => setTimeout(() => r(false), 2_000))]);
      if (!ended) stream?.cancel();
      await this.loop;
      this.client.close();
    })();
    return this.closing;
  }
}
