#!/usr/bin/env node
/**
 * End-to-end throughput and latency of Aspen, against the machine's ceiling.
 *
 *   node bench/end-to-end.mjs            (the services must be built: npm run build)
 *
 * N jobs of `/bin/true` (default 5000, env BENCH_JOBS) are submitted through
 * JobService.SubmitJob, at most 64 in flight, to a real cluster started here:
 * nats-server, job-manager, coordinator and two agents with 16 slots each,
 * every one its own process (the scheduler plays no part in submitted jobs).
 * Reported:
 *   - end-to-end jobs/s = N / (last finished_at − first client-side submit),
 *   - p50/p99 of submit→start (started_at − submitted_at) and submit→finish
 *     (finished_at − submitted_at), read from the job records the services
 *     wrote, fetched once at the end,
 *   - the ceiling measured in the same run: two plain Node processes, each
 *     spawning N/2 `/bin/true` at concurrency 16 with child_process.spawn,
 *     both at once, with the cluster stopped (once before the cluster starts
 *     and once after it stopped), and the ratio end-to-end / ceiling.
 *
 * Everything started here (processes, temporary folders) is removed on exit,
 * on failure and on SIGINT/SIGTERM. Exit code 0 when every job SUCCEEDED.
 *
 * Environment (all optional):
 *   BENCH_JOBS=5000           jobs in the measured run
 *   BENCH_IN_FLIGHT=64        SubmitJob calls in flight at once
 *   BENCH_RATE=0              submit at this steady rate (jobs/s) instead of a burst; then
 *                             submit→start p99 is compared with the steady-load target
 *   BENCH_WARMUP=2000         jobs run (and waited for) before the measured run; 0 for none. Enough
 *                             that V8 has optimized the hot paths of every process (see bench/README.md)
 *   BENCH_CEILING_BEFORE=1    0 skips the ceiling run before the cluster starts
 *   BENCH_TIMEOUT_MS          give up waiting for the jobs after this long (default max(120 s, N × 40 ms))
 *   BENCH_SHOW_LOGS=1         also print every warn/error line the services logged
 *   BENCH_NATS=single         "cluster": a 3-node nats-server cluster on loopback with every
 *                             bucket at 3 replicas (ASPEN_BUCKET_REPLICAS=3) instead of one node
 *   BENCH_NATS_SYNC=          "always": JetStream fsyncs every write (`sync_interval: always`);
 *                             needs nats-server ≥ 2.10 — scripts/fetch-nats-server.sh unpacks one,
 *                             point ASPEN_NATS_SERVER_BIN at it
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, platform, release, arch, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  CoordinatorServiceClient,
  JobServiceClient,
  JobState,
  ListJobsRequest,
  SubmitJobRequest,
  WorkerHealth,
} from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { freePort, natsServerBin, sleep, startNats, startNatsCluster, startService, waitFor, waitHealthy } from "@aspen/testkit";

// ---------------------------------------------------------------------------
// Parameters

function intEnv(name, fallback, min = 0) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer ≥ ${min}, got ${JSON.stringify(raw)}`);
  return value;
}

const JOBS = intEnv("BENCH_JOBS", 5000, 1);
const IN_FLIGHT = intEnv("BENCH_IN_FLIGHT", 64, 1);
/** Jobs per second for a paced (steady) run; 0 = submit as fast as IN_FLIGHT allows. */
const RATE = intEnv("BENCH_RATE", 0, 0);
const WARMUP = intEnv("BENCH_WARMUP", 2000, 0);
const CEILING_BEFORE = process.env.BENCH_CEILING_BEFORE !== "0";
const TIMEOUT_MS = intEnv("BENCH_TIMEOUT_MS", Math.max(120_000, JOBS * 40), 1000);
const SHOW_LOGS = process.env.BENCH_SHOW_LOGS === "1";
const NATS_MODE = process.env.BENCH_NATS || "single";
if (NATS_MODE !== "single" && NATS_MODE !== "cluster")
  throw new Error(`BENCH_NATS must be "single" or "cluster", got ${JSON.stringify(NATS_MODE)}`);
const NATS_SYNC = process.env.BENCH_NATS_SYNC || "";
if (NATS_SYNC !== "" && NATS_SYNC !== "always")
  throw new Error(`BENCH_NATS_SYNC must be "always" or unset, got ${JSON.stringify(NATS_SYNC)}`);
const AGENTS = 2;
const SLOTS = 16;
const COMMAND = "/bin/true";
/** Targets from the job-lifecycle issue. */
const TARGET_RATIO = 0.65;
const TARGET_STEADY_P99_MS = 10;

const S = JobState;
const NON_TERMINAL = [S.JOB_STATE_PENDING, S.JOB_STATE_QUEUED, S.JOB_STATE_ASSIGNED, S.JOB_STATE_RUNNING];
const stateName = (s) => (JobState[s] ?? String(s)).replace(/^JOB_STATE_/, "");

// ---------------------------------------------------------------------------
// Small helpers

const log = (...args) => console.error(`[bench +${((performance.now() - t0) / 1000).toFixed(1)}s]`, ...args);
const t0 = performance.now();
const epochMs = () => performance.timeOrigin + performance.now();

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function summary(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1] ?? NaN,
  };
}

const fmtMs = (v) => (Number.isNaN(v) ? "n/a" : v >= 100 ? `${Math.round(v)} ms` : `${v.toFixed(1)} ms`);
const fmtRate = (v) => `${Math.round(v)} jobs/s`;

/** /proc/<pid>/stat fields after "(comm) ": state is f[0], ppid f[1], utime, stime, cutime, cstime f[11..14]. */
function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/**
 * CPU seconds (user + system) a Linux process has used so far: its own, and that of its
 * descendants — the ones it has reaped and the ones still alive (for an agent: its fork
 * server, which lives as long as the agent, and the jobs). USER_HZ is 100 on Linux.
 * Undefined elsewhere or once it is gone.
 */
function cpuSeconds(pid) {
  try {
    const f = statFields(pid);
    let children = (Number(f[13]) + Number(f[14])) / 100;
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (Number(statFields(entry)[1]) !== pid) continue;
      } catch {
        continue; // gone meanwhile
      }
      const child = cpuSeconds(Number(entry));
      if (child) children += child.self + child.children;
    }
    return { self: (Number(f[11]) + Number(f[12])) / 100, children };
  } catch {
    return undefined;
  }
}

/** Machine-wide CPU seconds {busy, total} (all cores) from /proc/stat; undefined where there is none. */
function machineCpu() {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const total = v.reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    return { busy: (total - idle) / 100, total: total / 100 };
  } catch {
    return undefined;
  }
}

/** The pid of the nats-server whose store is `storeDir` (testkit does not expose it). */
function natsPid(storeDir) {
  try {
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const cmd = readFileSync(`/proc/${entry}/cmdline`, "utf8");
        if (cmd.includes("nats-server") && cmd.includes(storeDir)) return Number(entry);
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    // no /proc
  }
  return undefined;
}

function natsVersion() {
  try {
    return execFileSync(natsServerBin(), ["--version"], { encoding: "utf8" })
      .trim()
      .replace(/^nats-server:\s*/, "");
  } catch {
    return "unknown";
  }
}

// ---------------------------------------------------------------------------
// Clean-up: everything started registers its undo here; run on exit, failure or signal.

const cleanups = [];
let cleaning = Promise.resolve();
/** Undoes everything registered so far, newest first. Calls queue up; each drains the stack. */
function cleanUp() {
  cleaning = cleaning.then(async () => {
    while (cleanups.length > 0) {
      const fn = cleanups.pop();
      try {
        await fn();
      } catch (err) {
        log(`clean-up step failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  });
  return cleaning;
}

/**
 * Set on SIGINT/SIGTERM: nothing new is started (a start in progress registers its undo
 * and the next step throws), what runs is stopped at once, and once main() has unwound
 * and cleaned up the process exits 130. A second signal, or 60 s, exits regardless.
 */
let aborted = false;
function checkNotAborted() {
  if (aborted) throw new Error("interrupted");
}
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    aborted = true;
    log(`${signal}: stopping everything (again to exit at once)`);
    process.once(signal, () => process.exit(130));
    setTimeout(() => process.exit(130), 60_000).unref();
    void cleanUp();
  });
}

// ---------------------------------------------------------------------------
// Ceiling: two plain Node processes, each spawning its share of /bin/true at concurrency 16.

// Each child says "ready" once Node has started, waits for "go" (so both loops start
// together and Node's own start-up is not counted), runs its loop and reports its own
// start and end (epoch ms). Plain `spawn(cmd)`: default stdio (pipes), done on 'close'.
const CEILING_CHILD = `
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
const total = Number(process.env.CEIL_JOBS), concurrency = Number(process.env.CEIL_CONCURRENCY), command = process.env.CEIL_COMMAND;
const now = () => performance.timeOrigin + performance.now();
// CPU seconds of this process and of the children it reaped (Linux; 0 elsewhere).
const cpu = () => {
  try {
    const s = readFileSync("/proc/self/stat", "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
  } catch {
    return 0;
  }
};
process.once("message", () => {
  const start = now();
  const cpuStart = cpu();
  let launched = 0, finished = 0, failed = 0;
  const launch = () => {
    while (launched - finished < concurrency && launched < total) {
      launched++;
      let settled = false;
      const child = spawn(command);
      const done = (ok) => {
        if (settled) return;
        settled = true;
        if (!ok) failed++;
        finished++;
        if (finished === total) process.send({ start, end: now(), jobs: total, failed, cpu: cpu() - cpuStart }, () => process.disconnect());
        else launch();
      };
      child.once("error", () => done(false));
      child.once("close", (code) => done(code === 0));
    }
  };
  if (total === 0) process.send({ start, end: start, jobs: 0, failed: 0, cpu: 0 }, () => process.disconnect());
  else launch();
});
process.send("ready");
`;

async function measureCeiling(label) {
  checkNotAborted();
  const shares = Array.from({ length: AGENTS }, (_, i) => Math.floor(JOBS / AGENTS) + (i < JOBS % AGENTS ? 1 : 0));
  const children = shares.map((share) =>
    spawn(process.execPath, ["--input-type=module", "-e", CEILING_CHILD], {
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        CEIL_JOBS: String(share),
        CEIL_CONCURRENCY: String(SLOTS),
        CEIL_COMMAND: COMMAND,
      },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    }),
  );
  const killAll = () =>
    Promise.all(
      children.map((c) => {
        if (c.exitCode !== null || c.signalCode !== null) return undefined;
        const gone = new Promise((resolve) => c.once("exit", resolve));
        c.kill("SIGKILL");
        return Promise.race([gone, new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
      }),
    );
  cleanups.push(killAll);
  try {
    const exited = children.map(
      (c) =>
        new Promise((resolve) => (c.exitCode !== null || c.signalCode !== null ? resolve() : c.once("exit", () => resolve()))),
    );
    const ready = children.map(
      (c) =>
        new Promise((resolve, reject) => {
          c.once("message", (m) => (m === "ready" ? resolve() : reject(new Error(`ceiling child said ${JSON.stringify(m)}`))));
          c.once("exit", (code) => reject(new Error(`ceiling child exited early (${code})`)));
        }),
    );
    await Promise.all(ready);
    const results = children.map(
      (c) =>
        new Promise((resolve, reject) => {
          c.once("message", resolve);
          c.once("exit", (code) => reject(new Error(`ceiling child exited without a result (${code})`)));
        }),
    );
    const machineBefore = machineCpu();
    children.forEach((c) => c.send("go"));
    let timer;
    const reports = await Promise.race([
      Promise.all(results),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`ceiling run (${label}) did not finish within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    const machineAfter = machineCpu();
    await Promise.all(exited);
    // Share of the machine's CPU busy during the run, and the part of it not spent by the
    // two loops and their /bin/true children: other load (kernel threads, other processes).
    const ours = reports.reduce((sum, r) => sum + r.cpu, 0);
    const busy =
      machineBefore && machineAfter
        ? (machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total)
        : undefined;
    const other =
      machineBefore && machineAfter
        ? Math.max(0, machineAfter.busy - machineBefore.busy - ours) / (machineAfter.total - machineBefore.total)
        : undefined;
    const start = Math.min(...reports.map((r) => r.start));
    const end = Math.max(...reports.map((r) => r.end));
    const failed = reports.reduce((sum, r) => sum + r.failed, 0);
    const wallMs = end - start;
    const rate = (JOBS / wallMs) * 1000;
    log(
      `ceiling ${label}: ${fmtRate(rate)} (${JOBS} × ${COMMAND} in ${(wallMs / 1000).toFixed(2)} s` +
        `${failed ? `, ${failed} FAILED` : ""}` +
        `${busy === undefined ? "" : `; machine ${Math.round(busy * 100)}% busy, ${Math.round(other * 100)}% of it not this run`})`,
    );
    if (failed > 0) throw new Error(`ceiling run (${label}): ${failed} of ${JOBS} spawns of ${COMMAND} failed`);
    return { rate, wallMs, failed, busy, other, cpuPerJobMs: (ours * 1000) / JOBS };
  } finally {
    const at = cleanups.indexOf(killAll);
    if (at >= 0) cleanups.splice(at, 1);
    await killAll();
  }
}

// ---------------------------------------------------------------------------
// The cluster

async function startCluster(workDir) {
  checkNotAborted();
  // One node, or three with R3 buckets; either way: url (for ASPEN_NATS_SERVERS), pids, stop.
  let nats;
  if (NATS_MODE === "cluster") {
    const c = await startNatsCluster({ size: 3, jetstreamExtra: NATS_SYNC ? `sync_interval: ${NATS_SYNC}` : undefined });
    cleanups.push(() => c[Symbol.asyncDispose]());
    nats = {
      url: c.urls.join(","),
      replicas: "3",
      pids: () => Object.fromEntries(c.nodes.map((n) => [`nats-server ${n.name}`, n.pid()])),
      stop: () => Promise.all(c.nodes.map((n) => n.stop())),
    };
  } else {
    const n = await startNats(NATS_SYNC ? { config: `jetstream { sync_interval: ${NATS_SYNC} }\n` } : {});
    cleanups.push(() => n[Symbol.asyncDispose]());
    nats = { url: n.url, replicas: "1", pids: () => ({ "nats-server": natsPid(n.storeDir) }), stop: () => n.stop() };
  }
  checkNotAborted();
  const [jmPort, coordPort, ...healthPorts] = await Promise.all([
    freePort(),
    freePort(),
    ...Array.from({ length: AGENTS }, freePort),
  ]);
  const jmAddr = `127.0.0.1:${jmPort}`;
  const coordAddr = `127.0.0.1:${coordPort}`;
  // ASPEN_* settings in the bench's own environment reach every service (e.g. ASPEN_REPORT_LINGER=0ms).
  const passed = Object.entries(process.env).filter(
    ([k]) => k.startsWith("ASPEN_") && k !== "ASPEN_NATS_SERVER_BIN" && k !== "ASPEN_SERVICE_NODE_ARGS",
  );
  const common = {
    OTEL_SDK_DISABLED: "true",
    ASPEN_LOG_LEVEL: "warn",
    ASPEN_BUCKET_REPLICAS: nats.replicas,
    ...Object.fromEntries(passed),
  };
  const services = [];
  const stopService = async (svc) => {
    try {
      const code = await svc.stop(15_000);
      if (code !== 0) svc.stopProblem = `exited with code ${code} on SIGTERM`;
    } catch (err) {
      svc.stopProblem = err instanceof Error ? err.message : String(err);
    }
  };
  const start = (name, env, label) => {
    checkNotAborted();
    const svc = startService(name, { ...common, ...env }, label);
    services.push(svc);
    cleanups.push(() => stopService(svc));
    return svc;
  };
  const jobManager = start("job-manager", {
    ASPEN_GRPC_HOST: "127.0.0.1",
    ASPEN_GRPC_PORT: String(jmPort),
    ASPEN_NATS_SERVERS: nats.url,
    ASPEN_COORDINATOR_ADDR: coordAddr,
  });
  const coordinator = start("coordinator", {
    ASPEN_GRPC_HOST: "127.0.0.1",
    ASPEN_GRPC_PORT: String(coordPort),
    ASPEN_NATS_SERVERS: nats.url,
    ASPEN_JOB_MANAGER_ADDR: jmAddr,
  });
  await Promise.all([waitHealthy(jmAddr, 30_000, jobManager), waitHealthy(coordAddr, 30_000, coordinator)]);
  const workerIds = healthPorts.map((_, i) => `bench-agent-${i + 1}`);
  const agents = healthPorts.map((port, i) =>
    start(
      "agent",
      {
        ASPEN_COORDINATOR_ADDR: coordAddr,
        ASPEN_WORKER_ID: workerIds[i],
        ASPEN_SLOTS: String(SLOTS),
        ASPEN_HEALTH_HOST: "127.0.0.1",
        ASPEN_HEALTH_PORT: String(port),
        ASPEN_WORK_DIR: workDir,
      },
      workerIds[i],
    ),
  );
  await Promise.all(agents.map((agent, i) => waitHealthy(`127.0.0.1:${healthPorts[i]}`, 30_000, agent)));

  const jobs = createClient(JobServiceClient, jmAddr);
  const coord = createClient(CoordinatorServiceClient, coordAddr);
  cleanups.push(() => {
    jobs.close();
    coord.close();
  });
  await waitFor(
    `both agents HEALTHY in ListWorkers`,
    async () => {
      const { workers } = await unaryCall(coord.listWorkers.bind(coord), {}, { deadlineMs: 2_000 });
      return workerIds.every((id) =>
        workers.some((w) => w.id === id && w.health === WorkerHealth.WORKER_HEALTH_HEALTHY && w.slots === SLOTS),
      );
    },
    30_000,
    100,
  );
  // Stops the services (agents first) and NATS now, keeping the clean-up order for what remains.
  const stop = async () => {
    jobs.close();
    coord.close();
    for (const agent of agents) await stopService(agent);
    await stopService(coordinator);
    await stopService(jobManager);
    await nats.stop();
  };
  return { nats, jobs, coord, services, jobManager, coordinator, agents, stop };
}

// ---------------------------------------------------------------------------
// Submitting and waiting

/**
 * Submits `count` jobs, at most IN_FLIGHT at once. Per job: the client clock just before
 * the call (epoch ms) and the call's latency. Failed calls are counted, not retried.
 */
async function submitAll(jobs, count, label) {
  const submitted = []; // { id, clientSubmitMs, rpcMs }
  const failures = [];
  let next = 0;
  const request = SubmitJobRequest.fromPartial({ spec: { exec: { command: COMMAND }, name: `bench-${label}` } });
  const pacedFrom = performance.now();
  const worker = async () => {
    while (next < count) {
      checkNotAborted();
      const index = next++;
      if (RATE > 0 && label !== "warmup") {
        const due = pacedFrom + (index * 1000) / RATE;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
      }
      const clientSubmitMs = epochMs();
      const before = performance.now();
      try {
        const res = await unaryCall(jobs.submitJob.bind(jobs), request, { deadlineMs: 30_000 });
        submitted.push({ id: res.job.id, clientSubmitMs, rpcMs: performance.now() - before });
      } catch (err) {
        failures.push(err instanceof Error ? err.message : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, count) }, worker));
  return { submitted, failures };
}

/**
 * Waits until no job is left in a non-terminal state.
 *
 * Why this probe: WatchJob per job would hold N server streams and N listeners open
 * in the job-manager for the whole run (load the benchmark would add to what it
 * measures), and counting SUCCEEDED with full ListJobs pages re-serializes thousands
 * of records every poll and never ends if a job fails. ListJobs filtered on the
 * non-terminal states with page_size 1 answers "is anything still in flight?" with
 * at most one record on the wire, from the job-manager's in-memory index (a filter
 * and a sort of the unfinished jobs, no KV read). Its poll interval does not affect
 * any figure: the timings all come from the job records, fetched once at the end.
 */
async function waitAllTerminal(jobs, expected, deadlineMs) {
  const started = performance.now();
  let lastNote = started;
  for (;;) {
    checkNotAborted();
    const res = await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ states: NON_TERMINAL, pageSize: 1 }), {
      deadlineMs: 10_000,
    });
    if (res.jobs.length === 0) return;
    const now = performance.now();
    if (now - started > deadlineMs) {
      throw new Error(`timed out after ${Math.round(deadlineMs / 1000)} s waiting for ${expected} jobs to finish`);
    }
    if (now - lastNote > 10_000) {
      lastNote = now;
      log(
        `still waiting for jobs to finish (${Math.round((now - started) / 1000)} s; newest unfinished: ${res.jobs[0].id} ${stateName(res.jobs[0].state)})`,
      );
    }
    await sleep(250);
  }
}

/** Every job record, through ListJobs pages of 1000 (served from the job-manager's index). */
async function fetchAllJobs(jobs) {
  const out = new Map();
  let pageToken = "";
  do {
    const res = await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ pageSize: 1000, pageToken }), {
      deadlineMs: 30_000,
    });
    for (const job of res.jobs) out.set(job.id, job);
    pageToken = res.nextPageToken;
  } while (pageToken);
  return out;
}

function describeCeiling(c) {
  const load = c.other === undefined ? "" : `; other load on the machine meanwhile: ${Math.round(c.other * 100)}% of all cores`;
  return `${(c.wallMs / 1000).toFixed(2)} s${load}`;
}

/** Warn/error lines each service logged, grouped by message. */
function logReport(services) {
  const lines = [];
  for (const svc of services) {
    const byMsg = new Map();
    let warn = 0;
    let error = 0;
    for (const entry of svc.logs) {
      const level = Number(entry.level);
      if (level >= 50) error++;
      else if (level >= 40) warn++;
      else continue;
      const key = `${level >= 60 ? "FATAL" : level >= 50 ? "ERROR" : "WARN"} ${String(entry.msg)}`;
      const seen = byMsg.get(key) ?? { count: 0, sample: entry };
      seen.count++;
      byMsg.set(key, seen);
    }
    const raw = svc.output().trim();
    if (warn + error === 0 && !raw && !svc.stopProblem) {
      lines.push(`  ${svc.name}: clean (no warnings or errors)`);
      continue;
    }
    lines.push(`  ${svc.name}: ${warn} warnings, ${error} errors${svc.stopProblem ? `; on stop: ${svc.stopProblem}` : ""}`);
    for (const [key, { count, sample }] of [...byMsg].sort((a, b) => b[1].count - a[1].count)) {
      const { level: _l, time: _t, pid: _p, service: _s, name: _n, msg: _m, hostname: _h, ...rest } = sample;
      lines.push(`    ${count} × ${key}  e.g. ${JSON.stringify(rest).slice(0, 300)}`);
    }
    if (SHOW_LOGS) {
      for (const entry of svc.logs) if (Number(entry.level) >= 40) lines.push(`    ${JSON.stringify(entry)}`);
    }
    if (raw) lines.push(`    non-JSON output (tail):\n${raw.slice(-2000).replace(/^/gm, "      ")}`);
  }
  return lines;
}

// ---------------------------------------------------------------------------
// Main

async function main() {
  const cpuList = cpus();
  const machine = [
    `${cpuList.length} CPU${cpuList.length === 1 ? "" : "s"} (${cpuList[0]?.model?.trim() ?? "unknown"})`,
    `${platform()} ${release()} ${arch()}`,
    `${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM`,
    `load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  ].join(", ");
  const versions = `node ${process.version}, nats-server ${natsVersion()}`;
  log(`machine: ${machine}; ${versions}`);
  log(`${JOBS} jobs of ${COMMAND}, ${AGENTS} agents × ${SLOTS} slots, ${IN_FLIGHT} submissions in flight, warm-up ${WARMUP}`);

  const workDir = mkdtempSync(join(tmpdir(), "aspen-bench-"));
  cleanups.push(() => rmSync(workDir, { recursive: true, force: true }));

  const ceilingBefore = CEILING_BEFORE ? await measureCeiling("before the cluster") : undefined;

  log(
    `starting ${NATS_MODE === "cluster" ? "3 nats-servers (R3 buckets)" : "nats-server"}, job-manager, coordinator and 2 agents`,
  );
  const clusterStart = performance.now();
  const cluster = await startCluster(workDir);
  activeCluster = cluster;
  log(`cluster ready in ${((performance.now() - clusterStart) / 1000).toFixed(1)} s`);

  if (WARMUP > 0) {
    const warm = await submitAll(cluster.jobs, WARMUP, "warmup");
    if (warm.failures.length > 0)
      throw new Error(`warm-up: ${warm.failures.length} submissions failed, first: ${warm.failures[0]}`);
    await waitAllTerminal(cluster.jobs, WARMUP, Math.max(120_000, WARMUP * 40));
    log(`warm-up: ${WARMUP} jobs done`);
  }

  const pids = {
    "job-manager": cluster.jobManager.pid,
    coordinator: cluster.coordinator.pid,
    ...Object.fromEntries(cluster.agents.map((a) => [a.name, a.pid])),
    ...cluster.nats.pids(),
  };
  const cpuBefore = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, pid ? cpuSeconds(pid) : undefined]));
  const benchCpuBefore = process.cpuUsage();
  const machineBefore = machineCpu();

  log(`submitting ${JOBS} jobs`);
  const runStart = performance.now();
  const { submitted, failures } = await submitAll(cluster.jobs, JOBS, "run");
  const submitDoneMs = performance.now() - runStart;
  log(
    `submitted ${submitted.length} in ${(submitDoneMs / 1000).toFixed(2)} s (${fmtRate((submitted.length / submitDoneMs) * 1000)})${failures.length ? `, ${failures.length} FAILED` : ""}`,
  );
  await waitAllTerminal(cluster.jobs, submitted.length, TIMEOUT_MS);
  const waitDoneMs = performance.now() - runStart;
  log(`all jobs terminal ${(waitDoneMs / 1000).toFixed(2)} s after the first submit (detected by polling)`);

  const cpuAfter = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, pid ? cpuSeconds(pid) : undefined]));
  const benchCpu = process.cpuUsage(benchCpuBefore);
  const machineAfter = machineCpu();

  const records = await fetchAllJobs(cluster.jobs);
  const logLines = logReport(cluster.services); // before stop: shutdown noise is reported separately below
  log("stopping the cluster");
  activeCluster = undefined;
  await cluster.stop();
  const stopProblems = cluster.services.filter((s) => s.stopProblem).map((s) => `  ${s.name}: ${s.stopProblem}`);

  const ceilingAfter = await measureCeiling("after the cluster");

  // ---- figures
  const states = new Map();
  const missing = [];
  const toStart = [];
  const toFinish = [];
  const toAssign = [];
  const assignToStart = [];
  const run = [];
  let lastFinish = -Infinity;
  let lastStart = -Infinity;
  for (const s of submitted) {
    const job = records.get(s.id);
    if (!job) {
      missing.push(s.id);
      continue;
    }
    states.set(job.state, (states.get(job.state) ?? 0) + 1);
    const sub = job.submittedAt?.getTime();
    const asg = job.assignedAt?.getTime();
    const st = job.startedAt?.getTime();
    const fin = job.finishedAt?.getTime();
    if (fin !== undefined) lastFinish = Math.max(lastFinish, fin);
    if (st !== undefined) lastStart = Math.max(lastStart, st);
    if (sub === undefined) continue;
    if (st !== undefined) toStart.push(st - sub);
    if (fin !== undefined) toFinish.push(fin - sub);
    if (asg !== undefined) toAssign.push(asg - sub);
    if (asg !== undefined && st !== undefined) assignToStart.push(st - asg);
    if (st !== undefined && fin !== undefined) run.push(fin - st);
  }
  const firstSubmit = Math.min(...submitted.map((s) => s.clientSubmitMs));
  const windowMs = lastFinish - firstSubmit;
  const e2eRate = (submitted.length / windowMs) * 1000;
  const start = summary(toStart);
  const finish = summary(toFinish);
  const assign = summary(toAssign);
  const a2s = summary(assignToStart);
  const exec = summary(run);
  const rpc = summary(submitted.map((s) => s.rpcMs));
  const ratio = e2eRate / ceilingAfter.rate;
  const succeeded = states.get(S.JOB_STATE_SUCCEEDED) ?? 0;
  const others = [...states].filter(([s]) => s !== S.JOB_STATE_SUCCEEDED);
  const allOk = failures.length === 0 && missing.length === 0 && succeeded === JOBS;

  // CPU seconds over the run (first submit → all terminal) and as % of one core.
  const pct = (seconds) => `${Math.round((seconds * 1000 * 100) / waitDoneMs)}%`;
  let accounted = 0;
  const cpuLines = Object.keys(pids).map((k) => {
    const [a, b] = [cpuBefore[k], cpuAfter[k]];
    if (!a || !b) return `${k} n/a`;
    const self = b.self - a.self;
    const children = b.children - a.children;
    accounted += self + children;
    return (
      `${k} ${self.toFixed(2)} s (${pct(self)})` + (children > 0 ? ` + its jobs ${children.toFixed(2)} s (${pct(children)})` : "")
    );
  });
  const benchSeconds = (benchCpu.user + benchCpu.system) / 1e6;
  const clusterCpuPerJobMs = (accounted * 1000) / submitted.length;
  accounted += benchSeconds;
  cpuLines.push(`bench client ${benchSeconds.toFixed(2)} s (${pct(benchSeconds)})`);
  let runOther;
  if (machineBefore && machineAfter) {
    const busy = machineAfter.busy - machineBefore.busy;
    runOther = Math.max(0, busy - accounted) / (machineAfter.total - machineBefore.total);
    const cores = cpuList.length;
    cpuLines.push(
      `whole machine ${busy.toFixed(2)} s busy of ${(machineAfter.total - machineBefore.total).toFixed(2)} s ` +
        `(${Math.round((100 * busy) / (machineAfter.total - machineBefore.total))}% of ${cores} cores; ` +
        `${Math.max(0, busy - accounted).toFixed(2)} s not in the counters above: kernel threads, processes that came and went, other load)`,
    );
  }

  // Other work on the machine skews every figure here; say so when there was much of it.
  const noisy = [
    ceilingBefore?.other > 0.15 ? `${Math.round(ceilingBefore.other * 100)}% during the ceiling before` : "",
    ceilingAfter.other > 0.15 ? `${Math.round(ceilingAfter.other * 100)}% during the ceiling after` : "",
    runOther > 0.15 ? `${Math.round(runOther * 100)}% during the Aspen run` : "",
  ].filter(Boolean);

  const out = [
    "",
    "=== Aspen end-to-end benchmark ===",
    `machine:        ${machine}`,
    `versions:       ${versions}`,
    `nats:           ${NATS_MODE === "cluster" ? "3-node cluster on loopback, buckets at 3 replicas (BENCH_NATS=cluster)" : "one node, buckets at 1 replica"}${NATS_SYNC ? ", sync_interval: always (fsync per write)" : ", default sync (fsync every 2 min)"}`,
    `run:            ${JOBS} × ${COMMAND} via JobService.SubmitJob (${IN_FLIGHT} in flight), ${AGENTS} agents × ${SLOTS} slots` +
      (WARMUP ? `, after ${WARMUP} warm-up jobs (not counted)` : ""),
    "",
    `end-to-end:     ${fmtRate(e2eRate)}   (${submitted.length} jobs, first submit → last finish ${(windowMs / 1000).toFixed(2)} s)`,
    `submit→start:   p50 ${fmtMs(start.p50)}   p99 ${fmtMs(start.p99)}   max ${fmtMs(start.max)}`,
    `submit→finish:  p50 ${fmtMs(finish.p50)}   p99 ${fmtMs(finish.p99)}   max ${fmtMs(finish.max)}`,
    `ceiling (raw spawn, ${AGENTS}×${SLOTS}): ${fmtRate(ceilingAfter.rate)}   (after the run, cluster stopped; ${describeCeiling(ceilingAfter)})` +
      (ceilingBefore
        ? `\n                ${fmtRate(ceilingBefore.rate)}   (before the cluster started; ${describeCeiling(ceilingBefore)})`
        : ""),
    `ratio:          ${ratio.toFixed(2)}   target ≥ ${TARGET_RATIO} → ${ratio >= TARGET_RATIO ? "met" : "NOT met"}` +
      (ceilingBefore ? `   (against the ceiling before: ${(e2eRate / ceilingBefore.rate).toFixed(2)})` : ""),
    RATE > 0
      ? `steady load:    ${RATE} jobs/s submitted evenly: submit→start p99 ${fmtMs(start.p99)}   target ≤ ${TARGET_STEADY_P99_MS} ms at 100 jobs/s → ${start.p99 <= TARGET_STEADY_P99_MS ? "met" : "NOT met"}`
      : `informational:  target at a steady 100 jobs/s: submit→start p99 ≤ ${TARGET_STEADY_P99_MS} ms (run with BENCH_RATE=100 to measure; this run is a burst of ${JOBS}, so submit→start includes queueing)`,
    "",
    `jobs:           ${succeeded} SUCCEEDED` +
      (others.length ? `; others: ${others.map(([s, n]) => `${stateName(s)} ${n}`).join(", ")}` : "") +
      (missing.length ? `; ${missing.length} submitted but absent from ListJobs` : "") +
      (failures.length ? `; ${failures.length} SubmitJob calls FAILED (first: ${failures[0]})` : ""),
    "",
    "breakdown (from job records, ms resolution):",
    `  submit→assign   p50 ${fmtMs(assign.p50)}   p99 ${fmtMs(assign.p99)}`,
    `  assign→start    p50 ${fmtMs(a2s.p50)}   p99 ${fmtMs(a2s.p99)}`,
    `  start→finish    p50 ${fmtMs(exec.p50)}   p99 ${fmtMs(exec.p99)}   (the process itself, as the agent saw it)`,
    `  SubmitJob RPC   p50 ${fmtMs(rpc.p50)}   p99 ${fmtMs(rpc.p99)}   (client side, ${IN_FLIGHT} in flight)`,
    `  submission:     ${submitted.length} in ${(submitDoneMs / 1000).toFixed(2)} s = ${fmtRate((submitted.length / submitDoneMs) * 1000)}; last start ${((lastStart - firstSubmit) / 1000).toFixed(2)} s after the first submit`,
    `  CPU during the run (${(waitDoneMs / 1000).toFixed(1)} s; % of one core):`,
    ...cpuLines.map((l) => `    ${l}`),
    `  CPU per job:    Aspen ${clusterCpuPerJobMs.toFixed(2)} ms (services, NATS and the jobs themselves; not the bench client)` +
      ` vs raw spawn ${ceilingAfter.cpuPerJobMs.toFixed(2)} ms (loop and /bin/true)`,
    "",
    "service logs (warn and above, during the run):",
    ...logLines,
    ...(stopProblems.length ? ["problems stopping services:", ...stopProblems] : []),
    ...(noisy.length
      ? [
          "",
          `WARNING: the machine was busy with other work (share of all cores not used by this benchmark: ${noisy.join(", ")});` +
            " the figures are skewed; rerun on a quiet machine.",
        ]
      : []),
    "",
  ];
  console.log(out.join("\n"));
  if (!allOk) {
    console.log("FAILED: not every job SUCCEEDED (see the counts above)");
    process.exitCode = 1;
  }
}

/** On failure while the cluster runs: where the jobs are, and what the services logged. */
async function diagnose(cluster) {
  try {
    const records = await Promise.race([
      fetchAllJobs(cluster.jobs),
      new Promise((resolve) => setTimeout(resolve, 15_000).unref()),
    ]);
    if (records) {
      const counts = new Map();
      for (const job of records.values()) counts.set(stateName(job.state), (counts.get(stateName(job.state)) ?? 0) + 1);
      console.error(`jobs by state: ${[...counts].map(([k, n]) => `${k} ${n}`).join(", ")}`);
      const stuck = [...records.values()].filter((j) => NON_TERMINAL.includes(j.state)).slice(0, 3);
      for (const job of stuck) console.error(`  e.g. ${job.id} ${stateName(job.state)} on ${job.workerId || "-"}: ${job.reason}`);
    } else {
      console.error("jobs by state: ListJobs did not answer within 15 s");
    }
  } catch (err) {
    console.error(`jobs by state: ListJobs failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  console.error(["service logs (warn and above):", ...logReport(cluster.services)].join("\n"));
}

let activeCluster;
try {
  await main();
} catch (err) {
  if (aborted) console.error("benchmark interrupted; cleaning up");
  else console.error(`benchmark failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  if (activeCluster && !aborted) await diagnose(activeCluster);
  process.exitCode = 1;
} finally {
  await cleanUp();
  if (aborted) process.exit(130);
}
