/**
 * Queued job ids by priority class: CRITICAL, HIGH, NORMAL, LOW, in that
 * order, submission order inside a class. Each id keeps the sequence number
 * it got when first queued, so a job put back after a failed placement
 * regains its place rather than jumping the line or losing it.
 *
 * Aging, so LOW never starves: a job's class rises by one for every
 * `agingMs` it has waited (a LOW job waiting 3 × agingMs competes as
 * CRITICAL). Between equal effective classes, the higher base class wins,
 * then the older job.
 */
import { Priority } from "@aspen/proto";
import { MinHeap } from "@aspen/runtime";

const ORDER = [Priority.PRIORITY_CRITICAL, Priority.PRIORITY_HIGH, Priority.PRIORITY_NORMAL, Priority.PRIORITY_LOW];

/** UNSPECIFIED is NORMAL. */
export function effectivePriority(p: Priority): Priority {
  return p === Priority.PRIORITY_UNSPECIFIED || !ORDER.includes(p) ? Priority.PRIORITY_NORMAL : p;
}

export interface QueueEntry {
  id: string;
  priority: Priority;
  /** Order inside the class: lower first. */
  seq: number;
  /** When it was first queued, ms since epoch (aging counts from here). */
  queuedAtMs: number;
  /** Jobs that match the same workers (the dispatcher parks and probes them together). */
  group?: string;
}

export class PriorityQueue {
  private readonly classes = ORDER.map(() => new MinHeap<QueueEntry>((a, b) => a.seq < b.seq));

  constructor(
    private readonly agingMs: number = Infinity,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.classes.reduce((n, heap) => n + heap.size, 0);
  }

  /** Queued jobs per class. */
  depths(): Array<{ priority: Priority; depth: number }> {
    return ORDER.map((priority, i) => ({ priority, depth: this.classes[i]?.size ?? 0 }));
  }

  push(entry: QueueEntry): void {
    this.classes[ORDER.indexOf(effectivePriority(entry.priority))]?.push(entry);
  }

  pop(): QueueEntry | undefined {
    const now = this.now();
    let best = -1;
    let bestRank = Infinity;
    this.classes.forEach((heap, i) => {
      const head = heap.peek();
      if (!head) return;
      const rank = i - Math.floor((now - head.queuedAtMs) / this.agingMs);
      if (rank < bestRank) {
        best = i;
        bestRank = rank;
      }
    });
    return best < 0 ? undefined : this.classes[best]?.pop();
  }
}
