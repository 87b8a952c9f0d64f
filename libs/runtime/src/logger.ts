/** JSON logs with pino; every line logged inside a span carries its trace_id and span_id. */
import { pino, type Logger } from "pino";
import { trace, context } from "@opentelemetry/api";

export type { Logger };

export function createLogger(service: string, level: string = process.env.ASPEN_LOG_LEVEL ?? "info"): Logger {
  return pino({
    name: service,
    level,
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin() {
      const span = trace.getSpanContext(context.active());
      return span ? { trace_id: span.traceId, span_id: span.spanId } : {};
    },
  });
}
