/** Job-manager configuration: environment variables, their defaults and units. */
import { z } from "zod";
import { env, loadConfig } from "@aspen/runtime";

export const JobManagerConfigSchema = z.object({
  /** Address the gRPC server binds. */
  ASPEN_GRPC_HOST: env.string("0.0.0.0"),
  ASPEN_GRPC_PORT: env.port(50052),
  /** NATS servers, comma-separated. */
  ASPEN_NATS_SERVERS: env.list("nats://127.0.0.1:4222"),
  /** Replicas of the buckets this service creates (3 in a 3-node NATS cluster). */
  ASPEN_BUCKET_REPLICAS: env.int(1, 1, 5),
  /** Where the coordinator serves gRPC. */
  ASPEN_COORDINATOR_ADDR: env.string("127.0.0.1:50053"),
  /** Placements in flight at once. */
  ASPEN_DISPATCH_CONCURRENCY: env.int(64, 1, 4096),
  /** Wait before retrying a job that could not be placed. */
  ASPEN_DISPATCH_RETRY: env.durationMs("1s"),
  /** A queued job's priority class rises by one for every this long it waits (LOW never starves). */
  ASPEN_PRIORITY_AGING: env.durationMs("60s"),
  /** An assigned attempt that has not started within this is declared LOST (and retried per policy). */
  ASPEN_ASSIGN_TIMEOUT: env.durationMs("30s"),
  /** Finished jobs kept per schedule, newest first (jobs not fired by a schedule: by age only). DEAD jobs stay until purged. */
  ASPEN_RETAIN_PER_SCHEDULE: env.int(1000, 1, 10_000_000),
  /** Finished jobs older than this are removed with their outputs. */
  ASPEN_RETAIN_FOR: env.durationMs("7d"),
  /** How often retention and assignment timeouts are checked. */
  ASPEN_MAINTENANCE_INTERVAL: env.durationMs("5s"),
  /** This replica's name in logs and in the NATS connection name (two replicas side by side). Default: host-pid. */
  ASPEN_REPLICA_ID: env.string(""),
  /** Serve Prometheus metrics on this port at /metrics (docs/metrics.md). 0: no metrics endpoint. */
  ASPEN_METRICS_PORT: env.port(0),
  /** Address the metrics endpoint binds. */
  ASPEN_METRICS_HOST: env.string("0.0.0.0"),
  ASPEN_LOG_LEVEL: env.logLevel(),
});

export type JobManagerConfig = z.infer<typeof JobManagerConfigSchema>;

export const loadJobManagerConfig = (source?: Record<string, string | undefined>) => loadConfig(JobManagerConfigSchema, source);
