/**
 * SubmitJobStream, the job-manager's side: SubmitJobs batches arriving on one
 * long-lived stream, each answered with its batch_id as soon as it is done
 * (batches run side by side, as separate unary calls would).
 */
import type { ServerDuplexStream } from "@grpc/grpc-js";
import type { SubmitJobsRequest, SubmitJobsResponse, SubmitJobStreamRequest, SubmitJobStreamResponse } from "@aspen/proto";
import {
  auditStreamRequest,
  checkDecoded,
  itemRefusal,
  readmit,
  serverClosingOf,
  toServiceError,
  type Logger,
} from "@aspen/runtime";

/**
 * Batches of one stream in progress at once; past it the stream is not read
 * (what the client sends meanwhile waits in its buffers and HTTP/2's). The
 * scheduler's fires come batched per event-loop turn, so a burst of due
 * schedules is a few batches, not one each.
 */
export const MAX_BATCHES_IN_FLIGHT = 64;

/**
 * Serves one stream until the client ends its side (or the server closes):
 * every batch taken is answered before the stream ends with OK. A message
 * that does not decode ends it with INVALID_ARGUMENT (its batch_id is unknown),
 * and one from a caller whose token was revoked meanwhile with its refusal.
 */
export function serveSubmitStream(
  call: ServerDuplexStream<SubmitJobStreamRequest, SubmitJobStreamResponse>,
  submitBatch: (batch: SubmitJobsRequest) => Promise<SubmitJobsResponse>,
  log: Logger,
): void {
  let inFlight = 0;
  let draining = false; // taking no more batches: the client ended its side, or the server is closing
  let done = false;
  const closing = serverClosingOf(call);
  const finish = (): void => {
    if (done || !draining || inFlight > 0) return;
    done = true;
    closing?.removeEventListener("abort", drain);
    call.end();
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
  call.on("error", (err) => log.debug({ err: err.message }, "submit stream failed"));
  call.on("end", drain);
  call.on("data", (message: SubmitJobStreamRequest) => {
    if (draining) return; // after a drain began: not taken, and never answered (the client sends it again)
    try {
      checkDecoded(message);
      readmit(call); // a token revoked since the stream opened stops working here too
    } catch (err) {
      // Ends the stream (batches in progress finish, unanswered): for bytes that are no
      // message its batch_id is unknown, and a caller no longer admitted gets nothing more.
      const refused = toServiceError(err);
      auditStreamRequest(call, (message as Partial<SubmitJobStreamRequest>).batch, undefined, {
        code: refused.code,
        message: refused.details,
      });
      done = draining = true;
      closing?.removeEventListener("abort", drain);
      call.emit("error", refused);
      return;
    }
    const batch = message.batch ?? { requests: [], brief: false };
    inFlight++;
    if (inFlight >= MAX_BATCHES_IN_FLIGHT) call.pause();
    submitBatch(batch).then(
      (answer) => answered({ batchId: message.batchId, answer, code: 0, message: "" }),
      (err: unknown) => {
        const refusal = itemRefusal(err, (e) => log.error({ err: e }, "submission batch failed"));
        answered({ batchId: message.batchId, answer: undefined, ...refusal }, refusal);
      },
    );
    function answered(response: SubmitJobStreamResponse, refusal?: { code: number; message: string }): void {
      inFlight--;
      auditStreamRequest(call, batch, response.answer, refusal);
      if (!done) call.write(response);
      if (call.isPaused() && inFlight < MAX_BATCHES_IN_FLIGHT) call.resume();
      finish();
    }
  });
}
