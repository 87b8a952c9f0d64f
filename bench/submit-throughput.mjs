#!/usr/bin/env node
/**
 * Submission throughput of the job-manager: jobs accepted per second through
 * JobService.SubmitJob, sequentially and with 64 calls in flight.
 *
 *   node bench/submit-throughput.mjs     (the services must be built: npm run build)
 *
 * Starts nats-server, the job-manager and the coordinator (separate processes,
 * free loopback ports) and no agent, so accepted jobs stay queued: this
 * measures acceptance (validation + the KV create + the reply), not execution.
 * Env: BENCH_SEQUENTIAL (default 1000), BENCH_PARALLEL (default 10000), BENCH_IN_FLIGHT (default 64).
 * Target (job-lifecycle issue): 2,000 submissions accepted per second with 64 in flight.
 */
import { cpus } from "node:os";
import { performance } from "node:perf_hooks";
import { JobServiceClient, SubmitJobRequest } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";
import { freePort, startNats, startService, waitHealthy } from "@aspen/testkit";

const SEQUENTIAL = Number(process.env.BENCH_SEQUENTIAL ?? 1000);
const PARALLEL = Number(process.env.BENCH_PARALLEL ?? 10000);
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 64);
const TARGET_PARALLEL = 2000;

const nats = await startNats();
const procs = [];
let client;
try {
  const [jp, cp] = [await freePort(), await freePort()];
  const env = {
    ASPEN_NATS_SERVERS: nats.url,
    ASPEN_GRPC_HOST: "127.0.0.1",
    ASPEN_JOB_MANAGER_ADDR: `127.0.0.1:${jp}`,
    ASPEN_COORDINATOR_ADDR: `127.0.0.1:${cp}`,
    ASPEN_LOG_LEVEL: "error",
    OTEL_SDK_DISABLED: "true",
  };
  const jm = startService("job-manager", { ...env, ASPEN_GRPC_PORT: String(jp), ASPEN_DISPATCH_RETRY: "60s" });
  const co = startService("coordinator", { ...env, ASPEN_GRPC_PORT: String(cp) });
  procs.push(jm, co);
  await waitHealthy(`127.0.0.1:${jp}`, 20_000, jm);
  await waitHealthy(`127.0.0.1:${cp}`, 20_000, co);
  client = createClient(JobServiceClient, `127.0.0.1:${jp}`);
  const spec = { exec: { command: "/bin/true" } };
  const submit = (id) => unaryCall(client.submitJob.bind(client), SubmitJobRequest.fromPartial({ jobId: id, spec }));

  for (let i = 0; i < 200; i++) await submit(`warm-${i}`); // connections, JIT

  const measure = async (label, n, inFlight) => {
    const latencies = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < n) {
          const id = `${label}-${next++}`;
          const t = performance.now();
          await submit(id);
          latencies.push(performance.now() - t);
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    const p = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(2);
    return { rate: n / seconds, p50: p(0.5), p99: p(0.99) };
  };

  const seq = await measure("seq", SEQUENTIAL, 1);
  const par = await measure("par", PARALLEL, IN_FLIGHT);
  console.log("=== submission throughput (JobService.SubmitJob, no agents) ===");
  console.log(`machine:      ${cpus().length} CPUs, node ${process.version}`);
  console.log(`sequential:   ${seq.rate.toFixed(0)} jobs/s   (${SEQUENTIAL} jobs; latency p50 ${seq.p50} ms, p99 ${seq.p99} ms)`);
  console.log(
    `${IN_FLIGHT} in flight: ${par.rate.toFixed(0)} jobs/s   (${PARALLEL} jobs; latency p50 ${par.p50} ms, p99 ${par.p99} ms)   target ≥ ${TARGET_PARALLEL} → ${par.rate >= TARGET_PARALLEL ? "met" : "NOT met"}`,
  );
} finally {
  client?.close();
  await Promise.all(procs.map((p) => p.stop().catch(() => undefined)));
  await nats[Symbol.asyncDispose]();
}
