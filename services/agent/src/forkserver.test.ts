/** The fork server with real processes (the executor's own tests run through it as well). */
import { createHash } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { processGroupAlive } from "@aspen/testkit";
import { ForkServer, type SpawnedChild, type SpawnOptions } from "./forkserver.js";

const base: SpawnOptions = { env: { PATH: "/usr/bin:/bin" }, stdout: "pipe", stderr: "pipe" };

function outcome(child: SpawnedChild) {
  return new Promise<{ out: Buffer; code: number | null; signal: string | null; error?: string }>((resolve) => {
    const chunks: Buffer[] = [];
    let exit: { code: number | null; signal: string | null } = { code: null, signal: null };
    child.stdout?.on("data", (c: Buffer) => chunks.push(c));
    child.on("error", (err: Error & { code?: string }) =>
      resolve({ out: Buffer.alloc(0), ...exit, error: `${err.code}: ${err.message}` }),
    );
    child.on("exit", (code: number | null, signal: string | null) => (exit = { code, signal }));
    child.on("close", () => resolve({ out: Buffer.concat(chunks), ...exit }));
  });
}

describe("fork server", () => {
  let server: ForkServer;
  afterEach(() => server.close());

  it("delivers a large output whole to a slow reader (the pipe is held, not buffered without bound)", async () => {
    server = new ForkServer();
    const script = 'f=$(mktemp); head -c 4000000 /dev/urandom >"$f"; cat "$f"; sha256sum <"$f" >&2; rm "$f"';
    const child = server.spawn("/bin/sh", ["-c", script], base);
    const digest = new Promise<string>((resolve) => {
      let err = Buffer.alloc(0);
      child.stderr?.on("data", (c: Buffer) => (err = Buffer.concat([err, c])));
      child.stderr?.on("end", () => resolve(err.toString().split(" ")[0] ?? ""));
    });
    // Read stdout slowly: pause after every chunk.
    const hash = createHash("sha256");
    let bytes = 0;
    child.stdout?.on("data", (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
      child.stdout?.pause();
      setTimeout(() => child.stdout?.resume(), 1);
    });
    await new Promise((r) => child.on("close", r));
    expect(bytes).toBe(4_000_000);
    // The same bytes as sha256sum read from the file.
    expect(hash.digest("hex")).toBe(await digest);
  });

  it("says why a program did not start, and goes on serving", async () => {
    server = new ForkServer();
    const missing = await outcome(server.spawn("/nonexistent/aspen", [], base));
    expect(missing.error).toMatch(/^ENOENT: exec \/nonexistent\/aspen/);
    const badDir = await outcome(server.spawn("/bin/true", [], { ...base, cwd: "/nonexistent-dir" }));
    expect(badDir.error).toMatch(/^ENOENT: chdir \/nonexistent-dir/);
    const nul = await outcome(server.spawn("/bin/echo", ["a\0b"], base));
    expect(nul.error).toMatch(/^EINVAL/);
    const ok = await outcome(server.spawn("/bin/echo", ["still here"], base));
    expect(ok).toMatchObject({ code: 0, signal: null });
    expect(ok.out.toString()).toBe("still here\n");
  });

  it("gives stdin and then EOF (also when empty), and runs a job in its directory", async () => {
    server = new ForkServer();
    const fed = await outcome(server.spawn("/bin/cat", [], { ...base, stdin: Buffer.from("fed\n") }));
    expect(fed.out.toString()).toBe("fed\n");
    const empty = await outcome(server.spawn("/bin/cat", [], { ...base, stdin: new Uint8Array() }));
    expect(empty).toMatchObject({ code: 0, out: Buffer.alloc(0) });
    const where = await outcome(server.spawn("/bin/pwd", [], { ...base, cwd: "/usr" }));
    expect(where.out.toString()).toBe("/usr\n");
    // A job without a cwd runs where the agent does, not where the previous job ran.
    const home = await outcome(server.spawn("/bin/pwd", [], base));
    expect(home.out.toString()).toBe(`${process.cwd()}\n`);
  });

  it("finds a bare program name on the job's PATH, as execvp does", async () => {
    server = new ForkServer();
    const found = await outcome(server.spawn("echo", ["on PATH"], { ...base, env: { PATH: "/nonexistent:/bin" } }));
    expect(found.out.toString()).toBe("on PATH\n");
    const notFound = await outcome(server.spawn("echo", [], { ...base, env: { PATH: "/nonexistent" } }));
    expect(notFound.error).toMatch(/^ENOENT: exec echo/);
  });

  // setuid/setgid need root; jobs with runAs take the fork path (posix_spawn cannot switch ids).
  it.skipIf(process.getuid?.() !== 0)("runs a runAs job under its uid and gid, and says why one could not start", async () => {
    server = new ForkServer();
    const ids = await outcome(server.spawn("/bin/sh", ["-c", "id -u; id -g; id -G"], { ...base, uid: 65534, gid: 65534 }));
    expect(ids).toMatchObject({ code: 0, signal: null });
    expect(ids.out.toString()).toBe("65534\n65534\n65534\n");
    const badDir = await outcome(server.spawn("/bin/true", [], { ...base, uid: 65534, gid: 65534, cwd: "/nonexistent-dir" }));
    expect(badDir.error).toMatch(/^ENOENT: chdir \/nonexistent-dir/);
    const missing = await outcome(server.spawn("/nonexistent/aspen", [], { ...base, uid: 65534, gid: 65534 }));
    expect(missing.error).toMatch(/^ENOENT: exec \/nonexistent\/aspen/);
    // Without a cwd it runs where the agent does, not where the last job ran.
    await outcome(server.spawn("/bin/true", [], { ...base, cwd: "/usr" }));
    const home = await outcome(server.spawn("/bin/pwd", [], { ...base, uid: 65534, gid: 65534 }));
    expect(home.out.toString()).toBe(`${process.cwd()}\n`);
  });

  it("without a python to run, a spawn fails with the reason instead of waiting forever", async () => {
    server = new ForkServer("/nonexistent/python3");
    const r = await outcome(server.spawn("/bin/true", [], base));
    expect(r.error).toMatch(/^ESPAWNER/);
  });

  it("when it dies, its running jobs are killed and end as SIGKILL; the next spawn starts a new one", async () => {
    server = new ForkServer();
    const child = server.spawn("/bin/sh", ["-c", "sleep 100 & sleep 100"], base);
    await new Promise((r) => child.once("spawn", r));
    const pid = child.pid!;
    const ended = outcome(child);
    const serverPid = Number(
      (await import("node:child_process"))
        .execFileSync("pgrep", ["-f", "aspen-forkserver", "-P", String(process.pid)])
        .toString()
        .trim(),
    );
    process.kill(serverPid, "SIGKILL");
    expect(await ended).toMatchObject({ code: null, signal: "SIGKILL" });
    expect(await processGroupAlive(pid)).toBe(false);
    const again = await outcome(server.spawn("/bin/echo", ["back"], base));
    expect(again.out.toString()).toBe("back\n");
  });
});
