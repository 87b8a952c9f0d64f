/**
 * Survives an agent crash: each running job's process group is recorded in
 * the state directory (one small file per group, with the leader's start
 * time) and removed when the job ends. A SIGKILLed agent cannot stop its
 * jobs, and their groups outlive it (they are detached); the next agent
 * started with the same state directory kills those groups before it takes
 * work, so no job of a dead agent keeps running unsupervised.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "@aspen/runtime";

/** Field 22 of /proc/<pid>/stat: start time in clock ticks since boot; tells a reused pid apart. */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function groupHasMembers(pgid: number): boolean {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(f[2]) === pgid && f[0] !== "Z") return true;
    } catch {
      // gone
    }
  }
  return false;
}

export class GroupRegistry {
  constructor(
    private readonly dir: string,
    private readonly log: Logger,
  ) {
    mkdirSync(dir, { recursive: true });
  }

  /** Kills the groups a previous agent left running; returns how many. */
  reapLeftovers(): number {
    let killed = 0;
    for (const name of readdirSync(this.dir)) {
      const file = join(this.dir, name);
      try {
        const rec = JSON.parse(readFileSync(file, "utf8")) as { pgid: number; start: string; job: string };
        const leaderStart = startTime(rec.pgid);
        // Same leader, or leader gone but its group lives on (a pgid is not reused while the group exists).
        if (
          (leaderStart !== undefined && leaderStart === rec.start) ||
          (leaderStart === undefined && groupHasMembers(rec.pgid))
        ) {
          process.kill(-rec.pgid, "SIGKILL");
          killed++;
          this.log.warn({ pgid: rec.pgid, job: rec.job }, "killed a job left running by a previous agent");
        }
      } catch {
        // unreadable or already gone
      }
      rmSync(file, { force: true });
    }
    return killed;
  }

  add(pgid: number, job: string): void {
    try {
      writeFileSync(join(this.dir, String(pgid)), JSON.stringify({ pgid, start: startTime(pgid) ?? "", job }));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "cannot record a running job in the state directory");
    }
  }

  remove(pgid: number): void {
    rmSync(join(this.dir, String(pgid)), { force: true });
  }
}
