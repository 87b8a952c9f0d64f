/**
 * A bucket's view of store trouble (what the job-manager waits out before declaring an
 * assignment lost): now while NATS is down or a write hangs, then the moment it came back.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Schedule } from "@aspen/proto";
import { createLogger } from "@aspen/runtime";
import { sleep, startNats, waitFor, type NatsServer } from "@aspen/testkit";
import { Store, type Bucket } from "./store.js";

describe("Bucket.troubleAtMs", () => {
  let nats: NatsServer;
  let store: Store;
  let bucket: Bucket<Schedule>;
  const log = createLogger("trouble-test", "silent");
  let n = 0;
  // A create goes straight to the publisher (an upsert would first read, and hang there).
  const write = () => bucket.create(`k${n++}`, Schedule.fromPartial({ id: "k" }));
  const writesGetThrough = (timeoutMs: number) =>
    waitFor(
      "writes to get through",
      () =>
        write().then(
          () => true,
          () => false,
        ),
      timeoutMs,
      100,
    );

  beforeAll(async () => {
    nats = await startNats();
    store = await Store.connect({ servers: [nats.url], name: "trouble-test", log });
    bucket = await store.bucket("t_trouble", Schedule);
  });
  afterAll(async () => {
    await store?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  it("is never while writes get through", async () => {
    await write();
    expect(bucket.troubleAtMs()).toBe(-Infinity);
  });

  it("is now while a write hangs, before that write fails", async () => {
    process.kill(nats.pid()!, "SIGSTOP");
    try {
      // The signal is delivered asynchronously: wait until the server is really stopped.
      await waitFor(
        "nats-server to stop",
        () => readFileSync(`/proc/${nats.pid()}/stat`, "utf8").split(") ")[1]?.startsWith("T"),
        2_000,
        10,
      );
      const hanging = write().catch((err: Error) => err);
      await sleep(1_300);
      const now = Date.now();
      expect(bucket.troubleAtMs(now)).toBe(now); // the write has not failed yet (5 s timeout)
      process.kill(nats.pid()!, "SIGCONT");
      await hanging;
    } finally {
      process.kill(nats.pid()!, "SIGCONT");
    }
    await writesGetThrough(10_000);
  }, 20_000);

  it("is now while NATS is down, then the moment the connection came back", async () => {
    await nats.kill();
    const down = Date.now();
    // No write is waiting: only the connection's state can say so.
    await waitFor("the client to notice", () => bucket.troubleAtMs(down) === down, 5_000, 20);
    await sleep(300);
    const later = Date.now();
    expect(bucket.troubleAtMs(later)).toBe(later); // still down
    await nats.restart();
    await writesGetThrough(20_000);
    const back = bucket.troubleAtMs();
    expect(back).toBeGreaterThan(later);
    await sleep(200);
    expect(bucket.troubleAtMs()).toBe(back); // stays at the end of the outage
  }, 40_000);
});
