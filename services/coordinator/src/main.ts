/** Coordinator process: wires config, logging, telemetry, NATS and the gRPC server. */
import { JobServiceClient, Worker, WorkerGroup } from "@aspen/proto";
import { closeInOrder, createClient, createLogger, GrpcServer, runMain, startTelemetry, unaryCall } from "@aspen/runtime";
import { Store } from "@aspen/store";
import { loadCoordinatorConfig } from "./config.js";
import { Coordinator } from "./coordinator.js";
import { coordinatorService } from "./coordinator-service.js";

const log = createLogger("coordinator");

await runMain(log, async () => {
  const config = loadCoordinatorConfig();
  log.level = config.ASPEN_LOG_LEVEL;
  const telemetry = startTelemetry("aspen-coordinator");
  const store = await Store.connect({
    servers: config.ASPEN_NATS_SERVERS,
    name: "aspen-coordinator",
    replicas: config.ASPEN_BUCKET_REPLICAS,
    log,
  });
  const jobManager = createClient(JobServiceClient, config.ASPEN_JOB_MANAGER_ADDR);
  const coordinator = new Coordinator({
    workers: await store.bucket("aspen_workers", Worker),
    groups: await store.bucket("aspen_worker_groups", WorkerGroup),
    report: async (events) => (await unaryCall(jobManager.reportAttempts.bind(jobManager), { events })).refusals,
    log,
    heartbeatIntervalMs: config.ASPEN_HEARTBEAT_INTERVAL,
    unhealthyAfterMs: config.ASPEN_UNHEALTHY_AFTER,
    deadAfterMs: config.ASPEN_DEAD_AFTER,
    reconnectGraceMs: config.ASPEN_RECONNECT_GRACE,
    maxGroups: config.ASPEN_MAX_GROUPS,
    maxWorkers: config.ASPEN_MAX_WORKERS,
  });
  await coordinator.start();
  const server = new GrpcServer({
    host: config.ASPEN_GRPC_HOST,
    port: config.ASPEN_GRPC_PORT,
    log,
    services: [coordinatorService(coordinator)],
  });
  const port = await server.start();
  log.info({ port }, "coordinator ready");
  return {
    // Agents' streams are long-lived: end them first, then stop the server.
    close: () =>
      closeInOrder(log, [
        ["agent sessions", () => coordinator.close()],
        ["grpc server", () => server.close(2_000)],
        ["job-manager client", () => jobManager.close()],
        ["nats", () => store.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
