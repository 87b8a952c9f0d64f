/**
 * Runs one attempt as a child process: no shell unless the job asks for one,
 * its own process group, bounded capture of stdout/stderr (head and tail,
 * with the full stream's size and SHA-256), timeout and cancel escalating
 * SIGTERM → grace → SIGKILL to the whole group, and leftovers in the group
 * killed once the main process exits so no orphan holds a pipe open.
 */
import { createHash, type Hash } from "node:crypto";
import { spawn } from "node:child_process";
import { StderrMode, type AttemptResult, type JobSpec, type Output } from "@aspen/proto";
import { durationToMs } from "@aspen/runtime";
import { DEFAULT_INLINE_OUTPUT_BYTES, DEFAULT_KILL_GRACE_MS } from "@aspen/model";

export interface ExecutorOptions {
  /** The environment every job starts from (the agent's allowlisted variables). */
  baseEnv: Record<string, string>;
  /** Working directory when the job names none. */
  defaultCwd: string;
  /** Inline output kept per attempt when the job sets no limit, bytes. */
  maxInlineOutputBytes: number;
}

/** After the main process exits, how long its pipes may stay open before they are cut, ms. */
const PIPE_CLOSE_GRACE_MS = 2_000;

/** Keeps the first and last `limit / 2` bytes of a stream, its size and SHA-256; memory stays bounded. */
export class BoundedCapture {
  private readonly head: Buffer[] = [];
  private headBytes = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private total = 0;
  private readonly hash: Hash = createHash("sha256");
  private readonly headLimit: number;
  private readonly tailLimit: number;

  constructor(private readonly limit: number) {
    this.headLimit = Math.ceil(limit / 2);
    this.tailLimit = limit - this.headLimit;
  }

  push(chunk: Buffer): void {
    this.total += chunk.length;
    this.hash.update(chunk);
    let rest = chunk;
    if (this.headBytes < this.headLimit) {
      const take = rest.subarray(0, this.headLimit - this.headBytes);
      this.head.push(take);
      this.headBytes += take.length;
      rest = rest.subarray(take.length);
    }
    if (rest.length === 0 || this.tailLimit === 0) return;
    this.tail.push(rest);
    this.tailBytes += rest.length;
    while (this.tail.length > 1 && this.tailBytes - (this.tail[0]?.length ?? 0) >= this.tailLimit) {
      this.tailBytes -= this.tail.shift()?.length ?? 0;
    }
  }

  output(): Output {
    const head = Buffer.concat(this.head);
    let tail = Buffer.concat(this.tail);
    const truncated = this.total > this.limit;
    if (tail.length > this.tailLimit) tail = tail.subarray(tail.length - this.tailLimit);
    const text = truncated
      ? `${head.toString()}\n… [${this.total - head.length - tail.length} bytes omitted] …\n${tail.toString()}`
      : Buffer.concat([head, tail]).toString();
    return { text, totalBytes: this.total, truncated, objectName: "", sha256: this.hash.digest("hex") };
  }
}

export interface Execution {
  /** Resolves with the pid once the process is running; rejects if it never started. */
  started: Promise<{ pid: number; startedAt: Date }>;
  result: Promise<AttemptResult>;
  /** Stop it: SIGTERM to the group, SIGKILL after the grace period. */
  cancel(reason: string): void;
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already empty.
  }
}

export function execute(spec: JobSpec, options: ExecutorOptions): Execution {
  const exec = spec.exec;
  if (!exec) throw new Error("assignment has no exec spec");
  const stderrMode = exec.stderr === StderrMode.STDERR_MODE_UNSPECIFIED ? StderrMode.STDERR_MODE_SEPARATE : exec.stderr;
  const limit = spec.maxInlineOutputBytes || options.maxInlineOutputBytes || DEFAULT_INLINE_OUTPUT_BYTES;
  const stdout = new BoundedCapture(stderrMode === StderrMode.STDERR_MODE_SEPARATE ? Math.floor(limit / 2) : limit);
  const stderr = new BoundedCapture(stderrMode === StderrMode.STDERR_MODE_SEPARATE ? Math.ceil(limit / 2) : 0);
  const [file, args] = exec.shell ? ["/bin/sh", ["-c", exec.command, ...exec.args]] : [exec.command, exec.args];
  const timeoutMs = durationToMs(spec.timeout);
  const graceMs = spec.killGrace ? durationToMs(spec.killGrace) : DEFAULT_KILL_GRACE_MS;
  const hasStdin = exec.stdin.length > 0;

  const startedAt = new Date();
  // child_process directly rather than execa: the hot path needs no more than
  // spawn, and execa's per-call setup cost about twice a bare spawn here
  // (docs/architecture.md, "Execution"). Never a shell unless asked for.
  const child = spawn(file, args, {
    env: { ...options.baseEnv, ...exec.env },
    cwd: exec.cwd || options.defaultCwd,
    // Own process group: signals reach every descendant that did not leave it.
    detached: true,
    stdio: [hasStdin ? "pipe" : "ignore", "pipe", stderrMode === StderrMode.STDERR_MODE_DISCARD ? "ignore" : "pipe"],
  });
  if (hasStdin) {
    child.stdin?.on("error", () => undefined); // a command that does not read its stdin closes it early
    child.stdin?.end(Buffer.from(exec.stdin));
  }
  child.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.on("data", (chunk: Buffer) => (stderrMode === StderrMode.STDERR_MODE_MERGED ? stdout : stderr).push(chunk));

  let timedOut = false;
  let cancelled = false;
  let graceTimer: NodeJS.Timeout | undefined;
  let exited = false;
  const stop = () => {
    if (exited || graceTimer || child.pid === undefined) return;
    const pid = child.pid;
    signalGroup(pid, "SIGTERM");
    graceTimer = setTimeout(() => signalGroup(pid, "SIGKILL"), graceMs);
  };
  const timeoutTimer = timeoutMs > 0 ? setTimeout(() => ((timedOut = true), stop()), timeoutMs) : undefined;

  const started = new Promise<{ pid: number; startedAt: Date }>((resolve, reject) => {
    child.once("spawn", () => resolve({ pid: child.pid ?? -1, startedAt }));
    child.once("error", reject);
  });
  started.catch(() => undefined);

  const result = new Promise<AttemptResult>((resolve) => {
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let spawnError: (Error & { code?: string }) | undefined;
    const finish = () => {
      clearTimeout(timeoutTimer);
      clearTimeout(graceTimer);
      resolve({
        exitCode: exit?.code ?? -1,
        signal: exit?.signal ?? "",
        timedOut,
        cancelled,
        startedAt,
        finishedAt: new Date(),
        stdout: stdout.output(),
        stderr: stderr.output(),
        error: spawnError ? `could not start ${JSON.stringify(exec.command)}: ${spawnError.code ?? spawnError.message}` : "",
        cpuTime: undefined,
        peakRssBytes: 0,
        pid: child.pid ?? 0,
      });
    };
    child.once("error", (err) => {
      spawnError = err;
      if (child.pid === undefined) finish();
    });
    child.once("exit", (code, signal) => {
      exited = true;
      exit = { code, signal };
      // Reap what the main process left behind in its group, then give the pipes a moment to close.
      if (child.pid !== undefined) signalGroup(child.pid, "SIGKILL");
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
      }, PIPE_CLOSE_GRACE_MS).unref();
    });
    child.once("close", () => {
      if (exit) finish();
    });
  });

  return {
    started,
    result,
    cancel: () => {
      cancelled = true;
      stop();
    },
  };
}
