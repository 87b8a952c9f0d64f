/**
 * The agent's policy with a real cluster: refused jobs end FAILED with the
 * reason and never start, the agent's own secrets never reach a job, the
 * rate limit and job types, the audit trail readable through the API, and a
 * timeout that leaves no process behind.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JobServiceClient, type JobSpec, JobState, SubmitJobRequest, type Job } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { processGroupMembers, repoRoot, startCluster, waitFor, type Cluster } from "@aspen/testkit";

const S = JobState;
const dir = mkdtempSync(join(tmpdir(), "aspen-agent-policy-"));
const root = join(dir, "work");

/** Every live process whose command line contains `needle` (the shell's own `-c` script included). */
function processesMatching(needle: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8").replace(/\0/g, " ");
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (cmd.includes(needle) && stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z") found.push(Number(entry));
    } catch {
      // gone
    }
  }
  return found;
}

describe("agent policy", () => {
  let cluster: Cluster;
  let jobs: JobServiceClient;

  beforeAll(async () => {
    mkdirSync(join(root, "app"), { recursive: true });
    mkdirSync(join(dir, "elsewhere"));
    symlinkSync(join(dir, "elsewhere"), join(root, "link-out"));
    const config = join(dir, "agent.json");
    writeFileSync(
      config,
      JSON.stringify({
        workRoot: root,
        commands: { allow: ["echo", "env", "date", "sh", "sleep"], shell: false },
        rateLimit: { perCommand: { date: 2 } },
        limits: { cpuSeconds: 30 },
      }),
    );
    cluster = await startCluster({
      agents: 1,
      scheduler: false,
      agentEnv: () => ({ ASPEN_AGENT_CONFIG: config, AGENT_SECRET: "agent-s3cret-value", NATS_TOKEN: "nats-t0ken-value" }),
    });
    jobs = createClient(JobServiceClient, cluster.addr.jobManager);
  });
  afterAll(async () => {
    jobs?.close();
    await cluster?.[Symbol.asyncDispose]();
    rmSync(dir, { recursive: true, force: true });
  });

  const submit = (req: Parameters<typeof SubmitJobRequest.fromPartial>[0]) =>
    unaryCall(jobs.submitJob.bind(jobs), SubmitJobRequest.fromPartial(req));
  const get = (jobId: string) => unaryCall(jobs.getJob.bind(jobs), { jobId });
  const finished = (jobId: string) =>
    waitFor(`${jobId} to finish`, async () => {
      const j = await get(jobId);
      return j.state >= S.JOB_STATE_SUCCEEDED ? j : undefined;
    }).catch(async (err: unknown) => {
      const j = await get(jobId);
      const logs = [cluster.agents[0]!, cluster.coordinator, cluster.jobManager].flatMap((p) =>
        p.logs.slice(-6).map((l) => JSON.stringify(l)),
      );
      throw new Error(`${String(err)}; job ${JSON.stringify(j.history.map((h) => [h.to, h.reason]))}\n${logs.join("\n")}`);
    });
  const refused = async (jobId: string, spec: Parameters<typeof JobSpec.fromPartial>[0]) => {
    await submit({ jobId, spec });
    const job: Job = await finished(jobId);
    expect(job.state).toBe(S.JOB_STATE_FAILED);
    expect(job.history.map((h) => h.to)).not.toContain(S.JOB_STATE_RUNNING); // it never started
    expect(job.result?.details?.refused).toBe(true);
    expect(job.result?.pid).toBe(0);
    return job.reason;
  };

  it("refuses what the config forbids, with the reason, and never starts it", async () => {
    expect(await refused("not-listed", { exec: { command: "cat", args: ["/etc/passwd"] } })).toMatch(
      /^command "cat" \(.*\/cat\) is not in this agent's allowlist \(commands.allow\)$/,
    );
    expect(await refused("shell-forbidden", { exec: { command: "echo hi", shell: true } })).toBe(
      "shell scripts are forbidden by this agent's config (commands.shell = false)",
    );
    expect(await refused("cwd-dotdot", { exec: { command: "echo", cwd: `${root}/app/../../elsewhere` } })).toMatch(
      /resolves to .*\/elsewhere, outside the agent's working-directory root/,
    );
    expect(await refused("cwd-symlink", { exec: { command: "echo", cwd: `${root}/link-out` } })).toMatch(
      /cwd ".*\/link-out" resolves to .*\/elsewhere, outside/,
    );
    expect(await refused("env-denied", { exec: { command: "env", env: { GITHUB_TOKEN: "x" } } })).toBe(
      'env GITHUB_TOKEN: denied by this agent\'s environment policy (pattern "*TOKEN*"); a secret belongs in secret_env',
    );
    expect(await refused("env-preload", { exec: { command: "env", env: { LD_PRELOAD: "/tmp/evil.so" } } })).toMatch(
      /pattern "LD_\*"/,
    );
    const ok = await (async () => {
      await submit({ jobId: "cwd-inside", spec: { exec: { command: "echo", args: ["inside"], cwd: join(root, "app") } } });
      return finished("cwd-inside");
    })();
    expect(ok.state).toBe(S.JOB_STATE_SUCCEEDED);
  });

  it("never lets the agent's own secrets reach a job", async () => {
    await submit({ jobId: "env-dump", spec: { exec: { command: "env", env: { JOB_VAR: "job-value" } } } });
    const job = await finished("env-dump");
    expect(job.state).toBe(S.JOB_STATE_SUCCEEDED);
    const text = job.result?.stdout?.text ?? "";
    expect(text).toContain("JOB_VAR=job-value");
    expect(text).toMatch(/^PATH=/m);
    expect(text).not.toContain("agent-s3cret-value");
    expect(text).not.toContain("nats-t0ken-value");
    expect(text).not.toMatch(/ASPEN_/); // not even the agent's own settings
  });

  it("refuses starts past a command's rate limit with a clear reason", async () => {
    for (const id of ["date-1", "date-2"]) {
      await submit({ jobId: id, spec: { exec: { command: "date" } } });
      expect((await finished(id)).state).toBe(S.JOB_STATE_SUCCEEDED);
    }
    expect(await refused("date-3", { exec: { command: "date" } })).toMatch(
      /^rate limit: "date" was started 2 times in the last minute \(max 2 per minute\); next start possible in \d+ s$/,
    );
  });

  it("on timeout kills the whole group: no process of `sh -c 'sleep 100 & sleep 100'` is left", async () => {
    const marker = `${Date.now() % 100000}`;
    await submit({
      jobId: "timeout-tree",
      spec: {
        exec: { command: "sh", args: ["-c", `sleep 10${marker} & sleep 10${marker}`] },
        timeout: { seconds: 3, nanos: 0 },
        killGrace: { seconds: 1, nanos: 0 },
      },
    });
    // Both sleeps exist while it runs (the shell waits on the second one)...
    await waitFor("both sleeps to exist", () => processesMatching(`sleep 10${marker}`).length >= 2, 10_000, 20);
    const job = await finished("timeout-tree");
    expect(job.state).toBe(S.JOB_STATE_TIMED_OUT);
    expect(job.result?.timedOut).toBe(true);
    // ...and after the timeout the process table holds nothing of that job, in its group or anywhere., in its group or anywhere.
    expect(job.result!.pid).toBeGreaterThan(0);
    expect(processGroupMembers(job.result!.pid)).toEqual([]);
    expect(processesMatching(`sleep 10${marker}`)).toEqual([]);
  });

  it("keeps one audit record per execution and refusal, readable through the API", async () => {
    const res = await waitFor("audit records", async () => {
      const r = await unaryCall(jobs.listAuditRecords.bind(jobs), { jobId: "", workerId: "", limit: 1000 });
      return r.records.some((x) => x.jobId === "timeout-tree") ? r : undefined;
    });
    const byJob = new Map(res.records.map((r) => [r.jobId, r]));
    const dump = byJob.get("env-dump")!;
    expect(dump).toMatchObject({
      attempt: 1,
      workerId: "agent-1",
      jobType: "shell",
      refused: false,
      outcome: "exit 0",
      exitCode: 0,
      submittedBy: "test-admin", // the token that submitted it, as the job-manager authenticated it
    });
    expect(dump.command).toMatch(/\/env$/);
    expect(dump.envNames).toEqual(["JOB_VAR"]); // names only, never values
    expect(dump.stdoutSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(dump.cwd).toBe(root);
    expect(byJob.get("shell-forbidden")).toMatchObject({
      refused: true,
      outcome: expect.stringMatching(/^refused: shell scripts are forbidden/),
    });
    expect(byJob.get("timeout-tree")?.outcome).toBe("timed out");
    // Newest first; one job's records alone.
    const one = await unaryCall(jobs.listAuditRecords.bind(jobs), { jobId: "date-3", workerId: "", limit: 10 });
    expect(one.records).toHaveLength(1);
    expect(one.records[0]?.outcome).toMatch(/^refused: rate limit/);
    const seqs = res.records.map((r) => r.sequence);
    expect(seqs).toEqual([...seqs].sort((a, b) => b - a));
    // The same through the CLI.
    const cli = await promisify(execFile)(
      process.execPath,
      [join(repoRoot, "cli", "dist", "main.js"), "--job-manager", cluster.addr.jobManager, "job", "audit", "env-dump"],
      { encoding: "utf8" },
    );
    expect(cli.stdout).toMatch(/env-dump\s+1\s+agent-1\s+\S*\/env\s+exit 0\s+[0-9a-f]{12}…/);
  });
});
