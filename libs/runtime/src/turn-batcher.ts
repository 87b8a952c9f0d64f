import { context, ROOT_CONTEXT } from "@opentelemetry/api";

/**
 * Coalesces the calls made during one event-loop turn into one batch call.
 *
 * Under load, work arrives in bursts (many NATS acks or gRPC frames in one
 * socket read) and each item would otherwise cost a whole RPC on both sides.
 * Calls are collected until the current I/O callbacks are done (setImmediate),
 * or until `maxBatch` are waiting, and then sent together; each caller gets its
 * own item's result. Batches are not serialized: a slow batch does not hold up
 * the next one, so a lone call waits one turn and no longer.
 *
 * The batch is sent outside every caller's trace (each item carries its own
 * context where it matters): it belongs to none of them.
 */
export class TurnBatcher<Req, Res> {
  private pending: Array<{ request: Req; resolve: (res: Res) => void; reject: (err: unknown) => void }> = [];
  private scheduled: NodeJS.Immediate | undefined;

  /**
   * `send` answers one result per request, in order: the item's value, or an
   * Error for that item alone. A rejected `send` fails every item of the batch.
   */
  constructor(
    private readonly send: (requests: Req[]) => Promise<Array<Res | Error>>,
    private readonly maxBatch: number,
  ) {}

  call(request: Req): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      this.pending.push({ request, resolve, reject });
      if (this.pending.length >= this.maxBatch) this.flush();
      else this.scheduled ??= setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    if (this.scheduled) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    const batch = this.pending;
    this.pending = [];
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
      (err: unknown) => batch.forEach((b) => b.reject(err)),
    );
  }
}
