import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { MIN_REDACTED_BYTES, StreamRedactor } from "./redactor.js";

/** Feeds `text` cut at the given offsets and returns what came out. */
function run(values: string[], text: string | Buffer, cuts: number[] = []): string {
  const r = new StreamRedactor(values);
  const buf = typeof text === "string" ? Buffer.from(text) : text;
  const parts: Buffer[] = [];
  let last = 0;
  for (const c of [...cuts, buf.length]) {
    parts.push(r.push(buf.subarray(last, c)));
    last = c;
  }
  parts.push(r.end());
  return Buffer.concat(parts).toString();
}

describe("StreamRedactor", () => {
  it("replaces every occurrence in one chunk", () => {
    expect(run(["hunter2!"], "pw=hunter2! again hunter2!\n")).toBe("pw=[REDACTED] again [REDACTED]\n");
  });

  it("catches a value split across chunks, at every cut", () => {
    const text = "before s3cr3t-value after s3cr3t-value";
    for (let a = 0; a <= text.length; a++) {
      for (let b = a; b <= text.length; b += 3) {
        expect(run(["s3cr3t-value"], text, [a, b])).toBe("before [REDACTED] after [REDACTED]");
      }
    }
  });

  it("catches a value delivered one byte at a time", () => {
    const text = "x=topsecret;y=topsecret";
    const cuts = Array.from({ length: text.length }, (_, i) => i);
    expect(run(["topsecret"], text, cuts)).toBe("x=[REDACTED];y=[REDACTED]");
  });

  it("holds back at most a possible beginning, and releases it when it is not one", () => {
    const r = new StreamRedactor(["abcdefgh"]);
    expect(r.push(Buffer.from("xyz abc")).toString()).toBe("xyz ");
    expect(r.push(Buffer.from("dX")).toString()).toBe("abcdX");
    expect(r.push(Buffer.from("plain")).toString()).toBe("plain");
    expect(r.push(Buffer.from("abcdef")).toString()).toBe("");
    expect(r.end().toString()).toBe("abcdef");
  });

  it("prefers the longest value, also when it is still arriving", () => {
    expect(run(["abcd", "abcdefgh"], "1 abcdefgh 2 abcdxx", [6])).toBe("1 [REDACTED] 2 [REDACTED]xx");
    expect(run(["abcd", "abcdefgh"], "abcdefgh", [4])).toBe("[REDACTED]");
    expect(run(["abcd", "abcdefgh"], "abcdefgh", [6])).toBe("[REDACTED]");
  });

  it("handles overlapping values and a value inside another", () => {
    expect(run(["aaaa"], "aaaaaaaaa", [3, 5])).toBe("[REDACTED][REDACTED]a");
    expect(run(["xyzw", "wxyz1"], "xyzwxyz1", [5])).toBe("[REDACTED]xyz1");
  });

  it(`ignores values shorter than ${MIN_REDACTED_BYTES} bytes and passes output through untouched without values`, () => {
    expect(run(["abc", "yes"], "abc yes abc")).toBe("abc yes abc");
    const r = new StreamRedactor(["abc"]);
    expect(r.active).toBe(false);
    const chunk = Buffer.from("anything");
    expect(r.push(chunk)).toBe(chunk);
  });

  it("works on binary output and multi-byte values", () => {
    const value = Buffer.from("pässwörd-€");
    const noise = randomBytes(1000);
    const r = new StreamRedactor([value]);
    const text = Buffer.concat([noise, value, noise]);
    const out = Buffer.concat([
      r.push(text.subarray(0, 1003)),
      r.push(text.subarray(1003, 1005)),
      r.push(text.subarray(1005)),
      r.end(),
    ]);
    expect(out.includes(value)).toBe(false);
    expect(out.equals(Buffer.concat([noise, Buffer.from("[REDACTED]"), noise]))).toBe(true);
  });

  it("never lets a value through for random cuts of random text (property)", () => {
    const values = ["Zq9-secret-Zq9", "Zq9-sec", "tok_12345678"];
    for (let round = 0; round < 300; round++) {
      const pieces: string[] = [];
      for (let i = 0; i < 20; i++) {
        const pick = Math.random();
        pieces.push(pick < 0.2 ? values[Math.floor(Math.random() * values.length)]! : pick < 0.3 ? "Zq9-" : "ab\n");
      }
      const text = pieces.join("");
      const cuts = [...new Set(Array.from({ length: 6 }, () => Math.floor(Math.random() * text.length)))].sort((a, b) => a - b);
      const out = run(values, text, cuts);
      for (const v of values) expect(out).not.toContain(v);
      // Cut or not, the result is the same.
      expect(out).toBe(run(values, text));
    }
  });
});
