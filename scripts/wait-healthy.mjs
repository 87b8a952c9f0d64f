// Waits until each gRPC address given (host:port) answers grpc.health.v1 SERVING; exits 1 after 30 s.
import { HealthCheckResponse_ServingStatus, HealthClient } from "@aspen/proto";
import { createClient, unaryCall } from "@aspen/runtime";

const deadline = Date.now() + 30_000;
for (const address of process.argv.slice(2)) {
  const client = createClient(HealthClient, address);
  for (;;) {
    try {
      const res = await unaryCall(client.check.bind(client), { service: "" }, { deadlineMs: 1_000 });
      if (res.status === HealthCheckResponse_ServingStatus.SERVING) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      console.error(`${address} did not become healthy within 30 s`);
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  client.close();
}
