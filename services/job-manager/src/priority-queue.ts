/**
 * Queued job ids by priority class: strict order between classes (CRITICAL
 * first), FIFO inside a class. Aging (so LOW never starves) arrives with the
 * job-lifecycle issue; docs/job-lifecycle.md records the rule.
 */
import { Priority } from "@aspen/proto";

const ORDER = [Priority.PRIORITY_CRITICAL, Priority.PRIORITY_HIGH, Priority.PRIORITY_NORMAL, Priority.PRIORITY_LOW];

/** UNSPECIFIED is NORMAL. */
export function effectivePriority(p: Priority): Priority {
  return p === Priority.PRIORITY_UNSPECIFIED || !ORDER.includes(p) ? Priority.PRIORITY_NORMAL : p;
}

/** A FIFO with O(1) push, pop and push-to-front. */
class Fifo {
  private items: string[] = [];
  private head = 0;
  get size(): number {
    return this.items.length - this.head;
  }
  push(id: string): void {
    this.items.push(id);
  }
  unshift(id: string): void {
    if (this.head > 0) this.items[--this.head] = id;
    else this.items.unshift(id);
  }
  shift(): string | undefined {
    if (this.head >= this.items.length) return undefined;
    const id = this.items[this.head++];
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return id;
  }
}

export class PriorityQueue {
  private readonly classes = new Map(ORDER.map((p) => [p, new Fifo()]));

  get size(): number {
    let n = 0;
    for (const fifo of this.classes.values()) n += fifo.size;
    return n;
  }

  push(id: string, priority: Priority): void {
    this.classes.get(effectivePriority(priority))?.push(id);
  }

  /** Put back at the head of its class (a dispatch that could not be placed keeps its turn). */
  pushFront(id: string, priority: Priority): void {
    this.classes.get(effectivePriority(priority))?.unshift(id);
  }

  pop(): string | undefined {
    for (const p of ORDER) {
      const id = this.classes.get(p)?.shift();
      if (id !== undefined) return id;
    }
    return undefined;
  }
}
