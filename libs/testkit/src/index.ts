/**
 * @aspen/testkit — real parts for tests: a nats-server with JetStream on a
 * free port in a temporary folder, Aspen services as separate processes, and
 * polling helpers. Everything disposes itself with `await using`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  HealthCheckResponse_ServingStatus,
  HealthClient,
  ListJobsRequest,
  SubmitJobRequest,
  type Job,
  type JobServiceClient,
} from "@aspen/proto";
import { createClient, generateSecretsKeyPair, hashToken, newToken, unaryCall } from "@aspen/runtime";

/** The repository root (this file is libs/testkit/dist/index.js). */
export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until it returns a value other than undefined/false, or throws after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 10_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`);
    }
    await sleep(intervalMs);
  }
}

async function waitExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

export interface NatsServer extends AsyncDisposable {
  url: string;
  port: number;
  storeDir: string;
  /** The running server's process id (SIGSTOP it to make it hang). */
  pid(): number | undefined;
  /** SIGKILL the server (store kept) — for crash tests. */
  kill(): Promise<void>;
  /** Start it again on the same port and store. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The nats-server binary tests and benches start: `ASPEN_NATS_SERVER_BIN` when set
 * (e.g. the 2.10 build `scripts/fetch-nats-server.sh` unpacks, which accepts
 * `sync_interval`), else `nats-server` on the PATH (Debian 12: 2.9.10).
 */
export function natsServerBin(): string {
  return process.env.ASPEN_NATS_SERVER_BIN || "nats-server";
}

/** Starts `nats-server -js` on a free loopback port with its own store folder. */
export async function startNats(options: { config?: string } = {}): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), "aspen-nats-"));
  const storeDir = join(dir, "js");
  let port = 0;
  let child: ChildProcess;
  // Extra server configuration (e.g. an authorization block), in a file the flags complement.
  const configFile = options.config === undefined ? undefined : join(dir, "extra.conf");
  if (configFile) writeFileSync(configFile, options.config ?? "");
  const launch = async () => {
    const args = ["-js", "-sd", storeDir, "-a", "127.0.0.1", "-p", String(port || -1), "--ports_file_dir", dir];
    if (configFile) args.unshift("-c", configFile);
    child = spawn(natsServerBin(), args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    const spawnError = new Promise<never>((_, reject) =>
      child.once("error", (err) => reject(new Error(`cannot start nats-server (is it installed?): ${err.message}`))),
    );
    const ready = waitFor("nats-server ports file", () => {
      if (child.exitCode !== null) throw new Error(`nats-server exited: ${stderr}`);
      const file = readdirSync(dir).find((f) => f.endsWith(".ports") && f.includes(String(child.pid)));
      if (!file) return undefined;
      const info = JSON.parse(readFileSync(join(dir, file), "utf8")) as { nats: string[] };
      return info.nats[0];
    });
    const url = await Promise.race([ready, spawnError]);
    port = Number(new URL(url).port);
    // JetStream is ready once the server accepts connections; one more beat for the meta layer.
    await sleep(100);
  };
  await launch();
  const kill = async () => {
    child.kill("SIGKILL");
    await waitExit(child, 5_000);
  };
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      if (!(await waitExit(child, 5_000))) await kill();
    }
  };
  return {
    get url() {
      return `nats://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    pid: () => child.pid,
    storeDir,
    kill,
    restart: launch,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export type ServiceName = "scheduler" | "job-manager" | "coordinator" | "agent";

export interface ServiceProcess extends AsyncDisposable {
  name: string;
  pid: number;
  /** Every JSON log line so far, parsed. */
  logs: Record<string, unknown>[];
  /** Raw stderr and non-JSON stdout, for failure messages. */
  output(): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** SIGTERM and wait for a clean exit; resolves to the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  exited: Promise<number | null>;
}

/**
 * Runs `services/<name>/dist/main.js` as its own Node process with the given
 * environment. Authentication and TLS are off unless `env` configures them
 * (startCluster does: tokens on).
 */
export function startService(name: ServiceName, env: Record<string, string>, label: string = name): ServiceProcess {
  const main = join(repoRoot, "services", name, "dist", "main.js");
  // Profiling a run: ASPEN_SERVICE_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" (NODE_OPTIONS refuses --cpu-prof).
  const nodeArgs = (process.env.ASPEN_SERVICE_NODE_ARGS ?? "").split(" ").filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, main], {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      ASPEN_AUTH: "none",
      ASPEN_TLS: "off",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let raw = "";
  let partial = "";
  child.stdout?.on("data", (d: Buffer) => {
    partial += d.toString();
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        raw = (raw + line + "\n").slice(-20_000);
      }
    }
  });
  child.stderr?.on("data", (d: Buffer) => (raw = (raw + d.toString()).slice(-20_000)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const stop = async (timeoutMs = 10_000) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      if (!(await waitExit(child, timeoutMs))) {
        child.kill("SIGKILL");
        await waitExit(child, 5_000);
        throw new Error(`${label} did not stop within ${timeoutMs} ms of SIGTERM`);
      }
    }
    return child.exitCode;
  };
  return {
    name: label,
    pid: child.pid ?? -1,
    logs,
    output: () => raw,
    exited,
    async kill(signal: NodeJS.Signals = "SIGKILL") {
      child.kill(signal);
      if (signal === "SIGKILL") await waitExit(child, 5_000);
    },
    stop,
    async [Symbol.asyncDispose]() {
      await stop().catch(() => undefined);
    },
  };
}

/** Resolves once the gRPC health service at `address` answers SERVING. */
export async function waitHealthy(address: string, timeoutMs = 15_000, process?: ServiceProcess): Promise<void> {
  const client = createClient(HealthClient, address);
  try {
    await waitFor(
      `${address} to be SERVING`,
      async () => {
        if (process) {
          const code = await Promise.race([process.exited, sleep(0).then(() => "running" as const)]);
          if (code !== "running") throw new Error(`${process.name} exited with ${code}:\n${process.output()}`);
        }
        const res = await unaryCall(client.check.bind(client), { service: "" }, { deadlineMs: 1_000 });
        return res.status === HealthCheckResponse_ServingStatus.SERVING;
      },
      timeoutMs,
      100,
    );
  } finally {
    client.close();
  }
}

export interface ClusterTokens {
  file: string;
  admin: string;
  operator: string;
  viewer: string;
  service: string;
  /** Agent i's token, bound to worker id `agent-<i+1>`. */
  agents: string[];
  /** An agent token bound to no worker id (a shared join token). */
  join: string;
}

/** Writes a tokens file (hashes only) with one token per role into `dir`. */
export function writeTokens(dir: string, agents: number): ClusterTokens {
  const t = {
    admin: newToken(),
    operator: newToken(),
    viewer: newToken(),
    service: newToken(),
    join: newToken(),
    agents: Array.from({ length: agents }, () => newToken()),
  };
  const entry = (name: string, role: string, token: string, workerId?: string) => ({
    name,
    role,
    sha256: hashToken(token),
    ...(workerId ? { worker_id: workerId } : {}),
  });
  const file = join(dir, "tokens.json");
  const tokens = [
    entry("test-admin", "admin", t.admin),
    entry("test-operator", "operator", t.operator),
    entry("test-viewer", "viewer", t.viewer),
    entry("test-service", "service", t.service),
    entry("test-join", "agent", t.join),
    ...t.agents.map((token, i) => entry(`agent-${i + 1}`, "agent", token, `agent-${i + 1}`)),
  ];
  writeFileSync(file, JSON.stringify({ tokens }, null, 2));
  return { file, ...t };
}

/** A secrets key pair and an empty agents' secrets directory under `dir`. */
export function provisionSecrets(dir: string): ClusterSecrets {
  const pair = generateSecretsKeyPair();
  const secrets = {
    publicKeyFile: join(dir, "secrets.pub"),
    privateKeyFile: join(dir, "secrets.key"),
    dir: join(dir, "agent-secrets"),
  };
  writeFileSync(secrets.publicKeyFile, pair.publicKeyPem);
  writeFileSync(secrets.privateKeyFile, pair.privateKeyPem, { mode: 0o600 });
  mkdirSync(secrets.dir, { recursive: true });
  return secrets;
}

export interface ClusterOptions {
  /** Agents to start; each gets `slots` slots. Default 1. */
  agents?: number;
  slots?: number;
  /** Extra environment for every service (e.g. OTEL_* settings). */
  env?: Record<string, string>;
  /** Per-agent extra environment (labels, capabilities), by index. */
  agentEnv?: (index: number) => Record<string, string>;
  /** Start the scheduler too. Default true; job-only tests save its CPU. */
  scheduler?: boolean;
  /** Extra environment for the job-manager only. */
  jobManagerEnv?: Record<string, string>;
  /**
   * Job-manager replicas. Default 1. With more, the scheduler and the coordinator
   * reach all of them through one `ipv4:` address list (calls spread, dead ones skipped).
   */
  jobManagers?: number;
  /** Extra environment per service (agents included), e.g. its NATS user. */
  serviceEnv?: (name: ServiceName) => Record<string, string>;
  /** Extra nats-server configuration (e.g. an authorization block). */
  natsConfig?: string;
  /**
   * Provision secrets: a key pair (public key to the scheduler and
   * job-manager, private key to the agents) and an agents' secrets directory.
   * Default true; false starts every service without them.
   */
  secrets?: boolean;
}

/** What startCluster provisioned for secret job variables. */
export interface ClusterSecrets {
  /** ASPEN_SECRETS_PUBLIC_KEY_FILE of the scheduler and job-manager. */
  publicKeyFile: string;
  /** ASPEN_SECRETS_PRIVATE_KEY_FILE of the agents. */
  privateKeyFile: string;
  /** ASPEN_AGENT_SECRETS_DIR of every agent (write files there for agent_ref). */
  dir: string;
}

export interface Cluster extends AsyncDisposable {
  nats: NatsServer;
  /** Undefined when started with `scheduler: false`. */
  scheduler: ServiceProcess;
  jobManager: ServiceProcess;
  /** Every job-manager replica (the first is `jobManager`). */
  jobManagers: ServiceProcess[];
  coordinator: ServiceProcess;
  agents: ServiceProcess[];
  /** Bearer tokens of each role (agents: one per agent, bound to its worker id). */
  tokens: ClusterTokens;
  /** Undefined when started with `secrets: false`. */
  secrets: ClusterSecrets | undefined;
  addr: { scheduler: string; jobManager: string; coordinator: string; jobManagers: string[] };
  /** Environment each service was started with (to restart one the same way). */
  envFor(name: "scheduler" | "job-manager" | "coordinator"): Record<string, string>;
  /** Starts (again) the named control service with its original environment and waits until it serves. */
  restart(name: "scheduler" | "job-manager" | "coordinator"): Promise<ServiceProcess>;
}

/**
 * NATS plus the three control services and `agents` agents, each a separate
 * process on free loopback ports, healthy and registered before it resolves.
 */
export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const nats = await startNats({ config: options.natsConfig });
  const started: ServiceProcess[] = [];
  try {
    const [sp, jp, cp] = [await freePort(), await freePort(), await freePort()];
    const extraJobManagerPorts: number[] = [];
    for (let i = 1; i < (options.jobManagers ?? 1); i++) extraJobManagerPorts.push(await freePort());
    const jobManagerAddrs = [jp, ...extraJobManagerPorts].map((p) => `127.0.0.1:${p}`);
    const addr = {
      scheduler: `127.0.0.1:${sp}`,
      jobManager: jobManagerAddrs[0]!,
      jobManagers: jobManagerAddrs,
      coordinator: `127.0.0.1:${cp}`,
    };
    const tokens = writeTokens(nats.storeDir, options.agents ?? 1);
    // This process's clients (createClient reads ASPEN_TOKEN) act as an admin.
    process.env.ASPEN_TOKEN = tokens.admin;
    const common: Record<string, string> = {
      ASPEN_AUTH_TOKENS_FILE: tokens.file,
      ASPEN_TOKEN: tokens.service,
      ASPEN_NATS_SERVERS: nats.url,
      ASPEN_GRPC_HOST: "127.0.0.1",
      ASPEN_JOB_MANAGER_ADDR: jobManagerAddrs.length > 1 ? `ipv4:${jobManagerAddrs.join(",")}` : addr.jobManager,
      ASPEN_COORDINATOR_ADDR: addr.coordinator,
      ASPEN_LOG_LEVEL: "info",
      OTEL_SDK_DISABLED: "true",
      ...options.env,
    };
    const secrets = options.secrets === false ? undefined : provisionSecrets(nats.storeDir);
    const sealing: Record<string, string> = secrets ? { ASPEN_SECRETS_PUBLIC_KEY_FILE: secrets.publicKeyFile } : {};
    const envs = {
      scheduler: { ...common, ...sealing, ASPEN_GRPC_PORT: String(sp), ...options.serviceEnv?.("scheduler") },
      "job-manager": {
        ...common,
        ...sealing,
        ASPEN_GRPC_PORT: String(jp),
        ...options.jobManagerEnv,
        ...options.serviceEnv?.("job-manager"),
      },
      coordinator: { ...common, ASPEN_GRPC_PORT: String(cp), ...options.serviceEnv?.("coordinator") },
    };
    const addrOf = { scheduler: addr.scheduler, "job-manager": addr.jobManager, coordinator: addr.coordinator };
    const launch = async (name: "scheduler" | "job-manager" | "coordinator") => {
      const proc = startService(name, envs[name]);
      started.push(proc);
      await waitHealthy(addrOf[name], 20_000, proc);
      return proc;
    };
    const extraJobManagers = extraJobManagerPorts.map((port, i) => {
      const proc = startService("job-manager", { ...envs["job-manager"], ASPEN_GRPC_PORT: String(port) }, `job-manager-${i + 2}`);
      started.push(proc);
      return proc;
    });
    const [[jobManager, coordinator, scheduler]] = await Promise.all([
      Promise.all([
        launch("job-manager"),
        launch("coordinator"),
        options.scheduler === false ? (undefined as unknown as ServiceProcess) : launch("scheduler"),
      ]),
      Promise.all(extraJobManagers.map((proc, i) => waitHealthy(jobManagerAddrs[i + 1]!, 20_000, proc))),
    ]);
    const agents: ServiceProcess[] = [];
    for (let i = 0; i < (options.agents ?? 1); i++) {
      const healthPort = await freePort();
      const agent = startService(
        "agent",
        {
          ...common,
          ASPEN_WORKER_ID: `agent-${i + 1}`,
          ASPEN_TOKEN: tokens.agents[i] ?? "",
          ASPEN_SLOTS: String(options.slots ?? 4),
          ASPEN_HEALTH_HOST: "127.0.0.1",
          ASPEN_HEALTH_PORT: String(healthPort),
          ...(secrets ? { ASPEN_SECRETS_PRIVATE_KEY_FILE: secrets.privateKeyFile, ASPEN_AGENT_SECRETS_DIR: secrets.dir } : {}),
          ...options.serviceEnv?.("agent"),
          ...options.agentEnv?.(i),
        },
        `agent-${i + 1}`,
      );
      started.push(agent);
      agents.push(agent);
      await waitHealthy(`127.0.0.1:${healthPort}`, 20_000, agent);
    }
    // Registered once the coordinator has logged each agent.
    await waitFor(
      "agents to register",
      () => coordinator.logs.filter((l) => l.msg === "agent registered").length >= agents.length,
      20_000,
    );
    const cluster: Cluster = {
      tokens,
      secrets,
      nats,
      scheduler,
      jobManager,
      jobManagers: [jobManager, ...extraJobManagers],
      coordinator,
      agents,
      addr,
      envFor: (name) => envs[name],
      async restart(name) {
        const proc = await launch(name);
        if (name === "scheduler") cluster.scheduler = proc;
        if (name === "job-manager") cluster.jobManager = cluster.jobManagers[0] = proc;
        if (name === "coordinator") cluster.coordinator = proc;
        return proc;
      },
      async [Symbol.asyncDispose]() {
        // Agents first (they drain), then the control plane, then NATS.
        await Promise.all(agents.map((a) => a.stop().catch(() => undefined)));
        await Promise.all(started.filter((p) => !agents.includes(p)).map((p) => p.stop().catch(() => undefined)));
        await nats[Symbol.asyncDispose]();
      },
    };
    return cluster;
  } catch (err) {
    await Promise.all(started.map((p) => p.kill("SIGKILL").catch(() => undefined)));
    await nats[Symbol.asyncDispose]();
    throw err;
  }
}

export interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  attributes: Record<string, unknown>;
}

export interface OtlpReceiver extends AsyncDisposable {
  /** Base URL for OTEL_EXPORTER_OTLP_ENDPOINT. */
  endpoint: string;
  spans: ReceivedSpan[];
  /** Environment that makes a service export to this receiver promptly. */
  env: Record<string, string>;
}

interface OtlpJsonValue {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
}

/** An OTLP/HTTP JSON trace receiver on a free loopback port (stands in for Jaeger's collector). */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const { createServer: createHttpServer } = await import("node:http");
  const spans: ReceivedSpan[] = [];
  const server = createHttpServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      try {
        const payload = JSON.parse(body) as {
          resourceSpans?: Array<{
            resource?: { attributes?: Array<{ key: string; value: OtlpJsonValue }> };
            scopeSpans?: Array<{
              spans?: Array<{
                traceId: string;
                spanId: string;
                parentSpanId?: string;
                name: string;
                attributes?: Array<{ key: string; value: OtlpJsonValue }>;
              }>;
            }>;
          }>;
        };
        for (const rs of payload.resourceSpans ?? []) {
          const service = rs.resource?.attributes?.find((a) => a.key === "service.name")?.value.stringValue ?? "";
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              const attributes: Record<string, unknown> = {};
              for (const a of s.attributes ?? []) {
                attributes[a.key] = a.value.stringValue ?? a.value.intValue ?? a.value.doubleValue ?? a.value.boolValue;
              }
              spans.push({
                service,
                traceId: s.traceId,
                spanId: s.spanId,
                parentSpanId: s.parentSpanId ?? "",
                name: s.name,
                attributes,
              });
            }
          }
        }
      } catch {
        // Not JSON: ignored (the receiver only understands OTLP/JSON).
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    spans,
    env: {
      OTEL_SDK_DISABLED: "false",
      OTEL_TRACES_EXPORTER: "otlp",
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_BSP_SCHEDULE_DELAY: "100",
      OTEL_METRICS_EXPORTER: "none",
      OTEL_LOGS_EXPORTER: "none",
    },
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Live (non-zombie) processes in a process group, read from /proc. */
export function processGroupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split after ")".
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(pgrp) === pgid && state !== "Z") members.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return members;
}

/** True while any process of the group lives; killed ones get half a second to be reaped. */
export async function processGroupAlive(pgid: number): Promise<boolean> {
  for (let i = 0; i < 20 && processGroupMembers(pgid).length > 0; i++) await sleep(25);
  return processGroupMembers(pgid).length > 0;
}

export interface NatsClusterNode extends NatsServer {
  /** server_name, e.g. "n1". */
  name: string;
  /** Monitoring port (/healthz, /jsz). */
  httpPort: number;
}

export interface NatsCluster extends AsyncDisposable {
  nodes: NatsClusterNode[];
  /** Every node's client URL: the value for ASPEN_NATS_SERVERS (joined with ","). */
  urls: string[];
  /** Resolves once every running node answers /healthz and knows the JetStream meta leader. */
  healthy(timeoutMs?: number): Promise<void>;
}

export interface NatsClusterOptions {
  /** Nodes. Default 3. */
  size?: number;
  /**
   * Extra lines inside each node's `jetstream { }` block, e.g. "sync_interval: always"
   * (nats-server 2.10+; 2.9 refuses unknown fields).
   */
  jetstreamExtra?: string;
}

/**
 * A nats-server cluster with JetStream on loopback: `size` processes, each with
 * its own config file, store folder, client, route and monitoring ports, routes
 * to every other node. Resolves once JetStream is healthy on every node.
 * A node can be SIGKILLed and restarted with the same name, ports and store.
 */
export async function startNatsCluster(options: NatsClusterOptions = {}): Promise<NatsCluster> {
  const size = options.size ?? 3;
  const dir = mkdtempSync(join(tmpdir(), "aspen-nats-cluster-"));
  const ports: Array<{ client: number; route: number; http: number }> = [];
  for (let i = 0; i < size; i++) ports.push({ client: await freePort(), route: await freePort(), http: await freePort() });
  const routes = ports.map((p) => `nats-route://127.0.0.1:${p.route}`).join(", ");
  const nodes: NatsClusterNode[] = [];
  const children: (ChildProcess | undefined)[] = [];
  const stderrTail: string[] = [];

  const launch = (i: number) => {
    const p = ports[i]!;
    const name = `n${i + 1}`;
    const conf = join(dir, `${name}.conf`);
    writeFileSync(
      conf,
      [
        `server_name: ${name}`,
        `listen: 127.0.0.1:${p.client}`,
        `http: 127.0.0.1:${p.http}`,
        `jetstream {`,
        `  store_dir: ${JSON.stringify(join(dir, name))}`,
        ...(options.jetstreamExtra ? [`  ${options.jetstreamExtra}`] : []),
        `}`,
        `cluster {`,
        `  name: aspen-test`,
        `  listen: 127.0.0.1:${p.route}`,
        `  routes: [${routes}]`,
        `}`,
        "",
      ].join("\n"),
    );
    const child = spawn(natsServerBin(), ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
    stderrTail[i] = "";
    child.stderr?.on("data", (d: Buffer) => (stderrTail[i] = ((stderrTail[i] ?? "") + d.toString()).slice(-4000)));
    child.once("error", () => undefined); // reported by the health wait (exitCode / no answer)
    children[i] = child;
  };

  const nodeHealthy = async (i: number): Promise<boolean> => {
    const child = children[i];
    if (!child || child.exitCode !== null) throw new Error(`nats-server n${i + 1} exited: ${stderrTail[i]}`);
    try {
      const base = `http://127.0.0.1:${ports[i]!.http}`;
      const health = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(1_000) });
      if (!health.ok) return false;
      // /healthz answers ok before the meta layer has a leader; streams cannot be created until it has.
      const jsz = (await (await fetch(`${base}/jsz`, { signal: AbortSignal.timeout(1_000) })).json()) as {
        meta_cluster?: { leader?: string };
      };
      return Boolean(jsz.meta_cluster?.leader);
    } catch {
      return false;
    }
  };

  const killNode = async (i: number) => {
    const child = children[i];
    if (!child) return;
    child.kill("SIGKILL");
    await waitExit(child, 5_000);
  };
  const stopNode = async (i: number) => {
    const child = children[i];
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    if (!(await waitExit(child, 5_000))) await killNode(i);
  };

  for (let i = 0; i < size; i++) {
    const p = ports[i]!;
    nodes.push({
      name: `n${i + 1}`,
      url: `nats://127.0.0.1:${p.client}`,
      port: p.client,
      httpPort: p.http,
      storeDir: join(dir, `n${i + 1}`),
      pid: () => children[i]?.pid,
      kill: () => killNode(i),
      restart: async () => {
        launch(i);
        await waitFor(`nats-server n${i + 1} healthy again`, () => nodeHealthy(i), 30_000, 100);
      },
      stop: () => stopNode(i),
      async [Symbol.asyncDispose]() {
        await stopNode(i);
      },
    });
  }
  const cluster: NatsCluster = {
    nodes,
    urls: nodes.map((n) => n.url),
    async healthy(timeoutMs = 30_000) {
      await waitFor(
        "every nats-server node healthy",
        async () => {
          for (let i = 0; i < size; i++) {
            const c = children[i];
            if (c && c.exitCode === null && c.signalCode === null && !(await nodeHealthy(i))) return false;
          }
          return true;
        },
        timeoutMs,
        100,
      );
    },
    async [Symbol.asyncDispose]() {
      await Promise.all(nodes.map((_, i) => stopNode(i)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  /** Names of the peers the meta leader counts as current members, or undefined while there is no leader. */
  const metaMembers = async (): Promise<string[] | undefined> => {
    for (let i = 0; i < size; i++) {
      try {
        const jsz = (await (
          await fetch(`http://127.0.0.1:${ports[i]!.http}/jsz`, { signal: AbortSignal.timeout(1_000) })
        ).json()) as {
          meta_cluster?: { leader?: string; replicas?: Array<{ name: string; current?: boolean; offline?: boolean }> };
        };
        const meta = jsz.meta_cluster;
        if (meta?.leader !== `n${i + 1}`) continue;
        return [meta.leader, ...(meta.replicas ?? []).filter((r) => r.current && !r.offline).map((r) => r.name)];
      } catch {
        // not answering yet
      }
    }
    return undefined;
  };
  try {
    for (let i = 0; i < size; i++) launch(i);
    await cluster.healthy();
    // Started together, nodes sometimes form the JetStream meta group without one of them
    // (seen with 2.10: cluster_size 2 for minutes), and then no R3 stream can be placed.
    // A node left out is restarted until the group has every node.
    for (let round = 0; ; round++) {
      const members = await waitFor(
        "the JetStream meta group to have every node",
        async () => {
          const m = await metaMembers();
          return m && m.length === size ? m : undefined;
        },
        5_000,
        100,
      ).catch(() => undefined);
      if (members) break;
      if (round === 3) throw new Error("the JetStream meta group never took in every node");
      const present = new Set((await metaMembers()) ?? []);
      for (let i = 0; i < size; i++) {
        if (present.has(`n${i + 1}`)) continue;
        await killNode(i);
        launch(i);
      }
      await cluster.healthy();
    }
    return cluster;
  } catch (err) {
    await cluster[Symbol.asyncDispose]();
    throw err;
  }
}

export interface Submitter {
  /** Ids the job-manager acknowledged. */
  acked: Set<string>;
  /** Calls that failed (and were retried with the same id). */
  failedCalls(): number;
  /** Stops submitting and waits for the call in flight. */
  stop(): Promise<void>;
}

/** A schedule's fired jobs (up to 1,000), as the job-manager lists them (newest first). */
export async function jobsOfSchedule(jobs: JobServiceClient, scheduleId: string): Promise<Job[]> {
  return (await unaryCall(jobs.listJobs.bind(jobs), ListJobsRequest.fromPartial({ scheduleId, pageSize: 1000 }))).jobs;
}

/**
 * A client submitting `echo <id>` jobs ("<prefix>-0000", ...) one after the
 * other, `pauseMs` apart; a failed call is retried with the same id after
 * `retryMs` until acknowledged — what a careful client does through an outage.
 */
export function startSubmitter(jobs: JobServiceClient, options: { prefix: string; pauseMs: number; retryMs: number }): Submitter {
  const acked = new Set<string>();
  let failed = 0;
  let submitting = true;
  const loop = (async () => {
    for (let n = 0; submitting; n++) {
      const id = `${options.prefix}-${String(n).padStart(4, "0")}`;
      for (;;) {
        try {
          await unaryCall(
            jobs.submitJob.bind(jobs),
            SubmitJobRequest.fromPartial({ jobId: id, spec: { exec: { command: "echo", args: [id] } } }),
            { deadlineMs: 3_000 },
          );
          acked.add(id);
          break;
        } catch {
          failed++;
          await sleep(options.retryMs);
        }
      }
      await sleep(options.pauseMs);
    }
  })();
  return {
    acked,
    failedCalls: () => failed,
    async stop() {
      submitting = false;
      await loop;
    },
  };
}
