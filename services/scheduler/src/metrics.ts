/**
 * OpenTelemetry metrics of the firing loop. Per-schedule figures are in
 * GetSchedule (status); these are the process-wide totals, without a
 * schedule attribute (100,000 schedules would be 100,000 series).
 * A no-op unless the SDK has a meter provider (OTEL_METRICS_EXPORTER).
 */
import { metrics } from "@opentelemetry/api";

export const Metrics = {
  fireLag: "aspen.scheduler.fire_lag",
  fires: "aspen.scheduler.fires",
  missed: "aspen.scheduler.missed_fires",
  skipped: "aspen.scheduler.skipped_fires",
} as const;

export interface SchedulerMetrics {
  fired(lagMs: number): void;
  missed(n: number): void;
  skipped(n: number): void;
}

export function createMetrics(): SchedulerMetrics {
  const meter = metrics.getMeter("aspen-scheduler");
  const lag = meter.createHistogram(Metrics.fireLag, {
    unit: "ms",
    description: "submission acknowledged by the job-manager minus nominal instant",
  });
  const fires = meter.createCounter(Metrics.fires, { description: "scheduled fires submitted" });
  const missed = meter.createCounter(Metrics.missed, { description: "fires missed (scheduler down, paused, catch-up policy)" });
  const skipped = meter.createCounter(Metrics.skipped, { description: "fires skipped by the conflict policy" });
  return {
    fired(lagMs) {
      lag.record(lagMs);
      fires.add(1);
    },
    missed: (n) => missed.add(n),
    skipped: (n) => skipped.add(n),
  };
}
