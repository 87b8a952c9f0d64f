/**
 * aspen.v1.JobService over the JobManager: request checks and streaming live
 * here, decisions in JobManager. Every Job in an answer goes through
 * `redactJob` (secret values and sealed bytes never leave the service).
 */
import {
  Job,
  JobServiceService,
  type ControlAuditRecord,
  type JobServiceServer,
  SubmitJobsRequest,
  type SubmitJobsResponse,
} from "@aspen/proto";
import {
  bindService,
  durationToMs,
  InvalidArgumentError,
  itemRefusal,
  principalOf,
  serveBatchStream,
  type Logger,
  type ServiceBinding,
} from "@aspen/runtime";
import { isTerminal, Limits, redactJob } from "@aspen/model";
import type { AppendOnlyLog } from "@aspen/store";
import type { JobManager } from "./job-manager.js";
import { outputStreamHandlers } from "./output-stream.js";

const MAX_CONTROL_AUDIT = 1000;

export function jobService(
  jobs: JobManager,
  controlAudit: AppendOnlyLog<ControlAuditRecord>,
  log: Logger,
): ServiceBinding<JobServiceServer> {
  /** SubmitJobs: each item submitted on its own, as SubmitJob would (also each batch of SubmitJobStream). */
  const submitBatch = async (req: SubmitJobsRequest, caller: string | undefined): Promise<SubmitJobsResponse> => {
    if (req.requests.length > Limits.submissionsPerCall) {
      throw new InvalidArgumentError("requests", `at most ${Limits.submissionsPerCall} per call, got ${req.requests.length}`);
    }
    const results = await Promise.all(
      req.requests.map((r) =>
        jobs.submit(r, caller).then(
          (res) => ({
            response: {
              created: res.created,
              job: req.brief ? Job.fromPartial({ id: res.job?.id }) : res.job && redactJob(res.job),
            },
            code: 0,
            message: "",
          }),
          (err: unknown) => ({
            response: undefined,
            ...itemRefusal(err, (e) => log.error({ err: e, job: r.jobId }, "submission failed")),
          }),
        ),
      ),
    );
    return { results };
  };
  return bindService<JobServiceServer>("aspen.v1.JobService", JobServiceService, {
    listControlAudit: async (req) => {
      if (req.limit > MAX_CONTROL_AUDIT) throw new InvalidArgumentError("limit", `must be at most ${MAX_CONTROL_AUDIT}`);
      const found = await controlAudit.newest(
        req.limit || 100,
        (r) => (!req.target || r.target === req.target) && (!req.actor || r.actor === req.actor),
      );
      return { records: found.map(({ sequence, record }) => ({ ...record, sequence })) };
    },
    submitJob: async (req, call) => {
      const res = await jobs.submit(req, principalOf(call)?.name);
      return { ...res, job: res.job && redactJob(res.job) };
    },
    submitJobs: async (req, call) => submitBatch(req, principalOf(call)?.name),
    submitJobStream: (call) => {
      const caller = principalOf(call)?.name;
      serveBatchStream(call, (batch) => submitBatch(batch ?? SubmitJobsRequest.fromPartial({}), caller), log);
    },
    getJob: async (req) => redactJob(await jobs.get(req.jobId)),
    listJobs: async (req) => {
      const res = jobs.list(req);
      return { ...res, jobs: res.jobs.map(redactJob) };
    },
    cancelJob: async (req) => redactJob(await jobs.cancel(req.jobId, req.reason)),
    reportAttempts: async (req) => ({ refusals: await jobs.report(req.events, new Set(req.notHeld)) }),
    reportAttemptStream: (call) =>
      serveBatchStream(
        call,
        async (batch) => ({ refusals: await jobs.report(batch?.events ?? [], new Set(batch?.notHeld)) }),
        log,
      ),
    getJobResult: async (req, call) => {
      const abort = new AbortController();
      call.on("cancelled", () => abort.abort());
      // Answer before the caller's own deadline runs out.
      const deadline = call.getDeadline();
      const deadlineMs = deadline instanceof Date ? deadline.getTime() : Number(deadline);
      const untilDeadline = Number.isFinite(deadlineMs) ? Math.max(0, deadlineMs - Date.now() - 100) : Infinity;
      const wait = req.wait ? durationToMs(req.wait) : 30_000;
      if (wait < 0) throw new InvalidArgumentError("wait", "must not be negative");
      return redactJob(await jobs.result(req.jobId, Math.min(wait, untilDeadline) || 1, abort.signal));
    },
    getStats: async () => jobs.stats(),
    ...outputStreamHandlers(jobs),
    requeueJob: async (req) => redactJob(await jobs.requeue(req.jobId, req.reason)),
    purgeDeadLetters: async (req) => ({ purged: await jobs.purgeDeadLetters(req.jobIds) }),
    watchJob: async (req, call) => {
      if (!req.jobId) throw new InvalidArgumentError("job_id", "required");
      // Subscribe before reading so no change between the read and the subscription is missed.
      let done: () => void = () => {};
      const finished = new Promise<void>((resolve) => (done = resolve));
      let lastSent: Job | undefined;
      const send = (job: Job) => {
        if (lastSent && job.history.length <= lastSent.history.length && job.state === lastSent.state) return;
        lastSent = job;
        call.write(redactJob(job));
        if (isTerminal(job.state)) done();
      };
      const unsubscribe = jobs.subscribe(req.jobId, send);
      call.on("cancelled", done);
      try {
        send(await jobs.get(req.jobId));
        await finished;
      } finally {
        unsubscribe();
      }
    },
  });
}
