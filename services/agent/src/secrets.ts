/**
 * Secret environment variables on the agent: the only place their values
 * exist in clear, in memory, for the time of one attempt. A sealed value is
 * opened with this agent's private key (ASPEN_SECRETS_PRIVATE_KEY_FILE); an
 * agent reference is read from a file in the agent's secrets directory
 * (ASPEN_AGENT_SECRETS_DIR). Anything that cannot be resolved refuses the
 * attempt with a reason that names the variable and never holds the value.
 */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { SecretValue } from "@aspen/proto";
import { SECRET_REF, SECRET_VALUE_MAX_BYTES } from "@aspen/model";
import { ConfigError, SecretOpenError, type SecretOpener } from "@aspen/runtime";
import { Refusal } from "./admission.js";

export interface SecretResolverOptions {
  /** Opens sealed values; absent: sealed values are refused. */
  opener?: SecretOpener;
  /** Directory of agent references (one file per reference); absent: references are refused. */
  dir?: string;
}

/** Resolves one secret_env entry to its value, or throws a Refusal. */
export class SecretResolver {
  /** Throws ConfigError when `dir` is given but is not a readable directory. */
  constructor(private readonly options: SecretResolverOptions) {
    const dir = options.dir;
    if (dir) {
      let ok = false;
      try {
        ok = statSync(dir).isDirectory();
      } catch {
        ok = false;
      }
      if (!ok) throw new ConfigError([`ASPEN_AGENT_SECRETS_DIR=${JSON.stringify(dir)}: not a directory`]);
    }
  }

  resolve(name: string, secret: SecretValue): string {
    const what = `secret_env ${name}`;
    const source = secret.source;
    if (!source) throw new Refusal(`${what}: no value, agent_ref or sealed value (was it redacted before it was sent?)`);
    let value: string;
    switch (source.$case) {
      case "value":
        // The control plane seals inline values; one arriving in clear is not used.
        throw new Refusal(
          `${what}: an unsealed value reached the agent; the control plane must seal it (ASPEN_SECRETS_PUBLIC_KEY_FILE)`,
        );
      case "sealed": {
        const opener = this.options.opener;
        if (!opener) throw new Refusal(`${what}: sealed, but this agent has no private key (ASPEN_SECRETS_PRIVATE_KEY_FILE)`);
        try {
          value = opener.open(name, source.value).toString("utf8");
        } catch (err) {
          if (err instanceof SecretOpenError) throw new Refusal(`${what}: the sealed value ${err.message}`);
          throw err;
        }
        break;
      }
      case "agentRef":
        value = this.readRef(what, source.value);
        break;
    }
    if (value.includes("\0"))
      throw new Refusal(`${what}: the value contains a NUL byte, which an environment variable cannot hold`);
    return value;
  }

  private readRef(what: string, ref: string): string {
    const dir = this.options.dir;
    if (!dir)
      throw new Refusal(
        `${what}: agent_ref ${JSON.stringify(ref)}, but this agent has no secrets directory (ASPEN_AGENT_SECRETS_DIR)`,
      );
    // The name has no separator and no leading dot, so it cannot leave the directory (checked again here).
    if (!SECRET_REF.test(ref)) throw new Refusal(`${what}: agent_ref ${JSON.stringify(ref)} must match ${SECRET_REF}`);
    const path = join(dir, ref);
    let size: number;
    try {
      const st = statSync(path);
      if (!st.isFile())
        throw new Refusal(`${what}: agent_ref ${JSON.stringify(ref)} is not a file in this agent's secrets directory ${dir}`);
      size = st.size;
    } catch (err) {
      if (err instanceof Refusal) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      throw new Refusal(
        code === "ENOENT"
          ? `${what}: agent_ref ${JSON.stringify(ref)} not found in this agent's secrets directory ${dir}`
          : `${what}: agent_ref ${JSON.stringify(ref)} cannot be read (${code ?? "error"})`,
      );
    }
    if (size > SECRET_VALUE_MAX_BYTES)
      throw new Refusal(`${what}: agent_ref ${JSON.stringify(ref)} is larger than ${SECRET_VALUE_MAX_BYTES} bytes`);
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      throw new Refusal(
        `${what}: agent_ref ${JSON.stringify(ref)} cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`,
      );
    }
    // One trailing newline is what `echo value > file` adds; it is not part of the secret.
    return text.endsWith("\r\n") ? text.slice(0, -2) : text.endsWith("\n") ? text.slice(0, -1) : text;
  }
}
