/** Job-manager process: wires config, logging, telemetry, NATS and the gRPC server. */
import { CoordinatorServiceClient, IdempotencyRecord, Job } from "@aspen/proto";
import { closeInOrder, createClient, createLogger, GrpcServer, runMain, startTelemetry, unaryCall } from "@aspen/runtime";
import { Store } from "@aspen/store";
import { loadJobManagerConfig } from "./config.js";
import { JobManager, type Placer } from "./job-manager.js";
import { jobService } from "./job-service.js";
import { configureOutputStream } from "./output-stream.js";

const log = createLogger("job-manager");

await runMain(log, async () => {
  const config = loadJobManagerConfig();
  log.level = config.ASPEN_LOG_LEVEL;
  const telemetry = startTelemetry("aspen-job-manager");
  const store = await Store.connect({
    servers: config.ASPEN_NATS_SERVERS,
    name: "aspen-job-manager",
    replicas: config.ASPEN_BUCKET_REPLICAS,
    log,
  });
  configureOutputStream(store.nc);
  const coordinator = createClient(CoordinatorServiceClient, config.ASPEN_COORDINATOR_ADDR);
  const placer: Placer = {
    place: async (req) => (await unaryCall(coordinator.placeJob.bind(coordinator), req)).workerId,
    cancel: async (req) => {
      await unaryCall(coordinator.cancelAttempt.bind(coordinator), req);
    },
    match: async (selector) =>
      (await unaryCall(coordinator.matchWorkers.bind(coordinator), { selector })).workers.map((w) => w.id),
  };
  const jobs = new JobManager({
    jobs: await store.bucket("aspen_jobs", Job, { history: 1 }),
    keys: await store.bucket("aspen_job_keys", IdempotencyRecord),
    outputs: await store.objects("aspen_outputs"),
    placer,
    log,
    dispatchConcurrency: config.ASPEN_DISPATCH_CONCURRENCY,
    retryDelayMs: config.ASPEN_DISPATCH_RETRY,
    agingMs: config.ASPEN_PRIORITY_AGING,
    assignTimeoutMs: config.ASPEN_ASSIGN_TIMEOUT,
    retention: { perSchedule: config.ASPEN_RETAIN_PER_SCHEDULE, maxAgeMs: config.ASPEN_RETAIN_FOR },
    maintenanceIntervalMs: config.ASPEN_MAINTENANCE_INTERVAL,
  });
  await jobs.start();
  const server = new GrpcServer({
    host: config.ASPEN_GRPC_HOST,
    port: config.ASPEN_GRPC_PORT,
    log,
    services: [jobService(jobs)],
  });
  const port = await server.start();
  log.info({ port }, "job-manager ready");
  return {
    close: () =>
      closeInOrder(log, [
        ["grpc server", () => server.close()],
        ["dispatcher", () => jobs.close()],
        ["coordinator client", () => coordinator.close()],
        ["nats", () => store.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
