/**
 * The one place a service process meets OS signals: SIGTERM/SIGINT call the
 * service's `close()` once; a second signal, or a close that overruns
 * `forceAfterMs`, exits at once.
 */
import type { Logger } from "./logger.js";

export interface Closable {
  close(): Promise<void>;
}

export function closeOnSignals(service: Closable, log: Logger, forceAfterMs = 30_000): void {
  let closing = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (closing) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    closing = true;
    log.info({ signal }, "shutting down");
    const force = setTimeout(() => {
      log.error({ forceAfterMs }, "shutdown overran its limit: exiting");
      process.exit(1);
    }, forceAfterMs);
    force.unref();
    service.close().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection"));
}

/** Runs a service's main: logs a start-up failure (bad config, port taken) and exits 1. */
export async function runMain(log: Logger, main: () => Promise<Closable>): Promise<void> {
  try {
    const service = await main();
    closeOnSignals(service, log);
  } catch (err) {
    log.fatal({ err }, "failed to start");
    process.exitCode = 1;
    // Let pino flush, then leave even if some handle is still open.
    setTimeout(() => process.exit(1), 100).unref();
  }
}

/**
 * Runs shutdown steps in order, each guarded: a step that fails is logged and
 * the next still runs, so one stuck dependency does not leak the others.
 */
export async function closeInOrder(log: Logger, steps: Array<[name: string, step: () => unknown]>): Promise<void> {
  for (const [name, step] of steps) {
    try {
      await step();
    } catch (err) {
      log.error({ err, step: name }, "shutdown step failed");
    }
  }
}
