/** Coordinator configuration: environment variables, their defaults and units. */
import { z } from "zod";
import { env, loadConfig } from "@aspen/runtime";

export const CoordinatorConfigSchema = z.object({
  ASPEN_GRPC_HOST: env.string("0.0.0.0"),
  ASPEN_GRPC_PORT: env.port(50053),
  ASPEN_NATS_SERVERS: env.list("nats://127.0.0.1:4222"),
  ASPEN_BUCKET_REPLICAS: env.int(1, 1, 5),
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
  /** This replica's name in logs and in the NATS connection name (two replicas side by side). Default: host-pid. */
  ASPEN_REPLICA_ID: env.string(""),
  /** Serve Prometheus metrics on this port at /metrics (docs/metrics.md). 0: no metrics endpoint. */
  ASPEN_METRICS_PORT: env.port(0),
  /** Address the metrics endpoint binds. */
  ASPEN_METRICS_HOST: env.string("0.0.0.0"),
  ASPEN_LOG_LEVEL: env.logLevel(),
});

export const loadCoordinatorConfig = (source?: Record<string, string | undefined>) => loadConfig(CoordinatorConfigSchema, source);
