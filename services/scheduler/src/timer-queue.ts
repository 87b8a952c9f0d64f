/**
 * Due times of every armed schedule in a binary min-heap, with one
 * setTimeout for the earliest. No periodic tick: the process sleeps until the
 * next instant. Re-arming or disarming an id leaves its old heap entry stale;
 * stale entries are skipped when they surface.
 */

interface Entry {
  id: string;
  dueMs: number;
  generation: number;
}

/** Longest delay setTimeout accepts; later instants are reached in hops. */
const MAX_DELAY_MS = 2 ** 31 - 1;

export class TimerQueue {
  private heap: Entry[] = [];
  private readonly current = new Map<string, number>();
  private generation = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerDueMs = Infinity;
  private closed = false;

  constructor(
    private readonly onDue: (id: string, dueMs: number) => void,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.current.size;
  }

  /** (Re)arms `id` for `dueMs`, replacing any earlier arming. */
  arm(id: string, dueMs: number): void {
    if (this.closed) return;
    const generation = ++this.generation;
    this.current.set(id, generation);
    this.push({ id, dueMs, generation });
    if (dueMs < this.timerDueMs) this.schedule();
  }

  disarm(id: string): void {
    this.current.delete(id);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.heap = [];
    this.current.clear();
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerDueMs = Infinity;
    const top = this.heap[0];
    if (!top || this.closed) return;
    this.timerDueMs = top.dueMs;
    const delay = Math.min(Math.max(0, top.dueMs - this.now()), MAX_DELAY_MS);
    this.timer = setTimeout(() => this.fireDue(), delay);
  }

  private fireDue(): void {
    const now = this.now();
    for (;;) {
      const top = this.heap[0];
      // Timers may wake a millisecond early; what is not yet due waits for the next wake-up.
      if (!top || top.dueMs > now) break;
      this.pop();
      if (this.current.get(top.id) !== top.generation) continue;
      this.current.delete(top.id);
      this.onDue(top.id, top.dueMs);
    }
    this.schedule();
  }

  private push(entry: Entry): void {
    const h = this.heap;
    h.push(entry);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((h[parent] as Entry).dueMs <= entry.dueMs) break;
      h[i] = h[parent] as Entry;
      i = parent;
    }
    h[i] = entry;
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop();
    if (!last || h.length === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let smallest = i;
      let smallestDue = last.dueMs;
      if (l < h.length && (h[l] as Entry).dueMs < smallestDue) {
        smallest = l;
        smallestDue = (h[l] as Entry).dueMs;
      }
      if (r < h.length && (h[r] as Entry).dueMs < smallestDue) smallest = r;
      if (smallest === i) break;
      h[i] = h[smallest] as Entry;
      i = smallest;
    }
    h[i] = last;
  }
}
