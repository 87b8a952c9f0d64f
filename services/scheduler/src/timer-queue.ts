/**
 * Due times of every armed schedule in a binary min-heap, with one
 * setTimeout for the earliest. No periodic tick: the process sleeps until the
 * next instant. Re-arming or disarming an id leaves its old heap entry stale;
 * stale entries are skipped when they surface.
 */
import { MinHeap } from "@aspen/runtime";

interface Entry {
  id: string;
  dueMs: number;
  generation: number;
}

/** Longest delay setTimeout accepts; later instants are reached in hops. */
const MAX_DELAY_MS = 2 ** 31 - 1;
/** Due entries started per event-loop turn; the rest of a burst continues after pending I/O. */
const MAX_DUE_PER_TURN = 100;

export class TimerQueue {
  private readonly heap = new MinHeap<Entry>((a, b) => a.dueMs < b.dueMs);
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
    this.heap.push({ id, dueMs, generation });
    if (dueMs < this.timerDueMs) this.schedule();
  }

  disarm(id: string): void {
    this.current.delete(id);
  }

  /** Disarms everything; the queue stays usable (a replica that stops leading). */
  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerDueMs = Infinity;
    this.heap.clear();
    this.current.clear();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.heap.clear();
    this.current.clear();
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.timerDueMs = Infinity;
    const top = this.heap.peek();
    if (!top || this.closed) return;
    this.timerDueMs = top.dueMs;
    const delay = Math.min(Math.max(0, top.dueMs - this.now()), MAX_DELAY_MS);
    this.timer = setTimeout(() => this.fireDue(), delay);
  }

  private fireDue(): void {
    const now = this.now();
    let started = 0;
    for (;;) {
      const top = this.heap.peek();
      // Timers may wake a millisecond early; what is not yet due waits for the next wake-up.
      if (!top || top.dueMs > now) break;
      if (started === MAX_DUE_PER_TURN) {
        // A burst (thousands due on the same second): the rest after pending I/O has run,
        // so replies to the fires just started are not held up behind the whole burst.
        clearTimeout(this.timer);
        this.timer = undefined;
        this.timerDueMs = -Infinity; // no arming may start a timer while the continuation is pending
        setImmediate(() => {
          this.timerDueMs = Infinity;
          if (!this.closed) this.fireDue();
        });
        return;
      }
      this.heap.pop();
      if (this.current.get(top.id) !== top.generation) continue;
      this.current.delete(top.id);
      started++;
      this.onDue(top.id, top.dueMs);
    }
    this.schedule();
  }
}
