/** The streaming object writer against a real nats-server: readable by nats.js, live before it is complete, and a store failure never fails the job. */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Objm } from "@nats-io/obj";
import { JobSpec } from "@aspen/proto";
import { startNats, waitFor, type NatsServer } from "@aspen/testkit";
import { admit, compilePolicy } from "./admission.js";
import { execute } from "./executor.js";
import { liveChunkId, OutputStore } from "./output-store.js";
import { PolicySchema } from "./policy.js";

const policy = compilePolicy(PolicySchema.parse({ workRoot: "/tmp" }), {
  defaultWorkRoot: "/tmp",
  agentEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
  isRoot: false,
});
const run = (script: string, store: OutputStore, name: string) => {
  const spec = JobSpec.fromPartial({ exec: { command: script, shell: true } });
  return execute(spec, admit(spec, policy), { maxInlineOutputBytes: 4096, writer: (s) => store.writer(`${name}/1/${s}`) });
};

describe("output store", () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let store: OutputStore;
  beforeAll(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url });
    store = await OutputStore.open(nc, { chunkBytes: 64 * 1024 });
  });
  afterAll(async () => {
    await nc?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  it("stores both streams whole; nats.js reads them back with the same size and digest", async () => {
    const r = await run("head -c 1000000 /dev/urandom | base64; echo err >&2", store, "whole").result;
    const os = await new Objm(nc).open("aspen_outputs");
    const bytes = await os.getBlob("whole/1/stdout");
    expect(bytes?.length).toBe(r.stdout?.totalBytes);
    expect(createHash("sha256").update(bytes!).digest("hex")).toBe(r.stdout?.sha256);
    expect(r.stdout?.objectName).toBe("whole/1/stdout");
    expect(Buffer.from((await os.getBlob("whole/1/stderr"))!).toString()).toBe("err\n");
    expect(r.stdout?.truncated).toBe(true);
    expect(Buffer.byteLength(r.stdout?.text ?? "")).toBeLessThan(4096);
  });

  it("publishes a slow job's output within the flush interval, before the object is complete", async () => {
    const execution = run("echo first; sleep 2; echo second", store, "live");
    const js = jetstream(nc);
    const consumer = await js.consumers.getPushConsumer("OBJ_aspen_outputs", {
      filter_subjects: `$O.aspen_outputs.C.${liveChunkId("live/1/stdout")}`,
    });
    const messages = await consumer.consume();
    let seen = "";
    void (async () => {
      for await (const m of messages) seen += Buffer.from(m.data).toString();
    })();
    await waitFor("the first line, live", () => seen === "first\n", 1_500);
    expect((await new Objm(nc).open("aspen_outputs").then((os) => os.info("live/1/stdout")))?.digest ?? "").toBe("");
    await execution.result;
    await waitFor("the second line", () => seen === "first\nsecond\n", 3_000);
    messages.stop();
  });

  it("when NATS goes away mid-job the job still completes, without an object", async () => {
    const errors: string[] = [];
    const spec = JobSpec.fromPartial({
      exec: { command: "head -c 200000 /dev/zero; sleep 1; head -c 200000 /dev/zero", shell: true },
    });
    const execution = execute(spec, admit(spec, policy), {
      maxInlineOutputBytes: 4096,
      writer: (s) => store.writer(`gone/1/${s}`),
      onStoreError: (_s, err) => errors.push(err.message),
    });
    await new Promise((r) => setTimeout(r, 400));
    await nats.kill();
    const r = await execution.result;
    expect(r.exitCode).toBe(0);
    expect(r.stdout?.totalBytes).toBe(400_000);
    expect(r.stdout?.objectName).toBe("");
    expect(errors.length).toBeGreaterThan(0);
    await nats.restart();
  }, 60_000);
});
