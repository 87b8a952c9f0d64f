/**
 * Queued job ids by priority class: strict order between classes (CRITICAL
 * first), submission order inside a class. Each id carries the sequence
 * number it got when first queued, so a job put back after a failed
 * placement regains its place rather than jumping the line or losing it.
 * Aging (so LOW never starves) arrives with the job-lifecycle issue;
 * docs/job-lifecycle.md records the rule.
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
}

export class PriorityQueue {
  private readonly classes = new Map(ORDER.map((p) => [p, new MinHeap<QueueEntry>((a, b) => a.seq < b.seq)]));

  get size(): number {
    let n = 0;
    for (const heap of this.classes.values()) n += heap.size;
    return n;
  }

  push(entry: QueueEntry): void {
    this.classes.get(effectivePriority(entry.priority))?.push(entry);
  }

  pop(): QueueEntry | undefined {
    for (const p of ORDER) {
      const entry = this.classes.get(p)?.pop();
      if (entry !== undefined) return entry;
    }
    return undefined;
  }
}
