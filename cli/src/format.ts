/**
 * Text in and out, without I/O: aligned tables, instants, durations, short
 * enum names, and the parsers of option values (they throw commander's
 * InvalidArgumentError, which commander reports as a usage error).
 */
import { InvalidArgumentError } from "commander";
import { Priority, type Job, type ScheduleSpec, type SecretValue } from "@aspen/proto";
import { durationToMs, parseDurationMs } from "@aspen/runtime";

/** Rows under a header, columns padded to their widest cell and separated by two spaces. */
export function table(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, col) => Math.max(...all.map((row) => (row[col] ?? "").length)));
  return all
    .map((row) =>
      header
        .map((_, col) => (col === header.length - 1 ? (row[col] ?? "") : (row[col] ?? "").padEnd(widths[col] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** "key:  value" lines with the values aligned. */
export function fields(entries: [string, string][]): string {
  const width = Math.max(...entries.map(([key]) => key.length)) + 1;
  return entries.map(([key, value]) => `${`${key}:`.padEnd(width)}  ${value}`).join("\n");
}

/** A protobuf-JSON value (from `Message.toJSON`) as indented JSON text. */
export function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

/** UTC ISO 8601 to the second ("2025-01-02T03:04:05Z"); "-" when unset. */
export function formatInstant(at: Date | undefined): string {
  return at ? at.toISOString().replace(/\.\d{3}Z$/, "Z") : "-";
}

/**
 * A duration in the largest two units, in the syntax `parseDurationMs` reads:
 * "250ms", "1.5s", "2m3s", "1h5m", "3d4h". Negative values read as 0.
 */
export function formatDuration(ms: number): string {
  const total = Math.max(0, Math.round(ms));
  if (total < 1_000) return `${total}ms`;
  const tenths = Math.round(total / 100);
  if (tenths < 600) return `${tenths / 10}s`;
  const pair = (big: number, bigUnit: string, small: number, smallUnit: string) =>
    small === 0 ? `${big}${bigUnit}` : `${big}${bigUnit}${small}${smallUnit}`;
  const seconds = Math.round(total / 1_000);
  if (seconds < 3_600) return pair(Math.floor(seconds / 60), "m", seconds % 60, "s");
  if (seconds < 86_400) return pair(Math.floor(seconds / 3_600), "h", Math.floor((seconds % 3_600) / 60), "m");
  return pair(Math.floor(seconds / 86_400), "d", Math.floor((seconds % 86_400) / 3_600), "h");
}

/** "3s ago" relative to `nowMs`; "-" when unset. */
export function ago(at: Date | undefined, nowMs: number): string {
  return at ? `${formatDuration(nowMs - at.getTime())} ago` : "-";
}

/** An enum value's name without its prefix: shortName(WorkerHealth, 1, "WORKER_HEALTH_") → "HEALTHY". */
export function shortName(enumObject: Record<number, string>, value: number, prefix: string): string {
  return (enumObject[value] ?? String(value)).replace(prefix, "");
}

/** "HIGH" for PRIORITY_HIGH; "-" when unspecified (the service treats it as NORMAL). */
export function priorityName(priority: Priority): string {
  return priority === Priority.PRIORITY_UNSPECIFIED ? "-" : shortName(Priority, priority, "PRIORITY_");
}

/** "k=v,k2=v2" in key order; "-" when empty. */
export function formatMap(map: Record<string, string>): string {
  const keys = Object.keys(map).sort();
  return keys.length === 0 ? "-" : keys.map((key) => `${key}=${map[key]}`).join(",");
}

/** Argument vector as a POSIX shell would need it typed: `echo 'hello world'`. */
export function shellJoin(argv: string[]): string {
  return argv.map((arg) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`)).join(" ");
}

/** One-line summary of when a schedule fires: "cron 0 9 * * 1-5 (Europe/Paris)", "every 5s", "once at …". */
export function specSummary(spec: ScheduleSpec | undefined): string {
  const kind = spec?.kind;
  if (!kind) return "-";
  switch (kind.$case) {
    case "cron":
      return `cron ${kind.value.expression}${kind.value.timeZone && kind.value.timeZone !== "UTC" ? ` (${kind.value.timeZone})` : ""}`;
    case "interval":
      return `every ${formatDuration(durationToMs(kind.value.every))}`;
    case "once":
      return `once at ${formatInstant(kind.value.at)}`;
    default:
      return kind.$case;
  }
}

/** Run time of a job's current attempt: until it finished, or until `nowMs` while it runs; undefined before it starts. */
export function jobDurationMs(job: Job, nowMs: number): number | undefined {
  if (!job.startedAt) return undefined;
  return (job.finishedAt?.getTime() ?? nowMs) - job.startedAt.getTime();
}

/** How a job's last attempt ended: its exit code, or the signal that ended it; "-" without a result. */
export function exitSummary(job: Job): string {
  const result = job.result;
  if (!result) return "-";
  return result.signal || String(result.exitCode);
}

// Option value parsers (commander `argParser`s).

/** "--tag k=v": adds one entry to the map collected so far. */
export function collectKeyValue(text: string, previous: Record<string, string> = {}): Record<string, string> {
  const at = text.indexOf("=");
  if (at <= 0) throw new InvalidArgumentError("expected key=value");
  return { ...previous, [text.slice(0, at)]: text.slice(at + 1) };
}

/** "API_KEY=[redacted], DB_PASSWORD=[agent ref db-password]": a spec's secret variables as shown (never values). */
export function formatSecretEnv(secretEnv: Record<string, SecretValue>): string {
  const names = Object.keys(secretEnv).sort();
  if (names.length === 0) return "-";
  return names
    .map((name) => {
      const source = secretEnv[name]?.source;
      return `${name}=[${source?.$case === "agentRef" ? `agent ref ${source.value}` : "redacted"}]`;
    })
    .join(", ");
}

/** Repeatable option: appends to the list collected so far. */
export function collect(text: string, previous: string[] = []): string[] {
  return [...previous, text];
}

/** "5m", "1h30m", "250ms" → ms; must be > 0. */
export function parseDuration(text: string): number {
  const ms = parseDurationMs(text);
  if (ms === undefined || ms <= 0) throw new InvalidArgumentError("expected a positive duration such as 30s, 5m or 1h30m");
  return ms;
}

/** A whole number ≥ 1. */
export function parseCount(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number of at least 1");
  return n;
}

/** An ISO 8601 instant; one without a zone offset is read as UTC. */
export function parseInstant(text: string): Date {
  const hasTime = /[T ]\d{2}:/i.test(text);
  const hasZone = /(Z|[+-]\d{2}:?\d{2})$/i.test(text);
  const zoned = hasTime && !hasZone ? `${text}Z` : text;
  const at = new Date(zoned);
  if (Number.isNaN(at.getTime())) throw new InvalidArgumentError("expected an ISO 8601 instant such as 2030-01-01T09:00:00Z");
  return at;
}
