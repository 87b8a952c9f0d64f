/** Agent process: wires config, logging, telemetry, the health endpoint and the coordinator session. */
import { closeInOrder, createLogger, GrpcServer, runMain, startTelemetry } from "@aspen/runtime";
import { Agent } from "./agent.js";
import { loadAgentConfig } from "./config.js";

const log = createLogger("agent");
const VERSION = "0.1.0";

await runMain(log, async () => {
  const config = loadAgentConfig();
  log.level = config.ASPEN_LOG_LEVEL;
  const telemetry = startTelemetry("aspen-agent");
  const baseEnv: Record<string, string> = {};
  for (const name of config.ASPEN_ENV_PASSTHROUGH) {
    const value = process.env[name];
    if (value !== undefined) baseEnv[name] = value;
  }
  const agent = new Agent({
    coordinatorAddr: config.ASPEN_COORDINATOR_ADDR,
    workerId: config.ASPEN_WORKER_ID,
    labels: config.ASPEN_LABELS,
    capabilities: config.ASPEN_CAPABILITIES,
    slots: config.ASPEN_SLOTS,
    version: VERSION,
    executor: { baseEnv, defaultCwd: config.ASPEN_WORK_DIR, maxInlineOutputBytes: config.ASPEN_MAX_OUTPUT_BYTES },
    log,
    maxBackoffMs: config.ASPEN_RECONNECT_MAX,
  });
  // No inbound port for work: this server only answers health checks (and reflection).
  const health = new GrpcServer({ host: config.ASPEN_HEALTH_HOST, port: config.ASPEN_HEALTH_PORT, log, services: [] });
  const port = await health.start();
  agent.start();
  log.info({ healthPort: port, worker: config.ASPEN_WORKER_ID, slots: config.ASPEN_SLOTS }, "agent ready");
  return {
    close: () =>
      closeInOrder(log, [
        ["agent", () => agent.close(config.ASPEN_DRAIN_TIMEOUT)],
        ["health server", () => health.close(1_000)],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
