/**
 * Bucket replicas are checked on start: a service configured for R3 that
 * finds a bucket at R1 (left by a single-node setup) refuses to start with an
 * error naming the bucket and both counts, instead of running at a lower
 * durability than configured.
 */
import { describe, expect, it } from "vitest";
import { freePort, startNats, startService, waitHealthy } from "@aspen/testkit";

describe("bucket replica check", () => {
  it("refuses to start when an existing bucket has another replica count", async () => {
    await using nats = await startNats();
    const port = await freePort();
    const env = {
      ASPEN_NATS_SERVERS: nats.url,
      ASPEN_GRPC_HOST: "127.0.0.1",
      ASPEN_GRPC_PORT: String(port),
      OTEL_SDK_DISABLED: "true",
    };
    // First start at R1 creates the buckets.
    const first = startService("job-manager", { ...env, ASPEN_BUCKET_REPLICAS: "1" });
    await waitHealthy(`127.0.0.1:${port}`, 20_000, first);
    expect(await first.stop()).toBe(0);

    // Configured for a 3-node cluster, pointed at the same data.
    await using second = startService("job-manager", { ...env, ASPEN_BUCKET_REPLICAS: "3" }, "job-manager-r3");
    expect(await second.exited).toBe(1);
    const fatal = second.logs.find((l) => l.msg === "failed to start");
    const err = fatal?.err as { type?: string; message?: string } | undefined;
    expect(err?.type).toBe("ReplicaMismatchError");
    expect(err?.message).toMatch(/bucket "aspen_jobs" has 1 replica but ASPEN_BUCKET_REPLICAS is 3/);
  });
});
