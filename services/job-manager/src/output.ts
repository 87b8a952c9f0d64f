/**
 * Keeps job records small enough for a KV value (NATS' default max payload is
 * 1 MiB): a stream whose captured text exceeds RECORD_INLINE_BYTES is stored
 * whole in the object store as "<job id>/<attempt>/<stream>", and the record
 * keeps its head and tail.
 */
import { AttemptResult, type Output } from "@aspen/proto";
import type { ObjectBucket } from "@aspen/store";

/** Captured text kept in the job record per stream, bytes. */
export const RECORD_INLINE_BYTES = 128 * 1024;

export function objectName(jobId: string, attempt: number, stream: "stdout" | "stderr"): string {
  return `${jobId}/${attempt}/${stream}`;
}

/** Head and tail of `text`, at most `limit` bytes in all, joined by a marker line. */
export function headTail(text: string, limit: number): string {
  const bytes = Buffer.from(text);
  if (bytes.length <= limit) return text;
  const half = Math.floor(limit / 2);
  const omitted = bytes.length - 2 * half;
  return `${bytes.subarray(0, half).toString()}\n… [${omitted} bytes omitted] …\n${bytes.subarray(bytes.length - half).toString()}`;
}

async function offloadStream(output: Output | undefined, name: string, objects: ObjectBucket): Promise<Output | undefined> {
  if (!output || Buffer.byteLength(output.text) <= RECORD_INLINE_BYTES) return output;
  // The agent stored the whole stream already: keep its object, only trim the text.
  if (output.objectName) return { ...output, text: headTail(output.text, RECORD_INLINE_BYTES), truncated: true };
  await objects.put(name, Buffer.from(output.text));
  return { ...output, text: headTail(output.text, RECORD_INLINE_BYTES), truncated: true, objectName: name };
}

export async function offloadLargeOutput(
  result: AttemptResult | undefined,
  jobId: string,
  attempt: number,
  objects: ObjectBucket,
): Promise<AttemptResult> {
  const r: AttemptResult = result ?? AttemptResult.fromPartial({ exitCode: -1, error: "agent sent no result" });
  const [stdout, stderr] = await Promise.all([
    offloadStream(r.stdout, objectName(jobId, attempt, "stdout"), objects),
    offloadStream(r.stderr, objectName(jobId, attempt, "stderr"), objects),
  ]);
  return { ...r, stdout, stderr };
}
