/**
 * Who may call what. Every RPC of every Aspen service needs a bearer token
 * (`authorization: Bearer <token>`); tokens are stored only as SHA-256 hashes
 * in a tokens file, each with a role. The permission an RPC needs comes from
 * its name (one table, below), so a new RPC is covered the day it is added.
 * Health and reflection stay open (load balancers and `buf curl` discovery).
 *
 * Security settings are read from the environment here, in one place, for
 * servers (GrpcServer) and clients (createClient) alike.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync, unwatchFile, watchFile } from "node:fs";
import { type Metadata, status } from "@grpc/grpc-js";
import { z } from "zod";
import { AspenError, PermissionDeniedError } from "./errors.js";
import { ConfigError } from "./config.js";

export type Role = "admin" | "operator" | "viewer" | "agent" | "service";
export type Permission = "read" | "operate" | "admin" | "internal" | "connect";

/** What each role may do. */
export const ROLE_PERMISSIONS: Readonly<Record<Role, readonly Permission[]>> = {
  admin: ["read", "operate", "admin", "internal", "connect"],
  operator: ["read", "operate"],
  viewer: ["read"],
  // Only the Connect stream, bound to the worker id the token names.
  agent: ["connect"],
  // The calls the services make to each other (the scheduler submits and cancels jobs).
  service: ["read", "operate", "internal"],
};

const INTERNAL = new Set(["ReportAttempts", "ReportAttemptStream", "PlaceJobs", "PlaceJobStream", "PlaceJob", "CancelAttempt"]);
const ADMIN = new Set(["PurgeDeadLetters", "CreateWorkerGroup", "UpdateWorkerGroup", "DeleteWorkerGroup"]);
const READ = /^(Get|List|Watch|Preview|Stream|Match)/;

/** The permission an RPC needs, from its method name. */
export function permissionFor(method: string): Permission {
  if (method === "Connect") return "connect";
  if (INTERNAL.has(method)) return "internal";
  if (ADMIN.has(method)) return "admin";
  if (READ.test(method)) return "read";
  return "operate";
}

/** An authenticated caller. */
export interface Principal {
  name: string;
  role: Role;
  /** For agent tokens: the only worker id this token may register as. */
  workerId?: string;
}

const TokenEntry = z.object({
  name: z.string().min(1),
  role: z.enum(["admin", "operator", "viewer", "agent", "service"]),
  /** Hex SHA-256 of the token. The token itself is never stored. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  worker_id: z.string().optional(),
});
const TokensFile = z.object({ tokens: z.array(TokenEntry) });

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** A new random token (what `scripts/make-token.mjs` prints). */
export function newToken(): string {
  return `aspen_${randomBytes(24).toString("base64url")}`;
}

/**
 * Tokens from a JSON file `{"tokens":[{"name","role","sha256","worker_id"?}]}`,
 * re-read when the file changes (rotation without restart).
 */
export class TokenStore {
  private byHash = new Map<string, Principal>();

  constructor(private readonly path: string) {
    this.reload();
    watchFile(path, { interval: 1000, persistent: false }, () => {
      try {
        this.reload();
      } catch {
        // Keep the previous tokens while the file is being rewritten or is invalid.
      }
    });
  }

  private reload(): void {
    let parsed: z.infer<typeof TokensFile>;
    try {
      parsed = TokensFile.parse(JSON.parse(readFileSync(this.path, "utf8")));
    } catch (err) {
      throw new ConfigError([`ASPEN_AUTH_TOKENS_FILE=${JSON.stringify(this.path)}: ${(err as Error).message}`]);
    }
    const next = new Map<string, Principal>();
    for (const t of parsed.tokens) next.set(t.sha256, { name: t.name, role: t.role, workerId: t.worker_id });
    this.byHash = next;
  }

  authenticate(token: string): Principal | undefined {
    const hash = hashToken(token);
    for (const [candidate, principal] of this.byHash) {
      if (timingSafeEqual(Buffer.from(candidate), Buffer.from(hash))) return principal;
    }
    return undefined;
  }

  close(): void {
    unwatchFile(this.path);
  }
}

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
  /** CA that client certificates must chain to (mTLS). */
  clientCa?: Buffer;
  /** Refuse clients without a valid certificate. */
  requireClientCert: boolean;
}

export interface SecurityConfig {
  /** undefined: authentication off (ASPEN_AUTH=none). */
  tokens?: TokenStore;
  /** undefined: plaintext (ASPEN_TLS=off). */
  tls?: TlsFiles;
}

const readFile = (name: string, path: string): Buffer => {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError([`${name}=${JSON.stringify(path)}: ${(err as Error).message}`]);
  }
};

/**
 * Server security from the environment. Authentication and TLS are on
 * unless explicitly turned off:
 * - ASPEN_AUTH_TOKENS_FILE: the tokens file; without it, ASPEN_AUTH=none is required.
 * - ASPEN_TLS_CERT / ASPEN_TLS_KEY (PEM); ASPEN_TLS_CLIENT_CA for client
 *   certificates, ASPEN_TLS_CLIENT_AUTH=require to demand them; without a
 *   certificate, ASPEN_TLS=off is required.
 */
export function loadSecurityConfig(
  env: Record<string, string | undefined> = process.env,
): SecurityConfig & { warnings: string[] } {
  const warnings: string[] = [];
  const problems: string[] = [];
  let tokens: TokenStore | undefined;
  if (env.ASPEN_AUTH_TOKENS_FILE) tokens = new TokenStore(env.ASPEN_AUTH_TOKENS_FILE);
  else if (env.ASPEN_AUTH === "none")
    warnings.push("authentication is OFF (ASPEN_AUTH=none): anyone who reaches this port can call every RPC");
  else problems.push("ASPEN_AUTH_TOKENS_FILE: required (or set ASPEN_AUTH=none to run without authentication)");
  let tls: TlsFiles | undefined;
  if (env.ASPEN_TLS_CERT || env.ASPEN_TLS_KEY) {
    if (!env.ASPEN_TLS_CERT || !env.ASPEN_TLS_KEY) problems.push("ASPEN_TLS_CERT and ASPEN_TLS_KEY: set both");
    else {
      tls = {
        cert: readFile("ASPEN_TLS_CERT", env.ASPEN_TLS_CERT),
        key: readFile("ASPEN_TLS_KEY", env.ASPEN_TLS_KEY),
        clientCa: env.ASPEN_TLS_CLIENT_CA ? readFile("ASPEN_TLS_CLIENT_CA", env.ASPEN_TLS_CLIENT_CA) : undefined,
        requireClientCert: env.ASPEN_TLS_CLIENT_AUTH === "require",
      };
      if (tls.requireClientCert && !tls.clientCa) problems.push("ASPEN_TLS_CLIENT_AUTH=require: needs ASPEN_TLS_CLIENT_CA");
    }
  } else if (env.ASPEN_TLS === "off") warnings.push("TLS is OFF (ASPEN_TLS=off): traffic and tokens travel in plaintext");
  else problems.push("ASPEN_TLS_CERT/ASPEN_TLS_KEY: required (or set ASPEN_TLS=off for plaintext)");
  if (problems.length > 0) {
    tokens?.close();
    throw new ConfigError(problems);
  }
  return { tokens, tls, warnings };
}

/** Client-side security from the environment: the bearer token and TLS trust. */
export interface ClientSecurity {
  /** ASPEN_TOKEN: sent as `authorization: Bearer …`. */
  token?: string;
  /** ASPEN_TLS_CA: trust this CA and speak TLS; without it, plaintext. */
  ca?: Buffer;
  /** ASPEN_TLS_CLIENT_CERT / ASPEN_TLS_CLIENT_KEY: present a client certificate (mTLS). */
  cert?: Buffer;
  key?: Buffer;
}

export function clientSecurityFromEnv(env: Record<string, string | undefined> = process.env): ClientSecurity {
  return {
    token: env.ASPEN_TOKEN || undefined,
    ca: env.ASPEN_TLS_CA ? readFile("ASPEN_TLS_CA", env.ASPEN_TLS_CA) : undefined,
    cert: env.ASPEN_TLS_CLIENT_CERT ? readFile("ASPEN_TLS_CLIENT_CERT", env.ASPEN_TLS_CLIENT_CERT) : undefined,
    key: env.ASPEN_TLS_CLIENT_KEY ? readFile("ASPEN_TLS_CLIENT_KEY", env.ASPEN_TLS_CLIENT_KEY) : undefined,
  };
}

/** The caller a request's bearer token names, or UNAUTHENTICATED. With authentication off, an anonymous admin. */
export function authenticate(tokens: TokenStore | undefined, metadata: Metadata): Principal {
  if (!tokens) return { name: "anonymous", role: "admin" };
  const header = String(metadata.get("authorization")[0] ?? "");
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  if (!match?.[1]) throw new AspenError(status.UNAUTHENTICATED, "missing bearer token (authorization: Bearer <token>)");
  const principal = tokens.authenticate(match[1]);
  if (!principal) throw new AspenError(status.UNAUTHENTICATED, "invalid bearer token");
  return principal;
}

/** PERMISSION_DENIED naming the permission `service/method` needs, unless the caller's role has it. */
export function requirePermission(principal: Principal, service: string, method: string): void {
  const needed = permissionFor(method);
  if (!ROLE_PERMISSIONS[principal.role].includes(needed)) {
    throw new PermissionDeniedError(
      `${service}/${method} needs the "${needed}" permission; ${principal.name} (role ${principal.role}) has ${ROLE_PERMISSIONS[principal.role].join(", ")}`,
    );
  }
}

/** The caller of an RPC, or UNAUTHENTICATED / PERMISSION_DENIED naming what is missing. */
export function authorize(tokens: TokenStore | undefined, metadata: Metadata, service: string, method: string): Principal {
  const principal = authenticate(tokens, metadata);
  requirePermission(principal, service, method);
  return principal;
}
