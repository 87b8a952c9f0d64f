/** Job-manager configuration: environment variables, their defaults and units. */
import { z } from "zod";
import { controlServiceEnv, env, loadConfig } from "@aspen/runtime";

export const JobManagerConfigSchema = z.object({
  ...controlServiceEnv(50052),
  /** Where the coordinator serves gRPC. */
  ASPEN_COORDINATOR_ADDR: env.string("127.0.0.1:50053"),
  /** Placements in flight at once. */
  ASPEN_DISPATCH_CONCURRENCY: env.int(64, 1, 4096),
  /**
   * Replicas: a job another job-manager replica queued is dispatched here only once it
   * has been queued this long (that replica died or is saturated). Its own jobs go at once.
   */
  ASPEN_DISPATCH_TAKEOVER: env.durationMs("5s"),
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
  /**
   * The agents' public key (PEM, X25519; scripts/secrets-keys.mjs makes a pair):
   * inline secret values of SubmitJob are sealed to it. Unset: they are refused
   * with FAILED_PRECONDITION (agent references still work).
   */
  ASPEN_SECRETS_PUBLIC_KEY_FILE: env.optionalString(),
  /** How often retention and assignment timeouts are checked. */
  ASPEN_MAINTENANCE_INTERVAL: env.durationMs("5s"),
});

export type JobManagerConfig = z.infer<typeof JobManagerConfigSchema>;

export const loadJobManagerConfig = (source?: Record<string, string | undefined>) => loadConfig(JobManagerConfigSchema, source);
