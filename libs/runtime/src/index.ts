/** @aspen/runtime — what every Aspen process shares: errors↔status, config, logs, tracing, gRPC, lifecycle. */
export {
  AspenError,
  AlreadyExistsError,
  ConflictError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  UnimplementedError,
  errorForStatus,
  fromServiceError,
  isRetryable,
  itemRefusal,
  isServiceError,
  toServiceError,
} from "./errors.js";
export { ConfigError, controlServiceEnv, env, loadConfig } from "./config.js";
export { createLogger, type Logger } from "./logger.js";
export {
  Attr,
  Spans,
  activeTraceId,
  context,
  contextFromTraceparent,
  meter,
  observeGauge,
  SpanKind,
  startTelemetry,
  trace,
  traceparentOf,
  tracer,
  withSpan,
  type Context,
  type Span,
  type Telemetry,
  type TelemetryOptions,
} from "./telemetry.js";
export {
  auditStreamRequest,
  bindService,
  checkDecoded,
  createClient,
  GrpcServer,
  MAX_MESSAGE_BYTES,
  principalOf,
  readmit,
  serverClosingOf,
  unaryCall,
  type AsyncService,
  type GrpcServerOptions,
  type ServiceBinding,
  type ControlAuditEntry,
} from "./grpc.js";
export {
  authorize,
  clientSecurityFromEnv,
  hashToken,
  loadSecurityConfig,
  newToken,
  permissionFor,
  ROLE_PERMISSIONS,
  TokenStore,
  type ClientSecurity,
  type Permission,
  type Principal,
  type Role,
  type SecurityConfig,
} from "./auth.js";
export { closeInOrder, closeOnSignals, runMain, type Closable } from "./lifecycle.js";
export { durationToMs, msToDuration, parseDurationMs } from "./time.js";
export { MinHeap } from "./min-heap.js";
export { TurnBatcher } from "./turn-batcher.js";
export { BatchStream, MAX_BATCHES_IN_FLIGHT, serveBatchStream, type BatchStreamOptions } from "./batch-stream.js";
export {
  generateSecretsKeyPair,
  isSealedForm,
  loadSecretOpener,
  controlPlaneSealer,
  loadSecretSealer,
  sealedKeyId,
  SEALED_OVERHEAD,
  SecretOpenError,
  SecretOpener,
  SecretSealer,
} from "./secrets.js";
