/** Admission under the agent's policy: refusals with their reasons, and what a job is allowed to see. */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { JobSpec } from "@aspen/proto";
import { ConfigError } from "@aspen/runtime";
import { admit, compilePolicy, RateLimiter, Refusal } from "./admission.js";
import { execute } from "./executor.js";
import { loadAgentConfig } from "./config.js";
import { parsePolicy, PolicySchema } from "./policy.js";

const dir = mkdtempSync(join(tmpdir(), "aspen-admission-"));
const root = join(dir, "work");
mkdirSync(join(root, "sub"), { recursive: true });
mkdirSync(join(dir, "outside"));
symlinkSync(join(dir, "outside"), join(root, "escape"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PATH = process.env.PATH ?? "/usr/bin:/bin";
const compile = (policy: object, agentEnv: NodeJS.ProcessEnv = { PATH }) =>
  compilePolicy(PolicySchema.parse({ workRoot: root, ...policy }), { defaultWorkRoot: root, agentEnv, isRoot: false });
const spec = (s: Parameters<typeof JobSpec.fromPartial>[0]) => JobSpec.fromPartial(s);
const refusal = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof Refusal) return err.reason;
    throw err;
  }
  throw new Error("expected a refusal");
};

describe("admission", () => {
  it("allows a listed name resolved on PATH, and refuses everything else with the reason", () => {
    const p = compile({ commands: { allow: ["echo", "/usr/bin/env"], shell: false } });
    expect(admit(spec({ exec: { command: "echo", args: ["hi"] } }), p).program).toMatch(/\/echo$/);
    expect(admit(spec({ exec: { command: "/usr/bin/env" } }), p).program).toBe("/usr/bin/env");
    expect(refusal(() => admit(spec({ exec: { command: "cat" } }), p))).toMatch(
      /command "cat" \(.*\/cat\) is not in this agent's allowlist/,
    );
    // A listed name does not admit another binary of that name given by path.
    expect(refusal(() => admit(spec({ exec: { command: "/bin/cat" } }), p))).toMatch(/not in this agent's allowlist/);
    expect(refusal(() => admit(spec({ exec: { command: "./echo" } }), p))).toMatch(/relative path is refused/);
    expect(refusal(() => admit(spec({ exec: { command: "no-such-aspen" } }), p))).toMatch(/not found on the agent's PATH/);
  });

  it("refuses shell scripts when the config forbids them", () => {
    const p = compile({ commands: { shell: false } });
    expect(refusal(() => admit(spec({ exec: { command: "echo hi", shell: true } }), p))).toBe(
      "shell scripts are forbidden by this agent's config (commands.shell = false)",
    );
    expect(admit(spec({ exec: { command: "echo hi", shell: true } }), compile({})).program).toBe("/bin/sh");
  });

  it("keeps the working directory inside the root: `..` and symlink escapes are refused", () => {
    const p = compile({});
    expect(admit(spec({ exec: { command: "true" } }), p).cwd).toBe(root);
    expect(admit(spec({ exec: { command: "true", cwd: "sub" } }), p).cwd).toBe(join(root, "sub"));
    expect(admit(spec({ exec: { command: "true", cwd: join(root, "sub", "..") } }), p).cwd).toBe(root);
    expect(refusal(() => admit(spec({ exec: { command: "true", cwd: "../outside" } }), p))).toMatch(
      /cwd "..\/outside" resolves to .*outside, outside the agent's working-directory root/,
    );
    expect(refusal(() => admit(spec({ exec: { command: "true", cwd: "sub/../.." } }), p))).toMatch(/outside the agent's/);
    expect(refusal(() => admit(spec({ exec: { command: "true", cwd: "escape" } }), p))).toMatch(
      /cwd "escape" resolves to .*\/outside, outside/,
    );
    expect(refusal(() => admit(spec({ exec: { command: "true", cwd: "/etc" } }), p))).toMatch(/outside/);
    expect(refusal(() => admit(spec({ exec: { command: "true", cwd: "missing" } }), p))).toMatch(/does not exist/);
  });

  it("refuses job variables the env policy denies, naming the variable and the pattern", () => {
    const p = compile({});
    expect(refusal(() => admit(spec({ exec: { command: "true", env: { API_TOKEN: "x" } } }), p))).toBe(
      'env API_TOKEN: denied by this agent\'s environment policy (pattern "*TOKEN*"); a secret belongs in secret_env',
    );
    expect(refusal(() => admit(spec({ exec: { command: "true", env: { ld_preload: "/x.so" } } }), p))).toMatch(/pattern "LD_\*"/);
    expect(refusal(() => admit(spec({ exec: { command: "true", env: { db_password: "x" } } }), p))).toMatch(/PASSWORD/);
    expect(refusal(() => admit(spec({ exec: { command: "true", env: { "A=B": "x" } } }), p))).toMatch(
      /not a valid variable name/,
    );
    expect(admit(spec({ exec: { command: "true", env: { GREETING: "hi" } } }), p).env.GREETING).toBe("hi");
  });

  it("never passes the agent's own secret to a job: only the passthrough base", async () => {
    const agentEnv = { PATH, HOME: "/root", AGENT_SECRET: "s3cret-agent", NATS_TOKEN: "t0ken" };
    const p = compile({}, agentEnv);
    const s = spec({ exec: { command: "env", env: { JOB_VAR: "1" } } });
    const r = await execute(s, admit(s, p), { maxInlineOutputBytes: 65536 }).result;
    expect(r.stdout?.text).toContain("JOB_VAR=1");
    expect(r.stdout?.text).toContain("HOME=/root");
    expect(r.stdout?.text).not.toContain("s3cret-agent");
    expect(r.stdout?.text).not.toContain("t0ken");
  });

  it("lets a job lower the agent's limits, never raise them", () => {
    const p = compile({ limits: { cpuSeconds: 10, memoryBytes: 1_000_000_000 } });
    const plan = admit(
      spec({ exec: { command: "true" }, limits: { cpuSeconds: 60, memoryBytes: 500_000_000, openFiles: 64 } }),
      p,
    );
    expect(plan.limits).toMatchObject({ cpuSeconds: 10, memoryBytes: 500_000_000, openFiles: 64 });
  });

  it("refuses network in the sandbox unless the config allows it", () => {
    const p = compile({ sandbox: { enabled: true } });
    expect(refusal(() => admit(spec({ exec: { command: "true" }, network: true }), p))).toMatch(/no network/);
    expect(admit(spec({ exec: { command: "true" } }), p).sandbox).toEqual({ network: false, root });
  });
});

describe("rate limit", () => {
  it("refuses the start past the per-minute budget, clearly, and frees it after a minute", () => {
    let now = 1_000_000;
    const limiter = new RateLimiter({ perCommand: { curl: 2 }, default: 0 }, () => now);
    limiter.take("curl", "/usr/bin/curl");
    limiter.take("curl", "/usr/bin/curl");
    limiter.take("echo", "/bin/echo"); // no rule: unlimited
    now += 10_000;
    expect(() => limiter.take("curl", "/usr/bin/curl")).toThrow(
      'rate limit: "curl" was started 2 times in the last minute (max 2 per minute); next start possible in 50 s',
    );
    now += 50_001;
    expect(() => limiter.take("curl", "/usr/bin/curl")).not.toThrow();
  });
});

describe("policy file", () => {
  it("refuses unknown keys and bad values, naming them", () => {
    expect(() => parsePolicy('{"comands": {}}', "agent.json")).toThrow(ConfigError);
    expect(() => parsePolicy('{"comands": {}}', "agent.json")).toThrow(/agent.json: \(root\): Unrecognized key.*comands/);
    expect(() => parsePolicy('{"limits": {"cpuSeconds": -1}}', "agent.json")).toThrow(/limits.cpuSeconds/);
    expect(() => parsePolicy("{nope", "agent.json")).toThrow(/not valid JSON/);
  });

  it("accepts the example config shipped in deploy/", () => {
    const file = new URL("../../../deploy/agent.example.json", import.meta.url);
    const p = parsePolicy(readFileSync(file, "utf8"), "deploy/agent.example.json");
    expect(p.commands.shell).toBe(false);
    expect(p.runAs?.user).toBe("aspen-job");
  });

  it("takes the file, with set environment variables winning", () => {
    const json = JSON.stringify({ slots: 7, labels: { zone: "a" }, commands: { allow: ["echo"], shell: false } });
    const s = loadAgentConfig({ ASPEN_AGENT_CONFIG_JSON: json, ASPEN_LABELS: "rack=r1" });
    expect(s.slots).toBe(7);
    expect(s.labels).toEqual({ zone: "a", rack: "r1" });
    expect(s.policy.commands).toEqual({ allow: ["echo"], shell: false });
    expect(loadAgentConfig({ ASPEN_AGENT_CONFIG_JSON: json, ASPEN_SLOTS: "2" }).slots).toBe(2);
    expect(() => loadAgentConfig({ ASPEN_AGENT_CONFIG: "/nonexistent/agent.json" })).toThrow(/cannot read: ENOENT/);
  });

  it("refuses runAs when the agent is not root, and a work root that does not exist", () => {
    expect(() =>
      compilePolicy(PolicySchema.parse({ runAs: { user: "nobody" } }), { defaultWorkRoot: root, agentEnv: {}, isRoot: false }),
    ).toThrow(/runAs: the agent must run as root/);
    expect(() =>
      compilePolicy(PolicySchema.parse({ workRoot: "/nonexistent/aspen" }), {
        defaultWorkRoot: root,
        agentEnv: {},
        isRoot: false,
      }),
    ).toThrow(/workRoot: "\/nonexistent\/aspen" does not exist/);
  });
});
