/** Identifier rules shared by every service and the CLI. */
import { randomFillSync } from "node:crypto";

/** Schedule ids: lowercase, digits and dashes; they prefix fired job ids. */
export const SCHEDULE_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** Job ids: NATS KV key tokens ([A-Za-z0-9_=-]) joined by single dots. */
export const JOB_ID = /^[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*$/;
export const JOB_ID_MAX = 128;
/** Worker group names. */
export const GROUP_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** Worker ids: what hostnames and container names use. */
export const WORKER_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * The id of the job a schedule fires at a nominal instant. Deterministic, so
 * that any number of submissions of the same fire make one job.
 */
export function fireJobId(scheduleId: string, nominalMs: number): string {
  return `${scheduleId}.${nominalMs}`;
}

/**
 * A fresh random id with a readable prefix, e.g. "j-lq3x9k-4f2a9c1b0e7d3a56". Time-ordered
 * first part; 64 random bits after it. (32 bits gave two submissions in the same millisecond
 * a 1 in 2^32 chance per pair of the same id, and the job-manager answers a submission whose
 * id exists with that job: at 5,000 submissions a second, about once in five days.)
 */
export function newId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${randomHex(ID_RANDOM_BYTES)}`;
}

const ID_RANDOM_BYTES = 8;

/**
 * Random bytes are drawn 4 KiB at a time: a randomBytes() per id was ~14 µs of the
 * job-manager's time per submitted job (a crossing into C++ and OpenSSL each).
 */
const pool = Buffer.alloc(4096);
let poolAt = pool.length;

function randomHex(bytes: number): string {
  if (poolAt + bytes > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  poolAt += bytes;
  return pool.toString("hex", poolAt - bytes, poolAt);
}
