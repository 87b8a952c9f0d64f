import { status } from "@grpc/grpc-js";
import { context, ROOT_CONTEXT } from "@opentelemetry/api";

export interface TurnBatcherOptions<Req, Res> {
  /** Most items in one batch. */
  maxItems: number;
  /** Most bytes in one batch, as `sizeOf` counts them (an item over it goes alone). */
  maxBytes?: number;
  sizeOf?: (request: Req) => number;
  /**
   * The one-item call, for a peer that does not know the batch call yet
   * (UNIMPLEMENTED: an older version during a rolling upgrade). After such an
   * answer every call goes one by one for a minute, then the batch is tried again.
   */
  single?: (request: Req) => Promise<Res>;
}

const RETRY_BATCH_AFTER_MS = 60_000;

/**
 * Coalesces the calls made during one event-loop turn into one batch call.
 *
 * Under load, work arrives in bursts (many NATS acks or gRPC frames in one
 * socket read) and each item would otherwise cost a whole RPC on both sides.
 * Calls are collected until the current I/O callbacks are done (setImmediate),
 * or until a batch is full (items or bytes), and then sent together; each
 * caller gets its own item's result. Batches are not serialized: a slow batch
 * does not hold up the next one, so a lone call waits one turn and no longer.
 *
 * The batch is sent outside every caller's trace (each item carries its own
 * context where it matters): it belongs to none of them.
 */
export class TurnBatcher<Req, Res> {
  private pending: Array<{ request: Req; resolve: (res: Res) => void; reject: (err: unknown) => void }> = [];
  private pendingBytes = 0;
  private scheduled: NodeJS.Immediate | undefined;
  private singleUntilMs = 0;

  /**
   * `send` answers one result per request, in order: the item's value, or an
   * Error for that item alone. A rejected `send` fails every item of the batch.
   */
  constructor(
    private readonly send: (requests: Req[]) => Promise<Array<Res | Error>>,
    private readonly options: TurnBatcherOptions<Req, Res>,
  ) {}

  call(request: Req): Promise<Res> {
    const single = this.options.single;
    if (single && Date.now() < this.singleUntilMs) return single(request);
    const bytes = this.options.sizeOf?.(request) ?? 0;
    if (this.pending.length > 0 && this.pendingBytes + bytes > (this.options.maxBytes ?? Infinity)) this.flush();
    return new Promise<Res>((resolve, reject) => {
      this.pending.push({ request, resolve, reject });
      this.pendingBytes += bytes;
      if (this.pending.length >= this.options.maxItems) this.flush();
      else this.scheduled ??= setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    const batch = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    if (batch.length === 0) return;
    let sent: Promise<Array<Res | Error>>;
    try {
      sent = context.with(ROOT_CONTEXT, () => this.send(batch.map((b) => b.request)));
    } catch (err) {
      sent = Promise.reject(err);
    }
    sent.then(
      (results) =>
        batch.forEach((b, i) => {
          const result = results[i];
          if (result instanceof Error) b.reject(result);
          else if (result === undefined) b.reject(new Error(`batch answered ${results.length} of ${batch.length} items`));
          else b.resolve(result);
        }),
      (err: unknown) => {
        const single = this.options.single;
        if (single && (err as { code?: unknown })?.code === status.UNIMPLEMENTED) {
          this.singleUntilMs = Date.now() + RETRY_BATCH_AFTER_MS;
          for (const b of batch) single(b.request).then(b.resolve, b.reject);
          return;
        }
        batch.forEach((b) => b.reject(err));
      },
    );
  }
}
