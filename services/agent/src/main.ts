/** Agent process: wires config and policy, logging, telemetry, NATS (outputs, audit), the health endpoint and the coordinator session. */
import { closeInOrder, createLogger, GrpcServer, loadSecretOpener, runMain, startTelemetry } from "@aspen/runtime";
import { Store } from "@aspen/store";
import { compilePolicy } from "./admission.js";
import { Agent } from "./agent.js";
import { AuditLog } from "./audit.js";
import { loadAgentConfig } from "./config.js";
import { findPython, ForkServer, nodeSpawner, type Spawner } from "./forkserver.js";
import { OutputStore } from "./output-store.js";
import { GroupRegistry } from "./reaper.js";
import { SecretResolver } from "./secrets.js";

const log = createLogger("agent");
const VERSION = "0.2.0";

await runMain(log, async () => {
  const settings = loadAgentConfig();
  const config = settings.env;
  log.level = config.ASPEN_LOG_LEVEL;
  const opener = loadSecretOpener(config.ASPEN_SECRETS_PRIVATE_KEY_FILE);
  const policy = compilePolicy(settings.policy, {
    defaultWorkRoot: settings.workRoot,
    agentEnv: process.env,
    isRoot: process.getuid?.() === 0,
    secrets: new SecretResolver({ opener, dir: config.ASPEN_AGENT_SECRETS_DIR }),
  });
  log.info(
    { secretsKeyIds: opener?.keyIds ?? [], secretsDir: config.ASPEN_AGENT_SECRETS_DIR ?? "" },
    opener || config.ASPEN_AGENT_SECRETS_DIR ? "secrets: ready" : "secrets: none configured (jobs with secret_env are refused)",
  );
  if (!settings.policy.commands.allow) log.warn("policy: no command allowlist (commands.allow): every program may run");
  if (settings.policy.commands.allow && settings.policy.commands.shell)
    log.warn("policy: shell scripts are allowed (commands.shell), so the allowlist does not bind them");
  if (process.getuid?.() === 0 && !policy.runAs) log.warn("policy: agent runs as root and jobs run as root (set runAs)");
  const groups = config.ASPEN_STATE_DIR ? new GroupRegistry(config.ASPEN_STATE_DIR, log) : undefined;
  // Before taking work: jobs a crashed predecessor left running are killed.
  groups?.reapLeftovers();
  if (!groups) log.warn("ASPEN_STATE_DIR not set: jobs of a crashed agent are not killed when it restarts");
  const found = config.ASPEN_SPAWNER === "forkserver" ? findPython(process.env.PATH ?? "/usr/bin:/bin") : undefined;
  if (found?.problem) log.warn(`ASPEN_SPAWNER=forkserver but ${found.problem}: jobs are spawned by the agent itself (slower)`);
  const python = found?.python;
  const spawner: Spawner = python ? new ForkServer(python, log) : nodeSpawner;
  const telemetry = startTelemetry("aspen-agent");
  const store =
    config.ASPEN_NATS_SERVERS.length > 0
      ? await Store.connect({ servers: config.ASPEN_NATS_SERVERS, name: `aspen-agent-${config.ASPEN_WORKER_ID}`, log })
      : undefined;
  if (!store) log.warn("ASPEN_NATS_SERVERS not set: full outputs are not stored and no audit records are written");
  const outputs = store ? await OutputStore.open(store.nc, { replicas: config.ASPEN_BUCKET_REPLICAS }) : undefined;
  const audit = store
    ? await AuditLog.open(store.nc, log, config.ASPEN_AUDIT_RETENTION_DAYS, config.ASPEN_BUCKET_REPLICAS)
    : undefined;
  const agent = new Agent({
    coordinatorAddr: config.ASPEN_COORDINATOR_ADDR,
    workerId: config.ASPEN_WORKER_ID,
    labels: settings.labels,
    capabilities: settings.capabilities,
    slots: settings.slots,
    version: VERSION,
    policy,
    store: outputs,
    audit,
    groups,
    executor: {
      maxInlineOutputBytes: settings.inlineBytes,
      spawner,
      maxOutputBytes: settings.policy.output.maxBytes,
      sandbox: { bwrap: settings.policy.sandbox.bwrap, writable: settings.policy.sandbox.writable },
      onStoreError: (stream, err) => log.warn({ stream, err: err.message }, "full output not stored; inline capture only"),
    },
    log,
    maxBackoffMs: config.ASPEN_RECONNECT_MAX,
    startedReportDelayMs: config.ASPEN_STARTED_REPORT_DELAY,
  });
  // No inbound port for work: this server only answers health checks (and reflection).
  // Serves only health and reflection, which are open on every service: no RPC to protect,
  // so it needs neither tokens nor TLS (the agent's calls out use ASPEN_TOKEN / ASPEN_TLS_CA).
  const health = new GrpcServer({
    host: config.ASPEN_HEALTH_HOST,
    port: config.ASPEN_HEALTH_PORT,
    log,
    services: [],
    security: {},
  });
  const port = await health.start();
  agent.start();
  log.info(
    {
      healthPort: port,
      worker: config.ASPEN_WORKER_ID,
      slots: settings.slots,
      workRoot: policy.workRoot,
      outputs: !!outputs,
      spawner: python ? `forkserver (${python})` : "node",
    },
    "agent ready",
  );
  return {
    close: () =>
      closeInOrder(log, [
        ["agent", () => agent.close(config.ASPEN_DRAIN_TIMEOUT)],
        ["fork server", () => spawner.close()],
        ["audit", async () => audit?.flush()],
        ["health server", () => health.close(1_000)],
        ["nats", async () => store?.close()],
        ["telemetry", () => telemetry.shutdown()],
      ]),
  };
});
