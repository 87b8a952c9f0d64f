/** Scheduler configuration: environment variables, their defaults and units. */
import { z } from "zod";
import { env, loadConfig } from "@aspen/runtime";

export const SchedulerConfigSchema = z.object({
  ASPEN_GRPC_HOST: env.string("0.0.0.0"),
  ASPEN_GRPC_PORT: env.port(50051),
  ASPEN_NATS_SERVERS: env.list("nats://127.0.0.1:4222"),
  ASPEN_BUCKET_REPLICAS: env.int(1, 1, 5),
  /** Where the job-manager serves gRPC (fires are submitted there). */
  ASPEN_JOB_MANAGER_ADDR: env.string("127.0.0.1:50052"),
  /** Most schedules stored (RESOURCE_EXHAUSTED past it). */
  ASPEN_MAX_SCHEDULES: env.int(100_000, 1, 10_000_000),
  /** This replica's id in the lease and in records it writes. Default: host-pid-random. */
  ASPEN_REPLICA_ID: env.string(""),
  /** Firing lease: a standby takes over after this long without a renewal, ms (renewed every ttl/4). */
  ASPEN_LEASE_TTL_MS: env.int(3_000, 400, 600_000),
  /** An instant at most this late is fired late; older ones are missed and follow the catch-up policy, ms. */
  ASPEN_MISFIRE_GRACE_MS: env.int(5_000, 0, 86_400_000),
  /** How often queued fires (conflict QUEUE) ask the job-manager whether the previous run ended, ms. */
  ASPEN_QUEUE_POLL_MS: env.int(500, 50, 60_000),
  /** Serve Prometheus metrics on this port at /metrics (docs/metrics.md). 0: no metrics endpoint. */
  ASPEN_METRICS_PORT: env.port(0),
  /** Address the metrics endpoint binds. */
  ASPEN_METRICS_HOST: env.string("0.0.0.0"),
  ASPEN_LOG_LEVEL: env.logLevel(),
});

export const loadSchedulerConfig = (source?: Record<string, string | undefined>) => loadConfig(SchedulerConfigSchema, source);
