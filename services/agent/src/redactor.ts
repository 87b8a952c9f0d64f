/**
 * Streaming redaction of secret values in a job's output: every occurrence
 * of a value becomes "[REDACTED]" before the bytes are captured inline,
 * written to the object store or counted. Output arrives in chunks, so a
 * value split across chunks is caught: the redactor holds back the end of a
 * chunk that could be the start of a value (at most the longest value's
 * length - 1 bytes) until the next chunk or the end of the stream.
 *
 * Values shorter than MIN_REDACTED_BYTES are not redacted: replacing every
 * "1" or "yes" in the output would garble it and hide nothing. Only the
 * exact bytes are matched: a value the job transforms (base64, hex, split
 * across lines, printed character by character to different streams) is not.
 */

/** Shortest value that is redacted, bytes. */
export const MIN_REDACTED_BYTES = 4;
export const REDACTED = Buffer.from("[REDACTED]");

export class StreamRedactor {
  private readonly values: Buffer[];
  private readonly longest: number;
  private held: Buffer = Buffer.alloc(0);

  /** `values`: the secrets of one attempt; duplicates and short ones are dropped. */
  constructor(values: Iterable<string | Buffer>) {
    const unique = new Map<string, Buffer>();
    for (const v of values) {
      const b = typeof v === "string" ? Buffer.from(v) : v;
      if (b.length >= MIN_REDACTED_BYTES) unique.set(b.toString("hex"), b);
    }
    // Longest first: at one position the longest value wins.
    this.values = [...unique.values()].sort((a, b) => b.length - a.length);
    this.longest = this.values[0]?.length ?? 0;
  }

  /** Whether there is anything to redact (else the caller can skip it). */
  get active(): boolean {
    return this.values.length > 0;
  }

  /** The redacted bytes that can be released now; may be empty (bytes held back). */
  push(chunk: Buffer): Buffer {
    if (!this.active) return chunk;
    const data = this.held.length > 0 ? Buffer.concat([this.held, chunk]) : chunk;
    return this.scan(data, false);
  }

  /** Everything still held, redacted: call at the end of the stream. */
  end(): Buffer {
    const data = this.held;
    this.held = Buffer.alloc(0);
    return data.length > 0 ? this.scan(data, true) : data;
  }

  private scan(data: Buffer, final: boolean): Buffer {
    const out: Buffer[] = [];
    let pos = 0;
    for (;;) {
      // Bytes from `hold` on could be the beginning of a value still arriving: not released yet.
      // (A value that could extend from an earlier position makes `hold` that position.)
      const hold = final ? data.length : data.length - this.partialSuffix(data, pos);
      // Leftmost occurrence before `hold` of any value; at equal positions the longest (sorted so).
      let at = -1;
      let len = 0;
      for (const v of this.values) {
        const i = data.indexOf(v, pos);
        if (i >= 0 && i < hold && (at < 0 || i < at)) {
          at = i;
          len = v.length;
        }
      }
      if (at < 0) {
        out.push(data.subarray(pos, hold));
        this.held = final ? Buffer.alloc(0) : Buffer.from(data.subarray(hold));
        return out.length === 1 ? out[0]! : Buffer.concat(out);
      }
      out.push(data.subarray(pos, at), REDACTED);
      pos = at + len;
    }
  }

  /** Length of the longest suffix of data[from..] that is a proper beginning of some value. */
  private partialSuffix(data: Buffer, from: number): number {
    const max = Math.min(this.longest - 1, data.length - from);
    for (let n = max; n > 0; n--) {
      const tail = data.subarray(data.length - n);
      if (this.values.some((v) => v.length > n && v[0] === tail[0] && tail.equals(v.subarray(0, n)))) return n;
    }
    return 0;
  }
}
