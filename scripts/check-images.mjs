#!/usr/bin/env node
/**
 * Checks what deploy/Dockerfile and deploy/Dockerfile.agent would ship, on a
 * machine without a Docker engine: replays each Dockerfile's build stage in a
 * temporary copy of the repository (its RUN lines, with absolute paths mapped
 * into the copy), assembles the final stage's /app from its `COPY --from=build`
 * lines, then starts every service from those /app folders with production
 * dependencies only (NODE_ENV=production) against a real nats-server and waits
 * until each one serves health. It catches what a `docker build` would only
 * show at run time: a runtime dependency installed as a dev dependency, a file
 * the image forgets to copy, a service that cannot find its descriptor set.
 *
 *   node scripts/check-images.mjs        (after npm ci; takes a few minutes)
 *
 * Not checked here: the base image, apt packages, users and file ownership.
 */
import { execFileSync, spawn } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const work = mkdtempSync(join(tmpdir(), "aspen-images-"));
const children = [];
const log = (...a) => console.log("[check-images]", ...a);
const sh = (cmd, cwd) => execFileSync("bash", ["-euo", "pipefail", "-c", cmd], { cwd, stdio: "inherit" });

/** Instructions of each stage: continuation lines joined, comments dropped. */
function stages(dockerfile) {
  const lines = readFileSync(join(repo, dockerfile), "utf8")
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const out = [];
  for (const line of lines) {
    const [op, ...rest] = line.split(/\s+/);
    if (op.toUpperCase() === "FROM") out.push({ from: line, steps: [] });
    else out.at(-1)?.steps.push({ op: op.toUpperCase(), args: rest.join(" ") });
  }
  return out;
}

/** A copy of the repository's tracked files (what `COPY . .` sees past .dockerignore), with node_modules from npm ci. */
function context(name) {
  const dir = join(work, name, "src");
  mkdirSync(dir, { recursive: true });
  sh(`git -C "${repo}" ls-files -z | (cd "${repo}" && xargs -0 tar -cf -) | tar -xf - -C "${dir}"`);
  return dir;
}

function build(dockerfile, name) {
  const [buildStage, finalStage] = stages(dockerfile);
  if (!buildStage || !finalStage || !/\bAS build\b/i.test(buildStage.from))
    throw new Error(`${dockerfile}: expected a "build" stage and a final stage`);
  const src = context(name);
  const out = join(work, name, "out");
  const app = join(work, name, "app");
  const map = (s) => s.replaceAll("/out", out).replaceAll("/src", src);
  log(`${dockerfile}: build stage`);
  for (const { op, args } of buildStage.steps) {
    if (op === "RUN") sh(map(args), src);
  }
  log(`${dockerfile}: final stage /app`);
  mkdirSync(app, { recursive: true });
  for (const { op, args } of finalStage.steps) {
    if (op !== "COPY") continue;
    const parts = args.split(/\s+/);
    const fromBuild = parts[0] === "--from=build";
    const [from, to] = fromBuild ? parts.slice(1) : parts;
    if (!to?.startsWith("/app")) continue; // files outside /app (e.g. /etc/aspen) are config, not code
    const target = join(app, to.slice("/app".length));
    const source = fromBuild ? map(from) : join(repo, from);
    // Docker: "COPY dir /app/x" copies dir's contents into x; a file becomes x, or x/<name> when x ends in "/".
    const intoFolder = to.endsWith("/") && !statSync(source).isDirectory();
    cpSync(source, intoFolder ? join(target, basename(source)) : target, { recursive: true });
  }
  return app;
}

async function freePort() {
  const { createServer } = await import("node:net");
  return new Promise((res) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function start(label, cwd, args, env) {
  const child = spawn(args[0], args.slice(1), {
    cwd,
    env: { PATH: process.env.PATH, NODE_ENV: "production", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr.on("data", (d) => (err = (err + d).slice(-4000)));
  child.once("exit", (code) => code && log(`${label} exited ${code}: ${err}`));
  children.push(child);
  return child;
}

function waitHealthy(app, addr) {
  sh(`node scripts/wait-healthy.mjs ${addr}`, app);
}

let failed = false;
try {
  const serviceApp = build("deploy/Dockerfile", "services");
  const agentApp = build("deploy/Dockerfile.agent", "agent");
  const natsPort = await freePort();
  start("nats-server", work, ["nats-server", "-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", join(work, "js")], {});
  const ports = { scheduler: await freePort(), "job-manager": await freePort(), coordinator: await freePort() };
  const common = {
    ASPEN_NATS_SERVERS: `nats://127.0.0.1:${natsPort}`,
    ASPEN_GRPC_HOST: "127.0.0.1",
    ASPEN_JOB_MANAGER_ADDR: `127.0.0.1:${ports["job-manager"]}`,
    ASPEN_COORDINATOR_ADDR: `127.0.0.1:${ports.coordinator}`,
    ASPEN_AUTH: "none",
    ASPEN_TLS: "off",
    OTEL_SDK_DISABLED: "true",
  };
  await new Promise((r) => setTimeout(r, 500));
  for (const [name, port] of Object.entries(ports)) {
    start(name, serviceApp, ["node", `services/${name}/dist/main.js`], { ...common, ASPEN_GRPC_PORT: String(port) });
  }
  for (const [name, port] of Object.entries(ports)) {
    waitHealthy(serviceApp, `127.0.0.1:${port}`);
    log(`${name} from deploy/Dockerfile's /app: serving`);
  }
  const healthPort = await freePort();
  start("agent", agentApp, ["node", "services/agent/dist/main.js"], {
    ...common,
    ASPEN_WORKER_ID: "image-check",
    ASPEN_HEALTH_HOST: "127.0.0.1",
    ASPEN_HEALTH_PORT: String(healthPort),
    ASPEN_STATE_DIR: join(work, "agent-state"),
  });
  waitHealthy(serviceApp, `127.0.0.1:${healthPort}`);
  log("agent from deploy/Dockerfile.agent's /app: serving");
  // One job through all four, with the CLI the service image ships.
  const printed = execFileSync(
    "node",
    [
      "cli/dist/main.js",
      "--job-manager",
      common.ASPEN_JOB_MANAGER_ADDR,
      "job",
      "submit",
      "--wait",
      "--",
      "echo",
      "from-the-images",
    ],
    { cwd: serviceApp, env: { PATH: process.env.PATH, NODE_ENV: "production" }, encoding: "utf8", timeout: 30_000 },
  );
  if (!printed.includes("from-the-images") || !/SUCCEEDED/.test(printed)) throw new Error(`job did not succeed:\n${printed}`);
  log("a job submitted with the image's CLI ran on the image's agent: SUCCEEDED");
  log("ok: both images' /app run with production dependencies only");
} catch (err) {
  failed = true;
  console.error("[check-images] FAILED:", err.message);
} finally {
  for (const c of children) c.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
