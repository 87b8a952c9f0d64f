/**
 * An append-only JetStream stream of protobuf records (deny delete, deny
 * purge): audit trails. Appends are fire-and-forget for the caller (a failed
 * one is logged with its content, never thrown into the request path).
 */
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { Logger } from "@aspen/runtime";
import type { AckedPublisher } from "./publisher.js";
import { whileJetStreamSettles, type Codec, type Store } from "./store.js";

export interface AppendOnlyLogOptions<T> {
  stream: string;
  /** Subjects the stream takes, e.g. ["aspen.control.>"]. */
  subjects: string[];
  codec: Codec<T>;
  replicas: number;
  /** Records older than this are dropped by the server, days. Default 90. */
  maxAgeDays?: number;
  log: Logger;
}

export class AppendOnlyLog<T> {
  private constructor(
    private readonly publisher: AckedPublisher,
    private readonly jsm: JetStreamManager,
    private readonly options: AppendOnlyLogOptions<T>,
  ) {}

  /** Opens the stream, creating it (append-only) when missing. */
  static async open<T>(store: Store, options: AppendOnlyLogOptions<T>): Promise<AppendOnlyLog<T>> {
    return whileJetStreamSettles(`stream ${options.stream}`, () => AppendOnlyLog.openOnce(store, options), options.log);
  }

  private static async openOnce<T>(store: Store, options: AppendOnlyLogOptions<T>): Promise<AppendOnlyLog<T>> {
    const jsm = await jetstreamManager(store.nc);
    const exists = await jsm.streams.info(options.stream).then(
      () => true,
      () => false,
    );
    if (!exists) {
      await jsm.streams
        .add({
          name: options.stream,
          subjects: options.subjects,
          deny_delete: true,
          deny_purge: true,
          num_replicas: options.replicas,
          max_age: (options.maxAgeDays ?? 90) * 86_400 * 1e9,
        })
        .catch(async (err: unknown) => {
          // Another replica created it meanwhile.
          if (
            !(await jsm.streams.info(options.stream).then(
              () => true,
              () => false,
            ))
          )
            throw err;
        });
    }
    return new AppendOnlyLog(store.publisher, jsm, options);
  }

  append(subject: string, record: T): void {
    this.publisher.publish(subject, this.options.codec.encode(record).finish()).catch((err: unknown) => {
      this.options.log.error({ err: (err as Error).message, subject, record }, "audit record could not be written");
    });
  }

  /** Newest first: up to `limit` records `accept` keeps, scanning at most `maxScan` back. */
  async newest(limit: number, accept: (record: T) => boolean, maxScan = 10_000): Promise<Array<{ sequence: number; record: T }>> {
    const info = await this.jsm.streams.info(this.options.stream);
    const out: Array<{ sequence: number; record: T }> = [];
    const first = Math.max(info.state.first_seq, info.state.last_seq - maxScan + 1);
    for (let seq = info.state.last_seq; seq >= first && seq > 0 && out.length < limit; seq--) {
      const msg = await this.jsm.streams.getMessage(this.options.stream, { seq }).catch(() => null);
      if (!msg) continue;
      const record = this.options.codec.decode(msg.data);
      if (accept(record)) out.push({ sequence: seq, record });
    }
    return out;
  }
}
