/** The executor with real child processes. */
import { createHash } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { JobSpec, StderrMode } from "@aspen/proto";
import { processGroupAlive } from "@aspen/testkit";
import { admit, compilePolicy } from "./admission.js";
import { BoundedCapture, execute as run, type ExecutorOptions } from "./executor.js";
import { ForkServer, nodeSpawner, type Spawner } from "./forkserver.js";
import { PolicySchema } from "./policy.js";

const policy = compilePolicy(PolicySchema.parse({ workRoot: "/tmp" }), {
  defaultWorkRoot: "/tmp",
  agentEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
  isRoot: false,
});
/** Admits under a permissive policy, then runs. */
const execute = (s: JobSpec, o: ExecutorOptions) => run(s, admit(s, policy), o);
const spec = (s: Parameters<typeof JobSpec.fromPartial>[0]) => JobSpec.fromPartial(s);
const sh = (script: string, extra: Parameters<typeof JobSpec.fromPartial>[0] = {}) =>
  spec({ ...extra, exec: { command: "/bin/sh", args: ["-c", script], ...extra.exec } });

const forkServer = new ForkServer();
afterAll(() => forkServer.close());

// Every behaviour holds for both ways of starting a process: the agent's fork server and child_process.
describe.each<[string, Spawner]>([
  ["fork server", forkServer],
  ["child_process", nodeSpawner],
])("executor (%s)", (_name, spawner) => {
  const options: ExecutorOptions = { maxInlineOutputBytes: 1024 * 1024, spawner };
  it("runs a command without a shell and captures stdout, exit code and digest", async () => {
    const run = execute(spec({ exec: { command: "echo", args: ["hello", "$HOME", ";", "ls"] } }), options);
    const { pid } = await run.started;
    expect(pid).toBeGreaterThan(0);
    const r = await run.result;
    expect(r.exitCode).toBe(0);
    expect(r.stdout?.text).toBe("hello $HOME ; ls\n"); // no expansion, no injection
    expect(r.stdout?.sha256).toBe(createHash("sha256").update("hello $HOME ; ls\n").digest("hex"));
    expect(r.finishedAt!.getTime()).toBeGreaterThanOrEqual(r.startedAt!.getTime());
  });

  it("reports a non-zero exit, stderr separately, and stdin", async () => {
    const r = await execute(sh("cat; echo oops >&2; exit 3", { exec: { stdin: Buffer.from("in\n") } }), options).result;
    expect(r.exitCode).toBe(3);
    expect(r.stdout?.text).toBe("in\n");
    expect(r.stderr?.text).toBe("oops\n");
  });

  it("merges stderr into stdout on request and runs shell scripts only when asked", async () => {
    const r = await execute(
      spec({ exec: { command: "echo out; echo err >&2", shell: true, stderr: StderrMode.STDERR_MODE_MERGED } }),
      options,
    ).result;
    expect(r.stdout?.text).toBe("out\nerr\n");
    expect(r.stderr?.totalBytes).toBe(0);
  });

  it("says why when the command cannot start", async () => {
    expect(() => execute(spec({ exec: { command: "no-such-command-aspen" } }), options)).toThrow(
      /command "no-such-command-aspen" not found on the agent's PATH/,
    );
    // A program that vanished between admission and spawn fails at spawn, with the reason.
    const s = spec({ exec: { command: "true" } });
    const r = await run(s, { ...admit(s, policy), program: "/nonexistent/aspen-true" }, options).result;
    expect(r.exitCode).toBe(-1);
    expect(r.error).toMatch(/could not start "true": ENOENT/);
  });

  it("passes only the allowlisted base environment plus the job's own variables", async () => {
    process.env.ASPEN_TEST_AGENT_SECRET = "s3cret";
    try {
      const r = await execute(spec({ exec: { command: "env", env: { JOB_VAR: "1" } } }), options).result;
      expect(r.stdout?.text).not.toContain("s3cret");
      expect(r.stdout?.text).toContain("JOB_VAR=1");
    } finally {
      delete process.env.ASPEN_TEST_AGENT_SECRET;
    }
  });

  it("on timeout kills the whole process group: no orphan survives", async () => {
    const run = execute(
      sh("sleep 100 & sleep 100", { timeout: { seconds: 0, nanos: 300e6 }, killGrace: { seconds: 0, nanos: 200e6 } }),
      options,
    );
    const { pid } = await run.started;
    const started = Date.now();
    const r = await run.result;
    expect(r.timedOut).toBe(true);
    expect(r.signal).toBe("SIGTERM");
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(await processGroupAlive(pid)).toBe(false);
  });

  it("KILLs a process that ignores TERM once the grace period is over", async () => {
    const run = execute(sh("trap '' TERM; sleep 100", { killGrace: { seconds: 0, nanos: 300e6 } }), options);
    const { pid } = await run.started;
    await new Promise((r) => setTimeout(r, 100));
    const t = Date.now();
    run.cancel("test");
    const r = await run.result;
    expect(r.cancelled).toBe(true);
    expect(r.signal).toBe("SIGKILL");
    expect(Date.now() - t).toBeGreaterThanOrEqual(250);
    expect(await processGroupAlive(pid)).toBe(false);
  });

  it("reaps leftovers in the group after the main process exits, so the pipes close", async () => {
    const t = Date.now();
    const run = execute(sh("sleep 100 & echo started"), options);
    const { pid } = await run.started;
    const r = await run.result;
    expect(r.exitCode).toBe(0);
    expect(r.stdout?.text).toBe("started\n");
    expect(Date.now() - t).toBeLessThan(3_000);
    expect(await processGroupAlive(pid)).toBe(false);
  });

  it("keeps output bounded whatever its size, with the full size and digest", async () => {
    const r = await execute(sh("head -c 3000000 /dev/zero | tr '\\0' 'x'", { maxInlineOutputBytes: 1000 }), options).result;
    expect(r.stdout?.totalBytes).toBe(3_000_000);
    expect(r.stdout?.truncated).toBe(true);
    expect(Buffer.byteLength(r.stdout?.text ?? "")).toBeLessThan(1000);
    expect(r.stdout?.sha256).toBe(createHash("sha256").update("x".repeat(3_000_000)).digest("hex"));
  });
});

describe("bounded capture", () => {
  it("keeps the head and the tail and says what it omitted", () => {
    const c = new BoundedCapture(10);
    for (const part of ["01234", "56789", "abcde", "fghij"]) c.push(Buffer.from(part));
    const out = c.output();
    expect(out.totalBytes).toBe(20);
    expect(out.truncated).toBe(true);
    expect(out.text).toBe("01234\n… [10 bytes omitted] …\nfghij");
  });

  it("keeps everything under the limit", () => {
    const c = new BoundedCapture(10);
    c.push(Buffer.from("abc"));
    c.push(Buffer.from("defgh"));
    expect(c.output()).toMatchObject({ text: "abcdefgh", truncated: false, totalBytes: 8 });
  });
});
