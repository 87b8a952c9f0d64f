/**
 * Resource limits and the sandbox as a command-line wrapper: `prlimit` sets
 * the rlimits then execs the job (same pid), `bwrap` puts it in a read-only
 * root with a private /tmp and no network. After the exit, `explainLimit`
 * turns what the kernel did (SIGXCPU, SIGXFSZ, ENOMEM, EMFILE, EAGAIN on
 * fork) into a reason a person can read.
 */
import { isAbsolute } from "node:path";
import { which } from "./admission.js";
import type { Limits } from "./policy.js";

const tools = new Map<string, string>();

/**
 * A wrapper program's absolute path, looked up once on the agent's own PATH.
 * Never left to the spawn: that would search the job's PATH, which the job
 * sets, and a job could then put its own `prlimit` in front of the real one.
 */
export function toolPath(name: string): string {
  if (isAbsolute(name)) return name;
  let found = tools.get(name);
  if (!found) {
    found = which(name, process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") ?? `/usr/bin/${name}`;
    tools.set(name, found);
  }
  return found;
}

const MiB = 1024 * 1024;

export function hasLimits(l: Limits): boolean {
  return l.memoryBytes > 0 || l.cpuSeconds > 0 || l.processes > 0 || l.fileSizeBytes > 0 || l.openFiles > 0;
}

/** `prlimit` options for `limits` (soft = hard, except CPU: SIGXCPU at the soft limit, SIGKILL a second later). */
export function prlimitArgs(l: Limits): string[] {
  const out: string[] = [];
  if (l.memoryBytes > 0) out.push(`--as=${l.memoryBytes}`);
  if (l.cpuSeconds > 0) out.push(`--cpu=${l.cpuSeconds}:${l.cpuSeconds + 1}`);
  if (l.processes > 0) out.push(`--nproc=${l.processes}`);
  if (l.fileSizeBytes > 0) out.push(`--fsize=${l.fileSizeBytes}`);
  if (l.openFiles > 0) out.push(`--nofile=${l.openFiles}`);
  return out;
}

export interface SandboxOptions {
  bwrap: string;
  network: boolean;
  cwd: string;
  /** The work root, shown read-only inside (it may live under /tmp, which the sandbox replaces). */
  root: string;
  writable: string[];
}

/**
 * bubblewrap: the whole filesystem read-only, a fresh /dev, /proc and /tmp,
 * new user-invisible namespaces (PID, IPC, UTS, cgroup, network unless
 * allowed), killed with its parent. No --new-session: the job must stay in
 * the process group the agent signals.
 */
export function bwrapArgs(o: SandboxOptions): string[] {
  const args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--ro-bind", o.root, o.root];
  for (const path of o.writable) args.push("--bind", path, path);
  args.push("--unshare-all");
  if (o.network) args.push("--share-net");
  args.push("--die-with-parent", "--chdir", o.cwd, "--");
  return args;
}

/** The argv actually executed: [sandbox] [prlimit] program args. */
export function wrap(
  program: string,
  args: string[],
  limits: Limits,
  sandbox?: SandboxOptions,
): { file: string; args: string[] } {
  let argv = [program, ...args];
  if (hasLimits(limits)) argv = [toolPath("prlimit"), ...prlimitArgs(limits), "--", ...argv];
  if (sandbox) argv = [toolPath(sandbox.bwrap), ...bwrapArgs(sandbox), ...argv];
  const [file = program, ...rest] = argv;
  return { file, args: rest };
}

function human(bytes: number): string {
  return bytes >= MiB ? `${Math.round((bytes / MiB) * 10) / 10} MiB` : `${bytes} bytes`;
}

export interface Ending {
  exitCode: number | null;
  signal: string;
  /** The agent itself stopped it (timeout, cancel, drain, output limit). */
  stoppedByAgent: boolean;
  /** The tail of what the job wrote to stderr (for the messages libc and shells print). */
  stderrTail: string;
  cpuMs: number;
}

/**
 * Which limit, if any, ended the job, and why in words. Only for jobs that
 * failed on their own: a clean exit or a stop by the agent is never blamed on
 * a limit. Shells report a child's signal as exit code 128 + n.
 */
export function explainLimit(l: Limits, e: Ending): { limit: string; reason: string } | undefined {
  if (e.stoppedByAgent || (e.exitCode === 0 && !e.signal)) return undefined;
  const text = e.stderrTail;
  const sig = e.signal || (e.exitCode !== null && e.exitCode > 128 ? signalName(e.exitCode - 128) : "");
  if (l.cpuSeconds > 0 && (sig === "SIGXCPU" || (sig === "SIGKILL" && e.cpuMs >= l.cpuSeconds * 1000 * 0.9)))
    return { limit: "cpu", reason: `CPU time limit exceeded (${l.cpuSeconds} s): ended by ${sig}` };
  if (l.fileSizeBytes > 0 && (sig === "SIGXFSZ" || /File too large|File size limit exceeded/i.test(text)))
    return {
      limit: "file_size",
      reason: `file size limit exceeded (${human(l.fileSizeBytes)} per file)${sig ? `: ended by ${sig}` : ""}`,
    };
  if (l.openFiles > 0 && /Too many open files|EMFILE|Error 24\b/i.test(text))
    return { limit: "open_files", reason: `open files limit exceeded (${l.openFiles} descriptors)` };
  if (l.processes > 0 && /Cannot fork|can't fork|Resource temporarily unavailable|EAGAIN|fork: retry/i.test(text))
    return { limit: "processes", reason: `process limit exceeded (${l.processes} processes for the job's user)` };
  if (
    l.memoryBytes > 0 &&
    (/out of memory|Cannot allocate memory|ENOMEM|memory exhausted|MemoryError|bad_alloc|Out of space/i.test(text) ||
      sig === "SIGSEGV" ||
      sig === "SIGABRT" ||
      sig === "SIGBUS")
  )
    return {
      limit: "memory",
      reason: `memory limit exceeded (${human(l.memoryBytes)} of address space)${sig ? `: ended by ${sig}` : ""}`,
    };
  return undefined;
}

const SIGNALS: Record<number, string> = {
  1: "SIGHUP",
  2: "SIGINT",
  3: "SIGQUIT",
  6: "SIGABRT",
  7: "SIGBUS",
  9: "SIGKILL",
  11: "SIGSEGV",
  13: "SIGPIPE",
  15: "SIGTERM",
  24: "SIGXCPU",
  25: "SIGXFSZ",
};

function signalName(n: number): string {
  return SIGNALS[n] ?? "";
}
