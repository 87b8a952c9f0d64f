#!/usr/bin/env node
// Prints a nats-server `authorization` block giving each Aspen service its own
// user, allowed only the JetStream buckets and streams it owns:
//   node scripts/nats-auth.mjs SCHEDULER_PW JOB_MANAGER_PW COORDINATOR_PW AGENT_PW > auth.conf
// and `include auth.conf` from the server config. Services connect with
// ASPEN_NATS_USER (scheduler | job-manager | coordinator | agent) and ASPEN_NATS_PASSWORD.
// The permission lists are exported for tests (natsAuthorization).

/** Everything nats.js needs to create, read, watch and CAS a KV bucket. */
function kv(bucket) {
  return stream(`KV_${bucket}`, [`$KV.${bucket}.>`]);
}

/** Everything nats.js needs for an object store bucket (put, get, delete). */
function obj(bucket) {
  return stream(`OBJ_${bucket}`, [`$O.${bucket}.>`]);
}

/** JetStream API on one stream (info, create, purge, read, consumers), and publishing to `subjects`. */
function stream(name, subjects) {
  const api = [
    "STREAM.INFO",
    "STREAM.CREATE",
    "STREAM.UPDATE",
    "STREAM.PURGE",
    "STREAM.MSG.GET",
    "CONSUMER.CREATE",
    "DIRECT.GET",
  ];
  return [
    ...api.map((a) => `$JS.API.${a}.${name}`),
    `$JS.API.CONSUMER.CREATE.${name}.>`,
    `$JS.API.CONSUMER.DELETE.${name}.>`,
    `$JS.API.CONSUMER.INFO.${name}.>`,
    `$JS.API.DIRECT.GET.${name}.>`,
    `$JS.FC.${name}.>`,
    `$JS.ACK.${name}.>`,
    ...subjects,
  ];
}

/** Publish permissions per service user. */
const controlAudit = stream("ASPEN_CONTROL_AUDIT", ["aspen.control.>"]);
export const PERMISSIONS = {
  scheduler: [...kv("aspen_schedules"), ...kv("aspen_scheduler_lease"), ...controlAudit],
  "job-manager": [
    ...controlAudit,
    ...kv("aspen_jobs"),
    ...kv("aspen_job_keys"),
    ...obj("aspen_outputs"),
    // Reads the agents' audit stream; never writes to it.
    ...stream("ASPEN_AUDIT", []).filter((s) => !s.includes("CREATE.ASPEN_AUDIT") || s.includes("CONSUMER")),
  ],
  coordinator: [...kv("aspen_workers"), ...kv("aspen_worker_groups"), ...controlAudit],
  // Agents reach NATS only for full outputs and their audit records.
  agent: [...obj("aspen_outputs"), ...stream("ASPEN_AUDIT", ["aspen.audit.>"])],
};

/** The `authorization { users = [...] }` block, with the given password per user. */
export function natsAuthorization(passwords) {
  const users = Object.entries(PERMISSIONS).map(([user, allow]) => ({
    user,
    password: passwords[user],
    permissions: { publish: { allow: ["$JS.API.INFO", ...allow] }, subscribe: { allow: ["_INBOX.>"] } },
  }));
  return `authorization {\n  users = ${JSON.stringify(users, null, 2).replace(/\n/g, "\n  ")}\n}\n`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [scheduler, jobManager, coordinator, agent] = process.argv.slice(2);
  if (!agent) {
    console.error("usage: nats-auth.mjs SCHEDULER_PW JOB_MANAGER_PW COORDINATOR_PW AGENT_PW");
    process.exit(2);
  }
  process.stdout.write(natsAuthorization({ scheduler, "job-manager": jobManager, coordinator, agent }));
}
