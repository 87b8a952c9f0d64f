/**
 * Pure placement rules: which workers a job's selector admits and which of
 * them gets it. No I/O, so they are tested without servers.
 */
import { LabelRequirement_Operator, PlacementStrategy, type NodeSelector } from "@aspen/proto";

export interface Candidate {
  id: string;
  labels: Record<string, string>;
  capabilities: string[];
  groups: string[];
  slots: number;
  /** Attempts running or assigned there now. */
  used: number;
}

const Op = LabelRequirement_Operator;

/** True when the worker satisfies every condition of the selector (an empty selector admits all). */
export function matchesSelector(worker: Omit<Candidate, "slots" | "used">, selector: NodeSelector | undefined): boolean {
  if (!selector) return true;
  if (selector.workerId && selector.workerId !== worker.id) return false;
  if (selector.workerGroup && !worker.groups.includes(selector.workerGroup)) return false;
  for (const [key, value] of Object.entries(selector.matchLabels)) {
    if (worker.labels[key] !== value) return false;
  }
  for (const capability of selector.capabilities) {
    if (!worker.capabilities.includes(capability)) return false;
  }
  for (const req of selector.requirements) {
    const value = worker.labels[req.key];
    switch (req.operator) {
      case Op.OPERATOR_IN:
        if (value === undefined || !req.values.includes(value)) return false;
        break;
      case Op.OPERATOR_NOT_IN:
        if (value !== undefined && req.values.includes(value)) return false;
        break;
      case Op.OPERATOR_EXISTS:
        if (value === undefined) return false;
        break;
      case Op.OPERATOR_DOES_NOT_EXIST:
        if (value !== undefined) return false;
        break;
      default:
        return false;
    }
  }
  return true;
}

/** "capability=database, region=eu" — for reasons people read. */
export function describeSelector(selector: NodeSelector | undefined): string {
  if (!selector) return "any worker";
  const parts = [
    ...Object.entries(selector.matchLabels).map(([k, v]) => `${k}=${v}`),
    ...selector.capabilities.map((c) => `capability=${c}`),
    ...selector.requirements.map((r) => `${r.key} ${Op[r.operator]?.replace("OPERATOR_", "") ?? "?"} [${r.values.join(",")}]`),
    ...(selector.workerGroup ? [`group=${selector.workerGroup}`] : []),
    ...(selector.workerId ? [`worker=${selector.workerId}`] : []),
  ];
  return parts.length > 0 ? parts.join(", ") : "any worker";
}

/**
 * Least loaded: the candidate with the largest free share of its slots;
 * ties go to the one after `cursor` in order (round robin), so equal workers
 * take turns. Undefined when none has a free slot.
 */
export function pickLeastLoaded<C extends Candidate>(candidates: readonly C[], cursor: number): C | undefined {
  let best: C | undefined;
  let bestFree = 0;
  const n = candidates.length;
  for (let i = 0; i < n; i++) {
    const c = candidates[(cursor + i) % n] as C;
    if (c.used >= c.slots) continue;
    const free = (c.slots - c.used) / c.slots;
    if (!best || free > bestFree) {
      best = c;
      bestFree = free;
    }
  }
  return best;
}

/** 32-bit FNV-1a with a final avalanche (murmur3 fmix32): fast, well spread. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h);
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Consistent hashing by rendezvous (highest random weight): the key goes to
 * the candidate with the highest hash(key, worker). When a worker leaves,
 * only its own keys move; when one joins, it takes about 1/n of them.
 */
export function rendezvous<C extends { id: string }>(candidates: readonly C[], key: string): C | undefined {
  const k = hash32(key);
  let best: C | undefined;
  let bestScore = -1;
  for (const c of candidates) {
    const score = fmix32(k ^ Math.imul(hash32(c.id), 0x9e3779b1));
    if (score > bestScore || (score === bestScore && best && c.id < best.id)) {
      best = c;
      bestScore = score;
    }
  }
  return best;
}

/** What a strategy remembers between placements (kept by the coordinator). */
export interface StrategyState {
  /** Round-robin position and least-loaded tie breaker. */
  cursor: number;
  /** AFFINITY: key → the worker it sticks to. */
  affinity: Map<string, string>;
}

export const DEFAULT_STRATEGY = PlacementStrategy.PLACEMENT_STRATEGY_LEAST_LOADED;

const hasSlot = (c: Candidate) => c.used < c.slots;

/**
 * The worker for one attempt among the live, matching `candidates` (sorted by
 * id), or undefined when the strategy says to wait for capacity:
 * - ROUND_ROBIN: the next candidate in turn with a free slot.
 * - LEAST_LOADED (default): the largest free share of slots; ties take turns.
 * - AFFINITY: the worker the key went to before, while it is live (waiting while
 *   it is busy); otherwise least loaded, remembered for the key.
 * - CONSISTENT_HASH: the key's rendezvous-hash worker; waits while it is busy.
 * - WORK_STEALING: the key's rendezvous-hash worker when it has a free slot;
 *   otherwise an idle one takes (steals) the job rather than letting it wait.
 */
export function pickWorker<C extends Candidate>(
  candidates: readonly C[],
  strategy: PlacementStrategy,
  key: string,
  state: StrategyState,
): C | undefined {
  const n = candidates.length;
  if (n === 0) return undefined;
  switch (strategy) {
    case PlacementStrategy.PLACEMENT_STRATEGY_ROUND_ROBIN: {
      for (let i = 0; i < n; i++) {
        const c = candidates[(state.cursor + i) % n] as C;
        if (hasSlot(c)) {
          state.cursor = (state.cursor + i + 1) % n;
          return c;
        }
      }
      return undefined;
    }
    case PlacementStrategy.PLACEMENT_STRATEGY_AFFINITY: {
      const sticky = candidates.find((c) => c.id === state.affinity.get(key));
      if (sticky) return hasSlot(sticky) ? sticky : undefined;
      const chosen = pickLeastLoaded(candidates, state.cursor++);
      if (chosen) state.affinity.set(key, chosen.id);
      return chosen;
    }
    case PlacementStrategy.PLACEMENT_STRATEGY_CONSISTENT_HASH: {
      const owner = rendezvous(candidates, key);
      return owner && hasSlot(owner) ? owner : undefined;
    }
    case PlacementStrategy.PLACEMENT_STRATEGY_WORK_STEALING: {
      const owner = rendezvous(candidates, key);
      return owner && hasSlot(owner) ? owner : pickLeastLoaded(candidates, state.cursor++);
    }
    default:
      return pickLeastLoaded(candidates, state.cursor++);
  }
}
