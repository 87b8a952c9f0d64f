/**
 * Domain errors and their one mapping to and from gRPC status codes.
 * Services throw these; `toServiceError` (used by every server handler
 * wrapper) turns them into a status, and `fromServiceError` turns a client's
 * ServiceError back into the same class.
 */
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";

export class AspenError extends Error {
  readonly code: status;
  constructor(code: status, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = "AspenError";
  }
}

/** A request field is missing or malformed. The message starts with the field path. */
export class InvalidArgumentError extends AspenError {
  readonly field: string;
  constructor(field: string, reason: string) {
    super(status.INVALID_ARGUMENT, `${field}: ${reason}`);
    this.name = "InvalidArgumentError";
    this.field = field;
  }
}

export class NotFoundError extends AspenError {
  constructor(what: string, id: string) {
    super(status.NOT_FOUND, `${what} ${JSON.stringify(id)} not found`);
    this.name = "NotFoundError";
  }
}

export class AlreadyExistsError extends AspenError {
  constructor(what: string, id: string) {
    super(status.ALREADY_EXISTS, `${what} ${JSON.stringify(id)} already exists`);
    this.name = "AlreadyExistsError";
  }
}

/** The operation is valid but the target's state does not allow it. */
export class FailedPreconditionError extends AspenError {
  constructor(message: string) {
    super(status.FAILED_PRECONDITION, message);
    this.name = "FailedPreconditionError";
  }
}

/** A field or mode the API defines but this version does not implement yet. */
export class UnimplementedError extends AspenError {
  constructor(field: string, reason = "is not implemented yet") {
    super(status.UNIMPLEMENTED, `${field}: ${reason}`);
    this.name = "UnimplementedError";
  }
}

export class ResourceExhaustedError extends AspenError {
  constructor(message: string) {
    super(status.RESOURCE_EXHAUSTED, message);
    this.name = "ResourceExhaustedError";
  }
}

/** The caller is known but may not do this. */
export class PermissionDeniedError extends AspenError {
  constructor(message: string) {
    super(status.PERMISSION_DENIED, message);
    this.name = "PermissionDeniedError";
  }
}

/** A compare-and-set lost its race: the record changed since it was read. */
export class ConflictError extends AspenError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(status.ABORTED, message, options);
    this.name = "ConflictError";
  }
}

export class UnavailableError extends AspenError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(status.UNAVAILABLE, message, options);
    this.name = "UnavailableError";
  }
}

/**
 * The gRPC error for any thrown value. Unknown errors become INTERNAL with a
 * generic message: their text (stack traces, paths) is logged, never sent.
 */
export function toServiceError(err: unknown): Partial<ServiceError> & { code: status; details: string } {
  if (err instanceof AspenError) {
    return { code: err.code, details: err.message, metadata: new Metadata() };
  }
  if (isServiceError(err)) return { code: err.code, details: err.details, metadata: new Metadata() };
  return { code: status.INTERNAL, details: "internal error", metadata: new Metadata() };
}

export function isServiceError(err: unknown): err is ServiceError {
  return (
    typeof err === "object" &&
    err !== null &&
    typeof (err as { code?: unknown }).code === "number" &&
    typeof (err as { details?: unknown }).details === "string"
  );
}

/**
 * One item's status in a batch answer (SubmitJobs, PlaceJobs), for a refusal
 * thrown while handling it: the same code and message the one-item call would
 * answer with. `onInternal` sees an unexpected error (whose text is not sent).
 */
export function itemRefusal(err: unknown, onInternal?: (err: unknown) => void): { code: status; message: string } {
  const refused = toServiceError(err);
  if (refused.code === status.INTERNAL) onInternal?.(err);
  return { code: refused.code, message: refused.details };
}

/** The domain error for a status a client received. */
export function fromServiceError(err: ServiceError): AspenError {
  return errorForStatus(err.code, err.details || err.message, err);
}

/** The domain error for a status code and message (a call's status, or one item's in a batch answer). */
export function errorForStatus(code: status, message: string, cause?: unknown): AspenError {
  switch (code) {
    case status.NOT_FOUND:
      return Object.assign(new AspenError(status.NOT_FOUND, message, { cause }), { name: "NotFoundError" });
    case status.INVALID_ARGUMENT:
      return Object.assign(new AspenError(status.INVALID_ARGUMENT, message, { cause }), { name: "InvalidArgumentError" });
    case status.FAILED_PRECONDITION:
      return new FailedPreconditionError(message);
    case status.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(message);
    case status.ABORTED:
      return new ConflictError(message, { cause });
    case status.UNAVAILABLE:
      return new UnavailableError(message, { cause });
    default:
      return new AspenError(code, message, { cause });
  }
}

/**
 * True for failures worth retrying as they are (the peer was unreachable,
 * busy, or lost a race); false for refusals that would repeat (bad input,
 * missing or conflicting state, not implemented).
 */
export function isRetryable(err: unknown): boolean {
  if (!(err instanceof AspenError)) return !isServiceError(err) || retryableCodes.has(err.code);
  return retryableCodes.has(err.code);
}

const retryableCodes = new Set<status>([
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
  status.RESOURCE_EXHAUSTED,
  status.ABORTED,
  status.INTERNAL,
  status.UNKNOWN,
  status.CANCELLED,
]);
