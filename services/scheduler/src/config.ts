/** Scheduler configuration: environment variables, their defaults and units. */
import { z } from "zod";
import { controlServiceEnv, env, loadConfig } from "@aspen/runtime";

export const SchedulerConfigSchema = z.object({
  ...controlServiceEnv(50051),
  /** Where the job-manager serves gRPC (fires are submitted there). */
  ASPEN_JOB_MANAGER_ADDR: env.string("127.0.0.1:50052"),
  /** Most schedules stored (RESOURCE_EXHAUSTED past it). */
  ASPEN_MAX_SCHEDULES: env.int(100_000, 1, 10_000_000),
  /** Firing lease: a standby takes over after this long without a renewal, ms (renewed every ttl/4). */
  ASPEN_LEASE_TTL_MS: env.int(3_000, 400, 600_000),
  /** An instant at most this late is fired late; older ones are missed and follow the catch-up policy, ms. */
  ASPEN_MISFIRE_GRACE_MS: env.int(5_000, 0, 86_400_000),
  /**
   * The agents' public key (PEM, X25519; scripts/secrets-keys.mjs makes a pair):
   * inline secret values of job templates are sealed to it. Unset: they are
   * refused with FAILED_PRECONDITION (agent references still work).
   */
  ASPEN_SECRETS_PUBLIC_KEY_FILE: env.optionalString(),
  /** How often queued fires (conflict QUEUE) ask the job-manager whether the previous run ended, ms. */
  ASPEN_QUEUE_POLL_MS: env.int(500, 50, 60_000),
  /** Most fires in progress at once (record, submit, outcome); more wait their turn, oldest first. */
  ASPEN_MAX_CONCURRENT_FIRES: env.int(1_000, 1, 100_000),
});

export const loadSchedulerConfig = (source?: Record<string, string | undefined>) => loadConfig(SchedulerConfigSchema, source);
