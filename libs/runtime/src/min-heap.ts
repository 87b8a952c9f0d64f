/** A binary min-heap ordered by `before(a, b)` (true when a comes first). O(log n) push and pop. */
export class MinHeap<T> {
  private readonly items: T[] = [];

  constructor(private readonly before: (a: T, b: T) => boolean) {}

  get size(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  push(item: T): void {
    const h = this.items;
    let i = h.length;
    h.push(item);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(item, h[parent] as T)) break;
      h[i] = h[parent] as T;
      i = parent;
    }
    h[i] = item;
  }

  pop(): T | undefined {
    const h = this.items;
    const top = h[0];
    const last = h.pop();
    if (h.length === 0 || last === undefined) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let first = i;
      let firstItem: T = last;
      if (l < h.length && this.before(h[l] as T, firstItem)) {
        first = l;
        firstItem = h[l] as T;
      }
      if (r < h.length && this.before(h[r] as T, firstItem)) first = r;
      if (first === i) break;
      h[i] = h[first] as T;
      i = first;
    }
    h[i] = last;
    return top;
  }

  clear(): void {
    this.items.length = 0;
  }
}
