/** `aspen workers`: the coordinator's worker registry with health and load. */
import type { Command } from "commander";
import { Worker, WorkerHealth } from "@aspen/proto";
import { unaryCall } from "@aspen/runtime";
import type { Clients } from "./clients.js";
import { ago, formatMap, json, shortName, table } from "./format.js";

export function registerWorkersCommand(program: Command, clients: Clients): void {
  program
    .command("workers")
    .description("list registered workers")
    .option("--json", "print the Workers as a JSON array")
    .action(async (opts: { json?: boolean }) => {
      const c = clients.coordinator;
      const { workers } = await unaryCall(c.listWorkers.bind(c), {});
      if (opts.json) {
        console.log(json(workers.map((w) => Worker.toJSON(w))));
        return;
      }
      const now = Date.now();
      const rows = workers.map((w) => [
        w.id,
        shortName(WorkerHealth, w.health, "WORKER_HEALTH_"),
        String(w.slots),
        String(w.running.length),
        formatMap(w.labels),
        w.capabilities.join(",") || "-",
        ago(w.lastHeartbeatAt, now),
      ]);
      console.log(table(["ID", "HEALTH", "SLOTS", "RUNNING", "LABELS", "CAPABILITIES", "LAST HEARTBEAT"], rows));
    });
}
