/**
 * Tracing: SDK start-up (configured by the standard OTEL_* variables), the
 * span helper every service uses, and W3C trace-context propagation through
 * gRPC metadata and through stored job records.
 */
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
} from "@opentelemetry/api";
import { NodeSDK } from "@opentelemetry/sdk-node";

/** Span and attribute names, kept in one place so dashboards can rely on them. */
export const Spans = {
  fire: "scheduler.fire",
  submit: "job.submit",
  dispatch: "job.dispatch",
  place: "coordinator.place",
  execute: "agent.execute",
} as const;

export const Attr = {
  scheduleId: "aspen.schedule.id",
  jobId: "aspen.job.id",
  attempt: "aspen.job.attempt",
  nominalInstant: "aspen.fire.nominal_ms",
  workerId: "aspen.worker.id",
  command: "aspen.exec.command",
  exitCode: "aspen.exec.exit_code",
  outputBytes: "aspen.exec.output_bytes",
  rpcMethod: "rpc.method",
  rpcService: "rpc.service",
} as const;

export interface Telemetry {
  shutdown(): Promise<void>;
}

/**
 * Starts the OpenTelemetry SDK for a service. Exporter, endpoint and sampling
 * come from OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER,
 * OTEL_SDK_DISABLED...); the default exports OTLP over HTTP to localhost:4318.
 */
export function startTelemetry(serviceName: string): Telemetry {
  if (process.env.OTEL_SDK_DISABLED === "true") return { shutdown: async () => {} };
  const sdk = new NodeSDK({ serviceName, instrumentations: [] });
  sdk.start();
  let closing: Promise<void> | undefined;
  return {
    shutdown: () => (closing ??= sdk.shutdown().catch(() => undefined)),
  };
}

export const tracer = () => trace.getTracer("aspen");

/**
 * Runs `fn` inside a new active span (child of `parent`, default the active
 * context), records a thrown error on it and always ends it.
 */
export async function withSpan<T>(
  name: string,
  options: { parent?: Context; attributes?: Attributes; kind?: SpanKind },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  return tracer().startActiveSpan(
    name,
    { attributes: options.attributes, kind: options.kind ?? SpanKind.INTERNAL },
    parent,
    async (span) => {
      try {
        return await fn(span);
      } catch (err) {
        span.recordException(err as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    },
  );
}

/** The W3C traceparent of a context ("" when it carries no sampled span). */
export function traceparentOf(ctx: Context = context.active()): string {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier.traceparent ?? "";
}

/** A context whose remote parent is the given traceparent (root when empty). */
export function contextFromTraceparent(traceparent: string | undefined): Context {
  if (!traceparent) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, { traceparent });
}

/** Trace id of the active span, "" when none. */
export function activeTraceId(ctx: Context = context.active()): string {
  const id = trace.getSpanContext(ctx)?.traceId ?? "";
  return /^0+$/.test(id) ? "" : id;
}

export { context, SpanKind, trace, type Context, type Span };
