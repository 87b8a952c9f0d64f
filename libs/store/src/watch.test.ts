/** A follower's watch across a NATS restart: it keeps delivering, misses nothing written after. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Schedule } from "@aspen/proto";
import { createLogger } from "@aspen/runtime";
import { startNats, waitFor, type NatsServer } from "@aspen/testkit";
import { Store } from "./store.js";

describe("Bucket.watch", () => {
  let nats: NatsServer;
  let store: Store;
  const log = createLogger("watch-test", "silent");

  beforeAll(async () => {
    nats = await startNats();
    store = await Store.connect({ servers: [nats.url], name: "watch-test", log });
  });
  afterAll(async () => {
    await store?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  it("keeps following the bucket after NATS restarts", async () => {
    const bucket = await store.bucket("t_watch", Schedule);
    const seen = new Map<string, string>();
    const stop = await bucket.watch(">", (key, value) => seen.set(key, value?.value.name ?? "<deleted>"));
    try {
      await bucket.upsert("before", Schedule.fromPartial({ id: "before", name: "1" }));
      await waitFor("the change before the restart", () => seen.get("before") === "1", 5_000, 20);
      await nats.stop();
      await nats.restart();
      // Writes fail until the client has reconnected; then every later change must arrive.
      await waitFor(
        "a write after the restart",
        () =>
          bucket.upsert("after", Schedule.fromPartial({ id: "after", name: "2" })).then(
            () => true,
            () => false,
          ),
        20_000,
        200,
      );
      await bucket.upsert("before", Schedule.fromPartial({ id: "before", name: "3" }));
      await waitFor("both changes after the restart", () => seen.get("after") === "2" && seen.get("before") === "3", 20_000, 50);
      expect(Object.fromEntries(seen)).toEqual({ before: "3", after: "2" });
    } finally {
      stop();
    }
  }, 60_000);
});
