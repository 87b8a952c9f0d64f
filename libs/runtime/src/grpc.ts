/**
 * gRPC plumbing shared by every service: a server that always serves
 * reflection (from the real descriptor set) and grpc.health.v1, handler
 * wrappers that map errors to status in one place and continue the caller's
 * trace, and clients that propagate the active trace and speak promises.
 */
import {
  credentials,
  InterceptingCall,
  Metadata,
  Server,
  ServerCredentials,
  status,
  type CallOptions,
  type ChannelOptions,
  type Client,
  type ClientUnaryCall,
  type handleBidiStreamingCall,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type Interceptor,
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type ServiceError,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import { context, propagation, ROOT_CONTEXT, SpanKind, type TextMapGetter } from "@opentelemetry/api";
import { fileDescriptorProtos } from "@aspen/proto";
import {
  authenticate,
  clientSecurityFromEnv,
  loadSecurityConfig,
  permissionFor,
  requirePermission,
  type ClientSecurity,
  type Principal,
  type SecurityConfig,
} from "./auth.js";
import { fromServiceError, InvalidArgumentError, isServiceError, toServiceError } from "./errors.js";
import type { Logger } from "./logger.js";
import { Attr, withSpan } from "./telemetry.js";

/** Largest message accepted or sent, bytes (outputs travel inline up to 1 MiB per stream). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

const channelOptions: ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.keepalive_permit_without_calls": 1,
  // No channelz service is exposed, so its per-call bookkeeping (2 % of the job-manager's CPU) buys nothing.
  "grpc.enable_channelz": 0,
};

/**
 * Clients spread calls over every address their target resolves to, and skip
 * the ones that are down: a DNS name with several records (a scaled compose
 * service) or an `ipv4:10.0.0.1:50052,10.0.0.2:50052` list reaches every replica.
 */
const clientChannelOptions: ChannelOptions = {
  ...channelOptions,
  // A peer that is down is tried again within about 2 s (2 s ± grpc's 20 % jitter), not after
  // grpc's default backoff, which grows to 2 min: a restarted service (or one slow to start)
  // is reached soon after it listens.
  "grpc.initial_reconnect_backoff_ms": 200,
  "grpc.max_reconnect_backoff_ms": 2_000,
  "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
};

type KnownKeys<T> = keyof { [K in keyof T as string extends K ? never : K]: T[K] };

/**
 * A service implementation as async functions: unary handlers return the
 * response, server-streaming handlers write and resolve when done, bidi
 * handlers own their stream. Throwing a domain error yields its status.
 */
export type AsyncService<S> = {
  [K in KnownKeys<S>]: S[K] extends handleUnaryCall<infer Req, infer Res>
    ? (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>
    : S[K] extends handleServerStreamingCall<infer Req, infer Res>
      ? (request: Req, call: ServerWritableStream<Req, Res>) => Promise<void>
      : S[K] extends handleBidiStreamingCall<infer Req, infer Res>
        ? (call: ServerDuplexStream<Req, Res>) => void
        : never;
};

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (carrier) => Object.keys(carrier.getMap()),
  get: (carrier, key) => {
    const values = carrier.get(key);
    return values.length > 0 ? String(values[0]) : undefined;
  },
};

const principals = new WeakMap<object, Principal>();

/** Marks a request that was not a valid protobuf message for its method. */
const UNDECODABLE = Symbol("undecodable");
type Undecodable = { [UNDECODABLE]: string };

/**
 * The definition with a request decoder that never throws: grpc-js answers a
 * throwing decoder with INTERNAL, but bad bytes are the client's error, so the
 * handler wrapper answers INVALID_ARGUMENT instead.
 */
function tolerantDefinition(definition: ServiceDefinition): ServiceDefinition {
  const out: Record<string, ServiceDefinition[string]> = {};
  for (const [key, method] of Object.entries(definition)) {
    out[key] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          return { [UNDECODABLE]: (err as Error).message } satisfies Undecodable;
        }
      },
    };
  }
  return out;
}

/** Throws INVALID_ARGUMENT (field `request`) for a message that did not decode (each message of a stream is checked by its handler). */
export function checkDecoded(request: unknown): void {
  if (request && typeof request === "object" && UNDECODABLE in request) {
    throw new InvalidArgumentError(
      "request",
      `not a valid protobuf message for this method (${(request as Undecodable)[UNDECODABLE]})`,
    );
  }
}

/** The authenticated caller of a call (set before the handler runs). */
export function principalOf(call: object): Principal | undefined {
  return principals.get(call);
}

type Refusal = { code: status; message: string };

/** What a bidi call's handler can ask of its server while the call lasts (set before the handler runs). */
interface StreamContext {
  readmit: () => void;
  closing: AbortSignal;
  /** Undefined when the method is not audited. */
  audit: ((request: unknown, answer: unknown, refusal: Refusal | undefined) => void) | undefined;
}
const streamContexts = new WeakMap<object, StreamContext>();

/**
 * Checks a bidi call's caller again, as when it opened: UNAUTHENTICATED or
 * PERMISSION_DENIED if its token has been revoked (or its role changed) in the
 * tokens file since. A long-lived stream calls it per request, so a revoked
 * token stops working there as it does for new calls.
 */
export function readmit(call: object): void {
  streamContexts.get(call)?.readmit();
}

/**
 * Aborted when the server serving this bidi call starts to close (after it
 * stops taking new calls): a long-lived stream that can end early ends then,
 * rather than hold the shutdown until its grace runs out.
 */
export function serverClosingOf(call: object): AbortSignal | undefined {
  return streamContexts.get(call)?.closing;
}

/**
 * Records one request of a bidi stream in the control audit trail (as a unary
 * call of the same method would be): its answer (a batch: one record per item)
 * or, when refused as a whole, `refusal`. Nothing when the call is not audited.
 */
export function auditStreamRequest(call: object, request: unknown, answer: unknown, refusal?: Refusal): void {
  streamContexts.get(call)?.audit?.(request, answer, refusal);
}

const outcomeOf = (code: status, message: string) => `${status[code] ?? code}: ${message}`;

/** One state-changing call, for the control audit trail. */
export interface ControlAuditEntry {
  at: Date;
  actor: string;
  role: string;
  /** "<service>/<method>". */
  method: string;
  /** The schedule, job, worker or group id the request names. */
  target: string;
  /** "OK", or "<STATUS>: <message>". */
  outcome: string;
}

/** The id a request acts on (the first of the usual id fields it carries). */
function targetOf(request: unknown): string {
  const r = (request ?? {}) as Record<string, unknown>;
  for (const key of ["scheduleId", "jobId", "workerId", "name"]) {
    if (typeof r[key] === "string" && r[key]) return r[key] as string;
  }
  const group = r.group as { name?: unknown } | undefined;
  if (typeof group?.name === "string") return group.name;
  // A batch refused as a whole (SubmitJobs): the ids it names, the first ten of them.
  if (Array.isArray(r.requests)) {
    const ids = (r.requests as Array<Record<string, unknown>>).map((q) => targetOf(q) || "?");
    return ids.length > 10 ? `${ids.slice(0, 10).join(",")},… (${ids.length})` : ids.join(",");
  }
  const spec = r.spec as { name?: unknown } | undefined;
  return Array.isArray(r.jobIds) ? (r.jobIds as string[]).join(",") : typeof spec?.name === "string" ? spec.name : "";
}

function adapt(
  serviceName: string,
  definition: ServiceDefinition,
  impl: Record<string, (...args: never[]) => unknown>,
  log: Logger,
  security: SecurityConfig,
  audit: ((entry: ControlAuditEntry) => void) | undefined,
  closing: AbortSignal,
): UntypedServiceImplementation {
  const out: UntypedServiceImplementation = {};
  for (const [key, method] of Object.entries(definition)) {
    const handler = impl[key] as ((...args: unknown[]) => unknown) | undefined;
    if (!handler) throw new Error(`${serviceName}: no handler for ${key}`);
    const methodName = method.path.split("/").pop() ?? key;
    const spanName = `${serviceName}/${methodName}`;
    const report = (err: unknown) => {
      const mapped = toServiceError(err);
      if (mapped.code === status.INTERNAL) log.error({ err, method: spanName }, "request failed");
      else log.debug({ method: spanName, code: mapped.code, details: mapped.details }, "request refused");
      return mapped;
    };
    const traced = <T>(md: Metadata, fn: () => Promise<T>) =>
      withSpan(
        spanName,
        {
          parent: propagation.extract(ROOT_CONTEXT, md, metadataGetter),
          kind: SpanKind.SERVER,
          attributes: { [Attr.rpcService]: serviceName, [Attr.rpcMethod]: methodName },
        },
        fn,
      );
    // Authentication and permission come first, before any handler code runs.
    const admit = (call: { metadata: Metadata }) => {
      // Known before the permission check, so a refusal is audited with its caller.
      const principal = authenticate(security.tokens, call.metadata);
      principals.set(call, principal);
      requirePermission(principal, serviceName, methodName);
    };
    // State-changing calls (and refusals of them) go to the control audit trail.
    const permission = permissionFor(methodName);
    const audited = audit && (permission === "operate" || permission === "admin");
    const record = (call: object, outcome: string, target: string) => {
      const who = principals.get(call);
      audit?.({
        at: new Date(),
        actor: who?.name ?? "unauthenticated",
        role: who?.role ?? "",
        method: spanName,
        target,
        outcome,
      });
    };
    // A batch (SubmitJobs): one record per item, with that item's own outcome.
    const recordAnswer = (call: object, request: unknown, res: unknown) => {
      const items = (request as { requests?: unknown } | undefined)?.requests;
      const results = (res as { results?: Array<{ code?: number; message?: string }> } | undefined)?.results;
      if (!Array.isArray(items) || !Array.isArray(results) || items.length !== results.length) {
        return record(call, "OK", targetOf(request));
      }
      results.forEach((r, i) => record(call, !r.code ? "OK" : outcomeOf(r.code, r.message ?? ""), targetOf(items[i])));
    };
    if (!method.requestStream && !method.responseStream) {
      out[key] = ((call: ServerUnaryCall<unknown, unknown>, callback: (e: unknown, r?: unknown) => void) => {
        traced(call.metadata, async () => {
          admit(call);
          checkDecoded(call.request);
          return handler(call.request, call) as Promise<unknown>;
        }).then(
          (res) => {
            if (audited) recordAnswer(call, call.request, res);
            callback(null, res);
          },
          (err) => {
            const mapped = report(err);
            if (audited) record(call, outcomeOf(mapped.code, mapped.details), targetOf(call.request));
            callback(mapped);
          },
        );
      }) as handleUnaryCall<unknown, unknown>;
    } else if (!method.requestStream && method.responseStream) {
      out[key] = ((call: ServerWritableStream<unknown, unknown>) => {
        traced(call.metadata, async () => {
          admit(call);
          checkDecoded(call.request);
          return handler(call.request, call) as Promise<void>;
        }).then(
          () => call.end(),
          // grpc-js turns an 'error' event on a server stream into the call's status.
          (err) => call.emit("error", report(err)),
        );
      }) as handleServerStreamingCall<unknown, unknown>;
    } else {
      out[key] = ((call: ServerDuplexStream<unknown, unknown>) => {
        streamContexts.set(call, {
          readmit: () => admit(call),
          closing,
          audit: audited
            ? (request, answer, refusal) =>
                refusal === undefined
                  ? recordAnswer(call, request, answer)
                  : record(call, outcomeOf(refusal.code, refusal.message), targetOf(request))
            : undefined,
        });
        try {
          admit(call);
          handler(call);
        } catch (err) {
          const mapped = report(err);
          if (audited) record(call, outcomeOf(mapped.code, mapped.details), "");
          call.emit("error", mapped);
        }
      }) as handleBidiStreamingCall<unknown, unknown>;
    }
  }
  return out;
}

export interface ServiceBinding<S> {
  /** Fully qualified name, e.g. "aspen.v1.JobService" (for health and spans). */
  name: string;
  definition: ServiceDefinition;
  implementation: AsyncService<S>;
}

/** Bind one service; keeps the implementation's type tied to its definition. */
export function bindService<S>(name: string, definition: ServiceDefinition, implementation: AsyncService<S>): ServiceBinding<S> {
  return { name, definition, implementation };
}

export interface GrpcServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  log: Logger;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  services: ServiceBinding<any>[];
  /** Authentication and TLS. Default: from the environment (auth.ts, loadSecurityConfig). */
  security?: SecurityConfig;
  /** Receives every state-changing call (operate/admin permission) and its outcome. */
  audit?: (entry: ControlAuditEntry) => void;
}

/** A gRPC server with reflection and health. `start()` binds; `close()` drains, then forces. */
export class GrpcServer {
  readonly health: HealthImplementation;
  private readonly server = new Server(channelOptions);
  private closing: Promise<void> | undefined;
  /** Aborted once close() has begun (serverClosingOf). */
  private readonly closingSignal = new AbortController();
  port = 0;

  private readonly security: SecurityConfig;

  constructor(private readonly options: GrpcServerOptions) {
    if (options.security) this.security = options.security;
    else {
      const loaded = loadSecurityConfig();
      for (const warning of loaded.warnings) options.log.warn(warning);
      this.security = loaded;
    }
    const statuses: Record<string, "SERVING"> = { "": "SERVING" };
    for (const svc of options.services) {
      this.server.addService(
        tolerantDefinition(svc.definition),
        adapt(
          svc.name,
          svc.definition,
          svc.implementation as Record<string, never>,
          options.log,
          this.security,
          options.audit,
          this.closingSignal.signal,
        ),
      );
      statuses[svc.name] = "SERVING";
    }
    this.health = new HealthImplementation(statuses);
    this.health.addToServer(this.server);
    // ReflectionService reads only `fileDescriptorProtos` from the package definition.
    const pkg = { aspen: { fileDescriptorProtos: fileDescriptorProtos() } };
    // List only what this server serves (the descriptor set describes every Aspen service).
    const served = [...options.services.map((svc) => svc.name), "grpc.health.v1.Health"];
    new ReflectionService(pkg as unknown as ConstructorParameters<typeof ReflectionService>[0], { services: served }).addToServer(
      this.server,
    );
  }

  start(): Promise<number> {
    return new Promise((resolve, reject) => {
      const tls = this.security.tls;
      const creds = tls
        ? ServerCredentials.createSsl(
            tls.clientCa ?? null,
            [{ private_key: tls.key, cert_chain: tls.cert }],
            tls.requireClientCert,
          )
        : ServerCredentials.createInsecure();
      this.server.bindAsync(`${this.options.host}:${this.options.port}`, creds, (err, port) => {
        if (err) return reject(err);
        this.port = port;
        resolve(port);
      });
    });
  }

  /** Marks every service NOT_SERVING, lets calls finish for `graceMs`, then cancels the rest. */
  close(graceMs = 5_000): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.health.setStatus("", "NOT_SERVING");
      for (const svc of this.options.services) this.health.setStatus(svc.name, "NOT_SERVING");
      const force = setTimeout(() => this.server.forceShutdown(), graceMs);
      force.unref();
      this.security.tokens?.close();
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
      // After tryShutdown: no new call is taken, so a stream ending now is not reopened here.
      this.closingSignal.abort();
    });
    return this.closing;
  }

  /** Cancels every call now (streams included) and stops listening. */
  forceClose(): void {
    this.server.forceShutdown();
  }
}

/** Injects the active trace context into each outgoing call's metadata. */
const traceInterceptor: Interceptor = (options, nextCall) =>
  new InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      propagation.inject(context.active(), metadata, {
        set: (carrier, key, value) => carrier.set(key, value),
      });
      next(metadata, listener);
    },
  });

/** Sends `authorization: Bearer <token>` with every call. */
const bearerInterceptor =
  (token: string): Interceptor =>
  (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });

type ClientCtor<C> = new (address: string, creds: ReturnType<typeof credentials.createInsecure>, options?: object) => C;

/**
 * A client for `address` (host:port) that carries the caller's trace and,
 * from the environment (ASPEN_TOKEN, ASPEN_TLS_CA, ...) unless given, its
 * bearer token and TLS trust.
 */
export function createClient<C extends Client>(
  Ctor: ClientCtor<C>,
  address: string,
  security: ClientSecurity = clientSecurityFromEnv(),
): C {
  const creds = security.ca
    ? credentials.createSsl(security.ca, security.key ?? null, security.cert ?? null)
    : credentials.createInsecure();
  const interceptors = security.token ? [traceInterceptor, bearerInterceptor(security.token)] : [traceInterceptor];
  return new Ctor(address, creds, { ...clientChannelOptions, interceptors });
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * Calls a unary method and resolves with its response; a status becomes the
 * matching domain error. `deadlineMs` bounds the call (default 10 s).
 */
export function unaryCall<Req, Res>(
  method: UnaryMethod<Req, Res>,
  request: Req,
  options: { deadlineMs?: number; metadata?: Metadata } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, options.metadata ?? new Metadata(), { deadline: Date.now() + (options.deadlineMs ?? 10_000) }, (err, res) =>
      err ? reject(isServiceError(err) ? fromServiceError(err) : err) : resolve(res),
    );
  });
}
