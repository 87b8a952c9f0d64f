/** Coordinator configuration: environment variables, their defaults and units. */
import { z } from "zod";
import { controlServiceEnv, env, loadConfig } from "@aspen/runtime";

export const CoordinatorConfigSchema = z.object({
  ...controlServiceEnv(50053),
  /** Where the job-manager serves gRPC (attempt events go there). */
  ASPEN_JOB_MANAGER_ADDR: env.string("127.0.0.1:50052"),
  /** How often agents heartbeat. */
  ASPEN_HEARTBEAT_INTERVAL: env.durationMs("1s"),
  /** Silent this long: unhealthy, no new work. */
  ASPEN_UNHEALTHY_AFTER: env.durationMs("2s"),
  /** Silent this long with its stream still open (hung, partitioned): dead, its attempts reported lost. */
  ASPEN_DEAD_AFTER: env.durationMs("5s"),
  /** Stream closed (process or host gone) and not back within this: dead, its attempts reported lost. */
  ASPEN_RECONNECT_GRACE: env.durationMs("2s"),
  /** Most worker groups (RESOURCE_EXHAUSTED past it). */
  ASPEN_MAX_GROUPS: env.int(64, 1, 10_000),
  /** Most registered workers (RESOURCE_EXHAUSTED past it). */
  ASPEN_MAX_WORKERS: env.int(1024, 1, 100_000),
});

export const loadCoordinatorConfig = (source?: Record<string, string | undefined>) => loadConfig(CoordinatorConfigSchema, source);
