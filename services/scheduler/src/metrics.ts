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

/**
 * Upper bounds of the fire-lag histogram's buckets, ms: 1 ms steps up to 10 ms
 * (the precision targets are 5 ms and 50 ms), coarser after.
 */
export const FIRE_LAG_BUCKETS_MS = [
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 3000, 5000, 10000, 30000,
  60000,
];

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
    advice: { explicitBucketBoundaries: FIRE_LAG_BUCKETS_MS },
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
