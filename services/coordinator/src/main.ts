/** Coordinator process: wires config, logging, telemetry and metrics, NATS and the gRPC server. */
import {
  JobServiceClient,
  Worker,
  WorkerGroup,
  WorkerHealth,
  type ReportAttemptsRequest,
  type ReportAttemptsResponse,
} from "@aspen/proto";
import {
  BatchStream,
  closeInOrder,
  createClient,
  createLogger,
  GrpcServer,
  meter,
  observeGauge,
  runMain,
  unaryCall,
} from "@aspen/runtime";
import { openControlService } from "@aspen/store";
import { loadCoordinatorConfig } from "./config.js";
import { Coordinator } from "./coordinator.js";
import { coordinatorService } from "./coordinator-service.js";

const log = createLogger("coordinator");

await runMain(log, async () => {
  const config = loadCoordinatorConfig();
  const { replicaId, telemetry, store, audit } = await openControlService("coordinator", config, log);
  const jobManager = createClient(JobServiceClient, config.ASPEN_JOB_MANAGER_ADDR);
  const reportStream = new BatchStream<ReportAttemptsRequest, ReportAttemptsResponse>({
    name: "ReportAttemptStream",
    open: () => jobManager.reportAttemptStream(),
    unary: (batch, deadlineMs) => unaryCall(jobManager.reportAttempts.bind(jobManager), batch, { deadlineMs }),
    empty: { refusals: [] },
    log,
  });
  // Placement time: choosing a worker and handing it the attempt (Coordinator.place).
  const placeTime = meter().createHistogram("aspen.coordinator.placement_duration", {
    unit: "ms",
    description: "time to choose a worker and hand it the attempt (failed placements included)",
  });
  const coordinator = new Coordinator({
    workers: await store.bucket("aspen_workers", Worker),
    groups: await store.bucket("aspen_worker_groups", WorkerGroup),
    report: async (events, notHeld) => (await reportStream.send({ events, notHeld })).refusals,
    log,
    heartbeatIntervalMs: config.ASPEN_HEARTBEAT_INTERVAL,
    unhealthyAfterMs: config.ASPEN_UNHEALTHY_AFTER,
    deadAfterMs: config.ASPEN_DEAD_AFTER,
    reconnectGraceMs: config.ASPEN_RECONNECT_GRACE,
    maxGroups: config.ASPEN_MAX_GROUPS,
    maxWorkers: config.ASPEN_MAX_WORKERS,
    onPlacement: (ms) => placeTime.record(ms),
  });
  await coordinator.start();
  observeGauge("aspen.coordinator.slots", { description: "agent slots by worker, used (running attempts) and total" }, () =>
    coordinator
      .workers()
      .flatMap((w) => [
        [w.running.length, { worker: w.id, kind: "used" }] as const,
        [w.slots, { worker: w.id, kind: "total" }] as const,
      ]),
  );
  observeGauge("aspen.coordinator.workers", { description: "registered workers by health" }, () => {
    const by = new Map<string, number>();
    for (const w of coordinator.workers()) {
      const health = (WorkerHealth[w.health] ?? String(w.health)).replace(/^WORKER_HEALTH_/, "").toLowerCase();
      by.set(health, (by.get(health) ?? 0) + 1);
    }
    return [...by].map(([health, n]) => [n, { health }] as const);
  });
  const server = new GrpcServer({
    audit,
    host: config.ASPEN_GRPC_HOST,
    port: config.ASPEN_GRPC_PORT,
    log,
    services: [coordinatorService(coordinator, log)],
  });
  const port = await server.start();
  log.info({ port, replica: replicaId, metricsPort: config.ASPEN_METRICS_PORT || undefined }, "coordinator ready");
  return {
    // Agents' streams are long-lived: end them first, then stop the server.
    close: () =>
      closeInOrder(log, [
        ["agent sessions", () => coordinator.close()],
        ["grpc server", () => server.close(2_000)],
        ["report stream", () => reportStream.close()],
        ["job-manager client", () => jobManager.close()],
        ["nats", () => store.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
