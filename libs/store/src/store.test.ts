/** The store against a real nats-server with JetStream. */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Schedule } from "@aspen/proto";
import { AlreadyExistsError, ConflictError, createLogger } from "@aspen/runtime";
import { startNats, type NatsServer } from "@aspen/testkit";
import { ReplicaMismatchError, Store } from "./store.js";

describe("store over JetStream", () => {
  let nats: NatsServer;
  let store: Store;
  const log = createLogger("store-test", "silent");

  beforeAll(async () => {
    nats = await startNats();
    store = await Store.connect({ servers: [nats.url], name: "store-test", log });
  });
  afterAll(async () => {
    await store?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  const record = (id: string, name: string) => Schedule.fromPartial({ id, name });

  it("creates if absent, refuses a second create, and reads back", async () => {
    const bucket = await store.bucket("t_create", Schedule);
    const rev = await bucket.create("a", record("a", "first"));
    await expect(bucket.create("a", record("a", "second"))).rejects.toBeInstanceOf(AlreadyExistsError);
    expect(await bucket.get("a")).toEqual({ key: "a", value: record("a", "first"), revision: rev });
    expect(await bucket.get("missing")).toBeUndefined();
  });

  it("compare-and-set: a stale revision loses, and only one of two racing writers wins", async () => {
    const bucket = await store.bucket("t_cas", Schedule);
    const r1 = await bucket.create("k", record("k", "v1"));
    const r2 = await bucket.update("k", record("k", "v2"), r1);
    await expect(bucket.update("k", record("k", "stale"), r1)).rejects.toBeInstanceOf(ConflictError);
    const results = await Promise.allSettled([
      bucket.update("k", record("k", "x"), r2),
      bucket.update("k", record("k", "y"), r2),
    ]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
  });

  it("re-creates a deleted key, refuses an invalid key, and keeps a burst of writes in order", async () => {
    const bucket = await store.bucket("t_recreate", Schedule);
    const first = await bucket.create("d", record("d", "first"));
    // A delete at a stale revision is refused like any compare-and-set.
    await expect(bucket.delete("d", first - 1)).rejects.toBeInstanceOf(ConflictError);
    await bucket.delete("d", first);
    const again = await bucket.create("d", record("d", "again"));
    expect(again).toBeGreaterThan(first);
    expect((await bucket.get("d"))?.value.name).toBe("again");
    await expect(bucket.create("d", record("d", "third"))).rejects.toBeInstanceOf(AlreadyExistsError);
    await expect(bucket.create("bad key", record("x", "x"))).rejects.toThrow(/invalid key/);
    await expect(bucket.create("a.*", record("x", "x"))).rejects.toThrow(/invalid key/);
    // 500 writes issued in one turn leave together; each gets its own, increasing revision.
    const revisions = await Promise.all(Array.from({ length: 500 }, (_, i) => bucket.create(`b${i}`, record(`b${i}`, "x"))));
    expect(new Set(revisions).size).toBe(500);
    expect([...revisions].sort((x, y) => x - y)).toEqual(revisions);
  });

  it("fails a write that NATS never acknowledges, with the reason, instead of waiting forever", async () => {
    await using other = await startNats();
    const s = await Store.connect({ servers: [other.url], name: "store-test-down", log }, 1_000);
    const bucket = await s.bucket("t_down", Schedule);
    await other[Symbol.asyncDispose]();
    const t0 = Date.now();
    await expect(bucket.create("k", record("k", "v"))).rejects.toThrow(/acknowledge|closed|not available/);
    expect(Date.now() - t0).toBeLessThan(8_000);
    await s.close();
  });

  it("mutate retries lost races until every change is applied", async () => {
    const bucket = await store.bucket("t_mutate", Schedule);
    await bucket.create("n", Schedule.fromPartial({ id: "n", status: { fireCount: 0 } }));
    const bump = (s: Schedule): Schedule => ({ ...s, status: { ...s.status!, fireCount: (s.status?.fireCount ?? 0) + 1 } });
    await Promise.all(Array.from({ length: 10 }, () => bucket.mutate("n", bump)));
    expect((await bucket.get("n"))?.value.status?.fireCount).toBe(10);
  });

  it("lists every live record, without deleted ones, and survives reopening", async () => {
    const bucket = await store.bucket("t_all", Schedule);
    expect(await bucket.all()).toEqual([]);
    for (let i = 0; i < 50; i++) await bucket.create(`s${i}`, record(`s${i}`, `n${i}`));
    await bucket.delete("s7");
    await bucket.upsert("s8", record("s8", "changed"));
    const reopened = await store.bucket("t_all", Schedule);
    const all = await reopened.all();
    expect(all).toHaveLength(49);
    expect(all.find((e) => e.key === "s8")?.value.name).toBe("changed");
    expect(all.some((e) => e.key === "s7")).toBe(false);
  });

  it("stores objects with their size and SHA-256", async () => {
    const objects = await store.objects("t_objects");
    const data = Buffer.alloc(3 * 1024 * 1024, "z");
    const info = await objects.put("job-1/1/stdout", data);
    expect(info).toEqual({ size: data.length, sha256: createHash("sha256").update(data).digest("hex") });
    expect(Buffer.from((await objects.get("job-1/1/stdout")) ?? []).equals(data)).toBe(true);
    expect(await objects.get("absent")).toBeUndefined();
  });

  it("refuses an existing bucket or object store whose replica count is not the configured one", async () => {
    await store.bucket("t_replicas", Schedule);
    await store.objects("t_replicas_obj");
    const r3 = await Store.connect({ servers: [nats.url], name: "store-test-r3", replicas: 3, log });
    try {
      const kv = await r3.bucket("t_replicas", Schedule).catch((err: unknown) => err);
      expect(kv).toBeInstanceOf(ReplicaMismatchError);
      expect(kv).toMatchObject({ bucket: "t_replicas", configured: 3, actual: 1 });
      expect((kv as Error).message).toContain('bucket "t_replicas" has 1 replica but ASPEN_BUCKET_REPLICAS is 3');
      await expect(r3.objects("t_replicas_obj")).rejects.toMatchObject({ name: "ReplicaMismatchError", actual: 1 });
    } finally {
      await r3.close();
    }
  });
});
