/** Agent configuration: environment variables, their defaults and units. */
import { hostname, tmpdir } from "node:os";
import { z } from "zod";
import { env, loadConfig } from "@aspen/runtime";
import { DEFAULT_INLINE_OUTPUT_BYTES } from "@aspen/model";

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
  /** Working directory of jobs that name none. */
  ASPEN_WORK_DIR: env.string(tmpdir()),
  /** The only variables of the agent's own environment a job sees. */
  ASPEN_ENV_PASSTHROUGH: env.list("PATH,HOME,LANG,TZ"),
  /** Inline output kept per attempt when the job sets no limit, bytes. */
  ASPEN_MAX_OUTPUT_BYTES: env.int(DEFAULT_INLINE_OUTPUT_BYTES, 1024, 16 * 1024 * 1024),
  /** On SIGTERM, how long running attempts may finish before they are killed. */
  ASPEN_DRAIN_TIMEOUT: env.durationMs("30s"),
  /** Longest wait between reconnection attempts. */
  ASPEN_RECONNECT_MAX: env.durationMs("5s"),
  ASPEN_LOG_LEVEL: env.logLevel(),
});

export const loadAgentConfig = (source?: Record<string, string | undefined>) => loadConfig(AgentConfigSchema, source);
