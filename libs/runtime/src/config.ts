/**
 * Configuration from environment variables, validated at start with zod.
 * Each service declares a schema whose keys are the variable names, each with
 * its default; `loadConfig` returns typed values or throws one ConfigError
 * that names every bad variable, the value and what was expected.
 */
import { z } from "zod";
import { parseDurationMs } from "./time.js";

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

export function loadConfig<S extends z.ZodObject>(schema: S, env: Record<string, string | undefined> = process.env): z.infer<S> {
  // Empty strings count as unset, as operators expect from `FOO= cmd`.
  const present: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== "") present[key] = value;
  }
  const parsed = schema.safeParse(present);
  if (parsed.success) return parsed.data;
  throw new ConfigError(
    parsed.error.issues.map((issue) => {
      const key = String(issue.path[0] ?? "?");
      return `${key}=${JSON.stringify(present[key])}: ${issue.message}`;
    }),
  );
}

/** Field builders for config schemas. Each takes the documented default. */
export const env = {
  string: (def: string) => z.string().min(1).default(def),
  optionalString: () => z.string().optional(),
  port: (def: number) => z.coerce.number().int().min(0).max(65535).default(def),
  int: (def: number, min = 0, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max).default(def),
  /** "250ms", "5s", "2m", "1h" or plain milliseconds; yields milliseconds. */
  durationMs: (def: string) =>
    z
      .string()
      .default(def)
      .transform((value, ctx) => {
        const ms = parseDurationMs(value);
        if (ms === undefined) {
          ctx.addIssue({ code: "custom", message: 'expected a duration such as "500ms", "5s", "2m"' });
          return z.NEVER;
        }
        return ms;
      }),
  /** Comma-separated list. */
  list: (def: string) =>
    z
      .string()
      .default(def)
      .transform((value) =>
        value
          .split(",")
          .map((item) => item.trim())
          .filter((item) => item.length > 0),
      ),
  /** Comma-separated k=v pairs. */
  labels: (def = "") =>
    z
      .string()
      .default(def)
      .transform((value, ctx) => {
        const out: Record<string, string> = {};
        for (const pair of value
          .split(",")
          .map((p) => p.trim())
          .filter(Boolean)) {
          const eq = pair.indexOf("=");
          if (eq <= 0) {
            ctx.addIssue({ code: "custom", message: `expected k=v pairs, got ${JSON.stringify(pair)}` });
            return z.NEVER;
          }
          out[pair.slice(0, eq)] = pair.slice(eq + 1);
        }
        return out;
      }),
  logLevel: () => z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
};

/**
 * The variables every control service (scheduler, job-manager, coordinator)
 * takes, with their defaults; each service spreads these into its schema.
 */
export function controlServiceEnv(defaultPort: number) {
  return {
    /** Address the gRPC server binds. */
    ASPEN_GRPC_HOST: env.string("0.0.0.0"),
    ASPEN_GRPC_PORT: env.port(defaultPort),
    /** NATS servers, comma-separated. */
    ASPEN_NATS_SERVERS: env.list("nats://127.0.0.1:4222"),
    /** Replicas of the buckets this service creates (3 in a 3-node NATS cluster); existing ones must match. */
    ASPEN_BUCKET_REPLICAS: env.int(1, 1, 5),
    /** This replica's name (NATS connection name, leases, metrics). Default: host-pid. */
    ASPEN_REPLICA_ID: z.string().default(""),
    /** Serve Prometheus metrics on this port at /metrics (docs/metrics.md). 0: no metrics endpoint. */
    ASPEN_METRICS_PORT: env.port(0),
    /** Address the metrics endpoint binds. */
    ASPEN_METRICS_HOST: env.string("0.0.0.0"),
    ASPEN_LOG_LEVEL: env.logLevel(),
  };
}
