/**
 * Agent configuration: environment variables (their defaults and units
 * below) plus the policy file (policy.ts) named by ASPEN_AGENT_CONFIG. Where
 * both can set a value (slots, labels, capabilities, work root, passthrough,
 * inline output), an environment variable that is set wins over the file;
 * labels and capabilities are merged. Validated at start: a bad value stops
 * the agent with a message naming it.
 */
import { hostname, tmpdir } from "node:os";
import { z } from "zod";
import { env, loadConfig } from "@aspen/runtime";
import { DEFAULT_INLINE_OUTPUT_BYTES } from "@aspen/model";
import { loadPolicy, type Policy } from "./policy.js";

export const AgentConfigSchema = z.object({
  /** Where the coordinator serves gRPC; the agent connects out to it. */
  ASPEN_COORDINATOR_ADDR: env.string("127.0.0.1:50053"),
  /** This node's id in the registry. Default: the hostname. */
  ASPEN_WORKER_ID: env.string(hostname()),
  /** Labels, "k=v,k2=v2". */
  ASPEN_LABELS: env.labels(""),
  /** Capabilities, comma-separated (e.g. "database,gpu"). */
  ASPEN_CAPABILITIES: env.list(""),
  /** Attempts run at once. */
  ASPEN_SLOTS: env.int(4, 1, 4096),
  /** The agent's health endpoint (grpc.health.v1) for its container. */
  ASPEN_HEALTH_HOST: env.string("0.0.0.0"),
  ASPEN_HEALTH_PORT: env.port(50054),
  /** Working-directory root (policy `workRoot`): jobs' cwd must resolve inside it. */
  ASPEN_WORK_DIR: env.string(tmpdir()),
  /** The only variables of the agent's own environment a job sees (policy `env.passthrough`). */
  ASPEN_ENV_PASSTHROUGH: env.list("PATH,HOME,LANG,TZ"),
  /** Inline output kept per attempt when the job sets no limit, bytes (policy `output.inlineBytes`). */
  ASPEN_MAX_OUTPUT_BYTES: env.int(DEFAULT_INLINE_OUTPUT_BYTES, 1024, 16 * 1024 * 1024),
  /** On SIGTERM, how long running attempts may finish before they are killed. */
  ASPEN_DRAIN_TIMEOUT: env.durationMs("30s"),
  /** Longest wait between reconnection attempts. */
  ASPEN_RECONNECT_MAX: env.durationMs("5s"),
  /**
   * How long the agent holds back an attempt's "started" report: one that ends
   * within it is reported once, started and finished together (one write at the
   * job-manager instead of two). The job shows RUNNING at most this much later;
   * its started_at is unchanged. 0 reports at once.
   */
  ASPEN_STARTED_REPORT_DELAY: env.durationMs("100ms"),
  /** Path of the policy file (JSON, see docs/agent.md). Default: none (permissive defaults). */
  ASPEN_AGENT_CONFIG: env.optionalString(),
  /** The policy as inline JSON (containers); wins over ASPEN_AGENT_CONFIG. */
  ASPEN_AGENT_CONFIG_JSON: env.optionalString(),
  /**
   * NATS for full outputs (object store aspen_outputs) and audit records
   * (stream ASPEN_AUDIT), comma-separated. Empty: inline output only, no audit.
   */
  ASPEN_NATS_SERVERS: env.list(""),
  /** Replicas of the outputs bucket and the audit stream when this agent creates them (3 on a 3-node NATS cluster). */
  ASPEN_BUCKET_REPLICAS: env.int(1, 1, 5),
  /** How long audit records are kept when this agent creates the stream, days. */
  ASPEN_AUDIT_RETENTION_DAYS: env.int(90, 1, 36500),
  /**
   * Where the agent records its running process groups, so that after a crash
   * the next agent kills what was left. One directory per agent, kept across
   * restarts (deploy/ uses /var/lib/aspen-agent). Default: none (not recorded).
   */
  ASPEN_STATE_DIR: env.optionalString(),
  /**
   * Private key(s) that open sealed secret values (PEM, X25519; the pair's
   * public key is the control plane's ASPEN_SECRETS_PUBLIC_KEY_FILE).
   * Comma-separated while keys rotate. Unset: jobs with sealed secrets are refused.
   */
  ASPEN_SECRETS_PRIVATE_KEY_FILE: env.list(""),
  /**
   * Directory of secrets jobs may reference by name (secret_env agent_ref =
   * a file name here, read when the attempt starts; one trailing newline is
   * dropped). Unset: jobs with agent references are refused.
   */
  ASPEN_AGENT_SECRETS_DIR: env.optionalString(),
  /**
   * What starts job processes: "forkserver" (a small Python process spawns for the
   * agent, forkserver.ts; falls back to "node" with a warning when python3 is not
   * on PATH) or "node" (child_process.spawn from the agent itself).
   */
  ASPEN_SPAWNER: z.enum(["forkserver", "node"]).default("forkserver"),
  ASPEN_LOG_LEVEL: env.logLevel(),
});

export type AgentEnvConfig = z.infer<typeof AgentConfigSchema>;

export interface AgentSettings {
  env: AgentEnvConfig;
  /** The policy with the environment's overrides applied. */
  policy: Policy;
  slots: number;
  labels: Record<string, string>;
  capabilities: string[];
  workRoot: string;
  inlineBytes: number;
}

export function loadAgentConfig(source: Record<string, string | undefined> = process.env): AgentSettings {
  const config = loadConfig(AgentConfigSchema, source);
  const set = (name: keyof AgentEnvConfig) => source[name] !== undefined && source[name] !== "";
  const policy = loadPolicy(config.ASPEN_AGENT_CONFIG_JSON, config.ASPEN_AGENT_CONFIG);
  if (set("ASPEN_ENV_PASSTHROUGH") || !policy.env.passthrough) policy.env.passthrough = config.ASPEN_ENV_PASSTHROUGH;
  return {
    env: config,
    policy,
    slots: set("ASPEN_SLOTS") ? config.ASPEN_SLOTS : (policy.slots ?? config.ASPEN_SLOTS),
    labels: { ...policy.labels, ...config.ASPEN_LABELS },
    capabilities: [...new Set([...(policy.capabilities ?? []), ...config.ASPEN_CAPABILITIES])],
    workRoot: set("ASPEN_WORK_DIR") ? config.ASPEN_WORK_DIR : (policy.workRoot ?? config.ASPEN_WORK_DIR),
    inlineBytes: set("ASPEN_MAX_OUTPUT_BYTES")
      ? config.ASPEN_MAX_OUTPUT_BYTES
      : (policy.output.inlineBytes ?? config.ASPEN_MAX_OUTPUT_BYTES),
  };
}
