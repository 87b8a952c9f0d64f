#!/usr/bin/env node
/**
 * aspen — command-line client of the Aspen scheduler.
 *
 * Exit status: 0 on success; 1 when a service refused or failed a call
 * (printed as "error: <gRPC status name>: <message>") or a waited-for job did
 * not succeed; 2 on usage errors.
 */
import { Command, CommanderError, Option } from "commander";
import { status } from "@grpc/grpc-js";
import { AspenError } from "@aspen/runtime";
import { Clients, type Addresses } from "./clients.js";
import { registerJobCommands } from "./job.js";
import { registerScheduleCommands } from "./schedule.js";
import { registerWorkersCommand } from "./workers.js";

const program = new Command("aspen")
  .description("command-line client of the Aspen distributed command scheduler")
  // Throw instead of exiting, so that clients are closed and usage errors get status 2. Inherited by subcommands.
  .exitOverride()
  .addOption(new Option("--scheduler <addr>", "scheduler host:port").env("ASPEN_SCHEDULER_ADDR").default("127.0.0.1:50051"))
  .addOption(new Option("--job-manager <addr>", "job-manager host:port").env("ASPEN_JOB_MANAGER_ADDR").default("127.0.0.1:50052"))
  .addOption(new Option("--coordinator <addr>", "coordinator host:port").env("ASPEN_COORDINATOR_ADDR").default("127.0.0.1:50053"))
  // TLS trust comes from ASPEN_TLS_CA (and ASPEN_TLS_CLIENT_CERT/KEY for mTLS), read by the clients.
  .addOption(new Option("--token <token>", "bearer token (default: $ASPEN_TOKEN)"))
  .hook("preAction", () => {
    const token = program.opts<{ token?: string }>().token;
    if (token) process.env.ASPEN_TOKEN = token;
  });

const clients = new Clients(() => program.opts<Addresses>());
registerScheduleCommands(program, clients);
registerJobCommands(program, clients);
registerWorkersCommand(program, clients);

try {
  await program.parseAsync();
} catch (err) {
  if (err instanceof CommanderError) {
    // Commander has printed the message (or the help) already.
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else if (err instanceof AspenError) {
    console.error(`error: ${status[err.code] ?? err.code}: ${err.message}`);
    process.exitCode = 1;
  } else {
    console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
} finally {
  clients.close();
}
