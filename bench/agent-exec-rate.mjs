#!/usr/bin/env node
/**
 * The agent's own costs, against the machine's ceiling, measured in one run.
 *
 *   node bench/agent-exec-rate.mjs        (build first: npm run build)
 *
 * 1. Execution rate: `/bin/true` through the agent's hot path — the shell
 *    handler (policy admission: PATH lookup, realpath of program and cwd, env
 *    filter, rate-limit check; then the executor: spawn in its own process
 *    group, capture and SHA-256 of both streams, /proc usage sampling, group
 *    reaping, output writers to the object store attached) — against plain
 *    `child_process.spawn` + wait for 'close', both in this one Node process at
 *    the same concurrency (BENCH_CONCURRENCY, default 16). The two alternate in
 *    rounds (BENCH_ROUNDS × BENCH_RUNS each) so load from elsewhere hits both;
 *    the ratio is agent / spawn of the medians (target ≥ 0.8). The coordinator round trip is
 *    not in it (see bench/end-to-end.mjs for the whole path).
 * 2. Output throughput to the object store: a job writing BENCH_OUTPUT_MIB
 *    (default 512) MiB of stdout through the executor into `aspen_outputs` on
 *    a local nats-server, MiB/s from spawn to the object's metadata written.
 * 3. Agent idle RSS: a real agent process (services/agent/dist/main.js) with
 *    its NATS connection, output store and audit stream open, 3 s after it is
 *    ready, read from /proc/<pid>/status (target ≤ 80 MiB); also with the V8
 *    flags deploy/Dockerfile.agent uses.
 *
 * Everything started here (nats-server, the agent, temporary folders) is removed at the end.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { connect } from "@nats-io/transport-node";
import { JobSpec } from "@aspen/proto";
import { freePort, repoRoot, sleep, startNats, startService, waitHealthy } from "@aspen/testkit";

const agentDist = (f) => join(repoRoot, "services", "agent", "dist", f);
const { compilePolicy, RateLimiter } = await import(agentDist("admission.js"));
const { HandlerRegistry } = await import(agentDist("handlers.js"));
const { OutputStore } = await import(agentDist("output-store.js"));
const { PolicySchema } = await import(agentDist("policy.js"));

const int = (name, def) => Number(process.env[name] ?? def);
const CONCURRENCY = int("BENCH_CONCURRENCY", 16);
const RUNS = int("BENCH_RUNS", 1000);
const ROUNDS = int("BENCH_ROUNDS", 5);
const OUTPUT_MIB = int("BENCH_OUTPUT_MIB", 512);

const work = mkdtempSync(join(tmpdir(), "aspen-bench-agent-"));
const nats = await startNats();
const cleanup = async () => {
  await nats[Symbol.asyncDispose]().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
};
process.once("SIGINT", () => void cleanup().then(() => process.exit(130)));

try {
  console.log(
    `machine: ${cpus().length} × ${cpus()[0]?.model ?? "?"}, load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  const nc = await connect({ servers: nats.url });
  const store = await OutputStore.open(nc);
  const policy = compilePolicy(PolicySchema.parse({ workRoot: work }), {
    defaultWorkRoot: work,
    agentEnv: process.env,
    isRoot: process.getuid?.() === 0,
  });
  const shell = new HandlerRegistry().get("shell");
  const ctx = (i) => ({
    jobId: `bench-${i}`,
    attempt: 1,
    policy,
    rateLimiter: new RateLimiter(policy.policy.rateLimit),
    executor: { maxInlineOutputBytes: 1024 * 1024 },
    store,
  });
  const trueSpec = JobSpec.fromPartial({ exec: { command: "/bin/true" } });

  const pool = async (n, one) => {
    let next = 0;
    const t = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < n) await one(next++);
      }),
    );
    return n / ((performance.now() - t) / 1000);
  };
  const viaAgent = (n) =>
    pool(n, async (i) => {
      const r = await shell.start(trueSpec, ctx(i)).execution.result;
      if (r.exitCode !== 0) throw new Error(`agent run failed: ${r.error}`);
    });
  const viaSpawn = (n) =>
    pool(
      n,
      () =>
        new Promise((resolve, reject) => {
          const c = spawn("/bin/true", [], { stdio: ["ignore", "pipe", "pipe"] });
          c.once("error", reject);
          c.once("close", resolve);
        }),
    );

  await viaSpawn(200);
  await viaAgent(200); // warm-up
  const agentRates = [];
  const spawnRates = [];
  for (let r = 0; r < ROUNDS; r++) {
    spawnRates.push(await viaSpawn(RUNS));
    agentRates.push(await viaAgent(RUNS));
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const a = median(agentRates);
  const s = median(spawnRates);
  console.log(`\n/bin/true at concurrency ${CONCURRENCY}, ${ROUNDS} rounds of ${RUNS} each (median):`);
  console.log(`  agent hot path   ${a.toFixed(0)}/s   (rounds: ${agentRates.map((x) => x.toFixed(0)).join(", ")})`);
  console.log(`  plain spawn      ${s.toFixed(0)}/s   (rounds: ${spawnRates.map((x) => x.toFixed(0)).join(", ")})`);
  console.log(`  ratio            ${(a / s).toFixed(2)}   (target ≥ 0.8: ${a / s >= 0.8 ? "met" : "NOT met"})`);

  const bytes = OUTPUT_MIB * 1024 * 1024;
  const outSpec = JobSpec.fromPartial({ exec: { command: `head -c ${bytes} /dev/zero`, shell: true } });
  const t = performance.now();
  const r = await shell.start(outSpec, ctx("output")).execution.result;
  const secs = (performance.now() - t) / 1000;
  if (r.stdout.totalBytes !== bytes || !r.stdout.objectName)
    throw new Error(`output run: ${JSON.stringify(r.stdout).slice(0, 300)}`);
  console.log(
    `\noutput to the object store: ${OUTPUT_MIB} MiB in ${secs.toFixed(2)} s = ${(OUTPUT_MIB / secs).toFixed(0)} MiB/s (${(bytes / secs / 1e6).toFixed(0)} MB/s), object ${r.stdout.objectName}`,
  );
  await nc.close();

  const idle = async (label, nodeOptions) => {
    const port = await freePort();
    const agent = startService("agent", {
      ASPEN_NATS_SERVERS: nats.url,
      ASPEN_COORDINATOR_ADDR: `127.0.0.1:${await freePort()}`, // nobody there: the agent idles, reconnecting
      ASPEN_WORKER_ID: "bench-idle",
      ASPEN_HEALTH_HOST: "127.0.0.1",
      ASPEN_HEALTH_PORT: String(port),
      ASPEN_LOG_LEVEL: "error",
      OTEL_SDK_DISABLED: "true",
      ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}),
    });
    try {
      await waitHealthy(`127.0.0.1:${port}`, 20_000, agent);
      await sleep(3_000);
      const status = readFileSync(`/proc/${agent.pid}/status`, "utf8");
      const kib = (f) => Number(new RegExp(`${f}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0);
      console.log(
        `agent idle RSS ${label}: ${(kib("VmRSS") / 1024).toFixed(1)} MiB (peak ${(kib("VmHWM") / 1024).toFixed(1)} MiB) — target ≤ 80 MiB: ${kib("VmRSS") / 1024 <= 80 ? "met" : "NOT met"}`,
      );
    } finally {
      await agent.stop();
    }
  };
  console.log();
  await idle("(node defaults)", "");
  await idle(
    "(NODE_OPTIONS=--max-semi-space-size=1 --max-old-space-size=96 --v8-pool-size=1, as in deploy/Dockerfile.agent)",
    "--max-semi-space-size=1 --max-old-space-size=96 --v8-pool-size=1",
  );
} finally {
  await cleanup();
}
