/**
 * What every control service does first, in one place: log level, replica
 * id, telemetry (tracing and the metrics endpoint), then the NATS store.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { ControlAuditRecord } from "@aspen/proto";
import { startTelemetry, type ControlAuditEntry, type Logger, type Telemetry } from "@aspen/runtime";
import { AppendOnlyLog } from "./append-log.js";
import { Store } from "./store.js";

/** The append-only stream of state-changing calls to every control service. */
export const CONTROL_AUDIT_STREAM = "ASPEN_CONTROL_AUDIT";

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
  /** The control audit trail (read by the job-manager's ListControlAudit). */
  controlAudit: AppendOnlyLog<ControlAuditRecord>;
  /** Pass to GrpcServer's `audit`: appends each state-changing call to the trail. */
  audit: (entry: ControlAuditEntry) => void;
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
  const controlAudit = await AppendOnlyLog.open(store, {
    stream: CONTROL_AUDIT_STREAM,
    subjects: ["aspen.control.>"],
    codec: ControlAuditRecord,
    replicas: config.ASPEN_BUCKET_REPLICAS,
    log,
  });
  const audit = (entry: ControlAuditEntry) => controlAudit.append(`aspen.control.${name}`, { sequence: 0, ...entry });
  return { replicaId, telemetry, store, controlAudit, audit };
}
