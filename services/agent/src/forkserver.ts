/**
 * How the agent starts job processes.
 *
 * `nodeSpawn` is child_process.spawn. `ForkServer` hands the spawn to a small
 * Python process (forkserver-script.ts: posix_spawn) and relays the job's
 * stdio over one pipe. Measured here (docs/architecture.md, "Execution"): a
 * Node parent spends ~0.8 ms of CPU per spawn at 70 MB RSS and more as it
 * grows, and its event loop is blocked until the child has exec'd (4 ms per
 * spawn under load in the end-to-end bench); through the fork server the
 * agent spends ~0.06 ms, the fork server ~0.05 ms and the child ~0.5 ms, and
 * the agent never blocks.
 *
 * Both give the executor the same thing (`SpawnedChild`): the pid, stdout and
 * stderr as readable streams, and the events "spawn", "error" (did not start;
 * no "exit" follows), "exit" (code, signal) and "close" (exited and both
 * streams ended or were destroyed), as a Node ChildProcess does.
 *
 * Protocol (one pipe each way, header lines with optional binary payloads) is
 * described at the top of the script. Jobs are numbered by the agent.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { constants } from "node:os";
import { Readable } from "node:stream";
import type { Logger } from "pino";
import { which } from "./admission.js";
import { FORKSERVER_SCRIPT } from "./forkserver-script.js";

/** `python3 -c`: reads the script from fd 3 and runs it (the first line names it in `ps`). */
const BOOTSTRAP = [
  "# aspen-forkserver",
  "import os",
  "b = bytearray()",
  "while True:",
  "    d = os.read(3, 65536)",
  "    if not d: break",
  "    b += d",
  "os.close(3)",
  'exec(compile(bytes(b), "aspen-forkserver", "exec"))',
].join("\n");

export interface SpawnOptions {
  env: Record<string, string>;
  cwd?: string;
  uid?: number;
  gid?: number;
  /** Written to the child's stdin, which is then closed; absent: stdin is /dev/null. */
  stdin?: Uint8Array;
  stdout: "pipe" | "ignore";
  /** "stdout": into stdout's pipe (2>&1, in the order written) where the spawner can; else its own pipe. */
  stderr: "pipe" | "ignore" | "stdout";
}

/** What the executor needs of a started process (a subset of ChildProcess). */
export interface SpawnedChild extends EventEmitter {
  readonly pid?: number | undefined;
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
  /** True when the spawner SIGKILLs what is left of the group itself once the main process has exited. */
  readonly reapsGroup?: boolean;
}

export interface Spawner {
  /** Always in its own session and process group (the executor signals the group). */
  spawn(file: string, args: string[], options: SpawnOptions): SpawnedChild;
  close(): Promise<void>;
}

/** Signals a job's whole process group (its pid is the group id: every spawner makes it a session leader). */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already empty.
  }
}

/**
 * The python3 on PATH that can run the fork server (3.8 or later: posix_spawn with
 * setsid), or why there is none.
 */
export function findPython(path: string): { python?: string; problem?: string } {
  const python = which("python3", path);
  if (!python) return { problem: "python3 is not on PATH" };
  const check = spawnSync(python, ["-I", "-S", "-c", "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)"], {
    timeout: 10_000,
  });
  return check.status === 0 ? { python } : { problem: `${python} is not Python 3.8 or later` };
}

/** child_process.spawn: used where python3 is missing, and by tests that compare the two. */
export const nodeSpawner: Spawner = {
  spawn(file, args, options) {
    const child: ChildProcess = spawn(file, args, {
      env: options.env,
      cwd: options.cwd,
      detached: true,
      uid: options.uid,
      gid: options.gid,
      // child_process gives each stream its own pipe: merged output is joined by the reader.
      stdio: [options.stdin ? "pipe" : "ignore", options.stdout, options.stderr === "stdout" ? "pipe" : options.stderr],
    });
    if (options.stdin) {
      child.stdin?.on("error", () => undefined); // a command that does not read its stdin closes it early
      child.stdin?.end(Buffer.from(options.stdin));
    }
    return child;
  },
  close: async () => undefined,
};

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(constants.signals).map(([name, n]) => [n, name as NodeJS.Signals]),
);

/** A job's stdout or stderr as relayed by the fork server. */
class RelayedStream extends Readable {
  private held = false;

  /** `control` tells the fork server to hold (H), resume (R) or drop (D) the pipe. */
  constructor(private readonly control: (op: "H" | "R" | "D") => void) {
    super();
  }

  deliver(chunk: Buffer): void {
    // Over the high-water mark: the fork server stops reading the pipe until _read asks again,
    // so a job that writes faster than the agent consumes waits, as on a direct pipe.
    if (!this.push(chunk) && !this.held) {
      this.held = true;
      this.control("H");
    }
  }

  override _read(): void {
    if (this.held) {
      this.held = false;
      this.control("R");
    }
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    if (!this.readableEnded) this.control("D");
    done(err);
  }
}

class ForkedChild extends EventEmitter implements SpawnedChild {
  pid: number | undefined;
  // The fork server kills the group right after reaping the main process (no ESRCH Error per job here).
  readonly reapsGroup = true;
  readonly stdout: RelayedStream | null;
  readonly stderr: RelayedStream | null;
  private exited = false;
  private open = 0;

  constructor(
    readonly id: number,
    options: SpawnOptions,
    private readonly server: ForkServer,
  ) {
    super();
    this.stdout = options.stdout === "pipe" ? this.stream(1) : null;
    this.stderr = options.stderr === "pipe" ? this.stream(2) : null; // "stdout": it comes on stdout
  }

  private stream(s: 1 | 2): RelayedStream {
    this.open++;
    // Hold/resume/drop go out at once: a hold that waited for the turn's end would let more
    // output pile up in the agent (the 1 GiB output test's memory bound caught it).
    const readable = new RelayedStream((op) => this.server.send(`${op} ${this.id} ${s}\n`, undefined, true));
    readable.on("close", () => {
      this.open--;
      this.maybeClose();
    });
    return readable;
  }

  output(s: number, chunk: Buffer): void {
    const readable = s === 1 ? this.stdout : this.stderr;
    if (readable && !readable.destroyed) readable.deliver(chunk);
  }

  ended(s: number): void {
    const readable = s === 1 ? this.stdout : this.stderr;
    if (readable && !readable.destroyed) readable.push(null);
  }

  started(pid: number): void {
    this.pid = pid;
    this.emit("spawn");
  }

  failed(reason: string): void {
    const [code = "ESPAWN", ...rest] = reason.split(" ");
    const err = Object.assign(new Error(rest.join(" ") || code), { code });
    this.exited = true;
    this.stdout?.destroy();
    this.stderr?.destroy();
    this.emit("error", err);
  }

  exit(status: number): void {
    this.exited = true;
    // As child_process does: a stream nobody reads is drained, so "close" still comes.
    for (const readable of [this.stdout, this.stderr]) if (readable && readable.readableFlowing === null) readable.resume();
    const signal = status & 0x7f;
    if (signal === 0) this.emit("exit", (status >> 8) & 0xff, null);
    else this.emit("exit", null, SIGNAL_NAMES.get(signal) ?? null);
    this.maybeClose();
  }

  private maybeClose(): void {
    if (this.exited && this.open === 0 && this.pid !== undefined) {
      this.server.forget(this.id);
      this.emit("close");
    }
  }
}

/**
 * One fork server per agent, started on first use and restarted if it
 * dies. If it dies with jobs running, their process groups are killed and
 * they end as killed (SIGKILL): their output pipes went with it.
 */
export class ForkServer implements Spawner {
  private proc: ChildProcess | undefined;
  private readonly children = new Map<number, ForkedChild>();
  private nextId = 1;
  /** Unparsed bytes from the fork server, and how many a frame in progress needs in all. */
  private parts: Buffer[] = [];
  private partsBytes = 0;
  private needBytes = 0;
  private closing = false;
  private outgoing: Buffer[] = [];
  private flushing: NodeJS.Immediate | undefined;

  constructor(
    private readonly python = "python3",
    private readonly log?: Logger,
  ) {}

  spawn(file: string, args: string[], options: SpawnOptions): SpawnedChild {
    if (this.closing) throw new Error("the fork server is closed");
    this.ensureStarted();
    const id = this.nextId++;
    const child = new ForkedChild(id, options, this);
    this.children.set(id, child);
    const env = Object.entries(options.env).map(([k, v]) => `${k}=${v}`);
    const fields = [
      file,
      options.cwd ?? "",
      options.uid === undefined ? "" : String(options.uid),
      options.gid === undefined ? "" : String(options.gid),
      options.stdin ? "pipe" : "null",
      options.stdout === "pipe" ? "pipe" : "null",
      options.stderr === "ignore" ? "null" : options.stderr,
      String(args.length + 1),
      file,
      ...args,
      ...env,
    ];
    if (fields.some((f) => f.includes("\0"))) {
      // A NUL cannot reach exec anyway; refuse as spawn does.
      this.children.delete(id);
      queueMicrotask(() => child.failed("EINVAL arguments and environment must not contain NUL bytes"));
      return child;
    }
    const payload = Buffer.from(fields.join("\0"));
    this.send(`S ${id} ${payload.length}\n`, payload);
    // Sent even when empty: the fork server closes the pipe after it, so the job sees EOF.
    if (options.stdin) this.send(`I ${id} ${options.stdin.length}\n`, Buffer.from(options.stdin));
    return child;
  }

  /** Called by a child once it is done with: no more messages are expected for it. */
  forget(id: number): void {
    this.children.delete(id);
  }

  /**
   * Queues a request; the requests of one event-loop turn go to the fork server in one write.
   * `now`: written at once (with what is queued before it, to keep the order).
   */
  send(header: string, payload?: Buffer, now = false): void {
    this.outgoing.push(Buffer.from(header));
    if (payload) this.outgoing.push(payload);
    if (now) {
      if (this.flushing) clearImmediate(this.flushing);
      this.flush();
    } else this.flushing ??= setImmediate(() => this.flush());
  }

  private flush(): void {
    this.flushing = undefined;
    const data = this.outgoing.length === 1 ? this.outgoing[0] : Buffer.concat(this.outgoing);
    this.outgoing = [];
    const proc = this.proc;
    if (!data || !proc?.stdin || proc.stdin.destroyed) return;
    proc.stdin.write(data);
  }

  private ensureStarted(): void {
    if (this.proc) return;
    // The script comes in on fd 3 so that every packaging of the agent carries it; -I -S:
    // no PYTHON* variables, no user or site packages.
    const proc = spawn(this.python, ["-I", "-S", "-c", BOOTSTRAP], { stdio: ["pipe", "pipe", "pipe", "pipe"] });
    this.proc = proc;
    const script = proc.stdio[3] as NodeJS.WritableStream;
    script.on("error", () => undefined); // python did not start or died: "error"/"exit" handle that
    script.end(FORKSERVER_SCRIPT);
    proc.stdin?.on("error", () => undefined); // it died: "exit" handles that
    proc.stdout?.on("data", (chunk: Buffer) => this.receive(chunk));
    let stderr = "";
    proc.stderr?.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    proc.on("error", (err) => {
      // python could not be started: nothing will answer, so what waits on it fails now.
      this.log?.error({ err: err.message, python: this.python }, "fork server could not start");
      if (this.proc === proc) this.proc = undefined;
      this.orphan();
    });
    proc.on("exit", (code, signal) => {
      if (this.proc === proc) this.proc = undefined;
      if (!this.closing || this.children.size > 0)
        this.log?.error({ code, signal, stderr: stderr.trim(), running: this.children.size }, "fork server exited");
      this.orphan();
    });
  }

  /** The fork server is gone: its jobs lost their pipes; kill what still runs and end them. */
  private orphan(): void {
    for (const child of this.children.values()) {
      if (child.pid === undefined) {
        child.failed("ESPAWNER the fork server exited before the job started");
        continue;
      }
      signalGroup(child.pid, "SIGKILL");
      child.ended(1);
      child.ended(2);
      child.exit(constants.signals.SIGKILL);
    }
    this.children.clear();
    // Requests for those jobs must not reach the next fork server.
    this.outgoing = [];
    this.parts = [];
    this.partsBytes = 0;
    this.needBytes = 0;
  }

  private receive(chunk: Buffer): void {
    // A frame in progress that this chunk does not complete is kept as pieces, not copied:
    // a 1 GiB output arrives as 64 KiB frames that straddle nearly every read.
    this.parts.push(chunk);
    this.partsBytes += chunk.length;
    if (this.partsBytes < this.needBytes) return;
    let buf = this.parts.length === 1 ? chunk : Buffer.concat(this.parts, this.partsBytes);
    this.parts = [];
    this.partsBytes = 0;
    this.needBytes = 0;
    for (;;) {
      const nl = buf.indexOf(10);
      if (nl < 0) break;
      const line = buf.toString("latin1", 0, nl);
      const [op, idText, a, ...more] = line.split(" ");
      if (op === "O") {
        const len = Number(more[0]);
        if (buf.length < nl + 1 + len) {
          this.needBytes = nl + 1 + len;
          break;
        }
        this.children.get(Number(idText))?.output(Number(a), buf.subarray(nl + 1, nl + 1 + len));
        buf = buf.subarray(nl + 1 + len);
        continue;
      }
      buf = buf.subarray(nl + 1);
      const child = this.children.get(Number(idText));
      if (op === "P") child?.started(Number(a));
      else if (op === "E") child?.ended(Number(a));
      else if (op === "X") child?.exit(Number(a));
      else if (op === "F") {
        this.children.delete(Number(idText));
        child?.failed(Buffer.from(line.slice(line.indexOf(" ", 2) + 1), "latin1").toString());
      }
    }
    if (buf.length > 0) {
      this.parts.push(buf);
      this.partsBytes = buf.length;
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    const proc = this.proc;
    if (!proc) return;
    if (this.flushing) {
      clearImmediate(this.flushing);
      this.flush();
    }
    await new Promise<void>((resolve) => {
      proc.once("exit", () => resolve());
      proc.stdin?.end(); // it exits at end of input
    });
  }
}
