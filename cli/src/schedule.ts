/** `aspen schedule …`: create, inspect, pause, resume, delete and preview schedules (SchedulerService). */
import { Option, type Command } from "commander";
import { CreateScheduleRequest, PreviewFire, PreviewScheduleRequest, Priority, Schedule, ScheduleSpec } from "@aspen/proto";
import { durationToMs, msToDuration, unaryCall } from "@aspen/runtime";
import type { Clients } from "./clients.js";
import {
  fields,
  formatDuration,
  formatInstant,
  formatMap,
  formatSecretEnv,
  json,
  parseCount,
  parseDuration,
  parseInstant,
  shellJoin,
  priorityName,
  specSummary,
  table,
} from "./format.js";
import { addJobSpecOptions, jobSpecFrom, type JobSpecOptions } from "./job.js";

/** When a schedule fires: exactly one of cron, every, at. */
interface SpecOptions {
  cron?: string;
  tz?: string;
  every?: number;
  at?: Date;
}

function addSpecOptions(command: Command): Command {
  return command
    .addOption(new Option("--cron <expr>", "cron expression (5 or 6 fields)").conflicts(["every", "at"]))
    .option("--tz <zone>", "IANA time zone the cron expression is read in (default UTC)")
    .addOption(new Option("--every <duration>", "fire at this interval (e.g. 30s, 5m)").argParser(parseDuration).conflicts("at"))
    .addOption(
      new Option("--at <instant>", "fire once at this ISO 8601 instant (UTC unless it has an offset)").argParser(parseInstant),
    );
}

/** The spec the options describe; undefined when none of --cron, --every, --at is given. */
function specFrom(opts: SpecOptions, command: Command): ScheduleSpec | undefined {
  if (opts.tz !== undefined && opts.cron === undefined) command.error("error: --tz applies to --cron only", { exitCode: 2 });
  const kind: ScheduleSpec["kind"] =
    opts.cron !== undefined
      ? { $case: "cron", value: { expression: opts.cron, timeZone: opts.tz ?? "" } }
      : opts.every !== undefined
        ? { $case: "interval", value: { every: msToDuration(opts.every) } }
        : opts.at !== undefined
          ? { $case: "once", value: { at: opts.at } }
          : undefined;
  return kind && ScheduleSpec.fromPartial({ kind });
}

function describeSchedule(s: Schedule): string {
  const job = s.job;
  const selector = job?.placement?.selector;
  const status = s.status;
  return fields([
    ["id", s.id],
    ["name", s.name || "-"],
    ["spec", specSummary(s.spec)],
    ["paused", s.paused ? `yes${s.pauseNote ? ` (${s.pauseNote})` : ""}` : "no"],
    ["tags", formatMap(s.tags)],
    ["command", shellJoin([job?.exec?.command ?? "", ...(job?.exec?.args ?? [])])],
    ["env", formatMap(job?.exec?.env ?? {})],
    ["secret env", formatSecretEnv(job?.exec?.secretEnv ?? {})],
    ["timeout", job?.timeout ? formatDuration(durationToMs(job.timeout)) : "-"],
    ["priority", priorityName(job?.priority ?? Priority.PRIORITY_UNSPECIFIED)],
    ["labels", formatMap(selector?.matchLabels ?? {})],
    ["capabilities", selector?.capabilities.join(",") || "-"],
    ["created", formatInstant(s.createdAt)],
    ["updated", formatInstant(s.updatedAt)],
    ["next fire", formatInstant(status?.nextFireAt)],
    ["last fire", formatInstant(status?.lastFireAt)],
    ["last job", status?.lastJobId || "-"],
    ["last fire lag", status?.lastFireLag ? formatDuration(durationToMs(status.lastFireLag)) : "-"],
    ["fires", String(status?.fireCount ?? 0)],
    ["missed", String(status?.missedCount ?? 0)],
    ["skipped", String(status?.skippedCount ?? 0)],
    // Recorded ahead as the next instant is the usual case: shown only when it is something else.
    ...(status?.firingAt && status.firingAt.getTime() !== status.nextFireAt?.getTime()
      ? [["recorded instant", formatInstant(status.firingAt)] as [string, string]]
      : []),
  ]);
}

export function registerScheduleCommands(program: Command, clients: Clients): void {
  const schedule = program.command("schedule").description("manage schedules");

  addJobSpecOptions(
    addSpecOptions(
      schedule
        .command("add")
        .description("create a schedule that runs a command")
        .argument("<command...>", "program and its arguments (put them after --)")
        .option("--id <id>", "schedule id ([a-z0-9][a-z0-9-]*; default: generated)")
        .option("--name <name>", "display name (default: the command)"),
    ),
  )
    .option("--paused", "create it paused")
    .option("--json", "print the created Schedule as JSON")
    .action(
      async (
        argv: string[],
        opts: SpecOptions & JobSpecOptions & { id?: string; name?: string; paused?: boolean; json?: boolean },
        command: Command,
      ) => {
        const spec = specFrom(opts, command);
        if (!spec) command.error("error: one of --cron, --every or --at is required", { exitCode: 2 });
        const c = clients.scheduler;
        const request = CreateScheduleRequest.fromPartial({
          scheduleId: opts.id ?? "",
          name: opts.name ?? "",
          spec,
          job: jobSpecFrom(argv, opts),
          tags: opts.tag ?? {},
          paused: opts.paused ?? false,
        });
        const created = await unaryCall(c.createSchedule.bind(c), request);
        if (opts.json) console.log(json(Schedule.toJSON(created)));
        else console.log(`${created.id}: next fire ${created.paused ? "- (paused)" : formatInstant(created.status?.nextFireAt)}`);
      },
    );

  schedule
    .command("list")
    .description("list every schedule")
    .option("--json", "print the Schedules as a JSON array")
    .action(async (opts: { json?: boolean }) => {
      const c = clients.scheduler;
      const all: Schedule[] = [];
      let pageToken = "";
      do {
        const page = await unaryCall(c.listSchedules.bind(c), { pageSize: 0, pageToken });
        all.push(...page.schedules);
        pageToken = page.nextPageToken;
      } while (pageToken);
      if (opts.json) {
        console.log(json(all.map((s) => Schedule.toJSON(s))));
        return;
      }
      const rows = all.map((s) => [
        s.id,
        s.name || "-",
        specSummary(s.spec),
        formatInstant(s.status?.nextFireAt),
        formatInstant(s.status?.lastFireAt),
        String(s.status?.fireCount ?? 0),
        String(s.status?.missedCount ?? 0),
        s.paused ? "yes" : "no",
      ]);
      console.log(table(["ID", "NAME", "SPEC", "NEXT FIRE", "LAST FIRE", "FIRES", "MISSED", "PAUSED"], rows));
    });

  schedule
    .command("get")
    .description("show a schedule and its status")
    .argument("<id>")
    .option("--json", "print the Schedule as JSON")
    .action(async (id: string, opts: { json?: boolean }) => {
      const c = clients.scheduler;
      const found = await unaryCall(c.getSchedule.bind(c), { scheduleId: id });
      console.log(opts.json ? json(Schedule.toJSON(found)) : describeSchedule(found));
    });

  schedule
    .command("pause")
    .description("stop firing (idempotent)")
    .argument("<id>")
    .option("--note <text>", "why, shown by `schedule get`")
    .option("--json", "print the Schedule as JSON")
    .action(async (id: string, opts: { note?: string; json?: boolean }) => {
      const c = clients.scheduler;
      const paused = await unaryCall(c.pauseSchedule.bind(c), { scheduleId: id, note: opts.note ?? "" });
      console.log(opts.json ? json(Schedule.toJSON(paused)) : `${paused.id}: paused`);
    });

  schedule
    .command("resume")
    .description("fire again from the next instant after now (idempotent)")
    .argument("<id>")
    .option("--json", "print the Schedule as JSON")
    .action(async (id: string, opts: { json?: boolean }) => {
      const c = clients.scheduler;
      const resumed = await unaryCall(c.resumeSchedule.bind(c), { scheduleId: id });
      console.log(
        opts.json ? json(Schedule.toJSON(resumed)) : `${resumed.id}: next fire ${formatInstant(resumed.status?.nextFireAt)}`,
      );
    });

  schedule
    .command("delete")
    .description("delete a schedule (the jobs it fired are kept)")
    .argument("<id>")
    .option("--json", "print the (empty) DeleteScheduleResponse as JSON")
    .action(async (id: string, opts: { json?: boolean }) => {
      const c = clients.scheduler;
      await unaryCall(c.deleteSchedule.bind(c), { scheduleId: id });
      console.log(opts.json ? json({}) : `${id}: deleted`);
    });

  addSpecOptions(
    schedule
      .command("next")
      .description("preview the next fire instants of a schedule, or of a draft spec given with --cron/--every/--at")
      .argument("[id]", "stored schedule"),
  )
    .option("--count <n>", "number of instants (default 10)", parseCount)
    .option("--json", "print the PreviewFires as a JSON array")
    .action(async (id: string | undefined, opts: SpecOptions & { count?: number; json?: boolean }, command: Command) => {
      const spec = specFrom(opts, command);
      if ((id === undefined) === (spec === undefined)) {
        command.error("error: give either a schedule id or one of --cron, --every, --at", { exitCode: 2 });
      }
      const target: PreviewScheduleRequest["target"] = spec
        ? { $case: "spec", value: spec }
        : { $case: "scheduleId", value: id ?? "" };
      const c = clients.scheduler;
      const res = await unaryCall(
        c.previewSchedule.bind(c),
        PreviewScheduleRequest.fromPartial({ target, count: opts.count ?? 0 }),
      );
      if (opts.json) {
        console.log(json(res.fires.map((f) => PreviewFire.toJSON(f))));
        return;
      }
      for (const fire of res.fires) {
        console.log(`${fire.at?.toISOString() ?? "-"}${fire.skipReason ? `  (skipped: ${fire.skipReason})` : ""}`);
      }
    });
}
