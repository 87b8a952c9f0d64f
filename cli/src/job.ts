/** `aspen job …`: submit, inspect, list, cancel and watch jobs (JobService on the job-manager). */
import { InvalidArgumentError, Option, type Command } from "commander";
import { status } from "@grpc/grpc-js";
import {
  AuditRecord,
  Job,
  JobSpec,
  JobState,
  JobStats,
  RetryPolicy,
  RetryPolicy_Kind,
  ListJobsRequest,
  Priority,
  SubmitJobRequest,
  SubmitJobResponse,
  type JobServiceClient,
  type JobTransition,
  type Output,
  type OutputChunk,
  type SecretValue,
} from "@aspen/proto";
import { AspenError, durationToMs, fromServiceError, isServiceError, msToDuration, unaryCall } from "@aspen/runtime";
import { isTerminal, parseState, stateName } from "@aspen/model";
import type { Clients } from "./clients.js";
import {
  collect,
  collectKeyValue,
  exitSummary,
  fields,
  formatDuration,
  formatInstant,
  formatMap,
  formatSecretEnv,
  jobDurationMs,
  json,
  parseCount,
  parseDuration,
  priorityName,
  shellJoin,
  table,
} from "./format.js";

const PRIORITIES: Record<string, Priority> = {
  low: Priority.PRIORITY_LOW,
  normal: Priority.PRIORITY_NORMAL,
  high: Priority.PRIORITY_HIGH,
  critical: Priority.PRIORITY_CRITICAL,
};

/** Options that shape a JobSpec; shared by `job submit` and `schedule add`. */
export interface JobSpecOptions {
  timeout?: number;
  priority?: string;
  tag?: Record<string, string>;
  label?: Record<string, string>;
  capability?: string[];
  retry?: RetryPolicy;
  maxAttempts?: number;
  dependsOn?: string[];
  atMostOnce?: boolean;
  env?: Record<string, string>;
  secretEnv?: Record<string, string>;
  secretRef?: Record<string, string>;
}

/**
 * Repeatable `--secret-env NAME=VALUE` or `--secret-env NAME`: without `=`,
 * the value is taken from this process's environment variable NAME, so it
 * stays out of the command line (ps, shell history).
 */
export function collectSecret(text: string, previous: Record<string, string> = {}): Record<string, string> {
  const at = text.indexOf("=");
  if (at === 0) throw new InvalidArgumentError("expected NAME=VALUE or NAME");
  if (at > 0) return { ...previous, [text.slice(0, at)]: text.slice(at + 1) };
  const value = process.env[text];
  if (value === undefined)
    throw new InvalidArgumentError(`${text} is not set in this environment (give NAME=VALUE, or export ${text})`);
  return { ...previous, [text]: value };
}

/** "fixed:1s", "exponential:500ms" (base; factor 2), "custom:1s,10s,60s", "none". */
export function parseRetry(text: string): RetryPolicy {
  const [kind = "", arg = ""] = text.split(":", 2);
  const durations = (list: string) =>
    list.split(",").map((d) => {
      const ms = parseDuration(d);
      return msToDuration(ms);
    });
  switch (kind) {
    case "none":
      return RetryPolicy.fromPartial({ kind: RetryPolicy_Kind.KIND_NONE });
    case "fixed":
      return RetryPolicy.fromPartial({ kind: RetryPolicy_Kind.KIND_FIXED, delay: arg ? durations(arg)[0] : undefined });
    case "exponential":
      return RetryPolicy.fromPartial({ kind: RetryPolicy_Kind.KIND_EXPONENTIAL, base: arg ? durations(arg)[0] : undefined });
    case "custom":
      return RetryPolicy.fromPartial({ kind: RetryPolicy_Kind.KIND_CUSTOM, delays: durations(arg) });
    default:
      throw new InvalidArgumentError("expected none, fixed[:DELAY], exponential[:BASE] or custom:D1,D2,...");
  }
}

export function addJobSpecOptions(command: Command): Command {
  return command
    .option("--timeout <duration>", "wall-clock limit per attempt (e.g. 30s, 5m)", parseDuration)
    .addOption(new Option("--priority <level>", "dispatch priority").choices(Object.keys(PRIORITIES)))
    .option("--tag <key=value>", "tag (repeatable)", collectKeyValue)
    .option("--label <key=value>", "run only on workers with this label (repeatable)", collectKeyValue)
    .option("--capability <name>", "run only on workers advertising this capability (repeatable)", collect)
    .option("--retry <policy>", "retry a failed attempt: fixed[:1s], exponential[:1s], custom:1s,10s,60s", parseRetry)
    .option("--max-attempts <n>", "attempts in all, the first included (default 3 with --retry)", parseCount)
    .option("--depends-on <job-id>", "run only after this job SUCCEEDED (repeatable)", collect)
    .option("--at-most-once", "never start it a second time (a lost attempt ends it LOST)")
    .option("--env <NAME=VALUE>", "environment variable for the job (repeatable; stored and shown as given)", collectKeyValue)
    .option(
      "--secret-env <NAME[=VALUE]>",
      "secret variable, sealed on arrival and never shown (repeatable); NAME alone takes the value from this shell's $NAME",
      collectSecret,
    )
    .option(
      "--secret-ref <NAME=REF>",
      "secret variable read on the agent from its secrets directory file REF (repeatable)",
      collectKeyValue,
    );
}

/** The JobSpec that runs `argv` (program, then its arguments verbatim; no shell). */
export function jobSpecFrom(argv: string[], opts: JobSpecOptions): JobSpec {
  const [command = "", ...args] = argv;
  const selector = { matchLabels: opts.label ?? {}, capabilities: opts.capability ?? [] };
  const constrained = Object.keys(selector.matchLabels).length > 0 || selector.capabilities.length > 0;
  const secretEnv: Record<string, SecretValue> = {};
  for (const [name, value] of Object.entries(opts.secretEnv ?? {}))
    secretEnv[name] = { source: { $case: "value", value }, redacted: false };
  for (const [name, ref] of Object.entries(opts.secretRef ?? {})) {
    if (secretEnv[name]) throw new Error(`${name} is given by both --secret-env and --secret-ref`);
    secretEnv[name] = { source: { $case: "agentRef", value: ref }, redacted: false };
  }
  return JobSpec.fromPartial({
    exec: { command, args, env: opts.env ?? {}, secretEnv },
    timeout: opts.timeout === undefined ? undefined : msToDuration(opts.timeout),
    priority: (opts.priority && PRIORITIES[opts.priority]) || Priority.PRIORITY_UNSPECIFIED,
    tags: opts.tag ?? {},
    placement: constrained ? { selector } : undefined,
    retry: opts.retry ? { ...opts.retry, maxAttempts: opts.maxAttempts ?? 0 } : undefined,
    dependsOn: opts.dependsOn ?? [],
    atMostOnce: opts.atMostOnce ?? false,
  });
}

/**
 * Streams WatchJob: calls `onJob` with the job as it is now, then with each
 * change, and resolves with the terminal job. Rejects with an AspenError when
 * the stream fails or ends before the job finished.
 */
async function follow(client: JobServiceClient, jobId: string, onJob: (job: Job) => void): Promise<Job> {
  let last: Job | undefined;
  try {
    for await (const job of client.watchJob({ jobId }) as AsyncIterable<Job>) {
      last = job;
      onJob(job);
    }
  } catch (err) {
    throw isServiceError(err) ? fromServiceError(err) : err;
  }
  if (!last || !isTerminal(last.state)) {
    throw new AspenError(status.UNAVAILABLE, `watch of job ${jobId} ended before it finished`);
  }
  return last;
}

/** A captured stream under a "--- stdout ---" heading, noting when the text is not all of it; "" when empty. */
function outputSection(name: string, output: Output | undefined): string {
  if (!output || (output.text === "" && !output.truncated)) return "";
  const note = output.truncated
    ? ` (truncated; ${output.totalBytes} bytes in all${output.objectName ? `, stored as ${output.objectName}` : ""})`
    : "";
  const text = output.text === "" || output.text.endsWith("\n") ? output.text : `${output.text}\n`;
  return `--- ${name}${note} ---\n${text}`;
}

function describeJob(job: Job, nowMs: number): string {
  const duration = jobDurationMs(job, nowMs);
  const error = job.result?.error;
  const block = fields([
    ["id", job.id],
    ["state", stateName(job.state)],
    ["reason", job.reason || "-"],
    ["command", shellJoin([job.spec?.exec?.command ?? "", ...(job.spec?.exec?.args ?? [])])],
    ["priority", priorityName(job.spec?.priority ?? Priority.PRIORITY_UNSPECIFIED)],
    ["timeout", job.spec?.timeout ? formatDuration(durationToMs(job.spec.timeout)) : "-"],
    ["attempt", String(job.attempt)],
    ["worker", job.workerId || "-"],
    ["schedule", job.scheduleId || "-"],
    ["exit code", exitSummary(job)],
    ...(error ? [["error", error] as [string, string]] : []),
    ["tags", formatMap(job.spec?.tags ?? {})],
    ["env", formatMap(job.spec?.exec?.env ?? {})],
    ["secret env", formatSecretEnv(job.spec?.exec?.secretEnv ?? {})],
    ["scheduled", formatInstant(job.scheduledAt)],
    ["submitted", formatInstant(job.submittedAt)],
    ["started", formatInstant(job.startedAt)],
    ["finished", formatInstant(job.finishedAt)],
    ["duration", duration === undefined ? "-" : formatDuration(duration)],
    ["trace id", job.traceId || "-"],
  ]);
  return `${block}\n${outputSection("stdout", job.result?.stdout)}${outputSection("stderr", job.result?.stderr)}`.trimEnd();
}

/** "<at>  RUNNING    running on w1  [agent:w1, attempt 1]". */
function describeTransition(t: JobTransition): string {
  return `${formatInstant(t.at)}  ${stateName(t.to).padEnd(9)}  ${t.reason || "-"}  [${t.actor}, attempt ${t.attempt}]`;
}

function collectState(text: string, previous: JobState[] = []): JobState[] {
  const state = parseState(text);
  if (state === undefined) throw new InvalidArgumentError("expected a job state such as queued, running or succeeded");
  return [...previous, state];
}

export function registerJobCommands(program: Command, clients: Clients): void {
  const job = program.command("job").description("submit and inspect jobs");

  addJobSpecOptions(
    job
      .command("submit")
      .description("run a command once on a worker")
      .argument("<command...>", "program and its arguments (put them after --)")
      .option("--id <id>", "job id; submitting an existing id returns that job (default: generated)")
      .option("--key <idempotency-key>", "submissions with the same key make one job"),
  )
    .option("--wait", "wait until the job finishes; exit status 0 only if it SUCCEEDED")
    .option("--json", "print the SubmitJobResponse (with --wait: the finished Job) as JSON")
    .action(async (argv: string[], opts: JobSpecOptions & { id?: string; key?: string; wait?: boolean; json?: boolean }) => {
      const c = clients.jobs;
      const request = SubmitJobRequest.fromPartial({
        jobId: opts.id ?? "",
        idempotencyKey: opts.key ?? "",
        spec: jobSpecFrom(argv, opts),
      });
      const res = await unaryCall(c.submitJob.bind(c), request);
      const id = res.job?.id ?? "";
      if (opts.json && !opts.wait) {
        console.log(json(SubmitJobResponse.toJSON(res)));
        return;
      }
      if (!opts.json) console.log(`${id}${res.created ? "" : " (already existed)"}`);
      if (!opts.wait) return;
      const done = await follow(c, id, () => {});
      if (done.state !== JobState.JOB_STATE_SUCCEEDED) process.exitCode = 1;
      if (opts.json) {
        console.log(json(Job.toJSON(done)));
        return;
      }
      // "SUCCEEDED (exit 0, 12ms)", "TIMED_OUT (exit SIGTERM, 1s): timed out after 1 s (SIGTERM)".
      const exit = exitSummary(done);
      const duration = jobDurationMs(done, Date.now());
      const reason = done.reason && done.reason !== `exit code ${exit}` ? `: ${done.reason}` : "";
      console.log(
        `${stateName(done.state)} (exit ${exit}${duration === undefined ? "" : `, ${formatDuration(duration)}`})${reason}`,
      );
      process.stdout.write(done.result?.stdout?.text ?? "");
      process.stderr.write(done.result?.stderr?.text ?? "");
    });

  job
    .command("get")
    .description("show a job, its result and its output")
    .argument("<id>")
    .option("--json", "print the Job as JSON")
    .action(async (id: string, opts: { json?: boolean }) => {
      const c = clients.jobs;
      const found = await unaryCall(c.getJob.bind(c), { jobId: id });
      console.log(opts.json ? json(Job.toJSON(found)) : describeJob(found, Date.now()));
    });

  job
    .command("list")
    .description("list jobs, newest first")
    .option("--state <state>", "only jobs in this state (repeatable)", collectState)
    .option("--schedule <id>", "only jobs fired by this schedule")
    .option("--worker <id>", "only jobs whose last attempt ran on this worker")
    .option("--limit <n>", "at most this many jobs", parseCount, 50)
    .option("--json", "print the Jobs as a JSON array")
    .action(async (opts: { state?: JobState[]; schedule?: string; worker?: string; limit: number; json?: boolean }) => {
      const c = clients.jobs;
      const jobs: Job[] = [];
      let pageToken = "";
      do {
        const request = ListJobsRequest.fromPartial({
          states: opts.state ?? [],
          scheduleId: opts.schedule ?? "",
          workerId: opts.worker ?? "",
          pageSize: Math.min(opts.limit - jobs.length, 1000),
          pageToken,
        });
        const page = await unaryCall(c.listJobs.bind(c), request);
        jobs.push(...page.jobs.slice(0, opts.limit - jobs.length));
        pageToken = page.nextPageToken;
      } while (pageToken && jobs.length < opts.limit);
      if (opts.json) {
        console.log(json(jobs.map((j) => Job.toJSON(j))));
        return;
      }
      const now = Date.now();
      const rows = jobs.map((j) => {
        const duration = jobDurationMs(j, now);
        return [
          j.id,
          stateName(j.state),
          exitSummary(j),
          j.workerId || "-",
          formatInstant(j.submittedAt),
          duration === undefined ? "-" : formatDuration(duration),
        ];
      });
      console.log(table(["ID", "STATE", "EXIT", "WORKER", "SUBMITTED", "DURATION"], rows));
    });

  job
    .command("cancel")
    .description("cancel a job: a queued one at once, a running one is signalled on its worker")
    .argument("<id>")
    .option("--reason <text>", "why, recorded in the job's history")
    .option("--json", "print the Job as JSON")
    .action(async (id: string, opts: { reason?: string; json?: boolean }) => {
      const c = clients.jobs;
      const cancelled = await unaryCall(c.cancelJob.bind(c), { jobId: id, reason: opts.reason ?? "" });
      if (opts.json) console.log(json(Job.toJSON(cancelled)));
      else if (cancelled.state === JobState.JOB_STATE_CANCELLED) console.log(`${id}: CANCELLED`);
      else console.log(`${id}: ${stateName(cancelled.state)}; stop sent to ${cancelled.workerId || "its worker"}`);
    });

  job
    .command("watch")
    .description("print a job's transitions until it finishes")
    .argument("<id>")
    .option("--json", "print each version of the Job as one JSON line")
    .action(async (id: string, opts: { json?: boolean }) => {
      let printed = 0;
      await follow(clients.jobs, id, (j) => {
        if (opts.json) {
          console.log(JSON.stringify(Job.toJSON(j)));
        } else {
          for (const t of j.history.slice(printed)) console.log(describeTransition(t));
          printed = j.history.length;
        }
      });
    });

  job
    .command("result")
    .description("wait for a job to finish (up to --wait) and show it")
    .argument("<id>")
    .option("--wait <duration>", "how long to wait (at most 5m)", parseDuration, 30_000)
    .option("--json", "print the Job as JSON")
    .action(async (id: string, opts: { wait: number; json?: boolean }) => {
      const c = clients.jobs;
      const found = await unaryCall(
        c.getJobResult.bind(c),
        { jobId: id, wait: msToDuration(opts.wait) },
        { deadlineMs: opts.wait + 5_000 },
      );
      if (!isTerminal(found.state)) process.exitCode = 1;
      console.log(opts.json ? json(Job.toJSON(found)) : describeJob(found, Date.now()));
    });

  job
    .command("requeue")
    .description("give a DEAD, FAILED, TIMED_OUT or LOST job a new attempt")
    .argument("<id>")
    .option("--reason <text>", "why, recorded in the job's history")
    .action(async (id: string, opts: { reason?: string }) => {
      const c = clients.jobs;
      const requeued = await unaryCall(c.requeueJob.bind(c), { jobId: id, reason: opts.reason ?? "" });
      console.log(`${id}: ${stateName(requeued.state)}`);
    });

  job
    .command("dlq")
    .description("list the dead-letter queue (DEAD jobs), or purge it")
    .option("--purge [ids...]", "delete these DEAD jobs (all when none given) and their outputs")
    .option("--json", "print the Jobs as a JSON array")
    .action(async (opts: { purge?: boolean | string[]; json?: boolean }) => {
      const c = clients.jobs;
      if (opts.purge) {
        const jobIds = Array.isArray(opts.purge) ? opts.purge : [];
        const res = await unaryCall(c.purgeDeadLetters.bind(c), { jobIds });
        console.log(`purged ${res.purged} dead job(s)`);
        return;
      }
      const dead = (
        await unaryCall(c.listJobs.bind(c), ListJobsRequest.fromPartial({ states: [JobState.JOB_STATE_DEAD], pageSize: 1000 }))
      ).jobs;
      if (opts.json) {
        console.log(json(dead.map((j) => Job.toJSON(j))));
        return;
      }
      console.log(
        table(
          ["ID", "ATTEMPTS", "FINISHED", "LAST ERROR"],
          dead.map((j) => [j.id, String(j.attempt), formatInstant(j.finishedAt), j.reason]),
        ),
      );
    });

  job
    .command("stats")
    .description("jobs per state, queue depth per priority, oldest queued job's wait")
    .option("--json", "print JobStats as JSON")
    .action(async (opts: { json?: boolean }) => {
      const c = clients.jobs;
      const stats = await unaryCall(c.getStats.bind(c), {});
      if (opts.json) {
        console.log(json(JobStats.toJSON(stats)));
        return;
      }
      console.log(
        table(
          ["STATE", "JOBS"],
          Object.entries(stats.byState).map(([state, n]) => [state, String(n)]),
        ),
      );
      console.log();
      console.log(
        table(
          ["PRIORITY", "QUEUED"],
          stats.queueDepth.map((d) => [priorityName(d.priority), String(d.depth)]),
        ),
      );
      console.log();
      console.log(`oldest queued: ${stats.oldestQueuedAge ? formatDuration(durationToMs(stats.oldestQueuedAge)) : "-"}`);
    });

  job
    .command("logs")
    .description("print a job's full output (stdout to stdout, stderr to stderr); -f follows a running job")
    .argument("<id>")
    .option("-f, --follow", "keep printing while the attempt runs, until it ends")
    .option("--attempt <n>", "attempt to show (default: the current one)", parseCount)
    .option("--stream <name>", "only stdout or only stderr")
    .action(async (id: string, opts: { follow?: boolean; attempt?: number; stream?: string }) => {
      const c = clients.jobs;
      const req = { jobId: id, attempt: opts.attempt ?? 0, follow: !!opts.follow, streams: opts.stream ? [opts.stream] : [] };
      try {
        for await (const chunk of c.streamJobOutput(req) as AsyncIterable<OutputChunk>) {
          const out = chunk.stream === "stderr" ? process.stderr : process.stdout;
          // Only worth saying when the inline copy is not the whole stream.
          if (chunk.inlineOnly && chunk.totalBytes > chunk.data.length) {
            process.stderr.write(
              `--- ${chunk.stream}: only the inline head/tail was kept (${chunk.totalBytes} bytes written) ---\n`,
            );
          }
          if (chunk.data.length > 0 && !out.write(chunk.data)) await new Promise((r) => out.once("drain", r));
        }
      } catch (err) {
        throw isServiceError(err) ? fromServiceError(err) : err;
      }
    });

  job
    .command("audit")
    .description("the agents' audit records: what ran, where, as whom, how it ended (newest first)")
    .argument("[id]", "only this job")
    .option("--worker <id>", "only this worker")
    .option("--limit <n>", "at most this many (max 1000)", parseCount, 100)
    .option("--json", "print the AuditRecords as a JSON array")
    .action(async (id: string | undefined, opts: { worker?: string; limit: number; json?: boolean }) => {
      const c = clients.jobs;
      const res = await unaryCall(c.listAuditRecords.bind(c), {
        jobId: id ?? "",
        workerId: opts.worker ?? "",
        limit: opts.limit,
      });
      if (opts.json) {
        console.log(json(res.records.map((r) => AuditRecord.toJSON(r))));
        return;
      }
      console.log(
        table(
          ["FINISHED", "JOB", "ATTEMPT", "WORKER", "COMMAND", "OUTCOME", "STDOUT SHA-256"],
          res.records.map((r) => [
            formatInstant(r.finishedAt),
            r.jobId,
            String(r.attempt),
            r.workerId,
            r.shell ? `sh -c ${shellJoin([r.args[1] ?? ""])}` : shellJoin([r.command, ...r.args]),
            r.outcome,
            r.stdoutSha256 ? `${r.stdoutSha256.slice(0, 12)}… (${r.stdoutBytes} B)` : "-",
          ]),
        ),
      );
    });
}
