/**
 * Tracing: SDK start-up (configured by the standard OTEL_* variables), the
 * span helper every service uses, and W3C trace-context propagation through
 * gRPC metadata and through stored job records. Metrics: an optional
 * Prometheus endpoint per process and a small helper to create instruments.
 */
import {
  context,
  metrics,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Meter,
  type Span,
} from "@opentelemetry/api";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
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
  /**
   * Resolves once the metrics endpoint listens (at once when there is none);
   * rejects when its port cannot be bound, so a service fails to start
   * rather than run without the metrics it was configured to serve.
   */
  ready(): Promise<void>;
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  /**
   * Serve the process's metrics in Prometheus text format on
   * http://<metricsHost>:<metricsPort>/metrics. Default undefined: no
   * endpoint (metrics then follow OTEL_METRICS_EXPORTER, as before).
   */
  metricsPort?: number;
  /** Address the metrics endpoint binds. Default "0.0.0.0". */
  metricsHost?: string;
}

/**
 * Starts the OpenTelemetry SDK for a service. Exporter, endpoint and sampling
 * come from OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_EXPORTER,
 * OTEL_SDK_DISABLED...); the default exports OTLP over HTTP to localhost:4318.
 * With `metricsPort`, metrics are served for Prometheus to scrape, whether or
 * not OTEL_SDK_DISABLED turns tracing off.
 */
export function startTelemetry(serviceName: string, options: TelemetryOptions = {}): Telemetry {
  const prometheus =
    options.metricsPort === undefined
      ? undefined
      : new PrometheusExporter({ host: options.metricsHost ?? "0.0.0.0", port: options.metricsPort, preventServerStart: true });
  // Started here, awaited by ready(); the catch keeps an unawaited failure from being unhandled.
  const listening = prometheus?.startServer();
  listening?.catch(() => undefined);
  const ready = async () => {
    try {
      await listening;
    } catch (err) {
      throw new Error(
        `cannot serve metrics on ${options.metricsHost ?? "0.0.0.0"}:${options.metricsPort}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
  };
  let closing: Promise<void> | undefined;
  if (process.env.OTEL_SDK_DISABLED === "true") {
    if (!prometheus) return { ready, shutdown: async () => {} };
    const provider = new MeterProvider({
      resource: resourceFromAttributes({ "service.name": serviceName }),
      readers: [prometheus],
    });
    metrics.setGlobalMeterProvider(provider);
    return { ready, shutdown: () => (closing ??= provider.shutdown().catch(() => undefined)) };
  }
  const sdk = new NodeSDK({ serviceName, instrumentations: [], ...(prometheus ? { metricReaders: [prometheus] } : {}) });
  sdk.start();
  return {
    ready,
    shutdown: () => (closing ??= sdk.shutdown().catch(() => undefined)),
  };
}

/**
 * The meter for Aspen's instruments. Call it after startTelemetry: a meter
 * taken before a provider is registered stays a no-op.
 */
export const meter = (): Meter => metrics.getMeter("aspen");

/**
 * A gauge read on every scrape: `read` returns the current values, each with
 * its attributes (e.g. one per job state). A throwing `read` reports nothing
 * for that scrape rather than failing it.
 */
export function observeGauge(
  name: string,
  options: { description: string; unit?: string },
  read: () => Iterable<readonly [value: number, attributes?: Attributes]>,
): void {
  const gauge = meter().createObservableGauge(name, options);
  gauge.addCallback((result) => {
    try {
      for (const [value, attributes] of read()) result.observe(value, attributes);
    } catch {
      // A scrape during start-up or shutdown: nothing to report this time.
    }
  });
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
