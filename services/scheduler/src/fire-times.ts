/**
 * Pure fire-time computation: validation of a ScheduleSpec and, for a valid
 * one, a compiled rule answering "the first instant strictly after t". No
 * clock is read here; callers pass every instant in.
 */
import { Cron } from "croner";
import { CatchUpPolicy, ConflictPolicy, DstPolicy_Ambiguous, DstPolicy_Nonexistent, type ScheduleSpec } from "@aspen/proto";
import { durationToMs, InvalidArgumentError, UnimplementedError } from "@aspen/runtime";

/** Shortest interval accepted, ms. */
export const MIN_INTERVAL_MS = 1_000;

export interface FireRule {
  /** First nominal instant strictly after `afterMs` (ms since epoch), or undefined when it fires no more. */
  next(afterMs: number, fireCount: number): number | undefined;
}

/** What a rule needs beyond the spec: when the schedule was created (the default interval phase). */
export interface RuleContext {
  createdAtMs: number;
}

export function validateTimeZone(field: string, timeZone: string): void {
  try {
    new Intl.DateTimeFormat("en", { timeZone });
  } catch {
    throw new InvalidArgumentError(field, `unknown IANA time zone ${JSON.stringify(timeZone)}`);
  }
}

function compileCron(field: string, expression: string, timeZone: string): Cron {
  const fields = expression.trim().split(/\s+/).length;
  const alias = expression.trim().startsWith("@");
  if (!alias && (fields < 5 || fields > 7)) {
    throw new InvalidArgumentError(field, `expected 5, 6 or 7 fields (got ${fields}) in ${JSON.stringify(expression)}`);
  }
  try {
    return new Cron(expression.trim(), { timezone: timeZone, paused: true });
  } catch (err) {
    throw new InvalidArgumentError(field, `invalid cron expression ${JSON.stringify(expression)}: ${(err as Error).message}`);
  }
}

/**
 * Throws InvalidArgumentError / UnimplementedError naming the first bad field.
 * With `nowMs`, a spec that can no longer fire after it is refused too (for
 * new schedules); without, only its form is checked (for stored ones).
 */
export function validateScheduleSpec(
  spec: ScheduleSpec | undefined,
  nowMs: number | undefined,
  field = "spec",
): asserts spec is ScheduleSpec {
  if (!spec) throw new InvalidArgumentError(field, "required");
  const kind = spec.kind;
  if (!kind) throw new InvalidArgumentError(`${field}.kind`, "set one of cron, once, interval");
  switch (kind.$case) {
    case "cron": {
      const tz = kind.value.timeZone || "UTC";
      validateTimeZone(`${field}.cron.time_zone`, tz);
      if (!kind.value.expression.trim()) throw new InvalidArgumentError(`${field}.cron.expression`, "must not be empty");
      const cron = compileCron(`${field}.cron.expression`, kind.value.expression, tz);
      if (nowMs !== undefined && !cron.nextRun(new Date(nowMs))) {
        throw new InvalidArgumentError(`${field}.cron.expression`, `${JSON.stringify(kind.value.expression)} never fires`);
      }
      break;
    }
    case "once":
      if (!kind.value.at) throw new InvalidArgumentError(`${field}.once.at`, "required");
      if (nowMs !== undefined && kind.value.at.getTime() <= nowMs)
        throw new InvalidArgumentError(`${field}.once.at`, "is in the past: it would never fire");
      break;
    case "interval": {
      const every = durationToMs(kind.value.every);
      if (every < MIN_INTERVAL_MS)
        throw new InvalidArgumentError(`${field}.interval.every`, `must be at least ${MIN_INTERVAL_MS} ms`);
      break;
    }
    default:
      throw new UnimplementedError(
        `${field}.${snake(kind.$case)}`,
        "this schedule kind is not implemented yet (cron, once, interval are)",
      );
  }
  if (spec.startAt && spec.endAt && spec.endAt.getTime() < spec.startAt.getTime()) {
    throw new InvalidArgumentError(`${field}.end_at`, "must not be before start_at");
  }
  if (durationToMs(spec.jitter) !== 0) throw new UnimplementedError(`${field}.jitter`);
  if (spec.catchUp !== CatchUpPolicy.CATCH_UP_POLICY_UNSPECIFIED && spec.catchUp !== CatchUpPolicy.CATCH_UP_POLICY_SKIP) {
    throw new UnimplementedError(`${field}.catch_up`, "only SKIP is implemented yet");
  }
  if (durationToMs(spec.catchUpWindow) !== 0) throw new UnimplementedError(`${field}.catch_up_window`);
  if (spec.conflict !== ConflictPolicy.CONFLICT_POLICY_UNSPECIFIED && spec.conflict !== ConflictPolicy.CONFLICT_POLICY_PARALLEL) {
    throw new UnimplementedError(`${field}.conflict`, "only PARALLEL is implemented yet");
  }
  if (spec.maxConcurrent !== 0) throw new UnimplementedError(`${field}.max_concurrent`);
  const dst = spec.dst;
  if (dst) {
    // croner's behaviour is our default: a skipped local time runs at the next valid instant, a repeated one once.
    if (dst.nonexistent === DstPolicy_Nonexistent.NONEXISTENT_SKIP)
      throw new UnimplementedError(`${field}.dst.nonexistent`, "SKIP is not implemented yet");
    if (dst.ambiguous === DstPolicy_Ambiguous.AMBIGUOUS_BOTH)
      throw new UnimplementedError(`${field}.dst.ambiguous`, "BOTH is not implemented yet");
  }
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The rule of a spec that passed validateScheduleSpec. */
export function compileRule(spec: ScheduleSpec, context: RuleContext): FireRule {
  const startMs = spec.startAt?.getTime();
  const endMs = spec.endAt?.getTime();
  const maxRuns = spec.maxRuns;
  let raw: (afterMs: number) => number | undefined;
  const kind = spec.kind;
  switch (kind?.$case) {
    case "cron": {
      const cron = new Cron(kind.value.expression.trim(), { timezone: kind.value.timeZone || "UTC", paused: true });
      raw = (afterMs) => cron.nextRun(new Date(afterMs))?.getTime();
      break;
    }
    case "once": {
      const at = kind.value.at?.getTime() ?? NaN;
      raw = (afterMs) => (at > afterMs ? at : undefined);
      break;
    }
    case "interval": {
      const every = durationToMs(kind.value.every);
      const phase = startMs ?? context.createdAtMs;
      raw = (afterMs) => (afterMs < phase ? phase : phase + (Math.floor((afterMs - phase) / every) + 1) * every);
      break;
    }
    default:
      throw new Error(`compileRule: unsupported kind ${kind?.$case}`);
  }
  return {
    next(afterMs, fireCount) {
      if (maxRuns > 0 && fireCount >= maxRuns) return undefined;
      // start_at is inclusive: look from just before it.
      const from = startMs !== undefined && afterMs < startMs ? startMs - 1 : afterMs;
      const at = raw(from);
      if (at === undefined || (endMs !== undefined && at > endMs)) return undefined;
      return at;
    },
  };
}

/**
 * The instants in (fromMs, toMs] a rule would have fired (for counting missed
 * fires), at most `cap` of them, and the total found up to the cap.
 */
export function countBetween(rule: FireRule, fromMs: number, toMs: number, fireCount: number, cap = 10_000): number {
  let n = 0;
  let t = fromMs;
  for (;;) {
    const next = rule.next(t, fireCount + n);
    if (next === undefined || next > toMs || n >= cap) return n;
    n++;
    t = next;
  }
}
