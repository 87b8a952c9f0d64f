/**
 * IANA time-zone arithmetic for wall-clock schedules: the UTC offset at an
 * instant, and the instants a local wall-clock time maps to (none in a
 * spring-forward gap, two in a fall-back overlap). Pure; no clock is read.
 *
 * A "wall" value is the local date and time written as if it were UTC, in ms
 * (2026-03-08 02:30 local = Date.UTC(2026, 2, 8, 2, 30)).
 */

const formats = new Map<string, Intl.DateTimeFormat>();

function isUtc(tz: string): boolean {
  return tz === "UTC" || tz === "Etc/UTC" || tz === "Etc/GMT" || tz === "GMT";
}

function format(tz: string): Intl.DateTimeFormat {
  let f = formats.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    formats.set(tz, f);
  }
  return f;
}

/** Offset of `tz` from UTC at instant `t`, ms (New York in winter: -5 h). */
export function offsetAt(tz: string, t: number): number {
  if (isUtc(tz)) return 0;
  const whole = Math.floor(t / 1000) * 1000;
  const p: Record<string, number> = {};
  for (const part of format(tz).formatToParts(new Date(whole))) {
    if (part.type !== "literal") p[part.type] = Number(part.value);
  }
  const wall = Date.UTC(p.year ?? 1970, (p.month ?? 1) - 1, p.day ?? 1, p.hour ?? 0, p.minute ?? 0, p.second ?? 0);
  return wall - whole;
}

/** The wall-clock reading of `tz` at instant `t`. */
export function wallAt(tz: string, t: number): number {
  return t + offsetAt(tz, t);
}

/** The first instant in (lo, hi] whose offset differs from the offset at lo (a transition), to the minute. */
export function transitionBetween(tz: string, lo: number, hi: number): number {
  const before = offsetAt(tz, lo);
  let a = lo;
  let b = hi;
  while (b - a > 60_000) {
    const mid = Math.floor((a + b) / 2);
    if (offsetAt(tz, mid) === before) a = mid;
    else b = mid;
  }
  // Transitions happen on whole minutes: settle on the exact one.
  let t = Math.ceil(a / 60_000) * 60_000;
  while (t < b && offsetAt(tz, t) === before) t += 60_000;
  return Math.min(t, b);
}

/** How a wall-clock time maps to instants. */
export type WallResolution =
  | { kind: "normal"; at: number }
  /** Does not exist (spring forward); `transition` is the first valid instant after the gap. */
  | { kind: "gap"; transition: number; gapMs: number }
  /** Happens twice (fall back); `first` < `second`. */
  | { kind: "overlap"; first: number; second: number };

const DAY = 86_400_000;

export function resolveWall(tz: string, wall: number): WallResolution {
  if (isUtc(tz)) return { kind: "normal", at: wall };
  const early = offsetAt(tz, wall - DAY);
  const late = offsetAt(tz, wall + DAY);
  const valid = [...new Set([early, late])].map((o) => wall - o).filter((t) => offsetAt(tz, t) === wall - t);
  valid.sort((a, b) => a - b);
  const [first, second] = valid;
  if (first !== undefined && second !== undefined && first !== second) return { kind: "overlap", first, second };
  if (first !== undefined) return { kind: "normal", at: first };
  // Nothing maps here: the clocks jumped from `early` to `late` over this wall time.
  const lo = wall - late;
  const hi = wall - early;
  return { kind: "gap", transition: transitionBetween(tz, lo - 60_000, hi), gapMs: late - early };
}

/**
 * A fall-back transition in (t, t + 3 h], when one comes and `t` lies within
 * its size before it: the offsets before (o1) and after (o2), o1 > o2.
 */
export function fallBackAhead(tz: string, t: number): { at: number; o1: number; o2: number } | undefined {
  if (isUtc(tz)) return undefined;
  const o1 = offsetAt(tz, t);
  const o2 = offsetAt(tz, t + 3 * 3_600_000);
  if (o2 >= o1) return undefined;
  const at = transitionBetween(tz, t, t + 3 * 3_600_000);
  if (t < at - (o1 - o2)) return undefined;
  return { at, o1, o2: offsetAt(tz, at) };
}

/** "2026-03-08 02:30" for a wall value. */
export function formatWall(wall: number): string {
  return new Date(wall).toISOString().slice(0, 16).replace("T", " ");
}
