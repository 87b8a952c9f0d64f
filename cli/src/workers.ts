/** `aspen workers …` and `aspen groups …`: the coordinator's worker registry, draining and worker groups. */
import type { Command } from "commander";
import { Worker, WorkerGroup, WorkerHealth } from "@aspen/proto";
import { unaryCall } from "@aspen/runtime";
import type { Clients } from "./clients.js";
import { ago, collect, collectKeyValue, fields, formatMap, json, shortName, table } from "./format.js";

export function registerWorkersCommand(program: Command, clients: Clients): void {
  const workers = program
    .command("workers")
    .description("list registered workers (and drain or inspect one)")
    .option("--json", "print the Workers as a JSON array")
    .action(async (opts: { json?: boolean }) => {
      const c = clients.coordinator;
      const { workers: list } = await unaryCall(c.listWorkers.bind(c), {});
      if (opts.json) {
        console.log(json(list.map((w) => Worker.toJSON(w))));
        return;
      }
      const now = Date.now();
      const rows = list.map((w) => [
        w.id,
        shortName(WorkerHealth, w.health, "WORKER_HEALTH_"),
        String(w.slots),
        String(w.running.length),
        formatMap(w.labels),
        w.capabilities.join(",") || "-",
        w.groups.join(",") || "-",
        ago(w.lastHeartbeatAt, now),
      ]);
      console.log(table(["ID", "HEALTH", "SLOTS", "RUNNING", "LABELS", "CAPABILITIES", "GROUPS", "LAST HEARTBEAT"], rows));
    });

  workers
    .command("get")
    .description("one worker with its running attempts")
    .argument("<id>")
    .option("--json", "print the Worker as JSON")
    .action(async (id: string, opts: { json?: boolean }) => {
      const c = clients.coordinator;
      const w = await unaryCall(c.getWorker.bind(c), { workerId: id });
      if (opts.json) {
        console.log(json(Worker.toJSON(w)));
        return;
      }
      console.log(
        fields([
          ["id", w.id],
          ["hostname", w.hostname],
          ["health", shortName(WorkerHealth, w.health, "WORKER_HEALTH_")],
          ["slots", String(w.slots)],
          ["labels", formatMap(w.labels)],
          ["capabilities", w.capabilities.join(",") || "-"],
          ["groups", w.groups.join(",") || "-"],
          ["version", w.version],
          ["last heartbeat", ago(w.lastHeartbeatAt, Date.now())],
          ["running", w.running.join(" ") || "-"],
        ]),
      );
    });

  for (const [name, undrain] of [
    ["drain", false],
    ["undrain", true],
  ] as const) {
    workers
      .command(name)
      .description(undrain ? "let a drained worker take new work again" : "give a worker no new work; what runs finishes")
      .argument("<id>")
      .action(async (id: string) => {
        const c = clients.coordinator;
        const w = await unaryCall(c.drainWorker.bind(c), { workerId: id, undrain });
        console.log(`${w.id}: ${shortName(WorkerHealth, w.health, "WORKER_HEALTH_")}`);
      });
  }

  const groups = program.command("groups").description("worker groups (usable as a job's worker_group)");
  groups
    .command("list", { isDefault: true })
    .option("--json", "print the groups as a JSON array")
    .action(async (opts: { json?: boolean }) => {
      const c = clients.coordinator;
      const res = await unaryCall(c.listWorkerGroups.bind(c), {});
      if (opts.json) {
        console.log(json(res.groups.map((g) => WorkerGroup.toJSON(g))));
        return;
      }
      const rows = res.groups.map((g) => [
        g.name,
        g.workerIds.join(",") || "-",
        formatMap(g.selector?.matchLabels ?? {}),
        g.description,
      ]);
      console.log(table(["NAME", "WORKERS", "SELECTOR LABELS", "DESCRIPTION"], rows));
    });
  for (const [name, update] of [
    ["create", false],
    ["update", true],
  ] as const) {
    groups
      .command(name)
      .argument("<name>")
      .option("--worker <id>", "a member by id (repeatable)", collect)
      .option("--label <key=value>", "members: every worker with this label (repeatable)", collectKeyValue)
      .option("--description <text>", "what the group is for")
      .action(async (groupName: string, opts: { worker?: string[]; label?: Record<string, string>; description?: string }) => {
        const c = clients.coordinator;
        const group = WorkerGroup.fromPartial({
          name: groupName,
          description: opts.description ?? "",
          workerIds: opts.worker ?? [],
          selector: opts.label ? { matchLabels: opts.label } : undefined,
        });
        const saved = update
          ? await unaryCall(c.updateWorkerGroup.bind(c), { group })
          : await unaryCall(c.createWorkerGroup.bind(c), { group });
        console.log(`${saved.name}: ${update ? "updated" : "created"}`);
      });
  }
  groups
    .command("delete")
    .argument("<name>")
    .action(async (name: string) => {
      const c = clients.coordinator;
      await unaryCall(c.deleteWorkerGroup.bind(c), { name });
      console.log(`${name}: deleted`);
    });
}
