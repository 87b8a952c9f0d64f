/**
 * Runs one admitted attempt as a child process: no shell unless the job asks
 * for one (and the policy allows it), its own process group, limits and
 * sandbox as a wrapper (limits.ts), stdout/stderr streamed to the object
 * store as produced (output-store.ts) with a bounded head/tail kept inline,
 * timeout and cancel escalating SIGTERM → grace → SIGKILL to the whole
 * group, and leftovers in the group killed once the main process exits so no
 * orphan holds a pipe open. CPU time and peak memory are sampled from /proc.
 */
import { createHash, type Hash } from "node:crypto";
import { readFileSync } from "node:fs";
import { StderrMode, type AttemptResult, type JobSpec, type Output } from "@aspen/proto";
import { durationToMs, msToDuration } from "@aspen/runtime";
import { DEFAULT_INLINE_OUTPUT_BYTES, DEFAULT_KILL_GRACE_MS } from "@aspen/model";
import type { Plan } from "./admission.js";
import { nodeSpawner, signalGroup, type Spawner } from "./forkserver.js";
import { explainLimit, wrap } from "./limits.js";
import type { ObjectWriter, StoredObject } from "./output-store.js";
import { StreamRedactor } from "./redactor.js";

export interface ExecutorOptions {
  /** Inline output kept per attempt when the job sets no limit, bytes. */
  maxInlineOutputBytes: number;
  /** Largest output per stream before the job is killed; 0 = none. */
  maxOutputBytes?: number;
  /** Where the full streams go ("stdout"/"stderr"); absent: inline capture only. */
  writer?: (stream: "stdout" | "stderr") => ObjectWriter | undefined;
  /** bubblewrap binary and extra writable paths, for plans with a sandbox. */
  sandbox?: { bwrap: string; writable: string[] };
  /** What starts the process (the agent's fork server); default child_process.spawn. */
  spawner?: Spawner;
  /** How often CPU time and memory are sampled, ms. */
  usageSampleMs?: number;
  /** Told when the full output could not be stored (the job still completes). */
  onStoreError?: (stream: string, err: Error) => void;
}

/** After the main process exits, how long its pipes may stay open before they are cut, ms. */
const PIPE_CLOSE_GRACE_MS = 2_000;
/**
 * Inline text per stream when the full stream is in the object store: what
 * the job-manager keeps in a job record without moving it (its
 * RECORD_INLINE_BYTES, 128 KiB), so the agent's object stays the one named
 * in the result. Without a store, the configured inline limit applies.
 */
export const STORED_INLINE_BYTES = 128 * 1024 - 256;
/** Clock ticks per second in /proc/<pid>/stat (USER_HZ; 100 on Linux). */
const CLK_TCK = 100;
const STDERR_TAIL_BYTES = 4096;
/** SHA-256 of nothing: most streams of most jobs are empty, and a hash object costs per run. */
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** Keeps the first and last `limit / 2` bytes of a stream, its size and SHA-256; memory stays bounded. */
export class BoundedCapture {
  private readonly head: Buffer[] = [];
  private headBytes = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private total = 0;
  private digestHex: string | undefined;
  private hashState: Hash | undefined;
  private readonly headLimit: number;
  private readonly tailLimit: number;

  constructor(private readonly limit: number) {
    this.headLimit = Math.ceil(limit / 2);
    this.tailLimit = limit - this.headLimit;
  }

  get bytes(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    this.total += chunk.length;
    (this.hashState ??= createHash("sha256")).update(chunk);
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

  /** The captured text; with `maxTextBytes`, head and tail shrink until the text fits. */
  output(maxTextBytes?: number): Output {
    let head = Buffer.concat(this.head);
    let tail = Buffer.concat(this.tail);
    if (tail.length > this.tailLimit) tail = tail.subarray(tail.length - this.tailLimit);
    const render = () => {
      const kept = head.length + tail.length;
      return kept < this.total
        ? `${head.toString()}\n… [${this.total - kept} bytes omitted] …\n${tail.toString()}`
        : Buffer.concat([head, tail]).toString();
    };
    let text = render();
    if (maxTextBytes !== undefined) {
      // Invalid UTF-8 grows when replaced, so shrink until the text itself fits.
      for (let budget = maxTextBytes; Buffer.byteLength(text) > maxTextBytes && budget > 0; budget = Math.floor(budget * 0.75)) {
        const half = Math.max(0, Math.floor(budget / 2) - 64);
        head = head.subarray(0, Math.min(head.length, half));
        tail = tail.subarray(Math.max(0, tail.length - half));
        text = render();
      }
    }
    const truncated = head.length + tail.length < this.total;
    this.digestHex ??= this.hashState ? this.hashState.digest("hex") : EMPTY_SHA256;
    return { text, totalBytes: this.total, truncated, objectName: "", sha256: this.digestHex };
  }
}

export interface Execution {
  /** Resolves with the pid once the process is running; rejects if it never started. */
  started: Promise<{ pid: number; startedAt: Date }>;
  result: Promise<AttemptResult>;
  /** Stop it: SIGTERM to the group, SIGKILL after the grace period. */
  cancel(reason: string): void;
}

/** CPU time (self + waited-for children) and peak RSS of a live process, from /proc. */
function sampleUsage(pid: number): { cpuMs: number; peakRss: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after "(comm)": state is field 3; utime, stime, cutime, cstime are fields 14-17.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(f[i] ?? 0), 0);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
    return { cpuMs: (ticks * 1000) / CLK_TCK, peakRss: hwm ? Number(hwm[1]) * 1024 : 0 };
  } catch {
    return undefined; // exited between samples
  }
}

/** Runs an admitted plan. Never throws: a start failure resolves `result` with the reason. */
export function execute(spec: JobSpec, plan: Plan, options: ExecutorOptions): Execution {
  const exec = spec.exec;
  const stderrMode = !exec || exec.stderr === StderrMode.STDERR_MODE_UNSPECIFIED ? StderrMode.STDERR_MODE_SEPARATE : exec.stderr;
  const limit = spec.maxInlineOutputBytes || options.maxInlineOutputBytes || DEFAULT_INLINE_OUTPUT_BYTES;
  const separate = stderrMode === StderrMode.STDERR_MODE_SEPARATE;
  const stdout = new BoundedCapture(separate ? Math.floor(limit / 2) : limit);
  const stderr = new BoundedCapture(separate ? Math.ceil(limit / 2) : 0);
  const outWriter = options.writer?.("stdout");
  const errWriter = separate ? options.writer?.("stderr") : undefined;
  const timeoutMs = durationToMs(spec.timeout);
  const graceMs = spec.killGrace ? durationToMs(spec.killGrace) : DEFAULT_KILL_GRACE_MS;
  const stdin = exec?.stdin ?? Buffer.alloc(0);
  const hasStdin = stdin.length > 0;
  const { file, args } = wrap(
    plan.program,
    plan.args,
    plan.limits,
    plan.sandbox && options.sandbox
      ? {
          bwrap: options.sandbox.bwrap,
          writable: options.sandbox.writable,
          network: plan.sandbox.network,
          cwd: plan.cwd,
          root: plan.sandbox.root,
        }
      : undefined,
  );

  const startedAt = new Date();
  // A bare spawn rather than execa: the hot path needs no more than spawn, and
  // execa's per-call setup cost about twice a bare spawn here
  // (docs/architecture.md, "Execution"). Never a shell unless asked for. Its
  // own session and process group: signals reach every descendant that did
  // not leave it.
  const child = (options.spawner ?? nodeSpawner).spawn(file, args, {
    env: plan.env,
    cwd: plan.cwd,
    uid: plan.runAs?.uid,
    gid: plan.runAs?.gid,
    stdin: hasStdin ? stdin : undefined,
    stdout: "pipe",
    stderr:
      stderrMode === StderrMode.STDERR_MODE_DISCARD ? "ignore" : stderrMode === StderrMode.STDERR_MODE_MERGED ? "stdout" : "pipe",
  });

  let timedOut = false;
  let cancelled = false;
  let stoppedByAgent = false;
  let outputLimitHit = "";
  let graceTimer: NodeJS.Timeout | undefined;
  let exited = false;
  let stderrTail = "";
  const stop = () => {
    stoppedByAgent = true;
    if (exited || graceTimer || child.pid === undefined) return;
    const pid = child.pid;
    signalGroup(pid, "SIGTERM");
    graceTimer = setTimeout(() => signalGroup(pid, "SIGKILL"), graceMs);
  };

  const maxOutput = options.maxOutputBytes ?? 0;
  const sink = (
    source: NodeJS.ReadableStream & { pause(): void; resume(): void },
    capture: BoundedCapture,
    writer: ObjectWriter | undefined,
    name: string,
  ) => {
    // Secret values become [REDACTED] before anything sees the bytes (one redactor per pipe:
    // a value split across this pipe's chunks is held back until it is whole).
    const redactor = plan.secrets.length > 0 ? new StreamRedactor(plan.secrets) : undefined;
    const take = (chunk: Buffer) => {
      if (chunk.length === 0) return;
      capture.push(chunk);
      if (name === "stderr" || stderrMode === StderrMode.STDERR_MODE_MERGED)
        stderrTail = (stderrTail + chunk.toString()).slice(-STDERR_TAIL_BYTES);
      if (maxOutput > 0 && capture.bytes > maxOutput && !outputLimitHit) {
        outputLimitHit = `output limit exceeded: ${name} passed ${maxOutput} bytes`;
        stop();
      }
      if (writer && !writer.write(chunk)) {
        source.pause();
        writer.once("drain", () => source.resume());
      }
    };
    if (!redactor?.active) {
      source.on("data", take);
      return;
    }
    source.on("data", (chunk: Buffer) => take(redactor.push(chunk)));
    // What is held back goes out at the end of the stream, or when the attempt finishes
    // (a pipe cut after the exit has no "end").
    let flushed = false;
    const flush = () => {
      if (flushed) return;
      flushed = true;
      take(redactor.end());
    };
    source.once("end", flush);
    flushers.push(flush);
  };
  const flushers: Array<() => void> = [];
  if (child.stdout) sink(child.stdout, stdout, outWriter, "stdout");
  if (child.stderr) {
    if (stderrMode === StderrMode.STDERR_MODE_MERGED) sink(child.stderr, stdout, outWriter, "stderr");
    else sink(child.stderr, stderr, errWriter, "stderr");
  }

  const timeoutTimer = timeoutMs > 0 ? setTimeout(() => ((timedOut = true), stop()), timeoutMs) : undefined;
  let usage = { cpuMs: 0, peakRss: 0 };
  const sample = () => {
    if (child.pid === undefined || exited) return;
    const u = sampleUsage(child.pid);
    if (u) usage = { cpuMs: Math.max(usage.cpuMs, u.cpuMs), peakRss: Math.max(usage.peakRss, u.peakRss) };
  };
  const usageTimer = setInterval(sample, options.usageSampleMs ?? 250);
  usageTimer.unref();

  const started = new Promise<{ pid: number; startedAt: Date }>((resolve, reject) => {
    child.once("spawn", () => resolve({ pid: child.pid ?? -1, startedAt }));
    child.once("error", reject);
  });
  started.catch(() => undefined);

  const result = new Promise<AttemptResult>((resolve) => {
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let spawnError: (Error & { code?: string }) | undefined;
    const store = async (writer: ObjectWriter | undefined, name: string): Promise<StoredObject | undefined> => {
      if (!writer) return undefined;
      try {
        return await writer.end();
      } catch (err) {
        options.onStoreError?.(name, err as Error);
        return undefined;
      }
    };
    const finish = async () => {
      clearTimeout(timeoutTimer);
      clearTimeout(graceTimer);
      clearInterval(usageTimer);
      for (const flush of flushers) flush();
      const [outObj, errObj] = await Promise.all([store(outWriter, "stdout"), store(errWriter, "stderr")]);
      const outputOf = (capture: BoundedCapture, obj: StoredObject | undefined): Output => {
        if (!obj) return capture.output();
        return { ...capture.output(STORED_INLINE_BYTES), objectName: obj.name };
      };
      const explained = explainLimit(plan.limits, {
        exitCode: exit?.code ?? null,
        signal: exit?.signal ?? "",
        stoppedByAgent,
        stderrTail,
        cpuMs: usage.cpuMs,
      });
      const error = spawnError
        ? `could not start ${JSON.stringify(exec?.command ?? plan.program)}: ${spawnError.code ?? spawnError.message}`
        : outputLimitHit || explained?.reason || "";
      resolve({
        exitCode: exit?.code ?? -1,
        signal: exit?.signal ?? "",
        timedOut,
        cancelled,
        startedAt,
        finishedAt: new Date(),
        stdout: outputOf(stdout, outObj),
        stderr: outputOf(stderr, errObj),
        error,
        cpuTime: msToDuration(usage.cpuMs),
        peakRssBytes: usage.peakRss,
        pid: child.pid ?? 0,
        details: {
          refused: false,
          limitExceeded: outputLimitHit ? "output" : (explained?.limit ?? ""),
          program: plan.program,
          runAs: plan.runAs?.label ?? "",
          sandboxed: !!(plan.sandbox && options.sandbox),
          usageSource: "proc-sampled",
        },
      });
    };
    child.once("error", (err) => {
      spawnError = err;
      if (child.pid === undefined) void finish();
    });
    child.once("exit", (code, signal) => {
      exited = true;
      exit = { code, signal };
      // Reap what the main process left behind in its group, then give the pipes a moment to close.
      if (child.pid !== undefined && !child.reapsGroup) signalGroup(child.pid, "SIGKILL");
      // (Not while the store holds the reader back: that output is still to be read.)
      const cut = () => {
        if (outWriter?.isPaused || errWriter?.isPaused) return void setTimeout(cut, 500).unref();
        child.stdout?.destroy();
        child.stderr?.destroy();
      };
      setTimeout(cut, PIPE_CLOSE_GRACE_MS).unref();
    });
    child.once("close", () => {
      if (exit) void finish();
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
