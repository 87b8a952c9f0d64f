/**
 * Batch calls of the hot path (SubmitJobs, PlaceJobs, ReportAttempts) carried
 * on one long-lived bidi stream per client instead of a unary call each: the
 * client side (BatchStream) and the server side (serveBatchStream).
 *
 * Why: in grpc-js a unary call costs about 1 ms more round trip and ~0.25 ms
 * more CPU (both sides together) than a message on an open stream (a new
 * HTTP/2 stream, headers and trailers, and the call machinery on both sides).
 * Measured on loopback with an echo server: at 100 calls/s, unary p50 1.2–1.9
 * ms and p99 3.6–4.9 ms, on a stream p50 0.4–0.6 ms and p99 0.7–2.6 ms; back to
 * back, 330 µs of CPU per unary call against 78 µs per stream message.
 *
 * Every stream message pair has the same shape: `{ batch_id, batch }` in,
 * `{ batch_id, answer, code, message }` out (code non-zero: the batch refused
 * as a whole, with the status its unary call would have ended with).
 */
import { status, type ClientDuplexStream, type ServerDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { context, ROOT_CONTEXT } from "@opentelemetry/api";
import { errorForStatus, fromServiceError, itemRefusal, toServiceError, UnavailableError } from "./errors.js";
import { auditStreamRequest, checkDecoded, readmit, serverClosingOf } from "./grpc.js";
import type { Logger } from "./logger.js";

export interface BatchMessage<B> {
  batchId: number;
  batch?: B | undefined;
}

export interface BatchAnswer<A> {
  batchId: number;
  answer?: A | undefined;
  code: number;
  message: string;
}

/** After a peer answers UNIMPLEMENTED (an older version), batches go as unary calls for this long. */
const UNARY_FOR_MS = 60_000;

export interface BatchStreamOptions<B, A> {
  /** The stream's RPC name, for logs ("SubmitJobStream"). */
  name: string;
  /** Opens the stream (the generated client's method). */
  open: () => ClientDuplexStream<BatchMessage<B>, BatchAnswer<A>>;
  /** The unary batch call, for a peer that predates the stream. */
  unary: (batch: B, deadlineMs: number) => Promise<A>;
  /** An answer with nothing in it (a field the peer left unset). */
  empty: A;
  log: Logger;
  /** How long one batch may wait for its answer (as a unary call's deadline). Default 10 s. */
  deadlineMs?: number;
}

type Stream<B, A> = ClientDuplexStream<BatchMessage<B>, BatchAnswer<A>>;

interface Pending<B, A> {
  stream: Stream<B, A>;
  batch: B;
  timer: NodeJS.Timeout;
  resolve: (answer: A) => void;
  reject: (err: unknown) => void;
}

/**
 * Sends each batch on the open stream (opened on first use, and again after it
 * ends or fails) and settles it with the answer carrying its batch_id. Failures
 * are a unary call's, batch by batch: a stream that fails or that the peer ends
 * while shutting down rejects what it left unanswered with a retryable error,
 * as a broken connection fails the calls on it; a batch past its deadline is
 * rejected alone and the stream goes on, as one call's deadline would (the peer
 * is not told of the deadline, so that batch may still be done there — the
 * same as a unary call that timed out; the caller's retry must allow for it).
 * Writes do not wait on HTTP/2 flow control: what is queued here is bounded by
 * the caller's own work in progress (fires, placements, reports).
 */
export class BatchStream<B, A> {
  private stream: Stream<B, A> | undefined;
  private readonly pending = new Map<number, Pending<B, A>>();
  private lastId = 0;
  private unaryUntilMs = 0;
  private closed = false;

  constructor(private readonly options: BatchStreamOptions<B, A>) {}

  send(batch: B): Promise<A> {
    const { name, deadlineMs = 10_000 } = this.options;
    if (this.closed) return Promise.reject(new UnavailableError(`${name} closed`));
    if (Date.now() < this.unaryUntilMs) return this.options.unary(batch, deadlineMs);
    const stream = this.stream ?? this.open();
    this.lastId = this.lastId >= 0xffff_ffff ? 1 : this.lastId + 1;
    const batchId = this.lastId;
    return new Promise((resolve, reject) => {
      // Only this batch: cancelling the stream would fail the others too while the peer may
      // still be doing them (a placement retried meanwhile could then run twice).
      const timer = setTimeout(() => {
        this.pending.delete(batchId);
        reject(errorForStatus(status.DEADLINE_EXCEEDED, `${name}: no answer to a batch within ${deadlineMs} ms`));
      }, deadlineMs);
      this.pending.set(batchId, { stream, batch, timer, resolve, reject });
      stream.write({ batchId, batch });
    });
  }

  /** Ends the stream; batches still unanswered are rejected. */
  close(): void {
    this.closed = true;
    const stream = this.stream;
    this.stream = undefined;
    if (stream) this.failAll(stream, new UnavailableError(`${this.options.name} closed`));
    stream?.cancel();
  }

  private open(): Stream<B, A> {
    const { name, log } = this.options;
    // Outside every caller's trace: the stream serves them all (items carry their own traceparent).
    const stream = context.with(ROOT_CONTEXT, () => this.options.open());
    this.stream = stream;
    stream.on("data", (answer: BatchAnswer<A>) => {
      const waiting = this.pending.get(answer.batchId);
      if (!waiting || waiting.stream !== stream) return; // past its deadline already
      this.pending.delete(answer.batchId);
      clearTimeout(waiting.timer);
      if (answer.code !== 0) waiting.reject(errorForStatus(answer.code, answer.message));
      else waiting.resolve(answer.answer ?? this.options.empty);
    });
    // 'status' comes for every ending (an error status also emits 'error', handled there as well).
    stream.on("error", () => undefined);
    stream.on("status", ({ code, details }: { code: status; details: string }) => {
      if (this.stream === stream) this.stream = undefined;
      if (code === status.UNIMPLEMENTED) {
        // An older peer: what this stream carried goes as unary calls, and so does what follows, for a while.
        this.unaryUntilMs = Date.now() + UNARY_FOR_MS;
        log.info(`peer has no ${name}; sending unary batch calls`);
        for (const [batchId, waiting] of this.pending) {
          if (waiting.stream !== stream) continue;
          this.pending.delete(batchId);
          clearTimeout(waiting.timer);
          this.options.unary(waiting.batch, this.options.deadlineMs ?? 10_000).then(waiting.resolve, waiting.reject);
        }
        return;
      }
      // A refused caller is refused for each batch, as a unary call would be. Any other ending
      // is the stream's, not the batch's (one bad message ends it for all): retryable.
      const err =
        code === status.UNAUTHENTICATED || code === status.PERMISSION_DENIED
          ? fromServiceError({ code, details, message: details } as ServiceError)
          : new UnavailableError(
              code === status.OK
                ? `the peer ended ${name} before answering (shutting down)`
                : `${name} ended with ${status[code]}: ${details}`,
            );
      if (code !== status.OK && code !== status.CANCELLED) {
        log.warn({ code: status[code], err: details }, `${name} failed; reopened on the next batch`);
      }
      this.failAll(stream, err);
    });
    return stream;
  }

  private failAll(stream: Stream<B, A>, err: unknown): void {
    for (const [batchId, waiting] of this.pending) {
      if (waiting.stream !== stream) continue;
      this.pending.delete(batchId);
      clearTimeout(waiting.timer);
      waiting.reject(err);
    }
  }
}

/**
 * Batches of one stream in progress at once; past it the stream is not read
 * (what the client sends meanwhile waits in its buffers and HTTP/2's). Clients
 * batch per event-loop turn, so a burst is a few batches, not one per item.
 */
export const MAX_BATCHES_IN_FLIGHT = 64;

/**
 * Serves one batch stream until the client ends its side (or the server
 * closes): batches run side by side, as separate unary calls would, and every
 * batch taken is answered before the stream ends with OK. A message that does
 * not decode ends it with INVALID_ARGUMENT (its batch_id is unknown), and one
 * from a caller whose token was revoked meanwhile with that refusal, also once
 * the batches in progress are answered. Each batch
 * goes to the control audit trail as its unary call would (when audited).
 */
export function serveBatchStream<B, A>(
  call: ServerDuplexStream<BatchMessage<B>, BatchAnswer<A>>,
  handle: (batch: B | undefined) => Promise<A>,
  log: Logger,
): void {
  let inFlight = 0;
  let draining = false; // taking no more batches: the client ended its side, the server is closing, or refused
  let done = false;
  let refusedWith: ReturnType<typeof toServiceError> | undefined; // the status the stream ends with, if not OK
  const closing = serverClosingOf(call);
  const finish = (): void => {
    if (done || !draining || inFlight > 0) return;
    done = true;
    closing?.removeEventListener("abort", drain);
    if (refusedWith) call.emit("error", refusedWith);
    else call.end();
  };
  const drain = (): void => {
    draining = true;
    finish();
  };
  if (closing?.aborted) draining = true;
  else closing?.addEventListener("abort", drain, { once: true });
  call.on("cancelled", () => {
    done = true;
    closing?.removeEventListener("abort", drain);
  });
  call.on("error", (err) => log.debug({ err: err.message, method: call.getPath() }, "batch stream failed"));
  call.on("end", drain);
  call.on("data", (message: BatchMessage<B>) => {
    if (draining) return; // after a drain began: not taken, and never answered (the client sends it again)
    try {
      checkDecoded(message);
      readmit(call); // a token revoked since the stream opened stops working here too
    } catch (err) {
      // Ends the stream with this status once the batches in progress are answered: for bytes
      // that are no message the batch_id is unknown, and a caller no longer admitted gets
      // nothing more. (Ending it at once would leave batches done but unanswered.)
      refusedWith = toServiceError(err);
      auditStreamRequest(call, (message as Partial<BatchMessage<B>>).batch, undefined, {
        code: refusedWith.code,
        message: refusedWith.details,
      });
      drain();
      return;
    }
    const { batchId, batch } = message;
    inFlight++;
    if (inFlight >= MAX_BATCHES_IN_FLIGHT) call.pause();
    const answered = (response: BatchAnswer<A>, refusal?: { code: number; message: string }): void => {
      inFlight--;
      auditStreamRequest(call, batch, response.answer, refusal);
      if (!done) call.write(response);
      if (call.isPaused() && inFlight < MAX_BATCHES_IN_FLIGHT) call.resume();
      finish();
    };
    handle(batch).then(
      (answer) => answered({ batchId, answer, code: 0, message: "" }),
      (err: unknown) => {
        const refusal = itemRefusal(err, (e) => log.error({ err: e, method: call.getPath() }, "batch failed"));
        answered({ batchId, answer: undefined, ...refusal }, refusal);
      },
    );
  });
}
