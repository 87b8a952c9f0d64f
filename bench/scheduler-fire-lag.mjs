#!/usr/bin/env node
/**
 * Scheduler precision and scale, against the scheduler issue's targets.
 *
 *   node bench/scheduler-fire-lag.mjs      (build first: npm run build)
 *
 * Runs, each on its own fresh nats-server + job-manager + coordinator +
 * scheduler (no agents: fired jobs stay queued, which is all a fire needs):
 *   (a) 1,000 schedules every 10 s (100 fires/s) for 60 s — target p99 ≤ 5 ms;
 *   (b) 10,000 schedules every 10 s (1,000 fires/s) for 60 s — target no
 *       missed fire, p99 ≤ 50 ms, no growth of lag over the run;
 *   cold start: 100,000 stored schedules → all armed — target ≤ 2 s, with RSS;
 *   failover: two replicas, the leader SIGKILLed → first fire by the other.
 * Fire lag = the job-manager's SubmitJob acknowledgement received by the
 * scheduler − the nominal instant, read from the scheduler's
 * aspen.scheduler.fire_lag histogram (Prometheus endpoint, 1 ms buckets up to
 * 10 ms, so percentiles print as "≤ N ms"); max from GetSchedule's
 * max_fire_lag. CPU per fire is each process's user + system time over the
 * window (/proc) divided by the fires expected.
 * Schedules are `interval` 10 s with start_at phases spread evenly over the 10 s.
 *
 * Environment: BENCH_SECONDS=60, BENCH_ONLY=a,b,cold,failover, BENCH_COLD=100000;
 * BENCH_WARMUP_ROUNDS=3 (rounds of 10 s fired before the measured window and not
 * counted in it, so the figures are a running cluster's, not one V8 is still optimizing;
 * 0 measures from the very first fire — the fire and missed counts cover both);
 * BENCH_SCHEDULER_LOG_LEVEL=debug adds the per-fire breakdown (record, submit);
 * BENCH_SCHEDULER_NODE_OPTIONS is passed to the scheduler as NODE_OPTIONS.
 * (c) — 200 `* * * * * *` schedules on two agents, nominal → process start —
 * is bench/scheduler-fire-to-start.mjs.
 */
import { readdirSync, readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { CreateScheduleRequest, Schedule, SchedulerServiceClient } from "@aspen/proto";
import { createClient, createLogger, unaryCall } from "@aspen/runtime";
import { Store } from "@aspen/store";
import { freePort, sleep, startNats, startService, waitFor, waitHealthy } from "@aspen/testkit";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 60);
const ONLY = new Set((process.env.BENCH_ONLY ?? "a,b,cold,failover").split(","));
const COLD = Number(process.env.BENCH_COLD ?? 100_000);
/** Rounds (10 s each) every schedule fires before the measured window; 0 measures from the first fire. */
const WARMUP_ROUNDS = Number(process.env.BENCH_WARMUP_ROUNDS ?? 3);
const t0 = performance.now();
const log = (...a) => console.error(`[bench +${((performance.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const quiet = createLogger("bench", "error");

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
/** CPU time (user + system) a process has used so far, ms (Linux: /proc/<pid>/stat, in clock ticks of 10 ms). */
const cpuMs = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
};
/** The nats-server process using store folder `storeDir` (found by its command line). */
const natsPid = (storeDir) => {
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      if (args[0]?.endsWith("nats-server") && args[args.indexOf("-sd") + 1] === storeDir) return Number(d);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
};
const rssMb = (pid) => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
};

async function control(extraSchedulerEnv = {}) {
  const nats = await startNats();
  const [sp, jp, cp] = [await freePort(), await freePort(), await freePort()];
  const common = {
    ASPEN_NATS_SERVERS: nats.url,
    ASPEN_GRPC_HOST: "127.0.0.1",
    ASPEN_JOB_MANAGER_ADDR: `127.0.0.1:${jp}`,
    ASPEN_COORDINATOR_ADDR: `127.0.0.1:${cp}`,
    ASPEN_LOG_LEVEL: "info",
    OTEL_SDK_DISABLED: "true",
  };
  const procs = [];
  const start = async (name, port, env = {}, label = name) => {
    const p = startService(name, { ...common, ASPEN_GRPC_PORT: String(port), ...env }, label);
    procs.push(p);
    await waitHealthy(`127.0.0.1:${port}`, 30_000, p);
    return p;
  };
  const jobManager = await start("job-manager", jp);
  await start("coordinator", cp);
  return {
    nats,
    jobManager,
    common,
    sp,
    start,
    startScheduler: (env = {}, port = sp, label = "scheduler") =>
      start(
        "scheduler",
        port,
        {
          ASPEN_MAX_SCHEDULES: "200000",
          // e.g. BENCH_SCHEDULER_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the scheduler
          ...(process.env.BENCH_SCHEDULER_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_SCHEDULER_NODE_OPTIONS } : {}),
          ...extraSchedulerEnv,
          ...env,
        },
        label,
      ),
    async close() {
      await Promise.all(procs.map((p) => p.stop(20_000).catch(() => p.kill("SIGKILL"))));
      await nats[Symbol.asyncDispose]();
    },
  };
}

async function createMany(client, n, everyMs, phaseBase, inFlight = 64, endAt = undefined) {
  let next = 0;
  const one = async () => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      await unaryCall(
        client.createSchedule.bind(client),
        CreateScheduleRequest.fromPartial({
          scheduleId: `b-${i}`,
          spec: {
            kind: { $case: "interval", value: { every: { seconds: everyMs / 1000, nanos: 0 } } },
            startAt: new Date(phaseBase + Math.floor((i * everyMs) / n)),
            endAt: endAt === undefined ? undefined : new Date(endAt),
          },
          job: { exec: { command: "/bin/true" } },
        }),
      );
    }
  };
  await Promise.all(Array.from({ length: inFlight }, one));
}

/** The scheduler's fire-lag histogram (cumulative bucket counts by upper bound) from its Prometheus endpoint. */
async function scrapeLag(port) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const buckets = new Map();
  for (const m of text.matchAll(/^aspen_scheduler_fire_lag\w*_bucket\{[^}]*le="([^"]+)"[^}]*\} (\d+)/gm)) {
    const le = m[1] === "+Inf" ? Infinity : Number(m[1]);
    buckets.set(le, (buckets.get(le) ?? 0) + Number(m[2]));
  }
  return buckets;
}

/** Bucket counts of `b` − `a` → the upper bound of the bucket holding percentile `p` ("≤ N ms"). */
function histogram(a, b) {
  const bounds = [...b.keys()].sort((x, y) => x - y);
  const cum = bounds.map((le) => (b.get(le) ?? 0) - (a?.get(le) ?? 0));
  const count = cum[cum.length - 1] ?? 0;
  const pctOf = (p) => {
    const i = cum.findIndex((c) => c >= Math.ceil((p / 100) * count));
    return i < 0 ? NaN : bounds[i] === Infinity ? `> ${bounds[i - 1]}` : `≤ ${bounds[i]}`;
  };
  return { count, pct: pctOf };
}

async function lagRun(label, n, target) {
  log(`${label}: ${n} schedules every 10 s for ${SECONDS} s`);
  const c = await control();
  try {
    const metricsPort = await freePort();
    const sched = await c.startScheduler({
      ASPEN_METRICS_PORT: String(metricsPort),
      ASPEN_METRICS_HOST: "127.0.0.1",
      ...(process.env.BENCH_SCHEDULER_LOG_LEVEL ? { ASPEN_LOG_LEVEL: process.env.BENCH_SCHEDULER_LOG_LEVEL } : {}),
      ...(process.env.BENCH_MAX_CONCURRENT_FIRES ? { ASPEN_MAX_CONCURRENT_FIRES: process.env.BENCH_MAX_CONCURRENT_FIRES } : {}),
    });
    const client = createClient(SchedulerServiceClient, `127.0.0.1:${c.sp}`);
    // The window starts after WARMUP_ROUNDS rounds of fires that are not counted (JIT, caches).
    const warmupMs = WARMUP_ROUNDS * 10_000;
    const phaseBase = Math.ceil((Date.now() + 15_000 + warmupMs) / 10_000) * 10_000;
    const end = phaseBase + SECONDS * 1000;
    // end_at just before the window's end: every fire after the warm-up is one of the window's.
    await createMany(client, n, 10_000, phaseBase - warmupMs, 64, end - 1);
    log(
      `${label}: created; ${WARMUP_ROUNDS} warm-up round(s) from ${new Date(phaseBase - warmupMs).toISOString()}, ` +
        `measuring from ${new Date(phaseBase).toISOString()}`,
    );
    const third = (SECONDS * 1000) / 3;
    await sleep(Math.max(0, phaseBase - Date.now()));
    const natsId = natsPid(c.nats.storeDir);
    const cpuNow = () => ({
      scheduler: cpuMs(sched.pid),
      jobManager: cpuMs(c.jobManager.pid),
      nats: natsId ? cpuMs(natsId) : NaN,
    });
    const cpu0 = cpuNow();
    const h0 = await scrapeLag(metricsPort);
    await sleep(Math.max(0, phaseBase + third - Date.now()));
    const h1 = await scrapeLag(metricsPort);
    await sleep(Math.max(0, end - third - Date.now()));
    const h2 = await scrapeLag(metricsPort);
    await sleep(Math.max(0, end - Date.now()));
    const cpu1 = cpuNow();
    // Fires of the window's last instants acknowledged up to 2 s late still count.
    await sleep(2_000);
    const h3 = await scrapeLag(metricsPort);
    const all = histogram(h0, h3);
    const first = histogram(h0, h1);
    const last = histogram(h2, h3);
    const expected = n * (SECONDS / 10);
    // Every fire of the run, from the schedules' own counters. The lag histogram's window count
    // can be a few short: a fire due exactly at the window's start may be acknowledged before
    // the first scrape and so fall in the baseline.
    const expectedAll = n * (WARMUP_ROUNDS + SECONDS / 10);
    const warmup = WARMUP_ROUNDS > 0 ? `after ${WARMUP_ROUNDS} warm-up round(s) of ${n} fires, not counted; ` : "";
    const perFire = (k) => ((cpu1[k] - cpu0[k]) / Math.max(1, expected)).toFixed(3);
    let missed = 0;
    let firedCount = 0;
    let maxLag = 0;
    for (let page = ""; ;) {
      const res = await unaryCall(client.listSchedules.bind(client), { pageSize: 1000, pageToken: page });
      for (const s of res.schedules) {
        missed += s.status?.missedCount ?? 0;
        firedCount += Number(s.status?.fireCount ?? 0);
        const m = s.status?.maxFireLag;
        if (m) maxLag = Math.max(maxLag, Number(m.seconds) * 1000 + Math.round(m.nanos / 1e6));
      }
      if (!res.nextPageToken) break;
      page = res.nextPageToken;
    }
    client.close();
    const line =
      `${label}: ${warmup}fires ${firedCount}/${expectedAll} expected (warm-up included; the schedules' fire_count), missed ${missed}; ` +
      `lag (window: ${all.count} fires) p50 ${all.pct(50)} ms, ` +
      `p99 ${all.pct(99)} ms, max (whole run, warm-up included) ${maxLag} ms; first third p99 ${first.pct(99)} ms, last third p99 ${last.pct(99)} ms; ` +
      `scheduler RSS ${rssMb(sched.pid)} MB; CPU per fire: scheduler ${perFire("scheduler")} ms, ` +
      `job-manager ${perFire("jobManager")} ms, nats-server ${perFire("nats")} ms — target ${target}`;
    console.log(line);
    // With BENCH_SCHEDULER_LOG_LEVEL=debug: where a fire's time goes (record the instant, SubmitJob).
    const fired = sched.logs.filter((l) => l.msg === "fired" && l.mode === "schedule" && l.recordMs !== undefined);
    for (const k of fired.length > 0 ? ["lagMs", "recordMs", "submitMs"] : []) {
      const v = fired.map((l) => l[k]).sort((a, b) => a - b);
      console.log(`  ${k}: p50 ${pct(v, 50)} p90 ${pct(v, 90)} p99 ${pct(v, 99)} max ${v[v.length - 1]}`);
    }
    return line;
  } finally {
    await c.close();
  }
}

async function coldStart() {
  log(`cold start: writing ${COLD} schedules straight into the bucket`);
  const c = await control();
  try {
    const store = await Store.connect({ servers: [c.nats.url], name: "bench", log: quiet });
    const bucket = await store.bucket("aspen_schedules", Schedule);
    const now = Date.now();
    let next = 0;
    const one = async () => {
      for (;;) {
        const i = next++;
        if (i >= COLD) return;
        const nextFire = now + 60_000 + (i % 3_600) * 1000;
        await bucket.create(
          `c-${i}`,
          Schedule.fromPartial({
            id: `c-${i}`,
            spec: {
              kind:
                i % 2
                  ? { $case: "interval", value: { every: { seconds: 3600, nanos: 0 } } }
                  : {
                      $case: "cron",
                      value: { expression: `${i % 60} ${i % 24} * * *`, timeZone: i % 4 ? "UTC" : "Europe/London" },
                    },
              startAt: i % 2 ? new Date(nextFire) : undefined,
            },
            job: { exec: { command: "/bin/true" } },
            createdAt: new Date(now),
            status: { nextFireAt: new Date(nextFire) },
          }),
        );
      }
    };
    await Promise.all(Array.from({ length: 64 }, one));
    await store.close();
    log("cold start: starting the scheduler");
    // Timed by the scheduler's own log timestamps from the moment it is spawned, so the
    // bench's health-check and log polling intervals do not count.
    const spawnedAt = Date.now();
    const sched = await c.startScheduler();
    const armed = await waitFor("all armed", () => sched.logs.find((l) => l.msg === "schedules armed"), 120_000, 20);
    const loaded = sched.logs.find((l) => l.msg === "schedules loaded");
    const since = (l) => (l ? Date.parse(l.time) - spawnedAt : NaN);
    const line =
      `cold start: ${armed.schedules} stored schedules, ${armed.armed} armed; process start → all armed ${since(armed)} ms ` +
      `(bucket read ${loaded?.readMs} ms + loaded ${loaded?.loadMs} ms, done at ${since(loaded)} ms; ` +
      `lease acquired → armed ${armed.ms} ms); RSS ${rssMb(sched.pid)} MB — target ≤ 2000 ms`;
    console.log(line);
  } finally {
    await c.close();
  }
}

async function failover() {
  log("failover: two replicas, a 1 s schedule, the leader SIGKILLed");
  const c = await control();
  try {
    const a = await c.startScheduler({}, c.sp, "scheduler-1");
    const port2 = await freePort();
    const b = await c.startScheduler({}, port2, "scheduler-2");
    const ca = createClient(SchedulerServiceClient, `127.0.0.1:${c.sp}`);
    const cb = createClient(SchedulerServiceClient, `127.0.0.1:${port2}`);
    await waitFor("a leader", async () => (await unaryCall(ca.getLeader.bind(ca), {})).holder !== "", 10_000);
    await unaryCall(
      ca.createSchedule.bind(ca),
      CreateScheduleRequest.fromPartial({
        scheduleId: "fo",
        spec: { kind: { $case: "cron", value: { expression: "* * * * * *" } } },
        job: { exec: { command: "/bin/true" } },
      }),
    );
    await sleep(5_000);
    const aLeads = (await unaryCall(ca.getLeader.bind(ca), {})).isLeader;
    const [leader, standby] = aLeads ? [a, b] : [b, a];
    await leader.kill("SIGKILL");
    const killedAt = Date.now();
    const first = await waitFor(
      "a fire by the standby",
      () => standby.logs.find((l) => l.msg === "fired" && Date.parse(l.time) > killedAt),
      20_000,
      10,
    );
    const taken = standby.logs.find((l) => l.msg === "lease taken over from a silent holder");
    await sleep(3_000);
    const s = await unaryCall((aLeads ? cb : ca).getSchedule.bind(aLeads ? cb : ca), { scheduleId: "fo" });
    ca.close();
    cb.close();
    const line =
      `failover: SIGKILL → lease taken ${Date.parse(taken?.time) - killedAt} ms, → first fire by the standby ` +
      `${Date.parse(first.time) - killedAt} ms (lease TTL 3 s); missed ${s.status?.missedCount} — target "a few seconds", none missed`;
    console.log(line);
  } finally {
    await c.close();
  }
}

try {
  if (ONLY.has("a")) await lagRun("(a) 1,000 schedules", 1_000, "p99 ≤ 5 ms");
  if (ONLY.has("b")) await lagRun("(b) 10,000 schedules", 10_000, "no missed fire, p99 ≤ 50 ms, no growth");
  if (ONLY.has("cold")) await coldStart();
  if (ONLY.has("failover")) await failover();
  process.exit(0);
} catch (err) {
  console.error(err);
  process.exit(1);
}
