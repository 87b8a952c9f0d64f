/**
 * Secret job variables end to end, every part real (NATS, the four services
 * as processes, the CLI as a process): an inline secret (sealed at the API
 * edge) and an agent-file secret reach the child, its output shows
 * [REDACTED] where they were printed, every answer shows only names, and the
 * plaintext is in no KV record, no NATS file, no log line and no span. A
 * missing agent file refuses the attempt; without a key an inline value is
 * FAILED_PRECONDITION.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { status } from "@grpc/grpc-js";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CreateScheduleRequest,
  Job,
  JobServiceClient,
  JobState,
  ListJobsRequest,
  Schedule,
  SchedulerServiceClient,
  SubmitJobRequest,
  UpdateScheduleRequest,
  type OutputChunk,
  type SecretValue,
} from "@aspen/proto";
import { type AspenError, createClient, unaryCall } from "@aspen/runtime";
import { repoRoot, startCluster, startOtlpReceiver, waitFor, type Cluster, type OtlpReceiver } from "@aspen/testkit";

const S = JobState;
const run = promisify(execFile);
const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const inline = (value: string): SecretValue => ({ source: { $case: "value", value }, redacted: false });
const ref = (value: string): SecretValue => ({ source: { $case: "agentRef", value }, redacted: false });

/** Every file under `dir`, read whole. */
function filesUnder(dir: string): Array<{ path: string; bytes: Buffer }> {
  const out: Array<{ path: string; bytes: Buffer }> = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path));
    else out.push({ path, bytes: readFileSync(path) });
  }
  return out;
}

async function errorOf(p: Promise<unknown>): Promise<AspenError> {
  try {
    await p;
  } catch (err) {
    return err as AspenError;
  }
  throw new Error("expected the call to fail");
}

describe("secrets in job environments", () => {
  // Random per run, so a match can only come from this run's handling of them.
  const INLINE = `inline-S3cret-${randomBytes(8).toString("hex")}`;
  const FROM_FILE = `agent-file-S3cret-${randomBytes(8).toString("hex")}`;
  const SCHEDULED = `schedule-S3cret-${randomBytes(8).toString("hex")}`;
  const FROM_CLI = `cli-S3cret-${randomBytes(8).toString("hex")}`;
  const PLAINTEXTS = [INLINE, FROM_FILE, SCHEDULED, FROM_CLI];
  let otlp: OtlpReceiver;
  let cluster: Cluster;
  let jobs: JobServiceClient;
  let scheduler: SchedulerServiceClient;

  beforeAll(async () => {
    otlp = await startOtlpReceiver();
    cluster = await startCluster({ agents: 1, env: { ...otlp.env, ASPEN_LOG_LEVEL: "debug" } });
    writeFileSync(join(cluster.secrets!.dir, "db-password"), `${FROM_FILE}\n`, { mode: 0o600 });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
  });
  afterAll(async () => {
    jobs?.close();
    scheduler?.close();
    await cluster?.[Symbol.asyncDispose]();
    await otlp?.[Symbol.asyncDispose]();
  });

  const submit = (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
    unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req));
  const get = (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId });
  const finished = (jobId: string) =>
    waitFor(`${jobId} to finish`, async () => {
      const j = await get(jobId);
      return j.state >= S.JOB_STATE_SUCCEEDED ? j : undefined;
    });
  /** The stored record's raw bytes, as NATS holds them. */
  const rawRecord = async (bucket: string, key: string): Promise<Uint8Array> => {
    const nc = await connect({ servers: cluster.nats.url });
    try {
      const entry = await (await new Kvm(nc).open(bucket)).get(key);
      if (!entry) throw new Error(`${bucket}/${key} not found`);
      return entry.value;
    } finally {
      await nc.close();
    }
  };
  const noPlaintext = (what: string, text: string | Uint8Array) => {
    const bytes = Buffer.from(text);
    for (const p of PLAINTEXTS) expect(bytes.includes(p), `${what} holds a secret value`).toBe(false);
  };
  const shown = (job: Job | undefined) => job?.spec?.exec?.secretEnv;
  const REDACTED_VIEW = {
    API_KEY: { source: undefined, redacted: true },
    DB_PASSWORD: { source: { $case: "agentRef", value: "db-password" }, redacted: true },
  };

  it("gives the child both values, redacts them in its output, and shows and stores no value", async () => {
    const script = [
      `printf '%s' "$API_KEY" | sha256sum`,
      `printf '%s' "$DB_PASSWORD" | sha256sum`,
      `echo "api=$API_KEY"`,
      `echo "db=$DB_PASSWORD" >&2`,
      `echo "plain=$PLAIN"`,
    ].join("; ");
    const submitted = await submit({
      jobId: "secret-1",
      spec: {
        exec: {
          command: script,
          shell: true,
          env: { PLAIN: "visible" },
          secretEnv: { API_KEY: inline(INLINE), DB_PASSWORD: ref("db-password") },
        },
      },
    });
    expect(shown(submitted.job)).toEqual(REDACTED_VIEW);

    // Watched from the start: every version streamed is redacted.
    const watched: Job[] = [];
    const watch = jobs.watchJob({ jobId: "secret-1" });
    const watchEnded = new Promise<void>((resolve, reject) => {
      watch.on("data", (j: Job) => watched.push(j));
      watch.on("end", resolve);
      watch.on("error", reject);
    });
    const done = await finished("secret-1");
    await watchEnded;
    expect(done.state, done.reason).toBe(S.JOB_STATE_SUCCEEDED);

    // The child received the real values (their digests), the output shows [REDACTED] where they were printed.
    const stdout = done.result?.stdout?.text ?? "";
    expect(stdout).toContain(sha(INLINE));
    expect(stdout).toContain(sha(FROM_FILE));
    expect(stdout).toContain("api=[REDACTED]\n");
    expect(stdout).toContain("plain=visible\n");
    expect(done.result?.stderr?.text).toBe("db=[REDACTED]\n");

    // Every answer shows names only.
    expect(shown(done)).toEqual(REDACTED_VIEW);
    expect(done.spec?.exec?.env).toEqual({ PLAIN: "visible" });
    expect(watched.length).toBeGreaterThan(1);
    for (const j of watched) expect(shown(j)).toEqual(REDACTED_VIEW);
    const listed = await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({}));
    expect(shown(listed.jobs.find((j) => j.id === "secret-1"))).toEqual(REDACTED_VIEW);
    const result = await unaryCall(jobs.getJobResult.bind(jobs), { jobId: "secret-1" });
    expect(shown(result)).toEqual(REDACTED_VIEW);

    // The job record in KV holds the sealed value only: not the plaintext, and the sealed bytes are never answered.
    const raw = await rawRecord("aspen_jobs", "secret-1");
    noPlaintext("the job record", raw);
    const sealed = Job.decode(raw).spec?.exec?.secretEnv.API_KEY?.source;
    expect(sealed?.$case).toBe("sealed");
    const sealedBytes = Buffer.from(sealed!.value as Uint8Array);
    expect(sealedBytes.length).toBe(Buffer.byteLength(INLINE) + 69);
    for (const j of [done, result, ...watched, ...listed.jobs]) {
      const answered = Buffer.from(Job.encode(j).finish());
      expect(answered.includes(sealedBytes.subarray(41, 73))).toBe(false);
    }

    // The full output in the object store is the redacted one.
    const chunks: OutputChunk[] = [];
    for await (const c of jobs.streamJobOutput({
      jobId: "secret-1",
      attempt: 0,
      follow: false,
      streams: [],
    }) as AsyncIterable<OutputChunk>)
      chunks.push(c);
    const stored = Buffer.concat(chunks.map((c) => Buffer.from(c.data)));
    expect(stored.toString()).toContain("api=[REDACTED]");
    noPlaintext("the stored output", stored);

    // The agent's audit record names the variables, never their values.
    const audit = await waitFor("the audit record", async () => {
      const r = await unaryCall(jobs.listAuditRecords.bind(jobs), { jobId: "secret-1", workerId: "", limit: 10 });
      return r.records[0];
    });
    expect(audit.envNames).toEqual(["PLAIN"]);
    expect([...audit.secretEnvNames].sort()).toEqual(["API_KEY", "DB_PASSWORD"]);
  });

  it("seals a schedule's template, shows it redacted, keeps it through an update of the read-back template, and fires it", async () => {
    const script = `printf '%s' "$TOKEN_X" | sha256sum; echo "token=$TOKEN_X"`;
    const created = await unaryCall(
      scheduler.createSchedule.bind(scheduler),
      CreateScheduleRequest.fromPartial({
        scheduleId: "secret-sched",
        spec: { kind: { $case: "cron", value: { expression: "0 0 1 1 *" } } },
        job: { exec: { command: script, shell: true, secretEnv: { TOKEN_X: inline(SCHEDULED) } } },
      }),
    );
    const view = { TOKEN_X: { source: undefined, redacted: true } };
    expect(created.job?.exec?.secretEnv).toEqual(view);
    const read = await unaryCall(scheduler.getSchedule.bind(scheduler), { scheduleId: "secret-sched" });
    expect(read.job?.exec?.secretEnv).toEqual(view);
    const list = await unaryCall(scheduler.listSchedules.bind(scheduler), { pageSize: 0, pageToken: "" });
    expect(list.schedules.find((s) => s.id === "secret-sched")?.job?.exec?.secretEnv).toEqual(view);
    noPlaintext("the schedule record", await rawRecord("aspen_schedules", "secret-sched"));
    expect(Schedule.decode(await rawRecord("aspen_schedules", "secret-sched")).job?.exec?.secretEnv.TOKEN_X?.source?.$case).toBe(
      "sealed",
    );

    // The template as read (redacted) sent back with a change keeps the stored secret.
    const updated = await unaryCall(
      scheduler.updateSchedule.bind(scheduler),
      UpdateScheduleRequest.fromPartial({ scheduleId: "secret-sched", job: { ...read.job, name: "renamed" } }),
    );
    expect(updated.job?.name).toBe("renamed");
    expect(updated.job?.exec?.secretEnv).toEqual(view);

    const fired = await unaryCall(scheduler.triggerSchedule.bind(scheduler), { scheduleId: "secret-sched" });
    expect(fired.outcome).toBe("submitted");
    const done = await finished(fired.jobId);
    expect(done.state, done.reason).toBe(S.JOB_STATE_SUCCEEDED);
    expect(done.result?.stdout?.text).toBe(`${sha(SCHEDULED)}  -\ntoken=[REDACTED]\n`);
    expect(done.spec?.exec?.secretEnv).toEqual(view);
    noPlaintext("the fired job's record", await rawRecord("aspen_jobs", fired.jobId));
  });

  it("submits secrets from the CLI and shows only their names", async () => {
    const cli = join(repoRoot, "cli", "bin", "aspen.js");
    const env = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      ASPEN_JOB_MANAGER_ADDR: cluster.addr.jobManager,
      ASPEN_TOKEN: cluster.tokens.operator,
      ASPEN_TLS: "off",
      CLI_SECRET: FROM_CLI,
    };
    const submitted = await run(
      process.execPath,
      [
        cli,
        "job",
        "submit",
        "--id",
        "secret-cli",
        "--wait",
        "--secret-env",
        "CLI_SECRET",
        "--secret-ref",
        "DB_PASSWORD=db-password",
        "--",
        "sh",
        "-c",
        'echo "cli=$CLI_SECRET db=$DB_PASSWORD"',
      ],
      { env },
    );
    expect(submitted.stdout).toContain("SUCCEEDED");
    expect(submitted.stdout).toContain("cli=[REDACTED] db=[REDACTED]\n");
    const shownText = await run(process.execPath, [cli, "job", "get", "secret-cli"], { env });
    expect(shownText.stdout).toMatch(/secret env:\s+CLI_SECRET=\[redacted\], DB_PASSWORD=\[agent ref db-password\]/);
    const shownJson = await run(process.execPath, [cli, "job", "get", "secret-cli", "--json"], { env });
    expect(JSON.parse(shownJson.stdout).spec.exec.secretEnv).toEqual({
      CLI_SECRET: { redacted: true },
      DB_PASSWORD: { agentRef: "db-password", redacted: true },
    });
    noPlaintext("the CLI's output", submitted.stdout + submitted.stderr + shownText.stdout + shownJson.stdout);
  });

  it("refuses an attempt whose agent reference is missing, with the reason", async () => {
    await submit({
      jobId: "secret-missing",
      spec: { exec: { command: "true", secretEnv: { DB_PASSWORD: ref("no-such-secret") } } },
    });
    const done = await finished("secret-missing");
    expect(done.state).toBe(S.JOB_STATE_FAILED);
    expect(done.result?.details?.refused).toBe(true);
    expect(done.reason).toBe(
      `secret_env DB_PASSWORD: agent_ref "no-such-secret" not found in this agent's secrets directory ${cluster.secrets!.dir}`,
    );
  });

  it("refuses bad secret input with INVALID_ARGUMENT naming the field", async () => {
    const both = await errorOf(
      submit({ spec: { exec: { command: "true", env: { API_KEY: "x" }, secretEnv: { API_KEY: inline("also-a-value") } } } }),
    );
    expect(both.code).toBe(status.INVALID_ARGUMENT);
    expect(both.message).toBe(
      'spec.exec.secret_env["API_KEY"]: also set in exec.env; a variable is either plain (env) or secret (secret_env), not both',
    );
    const traversal = await errorOf(submit({ spec: { exec: { command: "true", secretEnv: { K: ref("../etc/shadow") } } } }));
    expect(traversal.code).toBe(status.INVALID_ARGUMENT);
    expect(traversal.message).toMatch(/^spec.exec.secret_env\["K"\].agent_ref: must match/);
    const big = await errorOf(submit({ spec: { exec: { command: "true", secretEnv: { K: inline("v".repeat(65_537)) } } } }));
    expect(big.message).toBe('spec.exec.secret_env["K"].value: longer than 65536 bytes');
    const redactedOnly = await errorOf(
      submit({ spec: { exec: { command: "true", secretEnv: { K: { source: undefined, redacted: true } } } } }),
    );
    expect(redactedOnly.message).toMatch(/redacted: a secret read back has no value/);
  });

  it("never writes a value to a log line, a span, a NATS file or the control audit", async () => {
    const audit = await unaryCall(jobs.listControlAudit.bind(jobs), { target: "", actor: "", limit: 1000 });
    noPlaintext("the control audit", JSON.stringify(audit.records));
    for (const p of [cluster.scheduler, cluster.jobManager, cluster.coordinator, ...cluster.agents]) {
      expect(p.logs.length).toBeGreaterThan(0);
      noPlaintext(`${p.name}'s log`, JSON.stringify(p.logs) + p.output());
    }
    await waitFor("spans of the agent", () => otlp.spans.some((s) => s.service === "aspen-agent"));
    noPlaintext("the spans", JSON.stringify(otlp.spans));
    // Every file NATS keeps (KV, object store, audit streams), as written to disk.
    const files = filesUnder(join(cluster.nats.storeDir, "jetstream"));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) noPlaintext(f.path, f.bytes);
  });
});

describe("secrets without a key", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;
  let scheduler: SchedulerServiceClient;

  beforeAll(async () => {
    cluster = await startCluster({ agents: 0, secrets: false });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
    scheduler = createClient(SchedulerServiceClient, cluster.addr.scheduler);
  });
  afterAll(async () => {
    jobs?.close();
    scheduler?.close();
    await cluster?.[Symbol.asyncDispose]();
  });

  it("refuses an inline value with FAILED_PRECONDITION naming the setting, and takes an agent reference", async () => {
    const secretEnv = { API_KEY: inline("no-key-to-seal-it") };
    const job = await errorOf(
      unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial({ spec: { exec: { command: "true", secretEnv } } })),
    );
    expect(job.code).toBe(status.FAILED_PRECONDITION);
    expect(job.message).toMatch(/^spec.exec.secret_env\["API_KEY"\].value: .*ASPEN_SECRETS_PUBLIC_KEY_FILE is not set/);
    const schedule = await errorOf(
      unaryCall(
        scheduler.createSchedule.bind(scheduler),
        CreateScheduleRequest.fromPartial({
          spec: { kind: { $case: "cron", value: { expression: "0 0 1 1 *" } } },
          job: { exec: { command: "true", secretEnv } },
        }),
      ),
    );
    expect(schedule.code).toBe(status.FAILED_PRECONDITION);
    expect(schedule.message).toMatch(/^job.exec.secret_env\["API_KEY"\].value: .*ASPEN_SECRETS_PUBLIC_KEY_FILE/);
    const byRef = await unaryCall(
      jobs.submitJob.bind(jobs),
      SubmitJobRequest.fromPartial({ spec: { exec: { command: "true", secretEnv: { API_KEY: ref("api-key") } } } }),
    );
    expect(byRef.created).toBe(true);
  });
});
