/** Scheduler process: wires config, logging, telemetry, NATS, the firing lease and the gRPC server. */
import {
  JobServiceClient,
  ListJobsRequest,
  Schedule,
  SchedulerLease,
  type SubmitJobRequest,
  type SubmitJobResponse,
  type SubmitJobsRequest,
  type SubmitJobsResponse,
} from "@aspen/proto";
import { BATCH_BYTES, Limits, specBytes } from "@aspen/model";
import {
  BatchStream,
  closeInOrder,
  createClient,
  createLogger,
  errorForStatus,
  GrpcServer,
  controlPlaneSealer,
  observeGauge,
  runMain,
  TurnBatcher,
  unaryCall,
} from "@aspen/runtime";
import { openControlService } from "@aspen/store";
import { loadSchedulerConfig } from "./config.js";
import { Lease } from "./lease.js";
import { createMetrics } from "./metrics.js";
import { Scheduler } from "./scheduler.js";
import { schedulerService } from "./scheduler-service.js";

const log = createLogger("scheduler");

await runMain(log, async () => {
  const config = loadSchedulerConfig();
  const { replicaId, telemetry, store, audit } = await openControlService("scheduler", config, log);
  const jobManager = createClient(JobServiceClient, config.ASPEN_JOB_MANAGER_ADDR);
  const sealer = controlPlaneSealer(config.ASPEN_SECRETS_PUBLIC_KEY_FILE, log);
  const submitStream = new BatchStream<SubmitJobsRequest, SubmitJobsResponse>({
    name: "SubmitJobStream",
    open: () => jobManager.submitJobStream(),
    unary: (batch, deadlineMs) => unaryCall(jobManager.submitJobs.bind(jobManager), batch, { deadlineMs }),
    empty: { results: [] },
    log,
  });
  // The fires of one event-loop turn (schedules due at the same instant) go to the job-manager in one batch.
  const submissions = new TurnBatcher<SubmitJobRequest, SubmitJobResponse>(
    async (requests) => {
      const { results } = await submitStream.send({ requests, brief: true });
      return results.map((r) => (r.code === 0 && r.response ? r.response : errorForStatus(r.code, r.message)));
    },
    {
      maxItems: Limits.submissionsPerCall,
      maxBytes: BATCH_BYTES,
      sizeOf: (req) => specBytes(req.spec),
      // A job-manager from before SubmitJobs (rolling upgrade).
      single: (req) => unaryCall(jobManager.submitJob.bind(jobManager), req),
    },
  );
  const scheduler = new Scheduler({
    sealer,
    schedules: await store.bucket("aspen_schedules", Schedule),
    jobs: {
      submit: (req) => submissions.call(req),
      get: (jobId) => unaryCall(jobManager.getJob.bind(jobManager), { jobId }),
      list: (req) => unaryCall(jobManager.listJobs.bind(jobManager), ListJobsRequest.fromPartial(req)),
      cancel: (jobId, reason) => unaryCall(jobManager.cancelJob.bind(jobManager), { jobId, reason }),
    },
    log,
    replicaId,
    maxSchedules: config.ASPEN_MAX_SCHEDULES,
    misfireGraceMs: config.ASPEN_MISFIRE_GRACE_MS,
    queuePollMs: config.ASPEN_QUEUE_POLL_MS,
    maxConcurrentFires: config.ASPEN_MAX_CONCURRENT_FIRES,
    metrics: createMetrics(),
  });
  // Loading every schedule (100,000: about a second) and taking the lease go on together;
  // arming waits for the load, and is skipped if the lease was lost meanwhile.
  const loading = scheduler.start();
  loading.catch(() => undefined); // awaited below; this only keeps an early failure from being unhandled
  const lease: Lease = new Lease({
    bucket: await store.bucket("aspen_scheduler_lease", SchedulerLease),
    replicaId,
    ttlMs: config.ASPEN_LEASE_TTL_MS,
    log,
    onAcquire: (token) => {
      loading
        .then(() => (lease.isLeader && lease.fencingToken === token ? scheduler.lead(token) : undefined))
        .catch((err: unknown) => log.error({ err: (err as Error).message }, "could not arm schedules"));
    },
    onLose: () => scheduler.stepDown(),
  });
  lease.start();
  await loading.catch(async (err: unknown) => {
    await lease.close(); // hand the lease back rather than hold it for a ttl while exiting
    throw err;
  });
  observeGauge("aspen.scheduler.schedules", { description: "schedules this replica knows (all of them, leader or not)" }, () => [
    [scheduler.size],
  ]);
  observeGauge("aspen.scheduler.leading", { description: "1 while this replica holds the firing lease, else 0" }, () => [
    [scheduler.isLeading ? 1 : 0, { replica: replicaId }],
  ]);
  const server = new GrpcServer({
    audit,
    host: config.ASPEN_GRPC_HOST,
    port: config.ASPEN_GRPC_PORT,
    log,
    services: [schedulerService(scheduler, lease)],
  });
  const port = await server.start();
  log.info({ port, replica: replicaId, metricsPort: config.ASPEN_METRICS_PORT || undefined }, "scheduler ready");
  return {
    close: () =>
      closeInOrder(log, [
        ["grpc server", () => server.close()],
        ["lease", () => lease.close()],
        ["timers", () => scheduler.close()],
        ["submit stream", () => submitStream.close()],
        ["job-manager client", () => jobManager.close()],
        ["nats", () => store.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
