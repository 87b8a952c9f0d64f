/**
 * The agent's policy file: what this node lets jobs do. The control plane
 * cannot widen any of it — a job the policy forbids is refused with the
 * reason and never starts. JSON, named by ASPEN_AGENT_CONFIG (or given inline
 * in ASPEN_AGENT_CONFIG_JSON); every key is optional and unknown keys are an
 * error, so a typo cannot silently loosen the policy. Documented with an
 * example in docs/agent.md and deploy/agent.example.json.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { ConfigError } from "@aspen/runtime";

const bytes = z.number().int().min(0);
const count = z.number().int().min(0);

/** Variables that inject code into loaders and shells: never settable by a job, plain or secret. */
const INJECTION_ENV = ["LD_*", "DYLD_*", "BASH_ENV", "ENV", "BASH_FUNC_*", "NODE_OPTIONS", "PYTHONSTARTUP", "PERL5OPT"];

/** Variables a job may never set: injection into loaders and shells, and names that look like secrets. */
export const DEFAULT_ENV_DENY = [
  "*SECRET*",
  "*TOKEN*",
  "*PASSWORD*",
  "*PASSWD*",
  "*CREDENTIAL*",
  "*PRIVATE_KEY*",
  ...INJECTION_ENV,
];

/**
 * Secret variables (secret_env) a job may never set: the injection vectors of
 * DEFAULT_ENV_DENY, without the secret-looking names (secret_env is where
 * those belong).
 */
export const DEFAULT_SECRET_ENV_DENY = [...INJECTION_ENV];

export const LimitsSchema = z
  .object({
    /** Address space per job, bytes (prlimit --as). 0 = none. */
    memoryBytes: bytes.default(0),
    /** CPU time per job, seconds (prlimit --cpu; SIGXCPU, SIGKILL 1 s later). 0 = none. */
    cpuSeconds: count.default(0),
    /** Processes of the job's user (prlimit --nproc; not enforced for root). 0 = none. */
    processes: count.default(0),
    /** Largest file a job may write, bytes (prlimit --fsize). 0 = none. */
    fileSizeBytes: bytes.default(0),
    /** Open file descriptors (prlimit --nofile). 0 = none. */
    openFiles: count.default(0),
  })
  .strict();
export type Limits = z.infer<typeof LimitsSchema>;

export const PolicySchema = z
  .object({
    /** Attempts run at once (ASPEN_SLOTS overrides). */
    slots: z.number().int().min(1).max(4096).optional(),
    /** Worker labels (merged under ASPEN_LABELS). */
    labels: z.record(z.string(), z.string()).optional(),
    /** Capabilities (merged with ASPEN_CAPABILITIES). */
    capabilities: z.array(z.string()).optional(),
    /** Working-directory root: a job's cwd must resolve (realpath) inside it. Default ASPEN_WORK_DIR. */
    workRoot: z.string().min(1).optional(),
    commands: z
      .object({
        /**
         * Programs a job may run: bare names (matched when the job names the
         * program the same way; resolved against PATH at run time) or
         * absolute paths (matched by realpath). Absent: any program.
         */
        allow: z.array(z.string().min(1)).optional(),
        /** Whether `shell: true` jobs (/bin/sh -c) may run. A shell can run anything. Default true. */
        shell: z.boolean().default(true),
      })
      .strict()
      .default({ shell: true }),
    env: z
      .object({
        /** The only variables of the agent's own environment a job sees. */
        passthrough: z.array(z.string().min(1)).default(["PATH", "HOME", "LANG", "TZ"]),
        /** Job variables (env) refused by name: globs with `*`, case-insensitive. */
        deny: z.array(z.string().min(1)).default(DEFAULT_ENV_DENY),
        /** Secret job variables (secret_env) refused by name: globs with `*`, case-insensitive. */
        secretDeny: z.array(z.string().min(1)).default(DEFAULT_SECRET_ENV_DENY),
      })
      .strict()
      .default({ passthrough: ["PATH", "HOME", "LANG", "TZ"], deny: DEFAULT_ENV_DENY, secretDeny: DEFAULT_SECRET_ENV_DENY }),
    output: z
      .object({
        /** Inline head+tail kept per attempt when the job sets no smaller limit, bytes. */
        inlineBytes: z
          .number()
          .int()
          .min(1024)
          .max(16 * 1024 * 1024)
          .optional(),
        /** Largest output per stream; a job writing more is killed ("output" limit). 0 = none. */
        maxBytes: bytes.default(0),
      })
      .strict()
      .default({ maxBytes: 0 }),
    /** Ceilings for every job; a job may ask for less (JobSpec.limits), never more. */
    limits: LimitsSchema.default({ memoryBytes: 0, cpuSeconds: 0, processes: 0, fileSizeBytes: 0, openFiles: 0 }),
    sandbox: z
      .object({
        /** Run every job under bubblewrap: read-only root, private /tmp, own PID/IPC/UTS, no network. */
        enabled: z.boolean().default(false),
        /** Jobs that ask for `network` get it. Default false: such jobs are refused. */
        allowNetwork: z.boolean().default(false),
        /** Paths mounted writable inside the sandbox (e.g. the work root). */
        writable: z.array(z.string().startsWith("/")).default([]),
        /** The bubblewrap binary. */
        bwrap: z.string().default("bwrap"),
      })
      .strict()
      .default({ enabled: false, allowNetwork: false, writable: [], bwrap: "bwrap" }),
    /** When the agent runs as root: the user (and group) jobs run as. Names or numeric ids. */
    runAs: z
      .object({ user: z.string().min(1), group: z.string().min(1).optional() })
      .strict()
      .optional(),
    rateLimit: z
      .object({
        /** Starts per minute per program, by name or absolute path. */
        perCommand: z.record(z.string(), z.number().int().min(1)).default({}),
        /** Starts per minute of any program without its own entry. 0 = none. */
        default: count.default(0),
      })
      .strict()
      .default({ perCommand: {}, default: 0 }),
    /** Job types this agent accepts. Default: every registered handler. */
    jobTypes: z.array(z.string().min(1)).optional(),
  })
  .strict();

export type Policy = z.infer<typeof PolicySchema>;

/** Parses and validates a policy; throws ConfigError naming every bad field. */
export function parsePolicy(text: string, source: string): Policy {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError([`${source}: not valid JSON: ${(err as Error).message}`]);
  }
  const parsed = PolicySchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  throw new ConfigError(parsed.error.issues.map((i) => `${source}: ${i.path.join(".") || "(root)"}: ${i.message}`));
}

/** The policy from ASPEN_AGENT_CONFIG_JSON, else the file ASPEN_AGENT_CONFIG, else the defaults. */
export function loadPolicy(inline: string | undefined, path: string | undefined): Policy {
  if (inline) return parsePolicy(inline, "ASPEN_AGENT_CONFIG_JSON");
  if (!path) return PolicySchema.parse({});
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError([
      `ASPEN_AGENT_CONFIG=${JSON.stringify(path)}: cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`,
    ]);
  }
  return parsePolicy(text, path);
}
