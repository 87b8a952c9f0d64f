/** Job-manager process: wires config, logging, telemetry and metrics, NATS and the gRPC server. */
import { performance } from "node:perf_hooks";
import {
  CoordinatorServiceClient,
  IdempotencyRecord,
  Job,
  type PlaceJobRequest,
  type PlaceJobsRequest,
  type PlaceJobsResponse,
} from "@aspen/proto";
import { BATCH_BYTES, Limits, specBytes } from "@aspen/model";
import {
  BatchStream,
  closeInOrder,
  createClient,
  createLogger,
  durationToMs,
  errorForStatus,
  GrpcServer,
  controlPlaneSealer,
  meter,
  observeGauge,
  runMain,
  TurnBatcher,
  unaryCall,
} from "@aspen/runtime";
import { openControlService } from "@aspen/store";
import { loadJobManagerConfig } from "./config.js";
import { JobManager, type Placer } from "./job-manager.js";
import { jobService } from "./job-service.js";
import { configureOutputStream } from "./output-stream.js";

const log = createLogger("job-manager");

await runMain(log, async () => {
  const config = loadJobManagerConfig();
  const { replicaId, telemetry, store, controlAudit, audit } = await openControlService("job-manager", config, log);
  configureOutputStream(store.nc);
  const coordinator = createClient(CoordinatorServiceClient, config.ASPEN_COORDINATOR_ADDR);
  const placeTime = meter().createHistogram("aspen.job_manager.place_duration", {
    unit: "ms",
    description: "Placement round trip to the coordinator, as the job-manager saw it (failed placements included)",
  });
  const placeStream = new BatchStream<PlaceJobsRequest, PlaceJobsResponse>({
    name: "PlaceJobStream",
    open: () => coordinator.placeJobStream(),
    unary: (batch, deadlineMs) => unaryCall(coordinator.placeJobs.bind(coordinator), batch, { deadlineMs }),
    empty: { results: [] },
    log,
  });
  // The attempts placed in one event-loop turn go to the coordinator in one batch (on PlaceJobStream).
  const placements = new TurnBatcher<PlaceJobRequest, string>(
    async (batch) => {
      const { results } = await placeStream.send({ placements: batch });
      return results.map((r) => (r.code === 0 ? r.workerId : errorForStatus(r.code, r.message)));
    },
    {
      maxItems: Limits.placementsPerCall,
      maxBytes: BATCH_BYTES,
      sizeOf: (req) => specBytes(req.spec),
      // A coordinator from before PlaceJobs (rolling upgrade).
      single: async (req) => (await unaryCall(coordinator.placeJob.bind(coordinator), req)).workerId,
    },
  );
  const placer: Placer = {
    place: async (req) => {
      const t0 = performance.now();
      try {
        return await placements.call(req);
      } finally {
        placeTime.record(performance.now() - t0);
      }
    },
    cancel: async (req) => {
      await unaryCall(coordinator.cancelAttempt.bind(coordinator), req);
    },
    match: async (selector) =>
      (await unaryCall(coordinator.matchWorkers.bind(coordinator), { selector })).workers.map((w) => w.id),
  };
  // Output bytes of finished attempts as the agents reported them (refused reports included).
  const outputBytes = meter().createCounter("aspen.job_manager.output_bytes", {
    unit: "By",
    description: "stdout + stderr bytes of finished attempts reported by agents",
  });
  const sealer = controlPlaneSealer(config.ASPEN_SECRETS_PUBLIC_KEY_FILE, log);
  const jobs = new JobManager({
    sealer,
    onOutputBytes: (bytes) => outputBytes.add(bytes),
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
    takeoverMs: config.ASPEN_DISPATCH_TAKEOVER,
    replicaId,
  });
  await jobs.start();
  // Read from the in-memory index on each scrape (JobManager.stats), not from NATS.
  observeGauge("aspen.jobs", { description: "jobs known to this job-manager, by state" }, () =>
    Object.entries(jobs.stats().byState).map(([state, n]) => [n, { state }] as const),
  );
  observeGauge("aspen.job_manager.queue_depth", { description: "queued jobs by effective priority class" }, () =>
    jobs.stats().queueDepth.map(({ priority, depth }) => [depth, { priority: String(priority) }] as const),
  );
  observeGauge(
    "aspen.job_manager.oldest_queued_age",
    { unit: "ms", description: "wait of the oldest queued job (0: none)" },
    () => {
      const age = jobs.stats().oldestQueuedAge;
      return [[age ? durationToMs(age) : 0]];
    },
  );
  const server = new GrpcServer({
    audit,
    host: config.ASPEN_GRPC_HOST,
    port: config.ASPEN_GRPC_PORT,
    log,
    services: [jobService(jobs, controlAudit, log)],
  });
  const port = await server.start();
  log.info({ port, replica: replicaId, metricsPort: config.ASPEN_METRICS_PORT || undefined }, "job-manager ready");
  return {
    close: () =>
      closeInOrder(log, [
        ["grpc server", () => server.close()],
        ["dispatcher", () => jobs.close()],
        ["place stream", () => placeStream.close()],
        ["coordinator client", () => coordinator.close()],
        ["nats", () => store.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
