/**
 * The agent's audit trail: one AuditRecord per execution or refusal, appended
 * to the JetStream stream ASPEN_AUDIT (subject "aspen.audit.<job id>"), which
 * the agent creates append-only (no delete, no purge; records age out after
 * `maxAgeDays`). Read back through JobService.ListAuditRecords.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { AuditRecord } from "@aspen/proto";
import type { Logger } from "@aspen/runtime";

export const AUDIT_STREAM = "ASPEN_AUDIT";
const NANOS_PER_DAY = 86_400 * 1e9;

export class AuditLog {
  private pending = new Set<Promise<unknown>>();

  private constructor(
    private readonly js: JetStreamClient,
    private readonly log: Logger,
  ) {}

  static async open(nc: NatsConnection, log: Logger, maxAgeDays = 90, replicas = 1): Promise<AuditLog> {
    const jsm = await jetstreamManager(nc);
    const exists = await jsm.streams.info(AUDIT_STREAM).then(
      () => true,
      () => false,
    );
    if (!exists) {
      await jsm.streams
        .add({
          name: AUDIT_STREAM,
          subjects: ["aspen.audit.>"],
          deny_delete: true,
          deny_purge: true,
          max_age: maxAgeDays * NANOS_PER_DAY,
          num_replicas: replicas,
        })
        .catch(async (err: unknown) => {
          // Another agent created it at the same moment.
          if (
            !(await jsm.streams.info(AUDIT_STREAM).then(
              () => true,
              () => false,
            ))
          )
            throw err;
        });
    }
    return new AuditLog(jetstream(nc), log);
  }

  /** Appends a record; a failure is logged (with the record) and never fails the job. */
  append(record: AuditRecord): void {
    const p = this.js
      .publish(`aspen.audit.${record.jobId}`, AuditRecord.encode(record).finish())
      .catch((err: unknown) =>
        this.log.error({ err: (err as Error).message, audit: AuditRecord.toJSON(record) }, "audit record not stored"),
      )
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
  }

  /** Waits for the records in flight (shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }
}
