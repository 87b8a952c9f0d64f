/**
 * Pure placement rules: which workers a job's selector admits and which of
 * them gets it. No I/O, so they are tested without servers.
 */
import { LabelRequirement_Operator, type NodeSelector } from "@aspen/proto";

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
