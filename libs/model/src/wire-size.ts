/**
 * Upper bounds of encoded sizes, counted from the fields that can be large.
 * Batches (SubmitJobs, PlaceJobs, ReportAttempts, the agent's events, a
 * worker's assignments) are cut at BATCH_BYTES with them, far below the gRPC
 * message limit (16 MiB): a few jobs with a megabyte of stdin or output each
 * must not make one message nobody can send. Counting is cheaper than encoding
 * every item twice.
 */
import type { AttemptEvent, JobSpec, Output, SecretValue } from "@aspen/proto";

/** Where a batch is cut (an item larger than this travels alone). */
export const BATCH_BYTES = 4 * 1024 * 1024;

/** Fixed fields and field tags: generous, so the bounds stay bounds. */
const OVERHEAD = 1024;
const ENTRY = 16;

const utf8 = (s: string): number => Buffer.byteLength(s);

function secretBytes(secret: SecretValue): number {
  const source = secret.source;
  if (!source) return ENTRY;
  return ENTRY + (typeof source.value === "string" ? utf8(source.value) : source.value.length);
}

function mapBytes<V>(map: Record<string, V>, size: (v: V) => number): number {
  let n = 0;
  for (const [k, v] of Object.entries(map)) n += ENTRY + utf8(k) + size(v);
  return n;
}

/** A job spec (with its chained steps). */
export function specBytes(spec: JobSpec | undefined): number {
  if (!spec) return 0;
  let n = OVERHEAD + utf8(spec.name) + utf8(spec.jobType) + mapBytes(spec.tags, utf8);
  for (const id of spec.dependsOn) n += ENTRY + id.length;
  const exec = spec.exec;
  if (exec) {
    n +=
      utf8(exec.command) + utf8(exec.cwd) + exec.stdin.length + mapBytes(exec.env, utf8) + mapBytes(exec.secretEnv, secretBytes);
    for (const arg of exec.args) n += ENTRY + utf8(arg);
  }
  for (const step of spec.then) n += specBytes(step);
  return n;
}

function outputBytes(output: Output | undefined): number {
  return output ? ENTRY + utf8(output.text) + output.objectName.length + output.sha256.length : 0;
}

/** An attempt event (a finished one carries the inline output). */
export function eventBytes(event: AttemptEvent): number {
  if (event.event?.$case !== "finished") return OVERHEAD;
  const result = event.event.value.result;
  return OVERHEAD + (result ? outputBytes(result.stdout) + outputBytes(result.stderr) + utf8(result.error) : 0);
}

/** Splits items into runs of at most BATCH_BYTES (by `size`), in order; an item over it is a run of its own. */
export function splitByBytes<T>(items: T[], size: (item: T) => number, maxBytes = BATCH_BYTES): T[][] {
  const runs: T[][] = [];
  let run: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const n = size(item);
    if (run.length > 0 && bytes + n > maxBytes) {
      runs.push(run);
      run = [];
      bytes = 0;
    }
    run.push(item);
    bytes += n;
  }
  if (run.length > 0) runs.push(run);
  return runs;
}
