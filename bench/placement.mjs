#!/usr/bin/env node
/**
 * Placement decision time of the coordinator with 1,024 registered workers:
 * Coordinator.place() end to end in-process (filter by selector, strategy,
 * slot accounting, the assignment written to the worker's stream), p50/p99
 * per strategy. Workers are registered through the real Connect handler with
 * in-memory streams; no network, so this is the decision, not the RPC.
 *
 *   node bench/placement.mjs          (needs a build: npm run build)
 * Target (coordinator issue): p99 ≤ 1 ms.
 */
import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import { JobSpec, PlacementStrategy } from "@aspen/proto";
import { createLogger } from "@aspen/runtime";
import { Coordinator } from "../services/coordinator/dist/coordinator.js";

const WORKERS = 1024;
const PLACEMENTS = 20_000;
const TARGET_P99_MS = 1;

const memoryBucket = () => ({
  all: async () => [],
  upsert: async () => 1,
  create: async () => 1,
  mutate: async () => undefined,
  delete: async () => {},
});
const coordinator = new Coordinator({
  workers: memoryBucket(),
  groups: memoryBucket(),
  report: async (events) => events.map(() => ""),
  log: createLogger("bench", "silent"),
  heartbeatIntervalMs: 60_000,
  unhealthyAfterMs: 600_000,
  deadAfterMs: 600_000,
  reconnectGraceMs: 600_000,
  maxWorkers: WORKERS,
  maxGroups: 64,
});
await coordinator.start();

const streams = [];
for (let i = 0; i < WORKERS; i++) {
  const stream = Object.assign(new EventEmitter(), { write: () => true, end: () => {} });
  coordinator.connect(stream);
  stream.emit("data", {
    msg: {
      $case: "register",
      value: {
        workerId: `worker-${String(i).padStart(4, "0")}`,
        hostname: `host-${i}`,
        labels: { zone: `z${i % 4}`, tier: i % 8 === 0 ? "db" : "app" },
        capabilities: i % 16 === 0 ? ["database"] : [],
        slots: 4096,
        version: "bench",
        running: [],
      },
    },
  });
  streams.push(stream);
}

const cases = [
  ["least loaded, no selector", PlacementStrategy.PLACEMENT_STRATEGY_LEAST_LOADED, undefined],
  ["least loaded, zone=z1", PlacementStrategy.PLACEMENT_STRATEGY_LEAST_LOADED, { matchLabels: { zone: "z1" } }],
  ["round robin", PlacementStrategy.PLACEMENT_STRATEGY_ROUND_ROBIN, undefined],
  ["affinity", PlacementStrategy.PLACEMENT_STRATEGY_AFFINITY, undefined],
  ["consistent hash", PlacementStrategy.PLACEMENT_STRATEGY_CONSISTENT_HASH, undefined],
  ["work stealing", PlacementStrategy.PLACEMENT_STRATEGY_WORK_STEALING, undefined],
  ["capability=database", PlacementStrategy.PLACEMENT_STRATEGY_LEAST_LOADED, { capabilities: ["database"] }],
];

console.log(`=== placement decision time, ${WORKERS} registered workers, ${PLACEMENTS} placements per case ===`);
let attempt = 0;
for (const [label, strategy, selector] of cases) {
  const spec = JobSpec.fromPartial({ exec: { command: "/bin/true" }, placement: { strategy, selector } });
  const times = [];
  for (let i = 0; i < PLACEMENTS + 1000; i++) {
    const t = performance.now();
    await coordinator.place({ jobId: `j${i}`, attempt: ++attempt, spec, traceparent: "", affinityKey: `key-${i % 500}` });
    if (i >= 1000) times.push(performance.now() - t); // the first 1,000 warm the JIT
  }
  times.sort((a, b) => a - b);
  const p = (q) => times[Math.floor(q * (times.length - 1))];
  console.log(
    `${label.padEnd(28)} p50 ${p(0.5).toFixed(3)} ms   p99 ${p(0.99).toFixed(3)} ms   max ${times.at(-1).toFixed(3)} ms   target p99 ≤ ${TARGET_P99_MS} ms → ${p(0.99) <= TARGET_P99_MS ? "met" : "NOT met"}`,
  );
}
await coordinator.close();
