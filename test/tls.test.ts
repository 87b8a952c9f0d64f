/**
 * TLS on a real service process, with certificates from scripts/dev-certs.sh:
 * plaintext is refused, the dev CA is trusted, and mutual TLS refuses a
 * client without a certificate when required.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus, HealthClient } from "@aspen/proto";
import { createClient, unaryCall, type ClientSecurity } from "@aspen/runtime";
import { freePort, repoRoot, startNats, startService, waitFor } from "@aspen/testkit";

const certs = mkdtempSync(join(tmpdir(), "aspen-certs-"));
execFileSync("bash", [join(repoRoot, "scripts", "dev-certs.sh"), certs]);
const file = (name: string) => join(certs, name);

async function health(address: string, security: ClientSecurity): Promise<number | string> {
  const client = createClient(HealthClient, address, security);
  try {
    const res = await unaryCall(client.check.bind(client), { service: "" }, { deadlineMs: 3_000 });
    return res.status === HealthCheckResponse_ServingStatus.SERVING ? "SERVING" : res.status;
  } catch (err) {
    return (err as { code: number }).code;
  } finally {
    client.close();
  }
}

describe("TLS", () => {
  it("refuses plaintext, accepts the dev CA, and requires client certificates when configured", async () => {
    await using nats = await startNats();
    const [p1, p2] = [await freePort(), await freePort()];
    const base = {
      ASPEN_NATS_SERVERS: nats.url,
      ASPEN_GRPC_HOST: "127.0.0.1",
      ASPEN_TLS: "",
      ASPEN_TLS_CERT: file("server.pem"),
      ASPEN_TLS_KEY: file("server-key.pem"),
      OTEL_SDK_DISABLED: "true",
    };
    await using tls = startService("job-manager", { ...base, ASPEN_GRPC_PORT: String(p1) }, "jm-tls");
    await using _mtls = startService(
      "job-manager",
      { ...base, ASPEN_GRPC_PORT: String(p2), ASPEN_TLS_CLIENT_CA: file("ca.pem"), ASPEN_TLS_CLIENT_AUTH: "require" },
      "jm-mtls",
    );
    const ca = readFileSync(file("ca.pem"));
    const clientCert = { ca, cert: readFileSync(file("client.pem")), key: readFileSync(file("client-key.pem")) };
    await waitFor("the TLS listener", async () => (await health(`127.0.0.1:${p1}`, { ca })) === "SERVING", 20_000, 200);
    expect(tls.logs.some((l) => String(l.msg).includes("TLS is OFF"))).toBe(false);

    expect(await health(`127.0.0.1:${p1}`, {})).toBe(14); // plaintext client: UNAVAILABLE
    expect(await health(`127.0.0.1:${p1}`, { ca })).toBe("SERVING");

    await waitFor("the mTLS listener", async () => (await health(`127.0.0.1:${p2}`, clientCert)) === "SERVING", 20_000, 200);
    expect(await health(`127.0.0.1:${p2}`, { ca })).toBe(14); // no client certificate
    expect(await health(`127.0.0.1:${p2}`, clientCert)).toBe("SERVING");
  }, 60_000);

  it("refuses to start in plaintext unless asked to, and warns when it is", async () => {
    await using nats = await startNats();
    const env = {
      ASPEN_NATS_SERVERS: nats.url,
      ASPEN_GRPC_PORT: String(await freePort()),
      ASPEN_TLS: "",
      OTEL_SDK_DISABLED: "true",
    };
    const refused = startService("job-manager", env, "jm-no-tls");
    expect(await refused.exited).toBe(1);
    expect(JSON.stringify(refused.logs)).toContain("ASPEN_TLS_CERT/ASPEN_TLS_KEY: required (or set ASPEN_TLS=off for plaintext)");
    const noAuth = startService("job-manager", { ...env, ASPEN_TLS: "off", ASPEN_AUTH: "" }, "jm-no-auth");
    expect(await noAuth.exited).toBe(1);
    expect(JSON.stringify(noAuth.logs)).toContain("ASPEN_AUTH_TOKENS_FILE: required");
    await using plain = startService("job-manager", { ...env, ASPEN_TLS: "off" }, "jm-plain");
    await waitFor("the warning", () => plain.logs.some((l) => l.level === 40 && String(l.msg).includes("TLS is OFF")), 20_000);
  }, 60_000);
});
