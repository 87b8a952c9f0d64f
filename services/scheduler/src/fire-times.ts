/**
 * Pure fire-time computation: validation of a ScheduleSpec and, for a valid
 * one, a compiled rule answering "the first instant strictly after t". No
 * clock is read here; callers pass every instant in.
 *
 * Wall-clock kinds (cron, business_hours) generate local wall-clock times,
 * which one resolver maps to instants under the schedule's DST policy:
 *   - a local time that does not exist (spring forward): NONEXISTENT_SKIP
 *     drops it; RUN_AT_NEXT_VALID (the default) fires at the first valid
 *     instant after the gap (the transition itself, e.g. 03:00 in New York);
 *   - a local time that happens twice (fall back): AMBIGUOUS_ONCE (the
 *     default) fires at the first occurrence only; BOTH fires at each.
 * Instant kinds (once, interval, rate_limit, exponential) are not affected.
 */
import { Cron } from "croner";
import {
  CatchUpPolicy,
  ConflictPolicy,
  DstPolicy_Ambiguous,
  DstPolicy_Nonexistent,
  type DstPolicy,
  type ScheduleSpec,
} from "@aspen/proto";
import { durationToMs, InvalidArgumentError } from "@aspen/runtime";
import { fallBackAhead, formatWall, offsetAt, resolveWall, transitionBetween, wallAt } from "./zone.js";

/** Shortest interval accepted, ms. */
export const MIN_INTERVAL_MS = 1_000;
/** Largest jitter accepted, ms. */
export const MAX_JITTER_MS = 86_400_000;
/** Defaults of the spec's optional numbers. */
export const DEFAULT_CATCH_UP_LIMIT = 10;
export const MAX_CATCH_UP_LIMIT = 10_000;
export const DEFAULT_MAX_QUEUED = 1;
export const MAX_QUEUED_LIMIT = 1_000;
/** Business hours: Monday..Friday. */
export const DEFAULT_BUSINESS_DAYS = [1, 2, 3, 4, 5];

const HOUR = 3_600_000;
const DAY = 86_400_000;
const DAY_NAMES = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/** One instant of a rule: a fire, or (with `skip`) an instant that will not fire and why. */
export interface FireEvent {
  at: number;
  skip?: string;
  /** Nothing fires after this one (end_at passed, max_runs reached). */
  final?: boolean;
}

/** Where a schedule stands, as far as its next instant depends on it. */
export interface RuleState {
  /** Fires so far (max_runs). */
  fireCount: number;
  /** Exponential: doublings since the last reset. */
  backoffStep?: number;
}

export interface FireRule {
  /** First nominal instant strictly after `afterMs` (ms since epoch), or undefined when it fires no more. */
  next(afterMs: number, fireCount: number, backoffStep?: number): number | undefined;
  /** Up to `limit` instants after `afterMs`, with the skipped ones and why (for PreviewSchedule). */
  events(afterMs: number, state: RuleState, limit: number): FireEvent[];
  /** The per-schedule jitter offset added to every instant, ms. */
  readonly jitterMs: number;
}

/** What a rule needs beyond the spec. */
export interface RuleContext {
  /** When the schedule was created (the default interval phase). */
  createdAtMs: number;
  /** The schedule id (seeds the deterministic jitter). Default "". */
  scheduleId?: string;
}

/** Zones already found valid: building an Intl.DateTimeFormat costs ~30 µs, too much for 100,000 stored schedules. */
const knownZones = new Set<string>();

export function validateTimeZone(field: string, timeZone: string): void {
  if (knownZones.has(timeZone)) return;
  try {
    new Intl.DateTimeFormat("en", { timeZone });
  } catch {
    throw new InvalidArgumentError(field, `unknown IANA time zone ${JSON.stringify(timeZone)}`);
  }
  if (knownZones.size < 10_000) knownZones.add(timeZone);
}

/** Compiled cron patterns, read in UTC over wall-clock values; shared by every schedule with the same expression. */
const cronCache = new Map<string, Cron>();
const CRON_CACHE_MAX = 20_000;

function cronOf(expression: string): Cron {
  const key = expression.trim();
  let cron = cronCache.get(key);
  if (!cron) {
    cron = new Cron(key, { timezone: "UTC", paused: true });
    if (cronCache.size >= CRON_CACHE_MAX) cronCache.clear();
    cronCache.set(key, cron);
  }
  return cron;
}

function compileCron(field: string, expression: string): Cron {
  const fields = expression.trim().split(/\s+/).length;
  const alias = expression.trim().startsWith("@");
  if (!alias && (fields < 5 || fields > 7)) {
    throw new InvalidArgumentError(field, `expected 5, 6 or 7 fields (got ${fields}) in ${JSON.stringify(expression)}`);
  }
  try {
    return cronOf(expression);
  } catch (err) {
    throw new InvalidArgumentError(field, `invalid cron expression ${JSON.stringify(expression)}: ${(err as Error).message}`);
  }
}

const enumValues = new Map<object, Set<unknown>>();

function enumValue(field: string, value: number, known: object): void {
  let values = enumValues.get(known);
  if (!values) enumValues.set(known, (values = new Set(Object.values(known))));
  if (!values.has(value)) throw new InvalidArgumentError(field, `unknown value ${value}`);
}

/**
 * Throws InvalidArgumentError naming the first bad field. With `nowMs`, a
 * spec that can no longer fire after it is refused too (for new schedules);
 * without, only its form is checked (for stored ones).
 */
export function validateScheduleSpec(
  spec: ScheduleSpec | undefined,
  nowMs: number | undefined,
  field = "spec",
): asserts spec is ScheduleSpec {
  if (!spec) throw new InvalidArgumentError(field, "required");
  const kind = spec.kind;
  if (!kind)
    throw new InvalidArgumentError(`${field}.kind`, "set one of cron, once, interval, rate_limit, business_hours, exponential");
  switch (kind.$case) {
    case "cron": {
      const tz = kind.value.timeZone || "UTC";
      validateTimeZone(`${field}.cron.time_zone`, tz);
      if (!kind.value.expression.trim()) throw new InvalidArgumentError(`${field}.cron.expression`, "must not be empty");
      const cron = compileCron(`${field}.cron.expression`, kind.value.expression);
      if (nowMs !== undefined && !cron.nextRun(new Date(wallAt(tz, nowMs)))) {
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
        throw new InvalidArgumentError(`${field}.interval.every`, `must be at least ${MIN_INTERVAL_MS} ms (got ${every} ms)`);
      break;
    }
    case "rateLimit": {
      const n = kind.value.maxPerHour;
      if (n < 1 || n > 3_600) throw new InvalidArgumentError(`${field}.rate_limit.max_per_hour`, `must be 1..3600 (got ${n})`);
      break;
    }
    case "businessHours": {
      const b = kind.value;
      const f = `${field}.business_hours`;
      validateTimeZone(`${f}.time_zone`, b.timeZone || "UTC");
      const days = new Set<number>();
      for (const d of b.daysOfWeek) {
        if (d > 6) throw new InvalidArgumentError(`${f}.days_of_week`, `${d} is not a day (0 = Sunday ... 6 = Saturday)`);
        if (days.has(d)) throw new InvalidArgumentError(`${f}.days_of_week`, `${d} is listed twice`);
        days.add(d);
      }
      if (b.startHour > 23) throw new InvalidArgumentError(`${f}.start_hour`, `must be 0..23 (got ${b.startHour})`);
      if (b.endHour < 1 || b.endHour > 24) throw new InvalidArgumentError(`${f}.end_hour`, `must be 1..24 (got ${b.endHour})`);
      if (b.endHour <= b.startHour)
        throw new InvalidArgumentError(`${f}.end_hour`, `must be after start_hour (${b.endHour} <= ${b.startHour})`);
      const every = durationToMs(b.every);
      if (every < MIN_INTERVAL_MS)
        throw new InvalidArgumentError(`${f}.every`, `must be at least ${MIN_INTERVAL_MS} ms (got ${every} ms)`);
      break;
    }
    case "exponential": {
      const base = durationToMs(kind.value.baseDelay);
      const max = durationToMs(kind.value.maxDelay);
      if (base < MIN_INTERVAL_MS)
        throw new InvalidArgumentError(
          `${field}.exponential.base_delay`,
          `must be at least ${MIN_INTERVAL_MS} ms (got ${base} ms)`,
        );
      if (max < base)
        throw new InvalidArgumentError(`${field}.exponential.max_delay`, `must be at least base_delay (${max} < ${base} ms)`);
      break;
    }
  }
  if (spec.startAt && spec.endAt && spec.endAt.getTime() < spec.startAt.getTime()) {
    throw new InvalidArgumentError(`${field}.end_at`, "must not be before start_at");
  }
  const jitter = durationToMs(spec.jitter);
  if (jitter < 0 || jitter > MAX_JITTER_MS)
    throw new InvalidArgumentError(`${field}.jitter`, `must be 0..${MAX_JITTER_MS} ms (got ${jitter} ms)`);
  enumValue(`${field}.catch_up`, spec.catchUp, CatchUpPolicy);
  if (spec.catchUpLimit > MAX_CATCH_UP_LIMIT)
    throw new InvalidArgumentError(`${field}.catch_up_limit`, `must be at most ${MAX_CATCH_UP_LIMIT}`);
  if (durationToMs(spec.catchUpWindow) < 0) throw new InvalidArgumentError(`${field}.catch_up_window`, "must not be negative");
  enumValue(`${field}.conflict`, spec.conflict, ConflictPolicy);
  if (spec.maxConcurrent > MAX_QUEUED_LIMIT)
    throw new InvalidArgumentError(`${field}.max_concurrent`, `must be at most ${MAX_QUEUED_LIMIT}`);
  if (spec.maxQueued > MAX_QUEUED_LIMIT)
    throw new InvalidArgumentError(`${field}.max_queued`, `must be at most ${MAX_QUEUED_LIMIT}`);
  if (spec.dst) {
    enumValue(`${field}.dst.nonexistent`, spec.dst.nonexistent, DstPolicy_Nonexistent);
    enumValue(`${field}.dst.ambiguous`, spec.dst.ambiguous, DstPolicy_Ambiguous);
  }
  if (nowMs !== undefined && kind.$case !== "once" && kind.$case !== "cron") {
    const rule = compileRule(spec, { createdAtMs: nowMs });
    if (rule.next(nowMs, 0) === undefined) {
      throw new InvalidArgumentError(
        spec.endAt ? `${field}.end_at` : `${field}.kind`,
        "no instant is left before end_at: it would never fire",
      );
    }
  }
  if (nowMs !== undefined && kind.$case === "cron" && spec.endAt) {
    const rule = compileRule(spec, { createdAtMs: nowMs });
    if (rule.next(nowMs, 0) === undefined)
      throw new InvalidArgumentError(`${field}.end_at`, "no instant is left before end_at: it would never fire");
  }
}

/** FNV-1a of the schedule id: the same id always gets the same offset in [0, jitterMs). */
export function jitterOffset(scheduleId: string, jitterMs: number): number {
  if (jitterMs <= 0) return 0;
  let h = 0x811c9dc5;
  for (let i = 0; i < scheduleId.length; i++) {
    h ^= scheduleId.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % jitterMs;
}

/** A wall-clock generator: the first local time strictly after `wall`, or a local time skipped with a reason. */
type WallGen = (wall: number) => { wall: number; skip?: string } | undefined;

type DstChoice = { skipNonexistent: boolean; bothAmbiguous: boolean };

function dstChoice(dst: DstPolicy | undefined): DstChoice {
  return {
    skipNonexistent: dst?.nonexistent === DstPolicy_Nonexistent.NONEXISTENT_SKIP,
    bothAmbiguous: dst?.ambiguous === DstPolicy_Ambiguous.AMBIGUOUS_BOTH,
  };
}

/** Earlier of two events; a fire wins a tie with a skip. */
function earlier(a: FireEvent | undefined, b: FireEvent | undefined): FireEvent | undefined {
  if (!a) return b;
  if (!b) return a;
  if (a.at !== b.at) return a.at < b.at ? a : b;
  return a.skip ? b : a;
}

/** The first event strictly after `after` of a wall-clock generator read in `tz` under a DST choice. */
function localStep(gen: WallGen, tz: string, dst: DstChoice, after: number): FireEvent | undefined {
  // Walls whose first occurrence is already past but whose second (after a fall back just ahead) is not.
  let second: FireEvent | undefined;
  const fb = fallBackAhead(tz, after);
  if (fb) {
    const repeatEnd = fb.at + fb.o1;
    for (let w = after + fb.o2, i = 0; i < 10_000; i++) {
      const ev = gen(w);
      if (!ev || ev.wall >= repeatEnd) break;
      w = ev.wall;
      if (ev.skip) continue;
      if (ev.wall - fb.o1 > after) break; // its first occurrence is still ahead: the forward scan has it
      second = dst.bothAmbiguous ? { at: ev.wall - fb.o2 } : { at: ev.wall - fb.o2, skip: ambiguousReason(tz, ev.wall) };
      break;
    }
  }
  let pendingSkip: FireEvent | undefined;
  let w = wallAt(tz, after);
  for (let i = 0; i < 10_000; i++) {
    const ev = gen(w);
    if (!ev) break;
    w = ev.wall;
    const r = resolveWall(tz, ev.wall);
    let found: FireEvent | undefined;
    if (r.kind === "normal") {
      if (r.at > after) found = ev.skip ? { at: r.at, skip: ev.skip } : { at: r.at };
    } else if (r.kind === "gap") {
      if (ev.skip) {
        if (r.transition > after) found = { at: r.transition, skip: ev.skip };
      } else if (!dst.skipNonexistent) {
        if (r.transition > after) found = { at: r.transition };
      } else {
        // Skipped: say so at the transition, unless something fires right there.
        if (r.transition > after) pendingSkip ??= { at: r.transition, skip: nonexistentReason(tz, ev.wall, r.gapMs) };
        w = r.transition + offsetAt(tz, r.transition) - 1;
        continue;
      }
    } else if (r.first > after) {
      found = ev.skip ? { at: r.first, skip: ev.skip } : { at: r.first };
    } else if (r.second > after) {
      if (dst.bothAmbiguous && !ev.skip) found = { at: r.second };
      else {
        // Second pass of a repeated hour under ONCE: nothing fires until the repeat ends.
        w = transitionBetween(tz, r.first, r.second) + offsetAt(tz, r.first) - 1;
        continue;
      }
    }
    if (found) return earlier(earlier(found, pendingSkip), second);
  }
  return earlier(pendingSkip, second);
}

function nonexistentReason(tz: string, wall: number, gapMs: number): string {
  return `dst: ${formatWall(wall)} does not exist in ${tz} (clocks move ${gapMs / 60_000} min forward); dst.nonexistent = SKIP`;
}

function ambiguousReason(tz: string, wall: number): string {
  return `dst: ${formatWall(wall)} happens twice in ${tz} (clocks fall back); dst.ambiguous = ONCE ran the first`;
}

function cronGen(expression: string): WallGen {
  const cron = cronOf(expression);
  return (wall) => {
    const next = cron.nextRun(new Date(wall));
    return next ? { wall: next.getTime() } : undefined;
  };
}

function businessGen(days: Set<number>, startHour: number, endHour: number, every: number): WallGen {
  const hours = `${String(startHour).padStart(2, "0")}:00-${String(endHour).padStart(2, "0")}:00`;
  return (wall) => {
    const day0 = Math.floor(wall / DAY) * DAY;
    for (let d = 0; d <= 8; d++) {
      const day = day0 + d * DAY;
      const open = day + startHour * HOUR;
      const close = day + endHour * HOUR;
      if (!days.has(new Date(day).getUTCDay())) {
        if (open > wall)
          return { wall: open, skip: `business hours: ${DAY_NAMES[new Date(day).getUTCDay()]} is not a business day` };
        continue;
      }
      if (wall < open) return { wall: open };
      const at = open + (Math.floor((wall - open) / every) + 1) * every;
      if (at < close) return { wall: at };
      // The cadence's first instant past the window, said once, when it is still today.
      const outside = open + Math.ceil((close - open) / every) * every;
      if (outside > wall && outside < day + DAY) {
        return { wall: outside, skip: `business hours: ${formatWall(outside).slice(11)} is outside ${hours}` };
      }
    }
    return undefined;
  };
}

/** The rule of a spec that passed validateScheduleSpec. */
export function compileRule(spec: ScheduleSpec, context: RuleContext): FireRule {
  const startMs = spec.startAt?.getTime();
  const endMs = spec.endAt?.getTime();
  const maxRuns = spec.maxRuns;
  const jitterMs = jitterOffset(context.scheduleId ?? "", durationToMs(spec.jitter));
  const dst = dstChoice(spec.dst);
  let raw: (afterMs: number, backoffStep: number) => FireEvent | undefined;
  const kind = spec.kind;
  switch (kind?.$case) {
    case "cron": {
      const gen = cronGen(kind.value.expression);
      const tz = kind.value.timeZone || "UTC";
      raw = (after) => localStep(gen, tz, dst, after);
      break;
    }
    case "businessHours": {
      const b = kind.value;
      const days = new Set(b.daysOfWeek.length ? b.daysOfWeek : DEFAULT_BUSINESS_DAYS);
      const gen = businessGen(days, b.startHour, b.endHour, durationToMs(b.every));
      const tz = b.timeZone || "UTC";
      raw = (after) => localStep(gen, tz, dst, after);
      break;
    }
    case "once": {
      const at = kind.value.at?.getTime() ?? NaN;
      raw = (after) => (at > after ? { at } : undefined);
      break;
    }
    case "interval":
    case "rateLimit": {
      const every = kind.$case === "interval" ? durationToMs(kind.value.every) : Math.floor(HOUR / kind.value.maxPerHour);
      const phase = startMs ?? context.createdAtMs;
      raw = (after) => ({
        at: after < phase ? phase : phase + (Math.floor((after - phase) / every) + 1) * every,
      });
      break;
    }
    case "exponential": {
      const base = durationToMs(kind.value.baseDelay);
      const max = durationToMs(kind.value.maxDelay);
      raw = (after, step) => ({ at: after + exponentialDelay(base, max, step) });
      break;
    }
    default:
      throw new Error("compileRule: spec.kind is not set");
  }
  const stepFrom = (afterMs: number, fireCount: number, backoffStep: number): FireEvent | undefined => {
    // start_at is inclusive: look from just before it. Jitter shifts the whole grid.
    const from = (startMs !== undefined && afterMs < startMs ? startMs - 1 : afterMs) - jitterMs;
    const ev = raw(from, backoffStep);
    if (!ev) return undefined;
    const at = ev.at + jitterMs;
    if (endMs !== undefined && at > endMs) {
      return { at, skip: `end_at: ${new Date(endMs).toISOString()} has passed`, final: true };
    }
    if (maxRuns > 0 && fireCount >= maxRuns && !ev.skip) {
      return { at, skip: `max_runs: ${maxRuns} fires done`, final: true };
    }
    return { ...ev, at };
  };
  return {
    jitterMs,
    next(afterMs, fireCount, backoffStep = 0) {
      let t = afterMs;
      for (let i = 0; i < 100_000; i++) {
        const ev = stepFrom(t, fireCount, backoffStep);
        if (!ev || ev.final) return undefined;
        if (!ev.skip) return ev.at;
        t = ev.at;
      }
      return undefined;
    },
    events(afterMs, state, limit) {
      const out: FireEvent[] = [];
      let t = afterMs;
      let fires = state.fireCount;
      let step = state.backoffStep ?? 0;
      while (out.length < limit) {
        const ev = stepFrom(t, fires, step);
        if (!ev) break;
        out.push(ev);
        if (ev.final) break;
        if (!ev.skip) {
          fires++;
          step++;
        }
        t = ev.at;
      }
      return out;
    },
  };
}

/** Exponential delay after `step` doublings: base × 2^step, at most max. */
export function exponentialDelay(baseMs: number, maxMs: number, step: number): number {
  return step >= 52 ? maxMs : Math.min(maxMs, baseMs * 2 ** step);
}

/**
 * The instants in (fromMs, toMs] a rule would have fired (for counting and
 * catching up missed fires), oldest first. At most `cap` are listed; `total`
 * counts all of them (up to `countCap`, beyond which it is a lower bound and
 * `capped` is set).
 */
export function firesBetween(
  rule: FireRule,
  fromMs: number,
  toMs: number,
  state: RuleState,
  cap: number,
  countCap = 1_000_000,
): { instants: number[]; total: number; capped: boolean; lastMs: number | undefined } {
  const instants: number[] = [];
  let total = 0;
  let t = fromMs;
  let step = state.backoffStep ?? 0;
  let lastMs: number | undefined;
  for (;;) {
    const next = rule.next(t, state.fireCount + total, step);
    if (next === undefined || next > toMs) return { instants, total, capped: false, lastMs };
    if (total >= countCap) return { instants, total, capped: true, lastMs };
    total++;
    step++;
    lastMs = next;
    if (instants.length < cap) instants.push(next);
    t = next;
  }
}

/** How many instants in (fromMs, toMs] (see firesBetween). */
export function countBetween(rule: FireRule, fromMs: number, toMs: number, fireCount: number, cap = 1_000_000): number {
  return firesBetween(rule, fromMs, toMs, { fireCount }, 0, cap).total;
}
