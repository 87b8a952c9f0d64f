/**
 * What every control service does first, in one place: log level, replica
 * id, telemetry (tracing and the metrics endpoint), then the NATS store.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { startTelemetry, type Logger, type Telemetry } from "@aspen/runtime";
import { Store } from "./store.js";

export interface ControlServiceConfig {
  ASPEN_LOG_LEVEL: string;
  ASPEN_REPLICA_ID: string;
  ASPEN_METRICS_PORT: number;
  ASPEN_METRICS_HOST: string;
  ASPEN_NATS_SERVERS: string[];
  ASPEN_BUCKET_REPLICAS: number;
}

export interface ControlService {
  /** ASPEN_REPLICA_ID, or host-pid-random. */
  replicaId: string;
  telemetry: Telemetry;
  store: Store;
}

/** Starts telemetry and connects to NATS for service `name` ("scheduler", "job-manager", ...). */
export async function openControlService(name: string, config: ControlServiceConfig, log: Logger): Promise<ControlService> {
  log.level = config.ASPEN_LOG_LEVEL;
  const replicaId = config.ASPEN_REPLICA_ID || `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const telemetry = startTelemetry(`aspen-${name}`, {
    metricsPort: config.ASPEN_METRICS_PORT || undefined,
    metricsHost: config.ASPEN_METRICS_HOST,
  });
  await telemetry.ready();
  const store = await Store.connect({
    servers: config.ASPEN_NATS_SERVERS,
    name: `aspen-${name}/${replicaId}`,
    replicas: config.ASPEN_BUCKET_REPLICAS,
    log,
  });
  return { replicaId, telemetry, store };
}
