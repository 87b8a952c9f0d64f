/**
 * Admission: turns a JobSpec into a launch plan under the agent's policy, or
 * refuses it with a reason a person can act on. Everything the policy
 * constrains is decided here, before anything starts: the program (resolved
 * against PATH, checked against the allowlist), the shell, the working
 * directory (realpath inside the root: `..` and symlinks cannot escape), the
 * job's environment (deny patterns; the agent's own environment is never
 * passed on beyond its passthrough list), limits (the job may only lower the
 * agent's), sandbox/network, the user to run as, and the rate limit.
 */
import { accessSync, constants, readFileSync, realpathSync, statSync } from "node:fs";
import { isAbsolute, join, resolve, sep } from "node:path";
import type { JobSpec, ResourceLimits } from "@aspen/proto";
import { ConfigError } from "@aspen/runtime";
import type { Limits, Policy } from "./policy.js";
import type { SecretResolver } from "./secrets.js";

/** A job the policy forbids: it never starts; `reason` goes into AttemptResult.error. */
export class Refusal extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = "Refusal";
  }
}

export interface RunAs {
  uid: number;
  gid: number;
  /** "user:group" for results and audit. */
  label: string;
}

/** The policy with names resolved once, at start. */
export interface CompiledPolicy {
  policy: Policy;
  /** Real path of the working-directory root. */
  workRoot: string;
  /** The environment every job starts from: the agent's passthrough variables. */
  baseEnv: Record<string, string>;
  /** Allowlisted bare names, and allowlisted absolute paths by realpath. Undefined: any program. */
  allowNames?: Set<string>;
  allowPaths?: Set<string>;
  deny: Array<{ pattern: string; re: RegExp }>;
  /** Deny patterns for secret_env names. */
  secretDeny: Array<{ pattern: string; re: RegExp }>;
  runAs?: RunAs;
  /** Opens sealed secrets and reads agent references; absent: every secret_env entry is refused. */
  secrets?: SecretResolver;
}

export interface Plan {
  /** The program to execute (absolute path) and its arguments. */
  program: string;
  args: string[];
  /** For audit and results: what the job asked, resolved. */
  shell: boolean;
  /** The child's whole environment, secret values included: never logged or recorded. */
  env: Record<string, string>;
  /** The secret values in `env`, for redaction of the job's output. */
  secrets: string[];
  cwd: string;
  limits: Limits;
  runAs?: RunAs;
  /** Present when the job runs in the sandbox; `root` is the work root to expose in it. */
  sandbox?: { network: boolean; root: string };
  /** Rate-limit key (the program's real path). */
  rateKey: string;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split("*")
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${body}$`, "i");
}

function lookupId(file: string, name: string, what: string): { id: number; name: string; gid?: number } {
  const lines = readFileSync(file, "utf8").split("\n");
  for (const line of lines) {
    const f = line.split(":");
    if (f[0] === name || (/^\d+$/.test(name) && f[2] === name)) {
      return { id: Number(f[2]), name: f[0] ?? name, gid: f[3] === undefined ? undefined : Number(f[3]) };
    }
  }
  if (/^\d+$/.test(name)) return { id: Number(name), name };
  throw new ConfigError([`runAs.${what}: ${JSON.stringify(name)} not found in ${file}`]);
}

function groupNameOf(gid: number): string {
  for (const line of readFileSync("/etc/group", "utf8").split("\n")) {
    const f = line.split(":");
    if (f[2] === String(gid) && f[0]) return f[0];
  }
  return String(gid);
}

export function compilePolicy(
  policy: Policy,
  options: { defaultWorkRoot: string; agentEnv: NodeJS.ProcessEnv; isRoot: boolean; secrets?: SecretResolver },
): CompiledPolicy {
  const problems: string[] = [];
  let workRoot = policy.workRoot ?? options.defaultWorkRoot;
  try {
    workRoot = realpathSync(workRoot);
    if (!statSync(workRoot).isDirectory()) problems.push(`workRoot: ${JSON.stringify(workRoot)} is not a directory`);
  } catch {
    problems.push(`workRoot: ${JSON.stringify(workRoot)} does not exist`);
  }
  const baseEnv: Record<string, string> = {};
  for (const name of policy.env.passthrough) {
    const value = options.agentEnv[name];
    if (value !== undefined) baseEnv[name] = value;
  }
  let allowNames: Set<string> | undefined;
  let allowPaths: Set<string> | undefined;
  if (policy.commands.allow) {
    allowNames = new Set();
    allowPaths = new Set();
    for (const entry of policy.commands.allow) {
      if (entry.includes("/")) {
        if (!isAbsolute(entry)) problems.push(`commands.allow: ${JSON.stringify(entry)} must be a bare name or an absolute path`);
        else {
          try {
            allowPaths.add(realpathSync(entry));
          } catch {
            // Allowed but absent now: matched by its literal path should it appear later.
            allowPaths.add(entry);
          }
        }
      } else allowNames.add(entry);
    }
  }
  let runAs: RunAs | undefined;
  if (policy.runAs) {
    if (!options.isRoot) problems.push("runAs: the agent must run as root to switch users (it does not)");
    else {
      try {
        const user = lookupId("/etc/passwd", policy.runAs.user, "user");
        const group = policy.runAs.group ? lookupId("/etc/group", policy.runAs.group, "group") : undefined;
        const gid = group?.id ?? user.gid ?? user.id;
        const groupName = group?.name ?? groupNameOf(gid);
        runAs = { uid: user.id, gid, label: `${user.name}:${groupName}` };
      } catch (err) {
        if (err instanceof ConfigError) problems.push(...err.problems);
        else throw err;
      }
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return {
    policy,
    workRoot,
    baseEnv,
    allowNames,
    allowPaths,
    deny: policy.env.deny.map((p) => ({ pattern: p, re: globToRegExp(p) })),
    secretDeny: policy.env.secretDeny.map((p) => ({ pattern: p, re: globToRegExp(p) })),
    runAs,
    secrets: options.secrets,
  };
}

/** Resolves a bare program name against PATH like execvp; undefined when not found. */
export function which(name: string, path: string): string | undefined {
  for (const dir of path.split(":")) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function effectiveLimits(ceiling: Limits, asked: ResourceLimits | undefined): Limits {
  const pick = (max: number, want: number | undefined) => (want && want > 0 ? (max > 0 ? Math.min(max, want) : want) : max);
  return {
    memoryBytes: pick(ceiling.memoryBytes, asked?.memoryBytes),
    cpuSeconds: pick(ceiling.cpuSeconds, asked?.cpuSeconds),
    processes: pick(ceiling.processes, asked?.processes),
    fileSizeBytes: pick(ceiling.fileSizeBytes, asked?.fileSizeBytes),
    openFiles: pick(ceiling.openFiles, asked?.openFiles),
  };
}

/** Decides how `spec` may run here, or throws a Refusal. Does not count against the rate limit. */
export function admit(spec: JobSpec, compiled: CompiledPolicy): Plan {
  const { policy } = compiled;
  const exec = spec.exec;
  if (!exec || !exec.command) throw new Refusal("exec.command: required");
  const path = compiled.baseEnv.PATH ?? "/usr/local/bin:/usr/bin:/bin";

  let program: string;
  let args: string[];
  let rateKey = "/bin/sh";
  if (exec.shell) {
    if (!policy.commands.shell) throw new Refusal("shell scripts are forbidden by this agent's config (commands.shell = false)");
    program = "/bin/sh";
    args = ["-c", exec.command, ...exec.args];
  } else {
    const name = exec.command;
    if (name.includes("/") && !isAbsolute(name))
      throw new Refusal(`command ${JSON.stringify(name)}: a relative path is refused; give a bare name or an absolute path`);
    const found = isAbsolute(name) ? name : which(name, path);
    if (!found) throw new Refusal(`command ${JSON.stringify(name)} not found on the agent's PATH (${path})`);
    let real: string;
    try {
      real = realpathSync.native(found);
    } catch {
      throw new Refusal(`command ${JSON.stringify(name)}: ${found} does not exist`);
    }
    if (compiled.allowNames && compiled.allowPaths) {
      const byName = !name.includes("/") && compiled.allowNames.has(name);
      const byPath = compiled.allowPaths.has(real) || compiled.allowPaths.has(found);
      if (!byName && !byPath)
        throw new Refusal(`command ${JSON.stringify(name)} (${real}) is not in this agent's allowlist (commands.allow)`);
    }
    program = found;
    args = exec.args;
    rateKey = real;
  }

  // Working directory: relative to the root, then realpath, which resolves `..` and every symlink.
  const asked = exec.cwd || ".";
  const joined = isAbsolute(asked) ? asked : resolve(compiled.workRoot, asked);
  let cwd: string;
  try {
    cwd = realpathSync.native(joined);
  } catch {
    throw new Refusal(`cwd ${JSON.stringify(asked)}: ${joined} does not exist`);
  }
  if (cwd !== compiled.workRoot && !cwd.startsWith(compiled.workRoot + sep))
    throw new Refusal(
      `cwd ${JSON.stringify(asked)} resolves to ${cwd}, outside the agent's working-directory root ${compiled.workRoot}`,
    );
  if (!statSync(cwd).isDirectory()) throw new Refusal(`cwd ${JSON.stringify(asked)}: ${cwd} is not a directory`);

  for (const name of Object.keys(exec.env)) {
    if (!ENV_NAME.test(name)) throw new Refusal(`env ${JSON.stringify(name)}: not a valid variable name`);
    const hit = compiled.deny.find((d) => d.re.test(name));
    if (hit) {
      const hint = compiled.secretDeny.some((d) => d.re.test(name)) ? "" : "; a secret belongs in secret_env";
      throw new Refusal(`env ${name}: denied by this agent's environment policy (pattern ${JSON.stringify(hit.pattern)})${hint}`);
    }
  }
  const secretNames = Object.keys(exec.secretEnv);
  for (const name of secretNames) {
    if (!ENV_NAME.test(name)) throw new Refusal(`secret_env ${JSON.stringify(name)}: not a valid variable name`);
    if (Object.hasOwn(exec.env, name)) throw new Refusal(`secret_env ${name}: also set in env`);
    const hit = compiled.secretDeny.find((d) => d.re.test(name));
    if (hit) {
      throw new Refusal(
        `secret_env ${name}: denied by this agent's environment policy (env.secretDeny pattern ${JSON.stringify(hit.pattern)})`,
      );
    }
  }

  let sandbox: Plan["sandbox"];
  if (policy.sandbox.enabled) {
    if (spec.network && !policy.sandbox.allowNetwork)
      throw new Refusal("network: this agent's sandbox gives jobs no network (sandbox.allowNetwork = false)");
    sandbox = { network: spec.network, root: compiled.workRoot };
  }

  // Secrets last: nothing is opened or read for a job refused for another reason.
  const secretEnv: Record<string, string> = {};
  if (secretNames.length > 0) {
    const resolver = compiled.secrets;
    if (!resolver) throw new Refusal("secret_env: this agent takes no secrets (no private key and no secrets directory)");
    for (const name of secretNames) secretEnv[name] = resolver.resolve(name, exec.secretEnv[name]!);
  }

  return {
    program,
    args,
    shell: exec.shell,
    env: { ...compiled.baseEnv, ...exec.env, ...secretEnv },
    secrets: Object.values(secretEnv),
    cwd,
    limits: effectiveLimits(policy.limits, spec.limits),
    runAs: compiled.runAs,
    sandbox,
    rateKey,
  };
}

/** Starts per minute per program, over a sliding 60 s window. */
export class RateLimiter {
  private readonly starts = new Map<string, number[]>();

  constructor(
    private readonly rules: Policy["rateLimit"],
    private readonly now: () => number = Date.now,
  ) {}

  private limitFor(name: string, key: string): number {
    return this.rules.perCommand[name] ?? this.rules.perCommand[key] ?? this.rules.default;
  }

  /** Records a start of `name` (resolved to `key`), or throws a Refusal when its budget for the minute is spent. */
  take(name: string, key: string): void {
    const limit = this.limitFor(name, key);
    if (limit <= 0) return;
    const now = this.now();
    const recent = (this.starts.get(key) ?? []).filter((t) => now - t < 60_000);
    if (recent.length >= limit) {
      const retryInS = Math.ceil((60_000 - (now - (recent[0] ?? now))) / 1000);
      this.starts.set(key, recent);
      throw new Refusal(
        `rate limit: ${JSON.stringify(name)} was started ${recent.length} times in the last minute (max ${limit} per minute); next start possible in ${retryInS} s`,
      );
    }
    recent.push(now);
    this.starts.set(key, recent);
  }
}
