/** Resource limits and the sandbox with real processes: each limit ends a job with a reason a person can read. */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { JobSpec } from "@aspen/proto";
import { processGroupAlive } from "@aspen/testkit";
import { admit, compilePolicy } from "./admission.js";
import { execute } from "./executor.js";
import { explainLimit } from "./limits.js";
import { PolicySchema } from "./policy.js";

const root = mkdtempSync(join(tmpdir(), "aspen-limits-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;
const hasBwrap = (() => {
  try {
    execFileSync("bwrap", ["--ro-bind", "/", "/", "--unshare-all", "true"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

const run = async (policy: object, s: Parameters<typeof JobSpec.fromPartial>[0]) => {
  const compiled = compilePolicy(PolicySchema.parse({ workRoot: root, ...policy }), {
    defaultWorkRoot: root,
    agentEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    isRoot,
  });
  const spec = JobSpec.fromPartial({ timeout: { seconds: 20, nanos: 0 }, ...s });
  return execute(spec, admit(spec, compiled), {
    maxInlineOutputBytes: 65536,
    maxOutputBytes: compiled.policy.output.maxBytes,
    sandbox: { bwrap: "bwrap", writable: [] },
  }).result;
};
const sh = (script: string) => ({ exec: { command: script, shell: true } });

describe("resource limits", () => {
  it("CPU time: SIGXCPU at the limit, said in words", async () => {
    const r = await run({ limits: { cpuSeconds: 1 } }, sh("while :; do :; done"));
    expect(r.signal).toBe("SIGXCPU");
    expect(r.error).toBe("CPU time limit exceeded (1 s): ended by SIGXCPU");
    expect(r.details?.limitExceeded).toBe("cpu");
    // CPU time is sampled from /proc while it runs: most of the second is seen.
    expect(durationMs(r.cpuTime)).toBeGreaterThan(500);
  });

  it("cannot be dodged by a job that puts its own prlimit first on its PATH", async () => {
    const fake = join(root, "fake-bin");
    mkdirSync(fake);
    // A "prlimit" that drops every option and runs the command unlimited.
    writeFileSync(join(fake, "prlimit"), '#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n', {
      mode: 0o755,
    });
    const r = await run(
      { limits: { cpuSeconds: 1 } },
      {
        exec: { command: "while :; do :; done", shell: true, env: { PATH: `${fake}:/usr/bin:/bin` } },
        timeout: { seconds: 5, nanos: 0 },
      },
    );
    expect(r.timedOut).toBe(false);
    expect(r.signal).toBe("SIGXCPU");
  });

  it("memory: an allocation past the address-space limit fails the job with the reason", async () => {
    const r = await run(
      { limits: { memoryBytes: 64 * 1024 * 1024 } },
      { exec: { command: "perl", args: ["-e", '$x = "a" x 200_000_000; print length($x)'] } },
    );
    expect(r.exitCode).not.toBe(0);
    expect(r.error).toBe("memory limit exceeded (64 MiB of address space)");
    expect(r.details?.limitExceeded).toBe("memory");
  });

  it("file size: writing past the limit ends the job (SIGXFSZ)", async () => {
    const r = await run({ limits: { fileSizeBytes: 100_000 } }, sh("head -c 1000000 /dev/zero > big.bin"));
    expect(r.exitCode).toBe(153); // the shell reports its child's SIGXFSZ as 128 + 25
    expect(r.error).toBe("file size limit exceeded (100000 bytes per file): ended by SIGXFSZ");
    expect(r.details?.limitExceeded).toBe("file_size");
  });

  it("open files: EMFILE past the descriptor limit", async () => {
    const r = await run(
      { limits: { openFiles: 8 } },
      {
        exec: {
          command: "perl",
          args: ["-e", 'for (1..20) { open(my $f, "<", "/dev/null") or die "open: $!\\n"; push @f, $f }'],
        },
      },
    );
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr?.text).toContain("Too many open files");
    expect(r.error).toBe("open files limit exceeded (8 descriptors)");
  });

  // RLIMIT_NPROC is not enforced for root, so this needs runAs, which needs the agent to be root.
  it.skipIf(!isRoot)("processes: fork fails past the limit for the job's user (runAs, agent as root)", async () => {
    const r = await run(
      { runAs: { user: "nobody" }, limits: { processes: 2 } },
      sh("sleep 1 & sleep 1 & sleep 1 & sleep 1 & wait"),
    );
    expect(r.exitCode).not.toBe(0);
    expect(r.error).toBe("process limit exceeded (2 processes for the job's user)");
    expect(r.details?.runAs).toBe("nobody:nogroup");
  });

  it("output: a job writing past the output limit is stopped", async () => {
    const r = await run({ output: { maxBytes: 100_000 } }, sh("yes"));
    expect(r.error).toBe("output limit exceeded: stdout passed 100000 bytes");
    expect(r.details?.limitExceeded).toBe("output");
  });

  it("blames no limit on a clean exit or on a stop by the agent", () => {
    const limits = { memoryBytes: 1, cpuSeconds: 1, processes: 1, fileSizeBytes: 1, openFiles: 1 };
    expect(
      explainLimit(limits, { exitCode: 0, signal: "", stoppedByAgent: false, stderrTail: "out of memory", cpuMs: 0 }),
    ).toBeUndefined();
    expect(
      explainLimit(limits, { exitCode: null, signal: "SIGKILL", stoppedByAgent: true, stderrTail: "", cpuMs: 5000 }),
    ).toBeUndefined();
  });
});

// bubblewrap needs root (or unprivileged user namespaces) and the `bubblewrap` package.
describe.skipIf(!hasBwrap)("sandbox (bubblewrap)", () => {
  const sandbox = { sandbox: { enabled: true } };
  it("blocks the network: a listener on the host's loopback is unreachable from inside", async () => {
    const server = createServer((c) => c.end("hello from the host\n"));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    try {
      const connect = {
        exec: {
          command: "perl",
          args: [
            "-MIO::Socket::INET",
            "-e",
            `my $s = IO::Socket::INET->new("127.0.0.1:${port}") or die "connect: $!\\n"; print <$s>`,
          ],
        },
      };
      const outside = await run({}, connect);
      expect(outside.stdout?.text).toBe("hello from the host\n");
      const inside = await run(sandbox, connect);
      expect(inside.exitCode).not.toBe(0);
      expect(inside.stderr?.text).toMatch(/^connect: /);
      const devices = await run(sandbox, { exec: { command: "cat", args: ["/proc/net/dev"] } });
      expect(devices.stdout?.text).toMatch(/\blo:/);
      expect(devices.stdout?.text.trim().split("\n")).toHaveLength(3); // two header lines and lo
    } finally {
      server.close();
    }
  });

  it("still kills the whole job on timeout: nothing of a sandboxed process tree is left", async () => {
    const marker = `sleep 9${Date.now() % 100000}`;
    const r = await run(sandbox, {
      exec: { command: `${marker} & ${marker}`, shell: true },
      timeout: { seconds: 1, nanos: 0 },
      killGrace: { seconds: 0, nanos: 300e6 },
    });
    expect(r.timedOut).toBe(true);
    expect(await processGroupAlive(r.pid)).toBe(false);
    expect(processesRunning(marker)).toEqual([]);
  });

  it("makes the root read-only and /tmp private", async () => {
    const marker = join(root, "written-from-sandbox");
    const r = await run(sandbox, sh(`echo x > ${marker}; echo x > /tmp/inside && cat /tmp/inside`));
    expect(r.stderr?.text).toMatch(/Read-only file system/);
    expect(existsSync(marker)).toBe(false);
    expect(r.stdout?.text).toBe("x\n");
    expect(existsSync("/tmp/inside")).toBe(false); // that /tmp was the sandbox's own
    expect(r.details?.sandboxed).toBe(true);
  });
});

function durationMs(d: { seconds: number; nanos: number } | undefined): number {
  return d ? d.seconds * 1000 + d.nanos / 1e6 : 0;
}

/** Live processes whose command line contains `needle`. */
function processesRunning(needle: string): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        const stat = readFileSync(`/proc/${e}/stat`, "utf8");
        return (
          readFileSync(`/proc/${e}/cmdline`, "utf8").replace(/\0/g, " ").includes(needle) &&
          stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z"
        );
      } catch {
        return false;
      }
    })
    .map(Number);
}
