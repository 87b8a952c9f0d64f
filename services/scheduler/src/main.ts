/** Scheduler process: wires config, logging, telemetry, NATS and the gRPC server. */
import { JobServiceClient, Schedule } from "@aspen/proto";
import { closeInOrder, createClient, createLogger, GrpcServer, runMain, startTelemetry, unaryCall } from "@aspen/runtime";
import { Store } from "@aspen/store";
import { loadSchedulerConfig } from "./config.js";
import { Scheduler } from "./scheduler.js";
import { schedulerService } from "./scheduler-service.js";

const log = createLogger("scheduler");

await runMain(log, async () => {
  const config = loadSchedulerConfig();
  log.level = config.ASPEN_LOG_LEVEL;
  const telemetry = startTelemetry("aspen-scheduler");
  const store = await Store.connect({
    servers: config.ASPEN_NATS_SERVERS,
    name: "aspen-scheduler",
    replicas: config.ASPEN_BUCKET_REPLICAS,
    log,
  });
  const jobManager = createClient(JobServiceClient, config.ASPEN_JOB_MANAGER_ADDR);
  const scheduler = new Scheduler({
    schedules: await store.bucket("aspen_schedules", Schedule),
    submit: (req) => unaryCall(jobManager.submitJob.bind(jobManager), req),
    log,
    maxSchedules: config.ASPEN_MAX_SCHEDULES,
  });
  await scheduler.start();
  const server = new GrpcServer({
    host: config.ASPEN_GRPC_HOST,
    port: config.ASPEN_GRPC_PORT,
    log,
    services: [schedulerService(scheduler)],
  });
  const port = await server.start();
  log.info({ port }, "scheduler ready");
  return {
    close: () =>
      closeInOrder(log, [
        ["grpc server", () => server.close()],
        ["timers", () => scheduler.close()],
        ["job-manager client", () => jobManager.close()],
        ["nats", () => store.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
